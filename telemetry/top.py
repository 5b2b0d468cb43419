"""``shmq top``: a live terminal view of queues and participants, like htop or Aeron's AeronStat.

One row per participant: role, pid, state, cursor, lag, messages/s, spins/s
(spins plus yields), parks/s, p50/p99 wait over the window, and the alerts the
watchdog's rules hold for it. ``top`` runs the watchdog's rules itself, read
only, at the watchdog's poll rate; it needs no watchdog running. ``--once``
watches for one window and prints a plain table, for scripts.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import math
import signal
import threading
import time

from shmq import flight
from shmq.flight import Operation
from shmq.segment import SHM_DIR
from shmq.stats import ParticipantStats, QueueId, QueueStats, Segments, histogram_quantile

from .watchdog import Watchdog
from .watchdog.alerts import Alert
from .watchdog.watcher import DEFAULT_INTERVAL_S

COLUMNS = ("role", "pid", "state", "cursor", "lag", "msgs/s", "spins/s", "parks/s", "p50 wait", "p99 wait", "last op",
           "alerts")


@dataclasses.dataclass(frozen=True)
class ParticipantRow:
    """One participant, with rates over the window."""

    role: str  #: "writer" or "reader N"
    pid: int
    state: str
    cursor: int
    lag: int | None  #: readers only
    messages_per_s: float
    spins_per_s: float  #: spins plus yields
    parks_per_s: float
    p50_wait_s: float | None  #: None when it did not wait in the window
    p99_wait_s: float | None
    last_op: str  #: its newest flight-recorded operation, "" without one
    alerts: tuple[str, ...]  #: "rule:cause" of each alert about it


@dataclasses.dataclass(frozen=True)
class QueueRow:
    """One queue and its participants."""

    label: str
    shm_name: str
    occupancy: int  #: frames the slowest gating reader has not consumed
    occupancy_bytes: int  #: ring bytes the slowest gating reader has not consumed
    capacity: int  #: the ring's bytes
    time_to_full_s: float
    participants: tuple[ParticipantRow, ...]


class Window:
    """Each queue's snapshots over the last `window_s` seconds."""

    def __init__(self, window_s: float) -> None:
        self.window_ns = int(window_s * 1e9)
        self._snapshots: dict[str, collections.deque[QueueStats]] = {}

    def add(self, latest: dict[str, QueueStats]) -> None:
        for shm_name in self._snapshots.keys() - latest.keys():
            del self._snapshots[shm_name]
        for shm_name, snap in latest.items():
            history = self._snapshots.setdefault(shm_name, collections.deque())
            if not history or history[-1] is not snap:
                history.append(snap)
            while len(history) > 2 and snap.monotonic_ns - history[1].monotonic_ns >= self.window_ns:
                history.popleft()

    def rows(self, ids: dict[str, QueueId], alerts: tuple[Alert, ...], time_to_full: dict[str, float],
             last_ops: dict[str, dict[int, Operation]]) -> list[QueueRow]:
        table = []
        for shm_name, history in sorted(self._snapshots.items(), key=lambda item: ids[item[0]].label):
            first, last = history[0], history[-1]
            about = collections.defaultdict(list)
            for a in alerts:
                if a.queue.shm_name == shm_name:
                    about[a.raised.role, a.raised.reader].append(f"{a.raised.rule}:{a.raised.cause}")
            seconds = (last.monotonic_ns - first.monotonic_ns) / 1e9
            ops = last_ops.get(shm_name, {})
            participants = tuple(
                _participant(p, then, last, seconds, tuple(about[role, p.index]), ops.get(number))
                for number, (p, then, role) in enumerate(((last.writer, first.writer, "writer"),
                                                          *((r, f, "reader") for r, f in zip(last.readers,
                                                                                              first.readers)))))
            table.append(QueueRow(ids[shm_name].label, shm_name, last.occupancy, last.occupancy_bytes, last.ring_bytes,
                                  time_to_full.get(shm_name, math.inf), participants))
        return table


def _participant(now: ParticipantStats, then: ParticipantStats, snap: QueueStats, seconds: float,
                 alerts: tuple[str, ...], last_op: Operation | None) -> ParticipantRow:
    same = now.pid == then.pid and seconds > 0

    def rate(value: int) -> float:
        return value / seconds if same else 0.0

    waits = [a - b for a, b in zip(now.histogram, then.histogram)] if same else list(now.histogram)
    return ParticipantRow(
        role=now.label, pid=now.pid, state=now.state.name.lower(), cursor=now.cursor,
        lag=None if now.index < 0 else snap.lag(now), messages_per_s=rate(now.messages - then.messages),
        spins_per_s=rate(now.spins + now.yields - then.spins - then.yields), parks_per_s=rate(now.parks - then.parks),
        p50_wait_s=histogram_quantile(waits, 0.5), p99_wait_s=histogram_quantile(waits, 0.99),
        last_op=last_op.short() if last_op is not None else "", alerts=alerts)


