"""``shmq bench --cadence``: an engine's step cadence, one message every period, and what waiting costs.

An LLM engine sends its workers one message per step, every 1-50 ms with steady
timing. Each cell of this workload sends one message every period P (each gap
drawn in P ± 2 %) to N readers, and reports, per transport:

* delivery latency p50 / p99 / p99.9, from the send stamp to the moment the
  reader's get() returned (``time.perf_counter_ns()`` in both processes);
* reader CPU, % of a core: process CPU time over wall time while the messages
  flowed, the mean over the readers;
* writer CPU, % of a core, over the same span (its sleeps between sends cost none).

The first WARMUP messages of a cell are sent but not measured: a transport may
connect or learn (the Adaptive strategy needs a few intervals) before it is judged.

Then the timing facts of the machine that bound what a parked reader can do:
the timer slack of a thread, how late a timed futex wait returns, and how long
a parked process takes to run after a futex wake.
"""

from __future__ import annotations

import ctypes
import dataclasses
import os
import random
import statistics
import sys
import time
import traceback

import numpy as np

from shmq import sync

from . import configs, limits, peers, trial, vllm_peers
from .table import load_average, machine_line
from .workloads import Workload

PERIODS_MS = (0.1, 1.0, 10.0, 50.0)
READERS = (1, 4, 8)
JITTER = 0.02  #: each gap is P * (1 ± JITTER), uniform
WARMUP = 10  #: messages sent before the measured ones
SIZES = {"small": 0, "10k": 10_000}  #: array bytes per message (small: a ~500 B pickled dict only)
_TOKENS = list(range(1000, 1150))  # with seq, timestamp and op: a ~500-byte pickle


@dataclasses.dataclass(frozen=True)
class Cell:
    period_s: float
    n_readers: int
    size: str  #: a key of SIZES
    count: int  #: measured messages (WARMUP more are sent first)

    @property
    def name(self) -> str:
        return f"{self.period_s * 1e3:g} ms, N={self.n_readers}, {self.size}"

    def workload(self) -> Workload:
        """For Peer.open(): the queue geometry and buffers (small, or large enough for the 10 KB array)."""
        return Workload("large" if SIZES[self.size] else "small", self.n_readers)

    def maker(self):
        """seq -> message, stamped as late as possible; a new dict each time (see Workload.maker)."""
        tokens = _TOKENS
        if not SIZES[self.size]:
            return lambda seq: {"seq": seq, "t": time.perf_counter_ns(), "op": "step", "tokens": tokens}
        data = np.zeros(SIZES[self.size], dtype=np.uint8)
        return lambda seq: {"seq": seq, "t": time.perf_counter_ns(), "op": "step", "tokens": tokens, "data": data}


@dataclasses.dataclass(frozen=True)
class CadenceRow:
    cell: str
    transport: str
    p50_us: float | None = None
    p99_us: float | None = None
    p999_us: float | None = None
    reader_cpu_pct: float | None = None  #: mean over readers, % of one core
    writer_cpu_pct: float | None = None
    samples: int = 0
    lost: int = 0
    note: str = ""


@dataclasses.dataclass(frozen=True)
class _ReaderResult:
    latencies_ns: tuple = ()
    cpu_s: float = 0.0
    wall_s: float = 0.0
    lost: int = 0
    error: str = ""


def cells(*, quick: bool, periods_ms=PERIODS_MS, readers=READERS, sizes=tuple(SIZES)) -> list[Cell]:
    """Each cell runs about a second or more (a few hundred ms with `quick`), and at least 40 messages."""
    chosen = []
    for size in sizes:
        for n in readers:
            for period_ms in periods_ms:
                seconds = 0.25 if quick else max(1.0, min(2.5, period_ms * 0.05))
                count = max(30 if quick else 50, int(seconds / (period_ms / 1e3)))
                chosen.append(Cell(period_ms / 1e3, n, size, count))
    return chosen


# -- one cell, one transport ---------------------------------------------------------------------
def _reader_main(link, index: int, cell: Cell, board: trial.Board, stall_s: float, conn) -> None:
    result = _ReaderResult(error="exited before reporting")
    try:
        receiver = link.receiver(index)
        try:
            result = _read(receiver, index, cell, board, stall_s)
        finally:
            receiver.close()
    except BaseException as e:
        result = _ReaderResult(error=f"reader {index}: {type(e).__name__}: {e}")
        traceback.print_exc()
    finally:
        conn.send(result)
        conn.close()


