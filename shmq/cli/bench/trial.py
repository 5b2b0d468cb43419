"""One benchmark row: a writer and its reader processes, run under a supervisor that can kill them.

Process tree of a row::

    bench (supervisor)            waits for the row's figures, at most `timeout` seconds
      `-- trial process           the writer; its own process group, so one killpg ends the row
            |-- reader 0 .. N-1   forked after the queue exists

Phases, with one sequence number running through all of them:

1. throughput: `plan.throughput` messages back to back. msgs/s runs from the first
   send until the last reader has the last message;
2. latency: each message is sent once every reader acknowledged the previous one
   (through a shared array); the reader computes receipt minus the send stamp,
   both ``time.perf_counter_ns()``, which is one clock for every process on Linux;
3. wake-up: as 2, with a pause before each send, so the reader has parked;
4. idle: readers wait `plan.idle_s` on the empty queue and report their process
   CPU time (all threads: heartbeats and socket I/O threads count).

Every wait has a limit: a reader that sees nothing for `plan.stall_s` reports
what it has (the rest counts as lost), and the supervisor kills the whole
process group of a row that overruns its timeout, then removes what it left.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import shutil
import signal
import tempfile
import time
import traceback
from multiprocessing.sharedctypes import RawArray

from .peers import PROBE, Peer
from .table import Row
from .workloads import Plan, Workload

_fork = multiprocessing.get_context("fork")


class Board:
    """Shared counters between the writer and its readers: who is ready, and what each has acknowledged."""

    def __init__(self, n_readers: int) -> None:
        self._ready = RawArray("q", n_readers)
        self._acked = RawArray("q", n_readers)
        self.n_readers = n_readers

    def views(self) -> tuple[memoryview, memoryview]:
        # ctypes exports "<q", which memoryview cannot index: recast through bytes to native "q".
        return memoryview(self._ready).cast("B").cast("q"), memoryview(self._acked).cast("B").cast("q")


@dataclasses.dataclass(frozen=True)
class ReaderReport:
    """What one reader measured. Times are time.perf_counter_ns()."""

    index: int
    received: int = 0
    lost: int = 0  #: gaps, duplicates, wrong sizes and messages that never came
    done_ns: int = 0  #: when it had the last throughput message
    throughput_cpu_s: float = 0.0  #: process CPU time (all threads) spent in the throughput phase
    latencies_ns: tuple = ()
    wakes_ns: tuple = ()
    idle_cpu_s: float = 0.0
    idle_wall_s: float = 0.0
    rss_growth: int = 0  #: anonymous memory gained during the throughput phase, bytes
    error: str = ""


def rss_anon() -> int:
    """This process's anonymous resident memory (heap, sockets' buffers), not the shared memory it maps."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    return 0


# -- reader process ------------------------------------------------------------------------------
def _reader_main(peer_link, index: int, workload: Workload, plan: Plan, board: Board, conn) -> None:
    report = ReaderReport(index, error="exited before reporting")
    try:
        receiver = peer_link.receiver(index)
        try:
            report = _read_phases(receiver, index, workload, plan, board)
        finally:
            receiver.close()
    except BaseException as e:  # the row must show why, not hang
        report = dataclasses.replace(report, error=f"reader {index}: {type(e).__name__}: {e}")
        traceback.print_exc()
    finally:
        conn.send(report)
        conn.close()


def _read_phases(receiver, index: int, workload: Workload, plan: Plan, board: Board) -> ReaderReport:
    ready, acked = board.views()
    take, stall = receiver.take, plan.stall_s
    if receiver.probe:
        while (got := take(stall)) is not None and got[0] >= 0:
            pass
        if got is None:
            return ReaderReport(index, error=f"reader {index}: no probe within {stall} s")
    ready[index] = 1

    # 1. throughput: count gaps and surprises, stamp the moment the last message is in.
    end = plan.throughput
    expect = received = lost = 0
    rss0 = rss_anon()
    cpu0 = time.process_time()
    while expect < end:
        got = take(stall)
        if got is None:
            break
        seq, _, nbytes = got
        if seq < 0:
            continue  # a probe still in flight
        received += 1
        if not received & 255:
            acked[index] = expect  # progress, so a slow but moving row is not taken for a stalled one
        if seq != expect or nbytes != workload.bytes_of(seq):
            lost += 1 if seq < expect or nbytes != workload.bytes_of(seq) else seq - expect
        expect = max(expect, seq + 1)
    done_ns = time.perf_counter_ns()
    throughput_cpu = time.process_time() - cpu0
    rss_growth = rss_anon() - rss0
    lost += end - expect
    acked[index] = end

    # 2. and 3. ack-paced: latency, then wake-up after a pause.
    samples = {}
    for phase, count in (("latency", plan.latency), ("wake", plan.wake)):
        times = []
        for _ in range(count):
            got = take(stall)
            now = time.perf_counter_ns()
            if got is None:
                lost += count - len(times)
                break
            seq, sent_ns, nbytes = got
            received += 1
            if seq != expect or nbytes != workload.bytes_of(seq):
                lost += 1
            times.append(now - sent_ns)
            expect = seq + 1
            acked[index] = expect
        samples[phase] = tuple(times)

    # 4. idle: nothing is sent; what does waiting cost?
    idle_cpu = idle_wall = 0.0
    if plan.idle_s:
        cpu0, wall0 = time.process_time(), time.perf_counter()
        if take(plan.idle_s) is not None:
            lost += 1  # nothing was sent, so this is a duplicate or a stray
        idle_cpu, idle_wall = time.process_time() - cpu0, time.perf_counter() - wall0
    return ReaderReport(index, received=received, lost=lost, done_ns=done_ns, throughput_cpu_s=throughput_cpu,
                        latencies_ns=samples["latency"], wakes_ns=samples["wake"], idle_cpu_s=idle_cpu,
                        idle_wall_s=idle_wall, rss_growth=rss_growth)


