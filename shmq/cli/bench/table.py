"""One benchmark row's figures, and the markdown table they make."""

from __future__ import annotations

import dataclasses
import datetime
import os
import platform
import sys


@dataclasses.dataclass(frozen=True)
class Row:
    """The figures of one transport on one workload (None: not measured in this row)."""

    workload: str  #: small, large, huge, or "limit"
    n_readers: int  #: readers receiving every message (0 for limits)
    transport: str  #: what ran: a shmq configuration, a peer, or a limit
    is_shmq: bool = False
    msgs_per_s: float | None = None  #: first send until the last reader had every message
    gb_per_s: float | None = None  #: payload bytes per second delivered to each reader (1 GB = 1e9 B)
    cpu_us_per_msg: float | None = None  #: CPU time of the writer and all readers in the throughput phase, per message
    p50_us: float | None = None  #: ack-paced one-way latency, median
    p99_us: float | None = None  #: ack-paced one-way latency, 99th percentile
    idle_cpu_pct: float | None = None  #: CPU of the busiest reader waiting on an empty queue, % of a core
    wake_p50_us: float | None = None  #: send to receipt by a reader that had parked, median
    writer_rss_mb: float | None = None  #: the writer's anonymous memory gained in the throughput phase, MB
    reader_rss_mb: float | None = None  #: the most any reader's anonymous memory gained in it, MB (a forked
    #: reader counts the pages it copies on write from the writer too)
    lost: int | None = None  #: messages missing, duplicated or corrupted, summed over readers
    sidecar_cpu_pct: float | None = None  #: a tracing sidecar's CPU over the row, % of a core (sidecar=traces)
    sidecar_traced_pct: float | None = None  #: the share of recorded operations it made spans of
    note: str = ""  #: skipped, stalled, timeout, or what a limit row measures

    @property
    def failed(self) -> bool:
        return self.note.startswith(("skipped", "failed", "timeout", "stalled"))


HEADER = ("workload", "N", "transport", "msgs/s", "vs best peer", "GB/s per reader", "CPU µs/msg", "p50 µs",
          "p99 µs", "idle CPU %", "wake p50 µs", "writer +MB", "reader +MB", "lost", "note")


def best_peer_rate(rows: list[Row], workload: str, n_readers: int) -> float | None:
    """The highest msgs/s of a lossless peer (not shmq) on this workload."""
    rates = [r.msgs_per_s for r in rows if not r.is_shmq and r.workload == workload and r.n_readers == n_readers
             and r.msgs_per_s and r.lost == 0]
    return max(rates, default=None)


def markdown(rows: list[Row]) -> str:
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "|".join("---" for _ in HEADER) + "|"]
    for r in rows:
        best = best_peer_rate(rows, r.workload, r.n_readers) if r.is_shmq else None
        ratio = f"{r.msgs_per_s / best:.2f}x" if best and r.msgs_per_s else ""
        cells = (r.workload, str(r.n_readers) if r.n_readers else "", r.transport, _number(r.msgs_per_s, 0),
                 ratio, _number(r.gb_per_s, 2 if (r.gb_per_s or 0) >= 0.1 else 4), _number(r.cpu_us_per_msg, 1),
                 _number(r.p50_us, 1),
                 _number(r.p99_us, 1), _number(r.idle_cpu_pct, 1), _number(r.wake_p50_us, 1),
                 _number(r.writer_rss_mb, 1), _number(r.reader_rss_mb, 1),
                 "" if r.lost is None else str(r.lost), _note(r))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _note(r: Row) -> str:
    if r.sidecar_cpu_pct is None:
        return r.note
    traced = "" if r.sidecar_traced_pct is None else f", {r.sidecar_traced_pct:.0f} % of operations traced"
    return "; ".join(filter(None, [f"sidecar {r.sidecar_cpu_pct:.0f} % of a core{traced}", r.note]))


def _number(value: float | None, digits: int) -> str:
    if value is None:
        return ""
    return f"{value:,.{digits}f}"


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_average() -> str:
    """The 1-minute load average: other work on the machine shows in every figure of a run."""
    try:
        return f"{os.getloadavg()[0]:.2f}"
    except OSError:
        return "unknown"


def machine_line() -> str:
    """Date, cores, CPU model, Python: what a reader of the table needs to compare it with theirs."""
    today = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return (f"{today}; {os.cpu_count()} CPUs, {cpu_model()}; Python {platform.python_version()} "
            f"({sys.implementation.name}); Linux {platform.release()}")
