"""``shmq demo``: an engine broadcasts batches of requests to worker processes, which reply.

The shape of an LLM server's engine-to-worker channel: every worker sees every
batch (a broadcast queue, reader i = worker i) and handles its share of the
items; each worker answers on its own result queue, of which the engine is the
single reader.

``--inject stall|kill|slow|livelock`` breaks the last worker for a few seconds
while ``shmq watchdog`` (started alongside, with the Prometheus exporter) looks
on: its events show the fault flagged, the worker named, and the recovery. The
engine then keeps up to ``--in-flight`` batches outstanding, so a stuck worker
shows in the broadcast ring rather than only in the engine's wait for replies.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import dataclasses
import multiprocessing
import os
import queue
import re
import signal
import sys
import sysconfig
import threading
import time

import numpy as np

from shmq import layout as L
from shmq import stats
from shmq import wait as wait_module
from shmq.errors import QueueClosed, WriterDead
from shmq.handle import Handle
from shmq.reader import Reader, attach
from shmq.segment import SHM_DIR
from shmq.writer import create

_FORK = multiprocessing.get_context("fork")
INJECTIONS = ("stall", "kill", "slow", "livelock")
REQUESTS = "demo-requests"


@dataclasses.dataclass(frozen=True)
class DemoConfig:
    workers: int = 4
    batches: int = 120
    items: int = 12  #: concurrent items per batch
    tokens: int = 512  #: int32 tokens per item
    reply_timeout_s: float = 30.0
    in_flight: int = 1  #: batches sent but not yet answered by every worker
    rate_hz: float = 0.0  #: batches per second; 0 sends as fast as the workers answer
    inject: str = ""  #: one of INJECTIONS, done to the last worker
    fault_at_s: float = 2.0  #: when the fault starts, after the first batch
    fault_s: float = 4.0  #: how long it lasts
    slow_item_s: float = 0.15  #: "slow": seconds the worker sleeps per item of its share

    @property
    def victim(self) -> int:
        return self.workers - 1


@dataclasses.dataclass(frozen=True)
class DemoReport:
    batches: int  #: batches that every worker answered
    items: int  #: items answered in all
    seconds: float  #: from the first send to the last reply
    round_trip_s: tuple[float, ...]  #: per batch: send until the last worker's reply
    reader_waits: tuple[int, ...]  #: merged wait histogram of the workers (log2 buckets)
    lost: int  #: items of live workers sent but never answered
    killed: tuple[int, ...] = ()  #: workers that died during the run
    unanswered_by_killed: int = 0  #: items that were the killed workers' share


def worker(handle: str, index: int, result_handles, config: DemoConfig, fault) -> None:
    """Attach as reader `index`, answer the items whose id falls to this worker, until the engine closes.

    `fault` is an Event the engine sets while the worker must misbehave ("slow", "livelock").
    """
    victim = index == config.victim
    spin = victim and config.inject == "livelock"
    with create(1, name=f"demo-results-{index}", chunk_bytes=64 << 10, n_chunks=32) as results:
        result_handles.put((index, str(results.handle)))
        with attach(handle, index, wait=wait_module.BusySpin() if spin else None) as requests:
            if spin:
                blind_while(requests, fault)
            results.wait_for_readers(timeout=config.reply_timeout_s)
            while True:
                try:
                    batch = requests.get()
                except QueueClosed:
                    break
                mine = [item for item in batch["items"] if item["id"] % config.workers == index]
                answers = [{"id": item["id"], "checksum": int(item["tokens"].sum())} for item in mine]
                if victim and config.inject == "slow" and fault.is_set():
                    time.sleep(config.slow_item_s * len(mine))
                results.put({"batch": batch["batch"], "worker": index, "answers": answers})


def blind_while(reader: Reader, fault=None) -> None:
    """Fault injection: while `fault` (an Event; None: for good) is set the reader's view of the writer
    cursor goes stale, as with a missing fence, so get() spins without consuming although messages wait."""
    reader._ring = _BlindRing(reader._ring, fault)


class _BlindRing:
    """A reader's ring (shmq/_ring.c) that stops loading the writer cursor while `fault` is set."""

    def __init__(self, ring, fault) -> None:
        self._ring, self._fault = ring, fault

    def __getattr__(self, name: str):  # everything but the writer cursor goes to the real ring
        return getattr(self._ring, name)

    def _blind(self) -> bool:
        return self._fault is None or self._fault.is_set()

    def load_available(self) -> int:
        return self._ring.available if self._blind() else self._ring.load_available()

    def take_one(self):
        return None if self._blind() and self._ring.cursor >= self._ring.available else self._ring.take_one()