def _read(receiver, index: int, cell: Cell, board: trial.Board, stall_s: float) -> _ReaderResult:
    ready, _ = board.views()
    take = receiver.take
    if receiver.probe:
        while (got := take(stall_s)) is not None and got[0] >= 0:
            pass
        if got is None:
            return _ReaderResult(error=f"reader {index}: no probe within {stall_s} s")
    ready[index] = 1
    expected_bytes = SIZES[cell.size]
    total = WARMUP + cell.count
    expect = lost = 0
    latencies = []
    cpu0 = wall0 = 0.0
    while expect < total:
        got = take(stall_s)
        now = time.perf_counter_ns()
        if got is None:
            break
        seq, sent_ns, nbytes = got
        if seq < 0:
            continue  # a probe still in flight
        if seq != expect or nbytes != expected_bytes:
            lost += 1
        expect = seq + 1
        if seq == WARMUP - 1:
            cpu0, wall0 = time.process_time(), time.perf_counter()
        elif seq >= WARMUP:
            latencies.append(now - sent_ns)
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    return _ReaderResult(tuple(latencies), cpu, wall, lost + total - expect)


def _sleep_until(deadline_ns: int) -> None:
    left = deadline_ns - time.perf_counter_ns()
    if left > 0:
        time.sleep(left / 1e9)


def _write(sender, cell: Cell, board: trial.Board, stall_s: float) -> tuple[float, float, str]:
    """Send every message on its schedule; returns the writer's CPU and wall seconds over the measured ones."""
    ready, _ = board.views()
    deadline = time.monotonic() + stall_s
    while sum(ready) < board.n_readers:
        if time.monotonic() > deadline:
            return 0.0, 0.0, f"stalled: {board.n_readers - sum(ready)} readers never became ready"
        if sender.probe:
            sender.send(peers.PROBE)
        time.sleep(0.001)
    time.sleep(0.05)  # let probes drain, so the first gaps are the period's
    rng = random.Random(0)
    send, make = sender.send, cell.maker()
    at = time.perf_counter_ns()
    cpu0 = wall0 = 0.0
    for seq in range(WARMUP + cell.count):
        at += int(cell.period_s * 1e9 * (1 + rng.uniform(-JITTER, JITTER)))
        _sleep_until(at)
        if seq == WARMUP:
            cpu0, wall0 = time.process_time(), time.perf_counter()
        send(make(seq))
    return time.process_time() - cpu0, time.perf_counter() - wall0, ""


def _cell_main(peer: peers.Peer, cell: Cell, stall_s: float, conn, workdir: str) -> None:
    os.setpgid(0, 0)  # one killpg ends the trial and its readers
    try:
        row = _run_cell(peer, cell, stall_s, workdir)
    except BaseException as e:
        traceback.print_exc()
        row = CadenceRow(cell.name, peer.label, note=f"failed: {type(e).__name__}: {e}"[:160])
    conn.send(row)
    conn.close()


def _run_cell(peer: peers.Peer, cell: Cell, stall_s: float, workdir: str) -> CadenceRow:
    sync.set_timer_slack(1)  # the writer's schedule, not its timer slack, sets the period
    link = peer.open(cell.workload(), workdir)
    board = trial.Board(cell.n_readers)
    pipes, readers = [], []
    try:
        for i in range(cell.n_readers):
            receive_end, send_end = trial._fork.Pipe(duplex=False)
            p = trial._fork.Process(target=_reader_main, args=(link, i, cell, board, stall_s, send_end),
                                    daemon=True, name=f"cadence-reader-{i}")
            p.start()
            send_end.close()
            pipes.append(receive_end)
            readers.append(p)
        sync.set_timer_slack(0)  # 0: back to the process default
        sender = link.sender()
        try:
            writer_cpu, writer_wall, note = _write(sender, cell, board, stall_s)
            results = []
            for i, conn in enumerate(pipes):
                got = conn.recv() if conn.poll(stall_s + 5) else _ReaderResult(error=f"reader {i} sent no result")
                results.append(got)
        finally:
            sender.close()
    finally:
        for p in readers:
            trial.reap(p, 2)
        link.close()
    return _summarize(peer, cell, results, writer_cpu, writer_wall, note)


def _summarize(peer, cell: Cell, results: list[_ReaderResult], writer_cpu: float, writer_wall: float,
               note: str) -> CadenceRow:
    errors = [r.error for r in results if r.error]
    note = "; ".join(filter(None, [note, *errors]))[:200]
    latencies = sorted(t for r in results for t in r.latencies_ns)
    cpus = [r.cpu_s / r.wall_s * 100 for r in results if r.wall_s > 0]

    def percentile(q: float) -> float | None:
        return latencies[min(len(latencies) - 1, int(q * len(latencies)))] / 1e3 if latencies else None

    return CadenceRow(
        cell.name, peer.label, p50_us=percentile(0.5), p99_us=percentile(0.99), p999_us=percentile(0.999),
        reader_cpu_pct=statistics.fmean(cpus) if cpus else None,
        writer_cpu_pct=writer_cpu / writer_wall * 100 if writer_wall > 0 else None,
        samples=len(latencies), lost=sum(r.lost for r in results), note=note)


