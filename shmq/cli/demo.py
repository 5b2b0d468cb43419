"""``shmq demo``: the scenario shmq was built for, with a worker that stalls and a watchdog that sees it.

An engine broadcasts batches of requests to worker processes, which reply: the
shape of an LLM server's engine-to-worker channel. Every worker sees every
batch (a broadcast queue, reader i = worker i) and handles its share of the
items; each worker answers on its own result queue, of which the engine is the
single reader. The engine sends at a steady rate and does not wait for replies,
so many batches are in flight and the ring is the only back-pressure: a worker
that stops reading fills it, and then the engine's put() blocks. That is the
freeze shmq's watchdog is there to announce before it happens.

By default one worker is stopped (SIGSTOP) for a few seconds, long enough for
the ring to fill, while ``shmq watchdog`` runs alongside as a sidecar. The
demo prints its alerts (worker, cause, stack) as they come, then a summary:
throughput, round-trip percentiles, losses, and each alert's lead time before
the engine's writer blocked. ``--healthy`` runs without a fault, ``--inject``
picks another one. On a terminal a live view (the data of ``shmq top``) shows
the ring and the workers; otherwise the output is one line per event.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import multiprocessing
import os
import signal
import sys
import sysconfig
import threading
import time

import numpy as np

from shmq import diagnostics
from shmq import layout as L
from shmq import stats
from shmq import wait as wait_module
from shmq.errors import QueueClosed, WouldBlock, WriterDead
from shmq.handle import Handle
from shmq.reader import Reader, attach
from shmq.segment import SHM_DIR
from shmq.testing import blind
from shmq.writer import create

_FORK = multiprocessing.get_context("fork")
INJECTIONS = ("stall", "kill", "slow", "livelock")
REQUESTS = "demo-requests"


@dataclasses.dataclass(frozen=True)
class DemoConfig:
    workers: int = 4
    items: int = 12  #: concurrent items per batch
    tokens: int = 512  #: int32 tokens per item
    seconds: float = 20.0  #: how long the engine sends
    rate_hz: float = 50.0  #: batches per second, as an engine's steps; a late engine catches up
    ring: int = 256  #: batches the request ring holds: at `rate_hz` a stopped worker fills it in ring / rate_hz s
    inject: str = "stall"  #: one of INJECTIONS, done to the last worker; "" for a healthy run
    fault_at_s: float = 5.0  #: when the fault starts, after the first batch
    fault_s: float = 7.0  #: how long it lasts
    slow_item_s: float = 0.15  #: "slow": seconds the worker sleeps per item of its share
    reply_timeout_s: float = 30.0

    @property
    def victim(self) -> int:
        return self.workers - 1

    @property
    def batches(self) -> int:
        return max(1, round(self.seconds * self.rate_hz))


# -- the workers (forked processes) ----------------------------------------------------------------
def worker(handle: str, index: int, result_handles, config: DemoConfig, fault) -> None:
    """Attach as reader `index`, answer the items whose id falls to this worker, until the engine closes.

    `fault` is an Event the engine sets while the worker must misbehave ("slow", "livelock").
    """
    victim = index == config.victim
    spin = victim and config.inject == "livelock"
    with create(1, name=f"demo-results-{index}", ring_bytes=2 << 20) as results:
        result_handles.put((index, str(results.handle)))
        with attach(handle, index, wait=wait_module.BusySpin() if spin else None) as requests:
            if spin:
                blind(requests, while_=fault)
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


# -- the engine ------------------------------------------------------------------------------------
@dataclasses.dataclass
class _Batch:
    sent_s: float  #: perf_counter() when it was sent
    shares: dict[int, dict[int, int]]  #: worker -> {item id: checksum} of the items it must answer
    waiting: set[int]  #: workers whose reply has not come


class Engine:
    """The engine's side of the replies: batches in flight, round trips, answers checked, workers lost.

    One thread per worker drains its result queue as replies come, so a round
    trip ends when the last worker's reply arrives, and a worker that stops
    answering holds up only its own queue.
    """

    def __init__(self, config: DemoConfig, results: dict[int, Reader], say) -> None:
        self._config = config
        self._say = say
        self._lock = threading.Condition()
        self._in_flight: dict[int, _Batch] = {}
        self.sent = 0
        self.round_trips: list[float] = []  #: seconds from send to the last live worker's reply, per batch
        self.answered = 0  #: items answered with the right checksum
        self.owed = 0  #: items that live workers had to answer
        self.replies = 0
        self.killed: set[int] = set()
        self.unanswered_by_killed = 0
        self.blocked_at: float | None = None  #: time.time() of the first put that found the ring full
        self.blocked_s = 0.0  #: seconds the engine's puts spent blocked in all
        self.blocking_since: float | None = None  #: time.time() since the current put has been blocked
        self._threads = [threading.Thread(target=self._drain, args=(index, reader), daemon=True,
                                          name=f"shmq-demo-replies-{index}") for index, reader in results.items()]
        for thread in self._threads:
            thread.start()

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    def send(self, requests, batch: int, items: list[dict]) -> None:
        """Put one batch; a put that finds the ring full is timed: that is the freeze the watchdog foresees."""
        n = self._config.workers
        shares: dict[int, dict[int, int]] = {}
        for item in items:
            shares.setdefault(item["id"] % n, {})[item["id"]] = int(item["tokens"].sum())
        message = {"batch": batch, "items": items}
        with self._lock:
            self._in_flight[batch] = _Batch(time.perf_counter(), shares, set(range(n)) - self.killed)
            self.unanswered_by_killed += sum(len(shares.get(index, {})) for index in self.killed)
            self.sent += 1
        try:
            requests.put_nowait(message)
        except WouldBlock:
            first = self.blocked_at is None
            self.blocking_since = time.time()
            if first:
                self.blocked_at = self.blocking_since
                self._say(f"engine: a put found the ring full ({self._config.ring} batches in flight to the slowest "
                          f"worker): the engine is blocked")
            requests.put(message, timeout=self._config.reply_timeout_s)
            blocked_s = time.time() - self.blocking_since
            self.blocked_s += blocked_s
            self.blocking_since = None
            if first:
                self._say(f"engine: the put went through after {blocked_s:.2f} s blocked")

    def _drain(self, index: int, reader: Reader) -> None:
        try:
            while True:
                reply = reader.get()
                self._answer(index, reply, time.perf_counter())
        except WriterDead:  # the worker died: its share of this and later batches goes unanswered
            self._died(index)
        except QueueClosed:
            pass

    def _answer(self, index: int, reply: dict, at: float) -> None:
        with self._lock:
            batch = self._in_flight[reply["batch"]]
            expected = batch.shares.get(index, {})
            self.owed += len(expected)
            self.answered += sum(expected.get(a["id"]) == a["checksum"] for a in reply["answers"])
            self.replies += 1
            batch.waiting.discard(index)
            self._finish_if_answered(reply["batch"], batch, at)

    def _died(self, index: int) -> None:
        with self._lock:
            self.killed.add(index)
            at = time.perf_counter()
            for number, batch in list(self._in_flight.items()):
                if index in batch.waiting:
                    batch.waiting.discard(index)
                    self.unanswered_by_killed += len(batch.shares.get(index, {}))
                    self._finish_if_answered(number, batch, at)

    def _finish_if_answered(self, number: int, batch: _Batch, at: float) -> None:
        if not batch.waiting:
            del self._in_flight[number]
            self.round_trips.append(at - batch.sent_s)
            self._lock.notify_all()

    def wait_answered(self, timeout_s: float) -> None:
        """Until every batch sent is answered by every live worker, or `timeout_s` passed."""
        with self._lock:
            self._lock.wait_for(lambda: not self._in_flight, timeout_s)

    def unanswered(self) -> int:
        """Items that live workers still owe (a killed worker is no longer waited for)."""
        with self._lock:
            return sum(len(batch.shares.get(index, {})) for batch in self._in_flight.values()
                       for index in batch.waiting)

    def join(self) -> None:
        """After the result queues closed (their workers closed them, or the engine cancelled its readers)."""
        for thread in self._threads:
            thread.join(10)


@dataclasses.dataclass(frozen=True)
class DemoReport:
    batches: int  #: batches sent
    items: int  #: items answered correctly
    seconds: float  #: from the first send to the last reply
    round_trip_s: tuple[float, ...]  #: per answered batch: send until the last worker's reply
    delivered: int  #: messages taken from shmq queues: batches read by each worker, and replies
    reader_waits: tuple[int, ...]  #: merged wait histogram of the workers (log2 buckets)
    lost: int  #: items of live workers sent but not answered, or answered wrong
    blocked_at: float | None  #: time.time() of the engine's first put that found the ring full
    blocked_s: float  #: seconds the engine's puts were blocked in all
    killed: tuple[int, ...] = ()  #: workers that died during the run
    unanswered_by_killed: int = 0  #: items that were the killed workers' share


def run(config: DemoConfig, console) -> DemoReport:
    """The engine and its workers, with the fault injected; `console` shows what happens (see LineLog)."""
    rng = np.random.default_rng(0)
    on_dead = "evict" if config.inject == "kill" else "raise"
    # Room for `ring` batches of int32 tokens, each with its pickle stream (under 1 KiB) in one frame.
    batch_frame = L.frame_stride(config.items * config.tokens * 4 + 1024)
    with create(config.workers, name=REQUESTS, ring_bytes=config.ring * batch_frame,
                on_dead_reader=on_dead) as requests:
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
            engine = Engine(config, results, console.say)
            console.follow(engine, requests.handle)
            console.say(f"engine: {config.rate_hz:g} batches/s of {config.items} items to {config.workers} workers "
                        f"for {config.seconds:g} s; the ring holds {config.ring} batches")
            if config.inject:
                injector = Injector(config, workers[config.victim], fault, console.say)
                injector.start()
            start = time.perf_counter()
            for b in range(config.batches):
                time.sleep(max(0.0, start + b / config.rate_hz - time.perf_counter()))
                items = [{"id": b * config.items + i,
                          "tokens": rng.integers(0, 32_000, size=config.tokens, dtype=np.int32)}
                         for i in range(config.items)]
                engine.send(requests, b, items)
            engine.wait_answered(config.reply_timeout_s)
            seconds = time.perf_counter() - start
            with stats.open(requests.handle) as view:
                snapshot = view.snapshot()
            waits = tuple(sum(r.histogram[i] for r in snapshot.readers) for i in range(L.HIST_BUCKETS))
            taken = sum(r.messages for r in snapshot.readers)
        finally:
            console.follow(None, None)
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
    return DemoReport(
        batches=engine.sent, items=engine.answered, seconds=seconds,
        round_trip_s=tuple(engine.round_trips), delivered=taken + engine.replies, reader_waits=waits,
        lost=engine.owed + engine.unanswered() - engine.answered, blocked_at=engine.blocked_at, blocked_s=engine.blocked_s, killed=tuple(sorted(engine.killed)),
        unanswered_by_killed=engine.unanswered_by_killed)


# -- the watchdog alongside ------------------------------------------------------------------------
def queue_names(config: DemoConfig) -> list[str]:
    return [REQUESTS, *(f"demo-results-{i}" for i in range(config.workers))]


def start_monitoring(config: DemoConfig, console, stack: contextlib.ExitStack):
    """``shmq watchdog`` (a child process, as it would run as a sidecar) and the exporter (a thread here)."""
    from shmq.telemetry.exporter import serve
    from shmq.telemetry.watchdog.sidecar import Sidecar

    names = queue_names(config)
    exporter = stack.enter_context(serve(0, queues=names))
    watchdog = stack.enter_context(Sidecar(*(a for name in names for a in ("--queue", name)),
                                           on_event=lambda event: console.say(describe_event(event))))
    console.say(f"exporter: {exporter.url}")
    console.say(f"watchdog: {watchdog.url}/metrics and {watchdog.url}/healthz (pid {watchdog.pid}); its events:")
    return watchdog


def describe_event(event: dict) -> str:
    mark = "RAISED " if event["event"] == "raise" else "cleared"
    line = f"watchdog {mark} {event['rule']}/{event['cause']}: {event['message']}"
    frames = main_thread_frames(event.get("stack", ""))
    if frames:
        line += "\n      main thread: " + " <- ... <- ".join(frames)
    elif event["event"] == "raise" and event.get("stack_note"):
        line += f"\n      stack: {event['stack_note']}"
    if event.get("flight_summary"):
        line += f"\n      flight record: {event['flight_summary']}"
    return line


_COMPREHENSIONS = ("<listcomp>", "<dictcomp>", "<setcomp>", "<genexpr>")  # frames of their own before Python 3.12


def main_thread_frames(stack: str) -> list[str]:
    """Where the main thread is, from an event's stack: its innermost frame and, if that is inside
    shmq, the standard library or an installed package (numpy), the innermost frame of the application."""
    threads = diagnostics.threads(stack)
    frames = diagnostics.frames(threads[0]) if threads else []
    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    paths = sysconfig.get_paths()
    library = (package, paths["stdlib"], paths["purelib"], paths["platlib"])
    caller = next((f for f in frames if (not f.file.startswith(library) or f.file == os.path.abspath(__file__))
                   and f.function not in _COMPREHENSIONS), None)  # the function a comprehension runs in
    shown = frames[:1] + ([caller] if caller is not None and caller is not frames[0] else [])
    return [f"{f.function} ({os.path.basename(f.file)}:{f.line})" for f in shown]


def await_all_clear(watchdog, console, timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status, body = watchdog.healthz()
        if status == 200:
            console.say("watchdog: all clear (/healthz 200)")
            return True
        time.sleep(0.2)
    console.say(f"watchdog: still alerting after {timeout_s:g} s: {body['alerts']}")
    return False


# -- what the demo shows ---------------------------------------------------------------------------
class LineLog:
    """Without a terminal: one line per event, stamped with seconds since the demo began (no progress bar)."""

    STATUS_EVERY_S = 5.0

    def __init__(self, stream=sys.stdout) -> None:
        self._stream = stream
        self._lock = threading.Lock()
        self.origin = time.time()
        self._following: threading.Event | None = None

    def say(self, text: str) -> None:
        with self._lock:
            self._stream.write(f"[{time.time() - self.origin:6.2f} s] {text}\n")
            self._stream.flush()

    def follow(self, engine: Engine | None, handle: Handle | None) -> None:
        """A status line every STATUS_EVERY_S while the engine runs; follow(None, None) stops it."""
        if self._following is not None:
            self._following.set()
            self._following = None
        if engine is not None:
            self._following = threading.Event()
            threading.Thread(target=self._status_lines, args=(engine, handle, self._following), daemon=True,
                             name="shmq-demo-status").start()

    def _status_lines(self, engine: Engine, handle: Handle, stop: threading.Event) -> None:
        with stats.open(handle) as view:
            while not stop.wait(self.STATUS_EVERY_S):
                snap = view.snapshot()
                lags = ", ".join(f"{snap.lag(r)}" for r in snap.readers)
                self.say(f"status: {engine.sent} batches sent, {engine.in_flight} in flight, "
                         f"ring {snap.occupancy_bytes >> 10:,}/{snap.ring_bytes >> 10:,} KiB ({snap.occupancy} "
                         f"batches), worker lags {lags}, writer "
                         f"{snap.writer.state.name.lower()}")

    def close(self) -> None:
        self.follow(None, None)


class LiveView(LineLog):
    """On a terminal: the lines above, and below them a live view of the request ring (``shmq top``'s data)."""

    REFRESH_S = 0.25

    def __init__(self, config: DemoConfig) -> None:
        from rich.console import Console
        from rich.live import Live

        super().__init__()
        self._config = config
        self._console = Console()
        self._live = Live(console=self._console, auto_refresh=False)
        self._live.start()
        self._thread: threading.Thread | None = None

    def say(self, text: str) -> None:
        with self._lock:
            self._console.print(f"[{time.time() - self.origin:6.2f} s] {text}", markup=False, highlight=False)

    def follow(self, engine: Engine | None, handle: Handle | None) -> None:
        if self._following is not None:
            self._following.set()
            self._thread.join(5)
            self._following = None
        if engine is not None:
            self._following = threading.Event()
            self._thread = threading.Thread(target=self._redraw, args=(engine, handle, self._following),
                                            daemon=True, name="shmq-demo-view")
            self._thread.start()

    def _redraw(self, engine: Engine, handle: Handle, stop: threading.Event) -> None:
        from shmq.telemetry.top import Top
        from shmq.telemetry.watchdog.watcher import DEFAULT_INTERVAL_S

        top = Top(stats.Segments([handle.shm_name]), window_s=1.0)
        try:
            redraw = 0.0
            while not stop.is_set():
                top.poll()
                if time.monotonic() >= redraw:
                    with self._lock:
                        self._live.update(self._screen(engine, top), refresh=True)
                    redraw = time.monotonic() + self.REFRESH_S
                stop.wait(DEFAULT_INTERVAL_S)
        finally:
            top.close()

    def _screen(self, engine: Engine, top):
        from rich.console import Group
        from rich.text import Text

        from shmq.telemetry.top import render_rich

        c = self._config
        elapsed = time.time() - self.origin
        fault = (f"{c.inject} of worker {c.victim} at +{c.fault_at_s:g} s for {c.fault_s:g} s" if c.inject
                 else "none (--healthy)")
        if engine.blocking_since is not None:
            writer = Text(f"BLOCKED for {time.time() - engine.blocking_since:.1f} s: the ring is full", "bold red")
        else:
            writer = Text("sending", "green")
        head = Text.assemble(
            ("shmq demo", "bold"), f"  {elapsed:5.1f} s   engine: {engine.sent}/{c.batches} batches sent, "
            f"{len(engine.round_trips)} answered, {engine.in_flight} in flight; writer ", writer,
            f"\nfault: {fault}; below, reader i is worker i")
        return Group(head, render_rich(top.table()))

    def close(self) -> None:
        super().close()
        self._live.stop()


# -- the summary -----------------------------------------------------------------------------------
def participant(queue: str, reader: int | None) -> str:
    """Who a participant of a demo queue is: the engine writes requests and reads each worker's results."""
    if queue == REQUESTS:
        return "the engine's writer" if reader is None else f"worker {reader}"
    worker_index = queue.rsplit("-", 1)[1]
    return f"worker {worker_index}'s result writer" if reader is None else f"the engine's reader of {queue}"


def alert_rows(events: list[dict], blocked_at: float | None, origin: float) -> list[str]:
    """One line per alert: what it named, when it was raised and cleared, and its lead before the freeze."""
    rows = []
    for raised in (e for e in events if e["event"] == "raise"):
        key = (raised["queue"], raised["rule"], raised["role"], raised["reader"])
        cleared = next((e for e in events if e["event"] == "clear" and e["time"] >= raised["time"]
                        and (e["queue"], e["rule"], e["role"], e["reader"]) == key), None)
        who = participant(raised["queue"], raised["reader"])
        blockers = sorted({b["reader"] for b in raised["blocking_readers"]})
        if blockers:
            who += f", held back by {' and '.join(participant(raised['queue'], b) for b in blockers)}"
        if blocked_at is None:
            lead = "the writer never blocked"
        else:
            lead_s = blocked_at - raised["time"]
            lead = f"{lead_s:.2f} s before the writer blocked" if lead_s > 0 else \
                f"{-lead_s:.2f} s after the writer blocked"
        end = f"cleared +{cleared['time'] - origin:.2f} s" if cleared else "NOT cleared"
        rows.append(f"  {raised['rule']}/{raised['cause']} about {who}: raised +{raised['time'] - origin:.2f} s, "
                    f"{lead}; {end}")
    return rows


def victim_named(config: DemoConfig, events: list[dict]) -> list[dict]:
    """The raises on the request queue that name the broken worker, itself or as the reader holding the ring."""
    return [e for e in events if e["event"] == "raise" and e["queue"] == REQUESTS and (
        e["reader"] == config.victim or any(b["reader"] == config.victim for b in e["blocking_readers"]))]


def summary(config: DemoConfig, report: DemoReport, events: list[dict] | None, origin: float) -> tuple[str, bool]:
    """The closing report, and whether the demo showed what it promises (0 lost; a fault flagged).

    `events` are the watchdog's, None when the demo did not start it (--no-monitoring)."""
    from shmq.telemetry.top import duration

    rt = np.array(report.round_trip_s or (0.0,))
    lines = [
        "",
        f"summary: {report.batches} batches x {config.items} items to {config.workers} workers in "
        f"{report.seconds:.1f} s: {report.batches / report.seconds:,.0f} batches/s, "
        f"{report.items / report.seconds:,.0f} items/s, {report.delivered / report.seconds:,.0f} msgs/s "
        f"delivered (each batch to every worker, and the replies), {report.lost} lost",
        "round trip (send to last reply): " + ", ".join(
            f"p{q} {duration(np.percentile(rt, q))}" for q in (50, 90, 99)) + f", max {duration(rt.max())}",
        f"worker waits in get(): {sum(report.reader_waits):,} waits, p50 <= "
        f"{duration(stats.histogram_quantile(report.reader_waits, 0.5))}, p99 <= "
        f"{duration(stats.histogram_quantile(report.reader_waits, 0.99))} (log2 buckets)",
    ]
    if report.killed:
        lines.append(f"killed workers {list(report.killed)}: {report.unanswered_by_killed} items of their share "
                     f"went unanswered (not counted as lost: lost counts the live workers' items)")
    if report.blocked_at is None:
        lines.append("the engine's writer never blocked: no put found the ring full")
    else:
        lines.append(f"the engine's writer blocked at +{report.blocked_at - origin:.2f} s (a put found the ring "
                     f"full) and waited {report.blocked_s:.1f} s in all")
    ok = report.lost == 0
    if events is None:
        lines.append("watchdog: not started by the demo (--no-monitoring)")
        return "\n".join(lines), ok
    raised = [e for e in events if e["event"] == "raise"]
    cleared = sum(e["event"] == "clear" for e in events)
    lines.append(f"watchdog: {len(raised)} alerts raised, {cleared} cleared")
    lines += alert_rows(events, report.blocked_at, origin)
    if config.inject:
        named = victim_named(config, events)
        if named:
            first = min(named, key=lambda e: e["time"])
            when = "" if report.blocked_at is None else (
                f", {report.blocked_at - first['time']:.2f} s before the writer blocked"
                if first["time"] < report.blocked_at else f", {first['time'] - report.blocked_at:.2f} s after "
                                                          "the writer blocked")
            lines.append(f"verdict: the watchdog named worker {config.victim} ({config.inject}) first by "
                         f"{first['rule']}/{first['cause']}{when}; {report.lost} lost")
        else:
            ok = False
            lines.append(f"verdict: FAILED: no alert named worker {config.victim} ({config.inject})")
    else:
        ok = ok and not raised
        lines.append(f"verdict: healthy run, {len(raised)} alerts; {report.lost} lost")
    if report.lost:
        lines.append(f"verdict: FAILED: {report.lost} items lost")
    return "\n".join(lines), ok


# -- shmq demo -------------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = DemoConfig()
    parser.add_argument("--workers", type=int, default=defaults.workers)
    parser.add_argument("--seconds", type=float, default=defaults.seconds, metavar="S",
                        help="how long the engine sends (default %(default)s)")
    parser.add_argument("--batches", type=int, metavar="N", help="send N batches (instead of --seconds x --rate)")
    parser.add_argument("--rate", type=float, default=defaults.rate_hz, metavar="HZ",
                        help="batches per second (default %(default)s)")
    parser.add_argument("--ring", type=int, default=defaults.ring, metavar="N",
                        help="batches the request ring holds (default %(default)s)")
    parser.add_argument("--items", type=int, default=defaults.items, help="concurrent items per batch")
    parser.add_argument("--tokens", type=int, default=defaults.tokens, help="int32 tokens per item")
    fault = parser.add_mutually_exclusive_group()
    fault.add_argument("--inject", choices=INJECTIONS, default=defaults.inject,
                       help="break the last worker for a while: stall (SIGSTOP, then SIGCONT; the default), kill "
                            "(SIGKILL; the queue evicts it), slow (it sleeps per item), livelock (it spins without "
                            "consuming)")
    fault.add_argument("--healthy", action="store_true", help="run without a fault")
    parser.add_argument("--fault-at", type=float, default=defaults.fault_at_s, metavar="S",
                        help="seconds into the run the fault starts (default %(default)s)")
    parser.add_argument("--fault-for", type=float, default=defaults.fault_s, metavar="S",
                        help="seconds the fault lasts (default %(default)s)")
    parser.add_argument("--no-monitoring", action="store_true",
                        help="start neither the watchdog nor the exporter (when they run as sidecars)")


def main(args: argparse.Namespace) -> int:
    inject = "" if args.healthy else args.inject
    if inject and args.workers < 2:
        raise SystemExit("shmq demo: a fault needs at least 2 workers (or use --healthy)")
    if args.rate <= 0 or args.seconds <= 0 or (args.batches is not None and args.batches <= 0) or args.ring < 2:
        raise SystemExit("shmq demo: --rate, --seconds and --batches must be positive and --ring at least 2")
    seconds = args.seconds if args.batches is None else args.batches / args.rate
    config = DemoConfig(workers=args.workers, items=args.items, tokens=args.tokens, seconds=seconds,
                        rate_hz=args.rate, ring=args.ring, inject=inject, fault_at_s=args.fault_at,
                        fault_s=args.fault_for)
    console = LiveView(config) if sys.stdout.isatty() else LineLog()
    try:
        with contextlib.ExitStack() as stack:
            watchdog = None if args.no_monitoring else start_monitoring(config, console, stack)
            report = run(config, console)
            if watchdog is not None:
                await_all_clear(watchdog, console)
            events = None if watchdog is None else list(watchdog.events)
    finally:
        console.close()
    text, ok = summary(config, report, events, console.origin)
    print(text)
    return 0 if ok else 1