# -- trial process (the writer) ---------------------------------------------------------------------
def _trial_main(peer: Peer, workload: Workload, plan: Plan, conn, workdir: str) -> None:
    os.setpgid(0, 0)  # the supervisor ends the row, readers included, with one killpg
    try:
        row = _run_trial(peer, workload, plan, workdir)
    except BaseException as e:
        traceback.print_exc()
        row = Row(workload.kind, workload.n_readers, peer.label, is_shmq=peer.is_shmq,
                  note=f"failed: {type(e).__name__}: {e}"[:160])
    conn.send(row)
    conn.close()


def _run_trial(peer: Peer, workload: Workload, plan: Plan, workdir: str) -> Row:
    link = peer.open(workload, workdir)
    board = Board(workload.n_readers)
    pipes, readers = [], []
    try:
        for i in range(workload.n_readers):
            receive_end, send_end = _fork.Pipe(duplex=False)
            p = _fork.Process(target=_reader_main, args=(link, i, workload, plan, board, send_end), daemon=True,
                              name=f"bench-reader-{i}")
            p.start()
            send_end.close()
            pipes.append(receive_end)
            readers.append(p)
        sender = link.sender()
        try:
            t0, writer_cpu, writer_rss, note = _write_phases(sender, workload, plan, board)
            reports = _collect(pipes, readers, plan)
        finally:
            sender.close()
    finally:
        for p in readers:
            reap(p, 2)
        link.close()
    return dataclasses.replace(_summarize(peer, workload, plan, t0, writer_cpu, writer_rss, reports, note),
                               **link.measures())


def _write_phases(sender, workload: Workload, plan: Plan, board: Board) -> tuple[int, float, int, str]:
    """Send every phase; returns the first send's time, the throughput phase's CPU time and anonymous
    memory growth (until every reader had it), and a note."""
    ready, acked = board.views()
    n = workload.n_readers
    deadline = time.monotonic() + plan.stall_s
    while sum(ready) < n:
        if time.monotonic() > deadline:
            return 0, 0.0, 0, f"stalled: {n - sum(ready)} readers never became ready"
        if sender.probe:
            sender.send(PROBE)
        time.sleep(0.001)

    make, send = workload.maker(), sender.send
    rss0 = rss_anon()
    cpu0 = time.process_time()
    t0 = time.perf_counter_ns()
    for seq in range(plan.throughput):
        send(make(seq))
    cpu = time.process_time() - cpu0  # what sending cost; waiting for the readers below is not counted
    seq = plan.throughput
    if not _await_acks(acked, seq, plan.stall_s, sleep_s=0.0005):
        return t0, cpu, 0, "stalled after the throughput phase"
    rss = rss_anon() - rss0
    for count, gap in ((plan.latency, 0.0), (plan.wake, plan.wake_gap_s)):
        for _ in range(count):
            if gap:
                time.sleep(gap)
            send(make(seq))
            seq += 1
            if not _await_acks(acked, seq, plan.stall_s, sleep_s=0.0):
                return t0, cpu, rss, f"stalled: no acknowledgement of message {seq - 1}"
    return t0, cpu, rss, ""


def _await_acks(acked: memoryview, target: int, stall_s: float, sleep_s: float) -> bool:
    """Wait until every reader acknowledged `target` messages; False after `stall_s` without progress.

    Yields the core between polls: the readers may need it.
    """
    deadline = time.monotonic() + stall_s
    progress = min(acked)
    polls = 0
    while (slowest := min(acked)) < target:
        if slowest > progress:  # a slow row that moves is not stalled: restart the clock
            progress, deadline = slowest, time.monotonic() + stall_s
        if sleep_s:
            time.sleep(sleep_s)
        else:
            os.sched_yield()
        polls += 1
        if polls % 1024 == 0 and time.monotonic() > deadline:
            return False
    return True