def run_cell(peer: peers.Peer, cell: Cell, *, stall_s: float, timeout_s: float) -> CadenceRow:
    missing = peer.missing()
    if missing:
        return CadenceRow(cell.name, peer.label, note=missing)
    if isinstance(peer, peers.ShmqPeer) and peer.config.wait == "BusySpin" and cell.n_readers > (os.cpu_count() or 1):
        # Spinning readers on every core starve the writer: a 1 s cell took 24 s here. The
        # throughput table (shmq bench) shows what BusySpin does with more readers than cores.
        return CadenceRow(cell.name, peer.label, note="skipped: BusySpin with more readers than CPUs")
    row, reason = trial.supervise(_cell_main, (peer, cell, stall_s), timeout_s)
    return row or CadenceRow(cell.name, peer.label, note=reason)


# -- timing facts of this machine ------------------------------------------------------------------
def timed_wake_lateness(timeout_s: float, rounds: int) -> tuple[float, float]:
    """p50 and p99 of how late (µs) a futex wait with `timeout_s` returns, nobody waking it."""
    word = ctypes.c_uint64(0)
    address = ctypes.addressof(word)
    late = []
    for _ in range(rounds):
        start = time.perf_counter_ns()
        sync.futex_wait(address, 0, timeout_s)
        late.append(time.perf_counter_ns() - start - timeout_s * 1e9)
    late.sort()
    return late[len(late) // 2] / 1e3, late[min(len(late) - 1, int(0.99 * len(late)))] / 1e3


def timing_lines(*, quick: bool) -> list[str]:
    if not sync.HAVE_FUTEX:
        return ["No futex on this platform: parks are sleeps."]
    rounds = 50 if quick else 300
    default_slack = sync.timer_slack_ns()
    lines = [f"Timer slack of a thread (prctl PR_GET_TIMERSLACK): {default_slack / 1e3:g} µs.",
             "", "| timed futex wait | lateness p50 µs | p99 µs |", "|---|---|---|"]
    try:
        for slack in (default_slack, 1):
            sync.set_timer_slack(slack)
            for timeout_s in (100e-6, 1e-3):
                p50, p99 = timed_wake_lateness(timeout_s, rounds)
                lines.append(f"| {timeout_s * 1e6:g} µs, slack {slack:,} ns | {p50:.1f} | {p99:.1f} |")
    finally:
        sync.set_timer_slack(0)
    wake = limits.futex_row(rounds, 0.002, carry=False)
    lines += ["", f"Scheduler wake latency, another process parked on a futex, FUTEX_WAKE to running: "
                  f"p50 {wake.wake_p50_us:.1f} µs ({rounds} wakes)." if wake.wake_p50_us else
              f"Scheduler wake latency: {wake.note}"]
    return lines


# -- the command -------------------------------------------------------------------------------------
HEADER = ("cell", "transport", "p50 µs", "p99 µs", "p99.9 µs", "reader CPU %", "writer CPU %", "samples", "lost",
          "note")


def markdown(rows: list[CadenceRow]) -> str:
    def number(value, digits=1):
        return "" if value is None else f"{value:,.{digits}f}"

    lines = ["| " + " | ".join(HEADER) + " |", "|" + "|".join("---" for _ in HEADER) + "|"]
    for r in rows:
        lines.append("| " + " | ".join((r.cell, r.transport, number(r.p50_us), number(r.p99_us), number(r.p999_us),
                                         number(r.reader_cpu_pct), number(r.writer_cpu_pct), str(r.samples),
                                         str(r.lost), r.note)) + " |")
    return "\n".join(lines)


def transports(*, zmq: bool = True, iceoryx2: bool = True, zenoh: bool = True, vllm: bool = True) -> list[peers.Peer]:
    chosen: list[peers.Peer] = [peers.ShmqPeer(c) for c in configs.strategy_rows()]
    chosen += peers.peer_rows(mpq=False, zmq=zmq, faster_fifo=False, iceoryx2=iceoryx2, zenoh=zenoh)
    return chosen + vllm_peers.peer_rows(vllm=vllm)


def run(chosen_cells: list[Cell], chosen: list[peers.Peer], *, quick: bool, timing: bool = True) -> list[CadenceRow]:
    """Every transport on every cell, interleaved cell by cell; prints the tables and returns the rows."""
    stall_s = 5.0
    print(f"shmq bench --cadence{' --quick' if quick else ''}: {machine_line()}", flush=True)
    load_at_start = load_average()
    rows = []
    iceoryx2_before = peers.iceoryx2_global_state()
    try:
        for cell in chosen_cells:
            for peer in chosen:
                start = time.monotonic()
                row = run_cell(peer, cell, stall_s=stall_s,
                               timeout_s=30 + WARMUP + cell.count * cell.period_s * 3)
                print(f"  {cell.name:<22} {peer.label:<34} {time.monotonic() - start:5.1f} s  "
                      f"p50 {row.p50_us or 0:8.1f} µs  reader CPU {row.reader_cpu_pct or 0:5.1f} %  {row.note}",
                      file=sys.stderr, flush=True)
                rows.append(row)
    finally:
        peers.remove_iceoryx2_global_state(iceoryx2_before)
    print()
    print(markdown(rows))
    if timing:
        print()
        print("\n".join(timing_lines(quick=quick)))
    print(f"\n1-minute load average: {load_at_start} at the start, {load_average()} at the end.")
    return rows
