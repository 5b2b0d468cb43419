"""The Prometheus exporter: ``shmq.telemetry.serve()`` in a process, or ``shmq exporter`` as a sidecar.

With ``--traces`` the sidecar also turns the queues' flight records into OpenTelemetry
spans (shmq.telemetry.flight_tracing).

Both serve a ``ShmqCollector`` on their own registry over HTTP. They bind to
loopback unless told otherwise: listening on another address is an explicit
choice (``--addr 0.0.0.0``), since the metrics name processes and hosts.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from typing import Iterable

from prometheus_client import CollectorRegistry, start_http_server

from shmq.handle import Handle
from shmq.segment import SHM_DIR
from shmq.stats import QueueView, Segments

from .collector import ShmqCollector

log = logging.getLogger("shmq.exporter")

DEFAULT_ADDR = "127.0.0.1"
DEFAULT_PORT = 9464
TRACES_INTERVAL_S = 0.1  #: how often --traces reads the flight rings
TRACES_EXIT_GRACE_S = 5.0  #: how long the exporter waits at exit for the tracing's last read and export
TRACES_NICENESS = 19  #: the tracing threads' nice value


class Exporter:
    """A running metrics server; ``close()`` stops it. Made by ``serve``."""

    def __init__(self, collector: ShmqCollector, port: int, addr: str) -> None:
        self.collector = collector
        self.registry = CollectorRegistry()
        self.registry.register(collector)
        self._server, self._thread = start_http_server(port, addr, registry=self.registry)
        self.addr = addr
        self.port = self._server.server_port  # the real one when `port` was 0

    @property
    def url(self) -> str:
        host = f"[{self.addr}]" if ":" in self.addr else self.addr
        return f"http://{host}:{self.port}/metrics"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()
        self.collector.close()

    def __enter__(self) -> Exporter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def serve(port: int = DEFAULT_PORT, addr: str = DEFAULT_ADDR, *,
          queues: Iterable[Handle | str | QueueView] | None = None, shm_dir: str = SHM_DIR) -> Exporter:
    """Serve shmq metrics at http://addr:port/metrics from a background thread.

    `queues` is what ``ShmqCollector`` takes: None exports every shmq segment on
    the host; otherwise handles, shm names, queue names or views. Port 0 picks a
    free port (read it back from ``.port``).
    """
    return Exporter(ShmqCollector(queues, shm_dir=shm_dir), port, addr)


# -- shmq exporter ------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--addr", default=DEFAULT_ADDR,
                        help="address to listen on (default %(default)s; anything else exposes the metrics)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="port to listen on, 0 for any (default %(default)s)")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--queue", action="append", metavar="NAME",
                       help="export this queue (logical name, shm name or handle); repeat for more")
    which.add_argument("--all", action="store_true", help="export every shmq segment on the host (the default)")
    parser.add_argument("--shm-dir", default=SHM_DIR, help="where POSIX shared memory lives (default %(default)s)")
    parser.add_argument("--traces", action="store_true",
                        help="also export OpenTelemetry spans built from the queues' flight records (the OTEL_* "
                             "variables configure the exporter); the traced processes pay only for the recorder")
    parser.add_argument("--traces-ratio", type=float, default=1.0, metavar="R",
                        help="share of messages traced, 0..1 (default %(default)s)")
    parser.add_argument("--traces-interval", type=float, default=TRACES_INTERVAL_S, metavar="S",
                        help="seconds between reads of the flight rings (default %(default)s)")


def main(args: argparse.Namespace) -> int:
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    with serve(args.port, args.addr, queues=args.queue, shm_dir=args.shm_dir) as exporter:
        what = ", ".join(args.queue) if args.queue else f"every shmq segment in {args.shm_dir}"
        print(f"shmq exporter: serving {exporter.url} for {what}", flush=True)
        if args.traces:
            return _trace_until(stop, args)
        stop.wait()
    return 0


def _trace_until(stop: threading.Event, args: argparse.Namespace) -> int:
    """Trace until `stop`; the exit code (1 if the tracing stopped on an error)."""
    from .flight_tracing import FlightTracer
    from .tracing import provider_from_environment

    tracers: list[FlightTracer] = []
    ready = threading.Event()  # the tracer's first read is done: what happens after it is traced

    def trace() -> None:
        # Span building is Python and costs CPU per span: at the lowest priority it takes little from
        # the traced processes (docs/telemetry.md has what it costs them), and still some CPU on a
        # machine they keep busy (SCHED_IDLE would trace nothing there). Linux nice is per thread: the
        # span exporter's thread, started by the provider below, inherits this one's; the metrics
        # server's thread and the main thread keep their priority, and the exporter exits in time.
        os.nice(TRACES_NICENESS)
        provider = provider_from_environment()
        tracer = FlightTracer(Segments(args.queue, shm_dir=args.shm_dir, log=log), provider, ratio=args.traces_ratio)
        tracers.append(tracer)
        try:
            tracer.poll()  # what the rings hold now: operations from here on are counted, traced or missed
            ready.set()
            while not stop.wait(args.traces_interval):
                tracer.poll()
            tracer.poll()
        finally:
            tracer.segments.close()
            provider.shutdown()  # flushes the spans still batched

    thread = threading.Thread(target=trace, name="shmq-traces", daemon=True)
    thread.start()
    while not ready.wait(0.1) and thread.is_alive() and not stop.is_set():
        pass
    if ready.is_set():
        print(f"shmq exporter: tracing {args.traces_ratio:.0%} of messages from the flight records", flush=True)
    while thread.is_alive() and not stop.wait(0.5):
        pass
    if not stop.is_set():  # its exception is printed above (threading's excepthook)
        print("shmq exporter: the tracing stopped on an error", file=sys.stderr, flush=True)
        return 1
    thread.join(TRACES_EXIT_GRACE_S)
    spans, missed = (tracers[0].spans, tracers[0].missed) if tracers else (0, 0)
    unfinished = f"; its last read and export did not end within {TRACES_EXIT_GRACE_S:g} s (too little CPU)" \
        if thread.is_alive() else ""
    print(f"shmq exporter: {spans} spans exported, {missed} operations overwritten before they were read"
          f"{unfinished}", flush=True)
    return 0