class Injector(threading.Thread):
    """Starts the fault `fault_at_s` after start(), ends it `fault_s` later (a kill does not end)."""

    def __init__(self, config: DemoConfig, victim: multiprocessing.Process, fault, say) -> None:
        super().__init__(name="shmq-demo-injector", daemon=True)
        self._config, self._victim, self._fault, self._say = config, victim, fault, say
        self._cancel = threading.Event()

    def run(self) -> None:
        c, pid = self._config, self._victim.pid
        if self._cancel.wait(c.fault_at_s):
            return
        begin, end = {
            "stall": (lambda: os.kill(pid, signal.SIGSTOP), lambda: os.kill(pid, signal.SIGCONT)),
            "kill": (lambda: os.kill(pid, signal.SIGKILL), None),
            "slow": (self._fault.set, self._fault.clear),
            "livelock": (self._fault.set, self._fault.clear),
        }[c.inject]
        lasting = "" if end is None else f" for {c.fault_s:g} s"
        self._say(f"inject: {c.inject} worker {c.victim} (pid {pid}){lasting}")
        begin()
        if end is not None:
            self._cancel.wait(c.fault_s)
            end()
            self._say(f"inject: worker {c.victim} is back to normal")

    def cancel(self) -> None:
        self._cancel.set()
        self.join()


def run(config: DemoConfig, progress=None, say=print) -> DemoReport:
    rng = np.random.default_rng(0)
    on_dead = "evict" if config.inject == "kill" else "raise"
    with create(config.workers, name=REQUESTS, chunk_bytes=256 << 10, n_chunks=16, on_dead_reader=on_dead) as requests:
        result_handles = _FORK.Queue()
        fault = _FORK.Event()
        workers = [_FORK.Process(target=worker, args=(str(requests.handle), i, result_handles, config, fault),
                                 daemon=True) for i in range(config.workers)]
        for process in workers:
            process.start()
        results, shm_names = {}, {}
        injector = engine = None
        try:
            for _ in workers:
                index, handle = result_handles.get(timeout=config.reply_timeout_s)
                results[index] = attach(handle, 0)
                shm_names[index] = Handle.parse(handle).shm_name
            requests.wait_for_readers(timeout=config.reply_timeout_s)
            engine = _Engine(config, results)
            if config.inject:
                injector = Injector(config, workers[config.victim], fault, say)
                injector.start()
            start = time.perf_counter()
            for b in range(config.batches):
                if config.rate_hz:
                    time.sleep(max(0.0, start + b / config.rate_hz - time.perf_counter()))
                items = [{"id": b * config.items + i,
                          "tokens": rng.integers(0, 32_000, size=config.tokens, dtype=np.int32)}
                         for i in range(config.items)]
                engine.sent(b, {item["id"]: int(item["tokens"].sum()) for item in items})
                requests.put({"batch": b, "items": items}, timeout=config.reply_timeout_s)
                while engine.outstanding >= config.in_flight:
                    engine.collect()
                if progress:
                    progress(b + 1, config.batches)
            while engine.outstanding:
                engine.collect()
            seconds = time.perf_counter() - start
            with stats.open(requests.handle) as view:
                snapshot = view.snapshot()
            waits = tuple(sum(r.histogram[i] for r in snapshot.readers) for i in range(L.HIST_BUCKETS))
        finally:
            if injector is not None:
                injector.cancel()
            requests.close()
            for process in workers:
                process.join(10)
                if process.is_alive():
                    process.kill()
            for reader in results.values():
                reader.cancel()  # ends the reply threads still waiting (their worker did not close)
            if engine is not None:
                engine.join()
            for reader in results.values():
                reader.close()
        for index in engine.killed:  # its result queue outlived it; nobody else will unlink it
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(SHM_DIR, shm_names[index]))
    return DemoReport(batches=len(engine.round_trips), items=engine.answered, seconds=seconds,
                      round_trip_s=tuple(engine.round_trips), reader_waits=waits, lost=engine.owed - engine.answered,
                      killed=tuple(sorted(engine.killed)),
                      unanswered_by_killed=config.batches * config.items - engine.owed)


