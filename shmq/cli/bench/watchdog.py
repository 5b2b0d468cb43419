"""Benchmark of ``shmq watchdog``: how fast each rule fires, how early freeze_risk warns, what watching costs.

    shmq bench --watchdog [--quick] [--watchdog-part latency|lead|margins|cpu ...]

Every measurement runs the real sidecar (``shmq watchdog`` in its own
process) against real queues with forked readers, and injects the fault at a
known time:

- detection latency per rule: event time minus the moment the rule's condition
  began (the kill; data left pending; the first put that blocked; the last
  cursor move), so for the threshold rules it includes their threshold T;
- freeze_risk lead time: the writer's first blocked put minus the warning,
  for a stopped reader at several write rates (positive = warned before);
- CPU: the watchdog's user+system time while it watches 8 queues of 8
  readers, as a share of one core.

Prints Markdown tables. Not a test: timings depend on the machine.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import random
import shutil
import signal
import statistics
import tempfile
import threading
import time
import urllib.request

import shmq
from shmq import procs, wait
from shmq.segment import SHM_DIR
from shmq.testing import blind
from shmq.telemetry import names as N
from shmq.telemetry.watchdog.sidecar import Sidecar

FORK = multiprocessing.get_context("fork")


# -- workers (forked children) -------------------------------------------------------------------
def read_all(handle: str, index: int, stack_dir: str, shm_dir: str = SHM_DIR) -> None:
    with shmq.attach(handle, reader=index, stack_dumps=stack_dir, shm_dir=shm_dir) as reader:
        with contextlib.suppress(shmq.QueueClosed):
            while True:
                reader.get(timeout=120)


def read_one_then_work(handle: str, index: int, stack_dir: str) -> None:
    """Takes one message, then stays in application code (a slow consumer) until killed."""
    with shmq.attach(handle, reader=index, stack_dumps=stack_dir) as reader:
        reader.get(timeout=60)
        while True:
            time.sleep(0.01)


def read_blind(handle: str, index: int, stack_dir: str) -> None:
    """Spins in get() without ever seeing new messages (a stale view of the writer cursor)."""
    with shmq.attach(handle, reader=index, stack_dumps=stack_dir, wait=wait.BusySpin()) as reader:
        blind(reader)
        with contextlib.suppress(shmq.QueueTimeout):
            reader.get(timeout=60)


# -- one watched queue ---------------------------------------------------------------------------
class Scenario:
    """A fresh queue, its readers and a watchdog that has seen it; everything is stopped on exit."""

    def __init__(self, name: str, worker, n_readers: int, *, stack_dir: str, n_chunks: int = 8,
                 watchdog_args: tuple[str, ...] = (), **create_kwargs) -> None:
        self.writer = shmq.create(n_readers, name=name, n_chunks=n_chunks, chunk_bytes=256, stack_dumps=stack_dir,
                                  **create_kwargs)
        self.readers = []
        self.watchdog = None
        try:
            workers = worker if isinstance(worker, list) else [worker] * n_readers
            for i, target in enumerate(workers):
                process = FORK.Process(target=target, args=(str(self.writer.handle), i, stack_dir), daemon=True)
                process.start()
                self.readers.append(process)
            self.writer.wait_for_readers(timeout=20)
            self.watchdog = Sidecar("--queue", name, "--stack-dir", stack_dir, *watchdog_args)
            self.watchdog.wait_until_watching()
        except BaseException:
            self.close()
            raise

    def raised(self, rule: str, timeout_s: float = 15.0, **match) -> dict:
        return self.watchdog.wait_for(rule, lambda e: e["event"] == "raise" and e["rule"] == rule and all(
            e[k] == v for k, v in match.items()), timeout_s)

    def close(self) -> None:
        if self.watchdog is not None:
            self.watchdog.stop()
        for process in self.readers:
            if process.is_alive():
                os.kill(process.pid, signal.SIGCONT)
                process.kill()
            process.join(5)
        self.writer.close()

    def __enter__(self) -> Scenario:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def put_until_blocked(writer: shmq.Writer, rate_hz: float, limit: int = 100_000) -> float:
    """Write at `rate_hz` until a put finds the ring full; returns that moment (Unix time)."""
    for i in range(limit):
        try:
            writer.put_nowait(i)
        except shmq.WouldBlock:
            return time.time()
        time.sleep(1 / rate_hz)
    raise RuntimeError("the ring never filled")


# -- detection latency ---------------------------------------------------------------------------
def dead_latency(stack_dir: str) -> float:
    with Scenario("bench-dead", read_all, 2, stack_dir=stack_dir, on_dead_reader="evict") as s:
        time.sleep(0.25)  # a random phase against the poll
        killed = time.time()
        os.kill(s.readers[1].pid, signal.SIGKILL)
        return s.raised(N.RULE_DEAD, reader=1)["time"] - killed


def stall_latency(stack_dir: str, worker, fault) -> tuple[float, str]:
    """Reader 1 runs `worker`; `fault(scenario)` returns when the stall began; returns (latency, cause)."""
    with Scenario("bench-stall", [read_all, worker], 2, stack_dir=stack_dir, n_chunks=16) as s:
        began = fault(s)
        event = s.raised(N.RULE_READER_STALLED, reader=1)
        return event["time"] - began, event["cause"]


def stopped(s: Scenario) -> float:
    s.writer.put(0)
    time.sleep(0.3)
    os.kill(s.readers[1].pid, signal.SIGSTOP)
    s.writer.put(1)
    return time.time()


def first_data(s: Scenario) -> float:
    s.writer.put(0)
    return time.time()


def left_pending(s: Scenario) -> float:
    s.writer.put(0)
    time.sleep(0.3)
    s.writer.put(1)  # reader 1 is in application code by now and will not take it
    return time.time()


def writer_blocked_latency(stack_dir: str) -> float:
    with Scenario("bench-blocked", read_all, 2, stack_dir=stack_dir) as s:
        os.kill(s.readers[1].pid, signal.SIGSTOP)
        blocked = put_until_blocked(s.writer, 200)
        with contextlib.suppress(shmq.QueueTimeout):
            s.writer.put("blocked", timeout=2.0)  # waits past T while the watchdog looks
        return s.raised(N.RULE_WRITER_BLOCKED)["time"] - blocked


def livelock_latency(stack_dir: str) -> float:
    with Scenario("bench-livelock", read_blind, 1, stack_dir=stack_dir) as s:
        quiet = put_until_blocked(s.writer, 200)  # from here no cursor moves: the writer waits, the reader spins
        return s.raised(N.RULE_LIVELOCK, reader=0)["time"] - quiet


# -- freeze_risk lead time --------------------------------------------------------------------------
def lead_times(stack_dir: str, rate_hz: float, n_chunks: int,
               interval_s: float) -> tuple[float | None, float | None]:
    """(freeze_risk, reader_stalled) lead before the first blocked put; None if never raised."""
    with Scenario("bench-lead", read_all, 2, stack_dir=stack_dir, n_chunks=n_chunks,
                  watchdog_args=("--interval", str(interval_s))) as s:
        os.kill(s.readers[1].pid, signal.SIGSTOP)
        blocked = put_until_blocked(s.writer, rate_hz)
        time.sleep(1.5)  # the alerts that come after the block, too
        leads = []
        for rule in (N.RULE_FREEZE_RISK, N.RULE_READER_STALLED):
            events = [e for e in s.watchdog.events if e["event"] == "raise" and e["rule"] == rule]
            leads.append(blocked - events[0]["time"] if events else None)
        return leads[0], leads[1]


# -- margins in a healthy workload -------------------------------------------------------------
def work_per_item(handle: str, index: int, stack_dir: str, seconds: float = 0.001) -> None:
    """A healthy consumer: pure-Python work on every message (it holds the GIL, as real work does)."""
    with shmq.attach(handle, reader=index, stack_dumps=stack_dir) as reader:
        with contextlib.suppress(shmq.QueueClosed):
            while True:
                reader.get(timeout=120)
                end = time.perf_counter() + seconds
                while time.perf_counter() < end:
                    sum(range(200))


def healthy_margins(stack_dir: str, seconds: float) -> dict:
    """Bursts up to 1.5 rings at full speed into 4 readers doing 1 ms of work each per message, sampled at
    10 Hz: the largest values the thresholds must stay above (no-progress-while-pending, heartbeat age,
    writer wait) and how often the ring was >= 75% full on two polls in a row."""
    capacity = 32
    worst = dict.fromkeys(("stall_s", "heartbeat_s", "writer_wait_s", "occupancy"), 0.0)
    worst["high_twice"] = 0
    stop = threading.Event()
    with Scenario("bench-healthy", work_per_item, 4, stack_dir=stack_dir, n_chunks=capacity) as s:
        def bursts() -> None:
            rng = random.Random(1)
            while not stop.is_set():
                for _ in range(rng.randint(1, capacity + capacity // 2)):
                    s.writer.put(b"x" * 512, timeout=10)
                time.sleep(rng.uniform(0.0, 0.3))
        writer = threading.Thread(target=bursts, daemon=True)
        writer.start()
        moved: dict[int, tuple[int, int]] = {}  # reader -> (cursor, since when it has had data pending unmoved)
        high = False
        with shmq.stats.open(s.writer.handle) as view:
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:
                snap = view.snapshot()
                now = snap.monotonic_ns
                for r in snap.readers:
                    cursor, since = moved.get(r.index, (r.cursor, now))
                    if r.cursor != cursor or snap.lag(r) == 0:
                        since = now
                    moved[r.index] = (r.cursor, since)
                    worst["stall_s"] = max(worst["stall_s"], (now - since) / 1e9)
                    worst["heartbeat_s"] = max(worst["heartbeat_s"], (now - r.heartbeat_ns) / 1e9)
                if snap.writer.state == shmq.ParticipantState.WAITING_WRITE:
                    worst["writer_wait_s"] = max(worst["writer_wait_s"], (now - snap.writer.state_since_ns) / 1e9)
                full = snap.occupancy_bytes / snap.ring_bytes  # the watchdog's measure of a ring filling
                worst["occupancy"] = max(worst["occupancy"], full)
                worst["high_twice"] += high and full >= 0.75
                high = full >= 0.75
                time.sleep(0.1)
        stop.set()
        writer.join(10)
        worst["alerts"] = ", ".join(e["rule"] for e in s.watchdog.events if e["event"] == "raise") or "none"
    return worst


def margins_table(stack_dir: str, seconds: float) -> None:
    m = healthy_margins(stack_dir, seconds)
    print(f"\n## A healthy bursty workload, {seconds:g} s (4 readers x 1 ms of work per message, bursts up to "
          f"1.5 rings)\n")
    print("| measure | worst seen | default threshold |\n|---|---|---|")
    print(f"| no progress while data pending | {m['stall_s'] * 1000:.0f} ms | stall 1 s |")
    print(f"| heartbeat age | {m['heartbeat_s'] * 1000:.0f} ms | heartbeat-stale 0.5 s |")
    print(f"| writer wait for room | {m['writer_wait_s'] * 1000:.0f} ms | stall 1 s |")
    print(f"| ring occupancy | {m['occupancy'] * 100:.0f} % | freeze-occupancy 75 % |")
    print(f"| polls >= 75 % full twice in a row | {m['high_twice']:.0f} | freeze_risk needs this and time-to-full "
          f"< 5 s |")
    print(f"| alerts raised by the watchdog | {m['alerts']} | none |")


# -- CPU -----------------------------------------------------------------------------------------
def watchdog_cpu(stack_dir: str, queues: int, readers: int, seconds: float, rate_hz: float,
                 interval_s: float) -> tuple[float, float]:
    """(share of one core, mean poll seconds) of a watchdog on `queues` x `readers`, writers at `rate_hz`."""
    shm_dir = tempfile.mkdtemp(prefix="watchdog-bench-", dir="/dev/shm")
    writers, children = [], []
    stop = threading.Event()
    try:
        for q in range(queues):
            writer = shmq.create(readers, name=f"cpu-{q}", n_chunks=16, chunk_bytes=256, shm_dir=shm_dir,
                                 stack_dumps=stack_dir)
            writers.append(writer)
            for i in range(readers):
                child = FORK.Process(target=read_all, args=(str(writer.handle), i, stack_dir, shm_dir), daemon=True)
                child.start()
                children.append(child)
        for writer in writers:
            writer.wait_for_readers(timeout=60)
        feeder = threading.Thread(target=feed, args=(writers, rate_hz, stop), daemon=True)
        feeder.start()
        with Sidecar("--all", "--shm-dir", shm_dir, "--stack-dir", stack_dir,
                     "--interval", str(interval_s)) as watchdog:
            watchdog.wait_until_watching(queues, timeout_s=30)
            time.sleep(1.0)  # past start-up
            cpu0, wall0, polls0 = procs.cpu_seconds(watchdog.pid), time.monotonic(), poll_stats(watchdog.url)
            time.sleep(seconds)
            cpu1, wall1, polls1 = procs.cpu_seconds(watchdog.pid), time.monotonic(), poll_stats(watchdog.url)
            assert not watchdog.events, f"a healthy workload raised alerts: {watchdog.brief()}"
        stop.set()
        feeder.join(10)
        mean_poll = (polls1[1] - polls0[1]) / max(1, polls1[0] - polls0[0])
        return (cpu1 - cpu0) / (wall1 - wall0), mean_poll
    finally:
        stop.set()
        for writer in writers:
            writer.close()
        for child in children:
            child.join(10)
            if child.is_alive():
                child.kill()
                child.join(5)
        shutil.rmtree(shm_dir, ignore_errors=True)


def feed(writers: list[shmq.Writer], rate_hz: float, stop: threading.Event) -> None:
    """Each writer puts `rate_hz` messages a second, round robin."""
    period = 1 / (rate_hz * len(writers))
    i = 0
    while not stop.is_set():
        writers[i % len(writers)].put(i, timeout=10)
        i += 1
        time.sleep(period)


def poll_stats(url: str) -> tuple[float, float]:
    """(count, sum) of shmq_watchdog_poll_seconds."""
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as response:
        text = response.read().decode()
    values = {}
    for line in text.splitlines():
        for suffix in ("_count", "_sum"):
            if line.startswith(N.WATCHDOG_POLL_SECONDS + suffix + " "):
                values[suffix] = float(line.split()[1])
    return values["_count"], values["_sum"]


# -- report ----------------------------------------------------------------------------------------
def summary(values: list[float]) -> str:
    values = sorted(values)
    return (f"{statistics.median(values) * 1000:.0f} ms (min {values[0] * 1000:.0f}, max {values[-1] * 1000:.0f}, "
            f"n={len(values)})")


def latency_table(stack_dir: str, trials: int) -> None:
    print("## Detection latency (default thresholds: T = 1 s, 10 Hz polls)\n")
    print("| rule | cause | from | latency: median (min, max) |\n|---|---|---|---|")
    print(f"| dead | exited | SIGKILL | {summary([dead_latency(stack_dir) for _ in range(trials)])} |")
    for worker, fault, what in ((read_all, stopped, "SIGSTOP, then data"),
                                (read_one_then_work, left_pending, "data left for a reader in app code")):
        runs = [stall_latency(stack_dir, worker, fault) for _ in range(trials)]
        causes = "/".join(sorted({cause for _, cause in runs}))
        print(f"| reader_stalled | {causes} | {what} | {summary([latency for latency, _ in runs])} |")
    blind = [stall_latency(stack_dir, read_blind, first_data) for _ in range(trials)]
    print(f"| reader_stalled | {'/'.join(sorted({c for _, c in blind}))} | data left for a spinning reader | "
          f"{summary([latency for latency, _ in blind])} |")
    print(f"| writer_blocked | | first blocked put | "
          f"{summary([writer_blocked_latency(stack_dir) for _ in range(trials)])} |")
    print(f"| livelock | spinning_with_data | last cursor move | "
          f"{summary([livelock_latency(stack_dir) for _ in range(trials)])} |")


def lead_table(stack_dir: str, trials: int) -> None:
    n_chunks = 32
    print(f"\n## Lead time before the writer's first blocked put (reader SIGSTOPped, ring of {n_chunks})\n")
    print("| poll interval | write rate | ring fills in | freeze_risk lead | reader_stalled lead |\n|---|---|---|---|---|")
    for interval, rates in ((0.1, (5, 10, 20, 40, 80, 160, 320)), (0.025, (80, 160, 320))):
        for rate in rates:
            runs = [lead_times(stack_dir, rate, n_chunks, interval) for _ in range(trials)]
            print(f"| {interval:g} s | {rate}/s | {n_chunks / rate:.2f} s | {leads([r[0] for r in runs])} | "
                  f"{leads([r[1] for r in runs])} |")


def leads(values: list[float | None]) -> str:
    got = [v for v in values if v is not None]
    return ", ".join(f"{v * 1000:+.0f} ms" for v in got) if got else "not raised"


def cpu_table(stack_dir: str, seconds: float) -> None:
    print(f"\n## Watchdog CPU, {seconds} s, writers at 20 msg/s each\n")
    print("| queues x readers | poll interval | CPU (share of one core) | mean poll |\n|---|---|---|---|")
    for queues, readers in ((1, 8), (8, 8)):
        share, poll = watchdog_cpu(stack_dir, queues, readers, seconds, 20, 0.1)
        print(f"| {queues} x {readers} | 0.1 s | {share * 100:.2f} % | {poll * 1000:.2f} ms |")


PARTS = ("latency", "lead", "margins", "cpu")


def run(parts: set[str], quick: bool) -> None:
    """Print the tables of `parts` (a subset of PARTS); `quick`: fewer trials and a shorter CPU run."""
    with tempfile.TemporaryDirectory(prefix="watchdog-bench-stacks-") as stack_dir:
        if "latency" in parts:
            latency_table(stack_dir, 3 if quick else 8)
        if "lead" in parts:
            lead_table(stack_dir, 1 if quick else 2)
        if "margins" in parts:
            margins_table(stack_dir, 10 if quick else 30)
        if "cpu" in parts:
            cpu_table(stack_dir, 10 if quick else 30)