def _collect(pipes: list, readers: list, plan: Plan) -> list[ReaderReport]:
    deadline = time.monotonic() + plan.idle_s + plan.stall_s + 5
    reports = []
    for i, (conn, p) in enumerate(zip(pipes, readers)):
        report = None
        if conn.poll(max(0.0, deadline - time.monotonic())):
            try:
                report = conn.recv()
            except EOFError:
                pass
        reports.append(report or ReaderReport(i, error=f"reader {i} sent no report (exit code {p.exitcode})"))
    return reports


def _percentile(sorted_values: list, q: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


def _summarize(peer: Peer, workload: Workload, plan: Plan, t0: int, writer_cpu_s: float, writer_rss: int,
               reports: list[ReaderReport], note: str) -> Row:
    errors = [r.error for r in reports if r.error]
    if errors:
        note = "; ".join(filter(None, [note, *errors]))[:200]
    lost = sum(r.lost for r in reports) + sum(plan.throughput + plan.latency + plan.wake
                                              for r in reports if r.error and not r.received)
    elapsed_ns = max(r.done_ns for r in reports) - t0 if t0 and all(r.done_ns for r in reports) else 0
    latencies = sorted(t for r in reports for t in r.latencies_ns)
    wakes = sorted(t for r in reports for t in r.wakes_ns)
    idle = [r.idle_cpu_s / r.idle_wall_s * 100 for r in reports if r.idle_wall_s]
    return Row(
        workload.kind, workload.n_readers, peer.label, is_shmq=peer.is_shmq,
        msgs_per_s=plan.throughput / elapsed_ns * 1e9 if elapsed_ns > 0 else None,
        cpu_us_per_msg=(writer_cpu_s + sum(r.throughput_cpu_s for r in reports)) / plan.throughput * 1e6
        if elapsed_ns > 0 else None,
        gb_per_s=plan.throughput * workload.payload_bytes / elapsed_ns if elapsed_ns > 0 else None,
        p50_us=_percentile(latencies, 0.5) / 1e3 if latencies else None,
        p99_us=_percentile(latencies, 0.99) / 1e3 if latencies else None,
        idle_cpu_pct=max(idle) if idle else None,
        wake_p50_us=_percentile(wakes, 0.5) / 1e3 if wakes else None,
        writer_rss_mb=writer_rss / 1e6 if elapsed_ns > 0 else None,
        reader_rss_mb=max(r.rss_growth for r in reports) / 1e6 if elapsed_ns > 0 else None,
        lost=lost, note=note,
    )


# -- supervisor --------------------------------------------------------------------------------------
def reap(process, grace_s: float) -> None:
    """Join a child process, killing it if it still runs after `grace_s`: a hung peer must not hang the run."""
    process.join(timeout=grace_s)
    if process.is_alive():
        process.kill()
        process.join()


def run_row(peer: Peer, workload: Workload, plan: Plan, timeout_s: float) -> Row:
    """Run one row in its own process group; kill it and clean up after it if it overruns."""
    missing = peer.missing()
    if missing:
        return Row(workload.kind, workload.n_readers, peer.label, is_shmq=peer.is_shmq, note=missing)
    row, reason = supervise(_trial_main, (peer, workload, plan), timeout_s)
    return row or Row(workload.kind, workload.n_readers, peer.label, is_shmq=peer.is_shmq, note=reason)


def supervise(target, args: tuple, timeout_s: float):
    """Run ``target(*args, conn, workdir)`` in a trial process; returns (what it sent on conn, "") or (None, why).

    The target makes itself a process group leader (os.setpgid(0, 0)), so a trial that overruns
    `timeout_s` is killed with its readers; what it leaves (segments, sockets) is removed.
    """
    workdir = tempfile.mkdtemp(prefix="shmq-bench-")
    receive_end, send_end = _fork.Pipe(duplex=False)
    trial = _fork.Process(target=target, args=(*args, send_end, workdir), name="bench-trial")
    result = None
    try:
        trial.start()
        send_end.close()
        if receive_end.poll(timeout_s):
            try:
                result = receive_end.recv()
            except EOFError:
                pass
        trial.join(timeout=5)
    finally:
        if trial.pid is not None and (result is None or trial.is_alive()):
            _kill_group(trial)
        receive_end.close()
        _remove_leftovers(trial.pid, workdir)
    if result is not None:
        return result, ""
    return None, (f"timeout after {timeout_s:.0f} s" if trial.exitcode in (None, -signal.SIGKILL) else
                  f"failed: trial process exited with {trial.exitcode}")


def _kill_group(process) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    process.kill()
    process.join(timeout=5)


def _remove_leftovers(trial_pid: int | None, workdir: str) -> None:
    """What a killed row leaves: its shmq segments and its socket directory."""
    shutil.rmtree(workdir, ignore_errors=True)
    if trial_pid is None:
        return
    from shmq.segment import SHM_DIR, list_segments

    for info in list_segments():
        if info.creator_pid == trial_pid:
            try:
                os.unlink(os.path.join(SHM_DIR, info.shm_name))
            except FileNotFoundError:
                pass