class _Engine:
    """The engine's side of the replies: batches sent and not yet answered, and which workers still live.

    One thread per worker drains its result queue as replies come, so a worker
    that stops answering holds up only the engine's bookkeeping, not the other
    workers' queues.
    """

    _DIED = object()

    def __init__(self, config: DemoConfig, results: dict[int, Reader]) -> None:
        self._config = config
        self._pending: collections.deque = collections.deque()  # (batch, sent at, {item id: checksum})
        self._replies = {index: queue.SimpleQueue() for index in results}
        self._threads = [threading.Thread(target=self._drain, args=(reader, self._replies[index]), daemon=True,
                                          name=f"shmq-demo-replies-{index}") for index, reader in results.items()]
        for thread in self._threads:
            thread.start()
        self.killed: set[int] = set()
        self.round_trips: list[float] = []
        self.answered = 0
        self.owed = 0  #: items that live workers had to answer

    def _drain(self, reader: Reader, replies: queue.SimpleQueue) -> None:
        try:
            while True:
                replies.put(reader.get())
        except WriterDead:  # the worker died: its share of this and later batches goes unanswered
            replies.put(self._DIED)
        except QueueClosed:
            pass

    @property
    def outstanding(self) -> int:
        return len(self._pending)

    def sent(self, batch: int, expected: dict[int, int]) -> None:
        self._pending.append((batch, time.perf_counter(), expected))

    def collect(self) -> None:
        """Wait for every live worker's reply to the oldest outstanding batch."""
        batch, sent, expected = self._pending.popleft()
        n = self._config.workers
        for index in sorted(self._replies.keys() - self.killed):
            reply = self._replies[index].get(timeout=self._config.reply_timeout_s)
            if reply is self._DIED:
                self.killed.add(index)
                continue
            self.answered += sum(expected[a["id"]] == a["checksum"] for a in reply["answers"])
        self.owed += sum(1 for item_id in expected if item_id % n not in self.killed)
        self.round_trips.append(time.perf_counter() - sent)

    def join(self) -> None:
        """After the result queues closed (their workers closed them, or the engine cancelled its readers)."""
        for thread in self._threads:
            thread.join(10)


def histogram_quantile(q: float, counts: tuple[int, ...]) -> float:
    """Upper bound of the log2 bucket that holds quantile `q`, in seconds (inf for the last bucket)."""
    total = sum(counts)
    if not total:
        return 0.0
    running = 0
    for bound, count in zip((*L.HISTOGRAM_UPPER_BOUNDS_S, float("inf")), counts):
        running += count
        if running >= q * total:
            return bound
    return float("inf")


def format_report(config: DemoConfig, report: DemoReport) -> str:
    rt = np.array(report.round_trip_s) * 1e6
    lines = [
        f"{report.batches} batches x {config.items} items to {config.workers} workers in {report.seconds:.2f} s: "
        f"{report.batches / report.seconds:,.0f} batches/s, {report.items / report.seconds:,.0f} items/s, "
        f"{report.lost} lost",
        f"batch round trip (send to last reply): p50 {np.percentile(rt, 50):,.0f} us, "
        f"p99 {np.percentile(rt, 99):,.0f} us, max {rt.max():,.0f} us",
        f"worker waits in get(): {sum(report.reader_waits)} waits, p50 <= "
        f"{histogram_quantile(0.5, report.reader_waits) * 1e6:,.0f} us, p99 <= "
        f"{histogram_quantile(0.99, report.reader_waits) * 1e6:,.0f} us (log2 buckets)",
    ]
    if report.killed:
        lines.append(f"killed workers {list(report.killed)}: {report.unanswered_by_killed} items of their share "
                     f"went unanswered (not counted as lost: lost counts the live workers' items)")
    return "\n".join(lines)


class Console:
    """The progress bar, and lines printed above it from any thread (injections, watchdog events)."""

    def __init__(self, stream=sys.stdout, width: int = 40) -> None:
        self._stream = stream
        self._width = width
        self._bar = ""
        self._lock = threading.Lock()

    def progress(self, done: int, total: int) -> None:
        filled = self._width * done // total
        with self._lock:
            self._bar = f"[{'#' * filled}{'.' * (self._width - filled)}] {done}/{total} batches"
            self._stream.write("\r" + self._bar + ("\n" if done == total else ""))
            if done == total:
                self._bar = ""
            self._stream.flush()

    def say(self, line: str) -> None:
        with self._lock:
            self._stream.write("\r" + " " * len(self._bar) + "\r" + line + "\n" + self._bar)
            self._stream.flush()


# -- the watchdog and the exporter alongside the demo -----------------------------------------------
def queue_names(config: DemoConfig) -> list[str]:
    return [REQUESTS, *(f"demo-results-{i}" for i in range(config.workers))]


def start_monitoring(config: DemoConfig, console: Console, stack: contextlib.ExitStack):
    """``shmq watchdog`` (a child process, as it would run as a sidecar) and the exporter (a thread here)."""
    from telemetry.exporter import serve  # the demo composes core and telemetry, as the CLI does
    from telemetry.watchdog.sidecar import Sidecar

    names = queue_names(config)
    exporter = stack.enter_context(serve(0, queues=names))
    watchdog = stack.enter_context(Sidecar(*(a for name in names for a in ("--queue", name)),
                                           on_event=lambda event: console.say(describe_event(event))))
    console.say(f"exporter: {exporter.url}")
    console.say(f"watchdog: {watchdog.url}/metrics and {watchdog.url}/healthz (pid {watchdog.pid}); its events:")
    return watchdog