# -- presentation -----------------------------------------------------------------------------
def number(value: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if value >= scale:
            return f"{value / scale:.1f}{unit}"
    return f"{value:.0f}" if value >= 10 or value == 0 else f"{value:.1f}"


def _size(n: int) -> str:
    """Bytes as B, KiB, MiB or GiB, whichever keeps the number short."""
    for unit in ("B", "KiB", "MiB"):
        if n < 1024 * 10:
            return f"{n:,} {unit}" if unit == "B" else f"{n:.1f} {unit}".replace(".0 ", " ")
        n /= 1024
    return f"{n:.1f} GiB"


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if math.isinf(seconds):
        return "inf"
    for unit, scale in (("s", 1.0), ("ms", 1e-3)):
        if seconds >= scale:
            return f"{seconds / scale:.3g}{unit}"
    return f"{seconds * 1e6:.3g}us"


def cells(p: ParticipantRow) -> tuple[str, ...]:
    return (p.role, str(p.pid or "-"), p.state, str(p.cursor), "-" if p.lag is None else str(p.lag),
            number(p.messages_per_s), number(p.spins_per_s), number(p.parks_per_s), duration(p.p50_wait_s),
            duration(p.p99_wait_s), p.last_op or "-", ",".join(p.alerts) or "-")


def title(q: QueueRow) -> str:
    ttf = "" if math.isinf(q.time_to_full_s) else (", full" if q.time_to_full_s == 0 else
                                                   f", full in {duration(q.time_to_full_s)}")
    return (f"queue {q.label} ({q.shm_name}): ring {_size(q.occupancy_bytes)}/{_size(q.capacity)} "
            f"({q.occupancy} messages){ttf}")


def render_text(table: list[QueueRow]) -> str:
    """Aligned plain text: a title line per queue, then a header and one line per participant."""
    if not table:
        return "no shmq queues\n"
    blocks = []
    for q in table:
        rows = [COLUMNS, *(cells(p) for p in q.participants)]
        widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
        lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]
        blocks.append("\n".join([title(q), *lines]))
    return "\n\n".join(blocks) + "\n"


def render_rich(table: list[QueueRow]):
    from rich.console import Group
    from rich.table import Table

    if not table:
        return Group("no shmq queues")
    tables = []
    for q in table:
        t = Table(title=title(q), title_justify="left", expand=False)
        for column in COLUMNS:
            t.add_column(column, justify="left" if column in ("role", "state", "last op", "alerts") else "right")
        for p in q.participants:
            t.add_row(*cells(p), style="bold red" if p.alerts else ("dim" if p.state in ("closed", "evicted") else ""))
        tables.append(t)
    return Group(*tables)


# -- shmq top ----------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--queue", action="append", metavar="NAME",
                       help="show this queue (logical name, shm name or handle string); repeat for more")
    which.add_argument("--all", action="store_true", help="show every shmq segment on the host (the default)")
    parser.add_argument("--window", type=float, default=2.0, metavar="S",
                        help="seconds over which rates and wait percentiles are taken (default %(default)s)")
    parser.add_argument("--refresh", type=float, default=1.0, metavar="S",
                        help="seconds between redraws (default %(default)s)")
    parser.add_argument("--once", action="store_true", help="watch for one window, print a plain table, and exit")
    parser.add_argument("--shm-dir", default=SHM_DIR, help="where POSIX shared memory lives (default %(default)s)")


class Top:
    """The watchdog's rules (no outputs) plus a window of snapshots."""

    def __init__(self, segments: Segments, window_s: float) -> None:
        self.watchdog = Watchdog(segments)
        self.window = Window(window_s)

    def poll(self) -> None:
        self.watchdog.poll()
        self.window.add(self.watchdog.latest)

    def table(self) -> list[QueueRow]:
        last_ops = {shm_name: flight.last_operations(view) for shm_name, view in self.watchdog.segments.views.items()}
        return self.window.rows(self.watchdog.segments.ids, self.watchdog.active, self.watchdog.time_to_full(),
                                last_ops)

    def close(self) -> None:
        self.watchdog.close()


def main(args: argparse.Namespace) -> int:
    top = Top(Segments(args.queue, shm_dir=args.shm_dir), args.window)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        if args.once:
            deadline = time.monotonic() + args.window
            while time.monotonic() < deadline:
                top.poll()
                time.sleep(DEFAULT_INTERVAL_S)
            top.poll()
            print(render_text(top.table()), end="")
            return 0
        return _live(top, args.refresh, stop)
    except KeyboardInterrupt:
        return 0
    finally:
        top.close()


def _live(top: Top, refresh_s: float, stop: threading.Event) -> int:
    from rich.live import Live

    with Live(render_rich([]), auto_refresh=False, screen=False) as live:
        redraw = 0.0
        while not stop.is_set():
            top.poll()
            if time.monotonic() >= redraw:
                live.update(render_rich(top.table()), refresh=True)
                redraw = time.monotonic() + refresh_s
            stop.wait(DEFAULT_INTERVAL_S)
    return 0
