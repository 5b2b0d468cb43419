"""``shmq bench --soak``: a million messages to 8 readers; flat memory, no loss, nothing left behind.

Each process reports its resident set size after attaching, after the first 10 %
of the messages (the ring's pages and the interpreter's caches are in by then, so
end minus warm is the growth that matters) and after the last message.

Afterwards it lists what is new in /dev/shm, /tmp and shmq's stack-dump directory.
What this run left is a shmq segment one of its processes created, or a stack-dump
file named after one of its pids; anything else new came from other programs on
the machine and is listed separately, without failing the soak.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import time
import traceback

import shmq
from shmq import diagnostics

from .configs import ShmqConfig
from .table import machine_line
from .trial import reap
from .workloads import Workload

_fork = multiprocessing.get_context("fork")
WATCHED_DIRS = ("/dev/shm", "/tmp", diagnostics.default_stack_dir())


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@dataclasses.dataclass(frozen=True)
class ProcessReport:
    role: str  #: "writer" or "reader i"
    pid: int
    rss_start: int  #: bytes, after attaching
    rss_warm: int  #: bytes, after the first 10 % of the messages
    rss_end: int  #: bytes, after the last message
    received: int = 0
    lost: int = 0
    error: str = ""


def _soak_reader(handle: str, index: int, messages: int, config: ShmqConfig, stall_s: float, conn) -> None:
    rss_start = rss_warm = rss_end = received = 0
    warm_at = max(1, messages // 10)
    expect = lost = 0
    error = ""
    try:
        config.install_hooks()
        with shmq.attach(handle, reader=index, wait=config.strategy()) as reader:
            rss_start = rss_bytes()
            while expect < messages:
                try:
                    seq = reader.get(timeout=stall_s)["seq"]
                except shmq.QueueTimeout:
                    error = f"no message for {stall_s} s after {received}"
                    break
                received += 1
                if received == warm_at:
                    rss_warm = rss_bytes()
                if seq != expect:
                    lost += 1 if seq < expect else seq - expect
                expect = max(expect, seq + 1)
            lost += messages - expect
            rss_end = rss_bytes()
    except BaseException as e:
        error = f"{type(e).__name__}: {e}"
        traceback.print_exc()
    conn.send(ProcessReport(f"reader {index}", os.getpid(), rss_start, rss_warm, rss_end, received, lost, error))
    conn.close()


def _listing() -> set[str]:
    found = set()
    for d in WATCHED_DIRS:
        try:
            found.update(os.path.join(d, n) for n in os.listdir(d))
        except OSError:
            pass
    return found


def run_soak(messages: int, n_readers: int, config: ShmqConfig, stall_s: float = 30.0) -> tuple[str, bool]:
    """Run the soak; returns its report as markdown, and whether nothing was lost or left behind."""
    before = _listing()
    workload = Workload("small", n_readers)
    config.install_hooks()
    writer = shmq.create(n_readers, name=f"soak-{os.getpid()}", **config.create_arguments())
    readers, pipes = [], []
    reports: list[ProcessReport] = []
    elapsed = 0.0
    try:
        for i in range(n_readers):
            receive_end, send_end = _fork.Pipe(duplex=False)
            p = _fork.Process(target=_soak_reader, args=(str(writer.handle), i, messages, config, stall_s, send_end),
                              daemon=True)
            p.start()
            send_end.close()
            readers.append(p)
            pipes.append(receive_end)
        writer.wait_for_readers(timeout=stall_s)
        writer_rss_start = rss_bytes()
        make = workload.maker()
        start = time.perf_counter()
        for seq in range(messages):
            writer.put(make(seq), timeout=stall_s)
            if seq == max(1, messages // 10) - 1:
                writer_rss_warm = rss_bytes()
        writer_rss_end = rss_bytes()
        for i, conn in enumerate(pipes):
            report = conn.recv() if conn.poll(stall_s + 10) else ProcessReport(
                f"reader {i}", readers[i].pid, 0, 0, 0, error="sent no report")
            reports.append(report)
        elapsed = time.perf_counter() - start
        reports.insert(0, ProcessReport("writer", os.getpid(), writer_rss_start, writer_rss_warm, writer_rss_end,
                                        messages))
    finally:
        for p in readers:
            reap(p, 5)
        writer.close()
    time.sleep(0.2)  # let exited processes' files (if any) show up before we look
    new = _listing() - before
    ours = _left_by(new, {r.pid for r in reports} | {p.pid for p in readers})
    clean = not ours and all(r.lost == 0 and not r.error for r in reports) and len(reports) == n_readers + 1
    return _format(messages, n_readers, config, elapsed, reports, sorted(ours), sorted(new - ours)), clean


def _left_by(paths: set[str], pids: set[int]) -> set[str]:
    """The paths among `paths` that the processes `pids` made: their segments and their stack-dump files."""
    segments = {info.shm_name for info in shmq.list_segments() if info.creator_pid in pids}
    stack_files = {os.path.basename(diagnostics.stack_file(pid, "")) for pid in pids}
    return {p for p in paths if os.path.basename(p) in segments | stack_files}


def _format(messages: int, n_readers: int, config: ShmqConfig, elapsed: float, reports: list[ProcessReport],
            leftovers: list[str], others: list[str]) -> str:
    mib = 1 << 20
    lost = sum(r.lost for r in reports)
    lines = [
        f"shmq bench --soak: {messages:,} small messages to {n_readers} readers ({config.label}); {machine_line()}",
        "",
        f"msgs/s: {messages / elapsed:,.0f} ({elapsed:.1f} s); lost: {lost}; "
        f"left in {', '.join(WATCHED_DIRS)}: {', '.join(leftovers) if leftovers else 'nothing'}"
        f" ({len(others)} other new entries there came from other programs)",
        "",
        "| process | pid | RSS start MiB | RSS at 10 % MiB | RSS end MiB | end - 10 % MiB | received | lost | error |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in reports:
        lines.append(f"| {r.role} | {r.pid} | {r.rss_start / mib:.1f} | {r.rss_warm / mib:.1f} | {r.rss_end / mib:.1f} | "
                     f"{(r.rss_end - r.rss_warm) / mib:+.2f} | {r.received:,} | {r.lost} | {r.error} |")
    return "\n".join(lines)