def describe_event(event: dict) -> str:
    mark = "RAISED " if event["event"] == "raise" else "cleared"
    line = f"  watchdog {event['time_iso'][11:23]} {mark} {event['rule']}/{event['cause']}: {event['message']}"
    frames = main_thread_frames(event.get("stack", ""))
    if frames:
        line += "\n      main thread: " + " <- ... <- ".join(frames)
    elif event["event"] == "raise" and event.get("stack_note"):
        line += f"\n      stack: {event['stack_note']}"
    return line


_FRAME = re.compile(r'\s*File "(?P<file>[^"]+)", line (?P<line>\d+) in (?P<function>\S+)')


def main_thread_frames(stack: str) -> list[str]:
    """Where the main thread is, from an event's stack (the watchdog puts it first): its innermost
    frame and, if that is inside shmq or the standard library, the innermost frame of the application."""
    blocks = re.split(r"^(?:Current thread|Thread) 0x[0-9a-f]+ \(most recent call first\):$", stack, flags=re.M)
    frames = [m for m in map(_FRAME.match, blocks[1].splitlines()) if m] if len(blocks) > 1 else []
    library = (os.path.dirname(os.path.abspath(__file__)), sysconfig.get_paths()["stdlib"])
    caller = next((m for m in frames if not m["file"].startswith(library) or m["file"] == os.path.abspath(__file__)),
                  None)
    shown = frames[:1] + ([caller] if caller is not None and caller is not frames[0] else [])
    return [f"{m['function']} ({os.path.basename(m['file'])}:{m['line']})" for m in shown]


def await_all_clear(watchdog, console: Console, timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status, body = watchdog.healthz()
        if status == 200:
            console.say("watchdog: all clear (/healthz 200)")
            return True
        time.sleep(0.2)
    console.say(f"watchdog: still alerting after {timeout_s:g} s: {body['alerts']}")
    return False


def watchdog_summary(config: DemoConfig, events: list[dict]) -> str:
    raised = [e for e in events if e["event"] == "raise"]
    cleared = sum(e["event"] == "clear" for e in events)
    named = sorted({e["rule"] for e in raised if e["queue"] == REQUESTS and (
        e["reader"] == config.victim or any(b["reader"] == config.victim for b in e["blocking_readers"]))})
    line = f"watchdog: {len(raised)} alerts raised, {cleared} cleared"
    if config.inject:
        line += f"; worker {config.victim} named by: {', '.join(named) or 'nothing'}"
    return line


# -- shmq demo -------------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = DemoConfig()
    parser.add_argument("--workers", type=int, default=defaults.workers)
    parser.add_argument("--batches", type=int, default=defaults.batches)
    parser.add_argument("--items", type=int, default=defaults.items, help="concurrent items per batch")
    parser.add_argument("--tokens", type=int, default=defaults.tokens, help="int32 tokens per item")
    parser.add_argument("--inject", choices=INJECTIONS,
                        help="break the last worker for a while: stall (SIGSTOP, then SIGCONT), kill (SIGKILL; "
                             "the queue evicts it), slow (it sleeps per item), livelock (it spins without consuming)")
    parser.add_argument("--fault-at", type=float, default=defaults.fault_at_s, metavar="S",
                        help="seconds into the run the fault starts (default %(default)s)")
    parser.add_argument("--fault-for", type=float, default=defaults.fault_s, metavar="S",
                        help="seconds the fault lasts (default %(default)s)")
    parser.add_argument("--in-flight", type=int, metavar="N",
                        help="batches outstanding at once (default 1, or 24 with --inject, so that a fault "
                             "fills the ring)")
    parser.add_argument("--rate", type=float, metavar="HZ",
                        help="batches per second (default: as fast as answered, or 10 with --inject)")
    parser.add_argument("--no-monitoring", action="store_true", help="start neither the watchdog nor the exporter")


def main(args: argparse.Namespace) -> int:
    injecting = bool(args.inject)
    if injecting and args.workers < 2:
        raise SystemExit("shmq demo: --inject needs at least 2 workers")
    config = DemoConfig(
        workers=args.workers, batches=args.batches, items=args.items, tokens=args.tokens,
        in_flight=args.in_flight or (24 if injecting else 1),
        rate_hz=args.rate if args.rate is not None else (10.0 if injecting else 0.0),
        inject=args.inject or "", fault_at_s=args.fault_at, fault_s=args.fault_for)
    console = Console()
    with contextlib.ExitStack() as stack:
        watchdog = None if args.no_monitoring else start_monitoring(config, console, stack)
        report = run(config, progress=console.progress, say=console.say)
        if watchdog is not None and injecting:
            await_all_clear(watchdog, console)
    print(format_report(config, report))
    if watchdog is not None:
        print(watchdog_summary(config, watchdog.events))
    return 0 if report.lost == 0 else 1
