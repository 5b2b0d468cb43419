"""``shmq watchdog``: a sidecar that flags dead, stalled and livelocked participants, and says why.

It maps queues read-only, polls them (10 Hz by default) and applies the rules
in ``rules.py``. Alerts go out as JSON-lines events (stdout or a file), as
``shmq_watchdog_*`` series next to the collector's on ``/metrics``, as
``/healthz`` (200, or 503 while any alert is active) and, with
``--alertmanager``, to Alertmanager. On a stall it asks the stuck process for
its Python stacks (``shmq.diagnostics``) and puts them in the event.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import signal
import sys
import threading

from prometheus_client import CollectorRegistry

from shmq import diagnostics
from shmq.segment import SHM_DIR
from shmq.stats import Segments

from .alertmanager import AlertmanagerClient
from .alerts import Alert, AlertBook, Transition
from .events import EventWriter
from .http import DEFAULT_ADDR, DEFAULT_PORT, HttpServer
from .metrics import WatchdogMetrics
from .rules import Cause, Finding, QueueMonitor, Thresholds
from .watcher import DEFAULT_INTERVAL_S, Watchdog

__all__ = [
    "Alert", "AlertBook", "Cause", "Finding", "QueueMonitor", "Thresholds", "Transition", "Watchdog",
    "add_arguments", "main",
]

_DEFAULTS = Thresholds()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--queue", action="append", metavar="NAME",
                       help="watch this queue (logical name, shm name or handle string); repeat for more")
    which.add_argument("--all", action="store_true", help="watch every shmq segment on the host (the default)")
    parser.add_argument("--interval", type=float, default=DEFAULT_INTERVAL_S, metavar="S",
                        help="seconds between polls (default %(default)s)")
    rules = parser.add_argument_group("rules (docs/watchdog.md, 'Why these defaults', says how they were chosen)")
    rules.add_argument("--stall", type=float, default=_DEFAULTS.stall_s, metavar="S",
                       help="seconds without progress, with work pending, that make a stall (default %(default)s)")
    rules.add_argument("--heartbeat-stale", type=float, default=_DEFAULTS.heartbeat_stale_s, metavar="S",
                       help="a heartbeat older than this means the process is frozen (default %(default)s)")
    rules.add_argument("--spin-rate", type=float, default=_DEFAULTS.spin_rate, metavar="N",
                       help="spins+yields per second that count as spinning, for livelock (default %(default)s)")
    rules.add_argument("--freeze-occupancy", type=float, default=_DEFAULTS.freeze_occupancy, metavar="F",
                       help="freeze_risk needs the ring at least this full (default %(default)s)")
    rules.add_argument("--freeze-horizon", type=float, default=_DEFAULTS.freeze_horizon_s, metavar="S",
                       help="... and projected full within this many seconds (default %(default)s)")
    rules.add_argument("--clear-after", type=float, default=_DEFAULTS.clear_after_s, metavar="S",
                       help="an alert clears after its condition has been false this long (default %(default)s)")
    out = parser.add_argument_group("outputs")
    out.add_argument("--events", default="-", metavar="FILE",
                     help="append JSON-lines events to FILE ('-' for stdout, the default)")
    out.add_argument("--addr", default=DEFAULT_ADDR,
                     help="address for /metrics and /healthz (default %(default)s; anything else exposes them)")
    out.add_argument("--port", type=int, default=DEFAULT_PORT, help="port, 0 for any free one (default %(default)s)")
    out.add_argument("--no-http", action="store_true", help="serve neither /metrics nor /healthz")
    out.add_argument("--alertmanager", metavar="URL", help="post alerts to this Alertmanager (API v2) and resolve them")
    stacks = parser.add_argument_group("stacks")
    stacks.add_argument("--stack-dir", default=None, metavar="DIR",
                        help=f"where participants write stack dumps (default {diagnostics.default_stack_dir()})")
    stacks.add_argument("--no-stacks", action="store_true", help="never signal a process for its stacks")
    parser.add_argument("--shm-dir", default=SHM_DIR, help="where POSIX shared memory lives (default %(default)s)")


def thresholds_from(args: argparse.Namespace) -> Thresholds:
    return Thresholds(stall_s=args.stall, heartbeat_stale_s=args.heartbeat_stale, spin_rate=args.spin_rate,
                      freeze_occupancy=args.freeze_occupancy, freeze_horizon_s=args.freeze_horizon,
                      freeze_hold_occupancy=min(_DEFAULTS.freeze_hold_occupancy, args.freeze_occupancy),
                      clear_after_s=args.clear_after)


def main(args: argparse.Namespace) -> int:
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    with contextlib.ExitStack() as stack:
        stream = sys.stdout if args.events == "-" else stack.enter_context(open(args.events, "a", buffering=1))
        registry = CollectorRegistry()
        metrics = WatchdogMetrics(registry)
        segments = Segments(args.queue, shm_dir=args.shm_dir, log=logging.getLogger("shmq.watchdog"))
        listeners = ()
        server = None
        if not args.no_http:
            server = HttpServer(registry, addr=args.addr, port=args.port)
            stack.callback(server.close)
            _add_collector(registry, args, stack)
        if args.alertmanager:
            client = AlertmanagerClient(args.alertmanager, generator_url=f"{server.url}/healthz" if server else "")
            stack.callback(client.close)
            listeners = (client.notify,)
        events = EventWriter(stream, listeners=listeners, stack_dir=args.stack_dir, capture_stacks=not args.no_stacks)
        stack.callback(events.close)
        watchdog = Watchdog(segments, thresholds=thresholds_from(args), interval_s=args.interval, events=events,
                            metrics=metrics)
        stack.callback(watchdog.close)
        if server is not None:
            server.serve(watchdog.health)
        what = ", ".join(args.queue) if args.queue else f"every shmq segment in {args.shm_dir}"
        where = f"; {server.url}/metrics and {server.url}/healthz" if server else ""
        print(f"shmq watchdog: watching {what} every {args.interval} s{where}", file=sys.stderr, flush=True)
        watchdog.run(stop)
    return 0


def _add_collector(registry: CollectorRegistry, args: argparse.Namespace, stack: contextlib.ExitStack) -> None:
    """The telemetry collector's series on the same /metrics, so one scrape has the queue and the verdicts."""
    from ..collector import ShmqCollector

    collector = ShmqCollector(args.queue, shm_dir=args.shm_dir)
    registry.register(collector)
    stack.callback(collector.close)
