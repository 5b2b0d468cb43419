"""The watchdog's rules: from a queue's successive snapshots to findings (what is wrong now, and why).

``dead`` is exact: the pid is gone or belongs to another process now, as
iceoryx2 detects dead nodes. The others compare progress against time and hold
only after a threshold (``Thresholds``); ``AlertBook`` turns findings into
alerts that are raised once and cleared once.

A monitor keeps per-participant history: when its cursor last moved (as seen by
the watchdog, or by the owner's heartbeat thread, whichever is later) and since
when data has been pending for it. Rates (occupancy growth, spins) are
differences between the newest snapshot and the oldest one inside a window.
"""

from __future__ import annotations

import collections
import dataclasses
import enum
import math
from typing import Callable, NamedTuple

from shmq.layout import ParticipantState as State
from shmq.layout import Role
from shmq.stats import ParticipantStats, QueueStats

from .. import names as N

#: States in which a process owns the record (a dead owner is a fault); PENDING has none, CLOSED and EVICTED left.
ATTACHED = frozenset((State.IDLE, State.BUSY, State.WAITING_READ, State.WAITING_WRITE))
#: /proc states of a process that runs no code: stopped, traced, uninterruptible sleep.
HALTED_RUN_STATES = ("T", "t", "D")


class Cause(str, enum.Enum):
    """Why a rule holds; the `cause` field of an event."""

    EXITED = "exited"  #: dead: the pid no longer exists (or is a zombie)
    PID_REUSED = "pid_reused"  #: dead: the pid runs another process now
    WAITING_WITH_DATA = "waiting_with_data"  #: inside get() although data is there: lost wake-up or livelock
    BUSY = "busy"  #: outside the queue, in application code: a slow consumer
    FROZEN = "frozen"  #: heartbeat stale or process halted: SIGSTOP, a C call holding the GIL, D state
    NOT_ATTACHED = "not_attached"  #: a reader index nobody attached to, which still holds the writer back
    SPINNING_WITH_DATA = "spinning_with_data"  #: livelock of a reader: spins while messages wait for it
    SPINNING_WITH_SPACE = "spinning_with_space"  #: livelock of the writer: spins while the ring has room
    WAITING_WITH_SPACE = "waiting_with_space"  #: the writer waits although no reader holds the ring full

    def __str__(self) -> str:
        return self.value


@dataclasses.dataclass(frozen=True)
class Thresholds:
    """Every knob of the rules. Defaults are justified by measurement in docs/watchdog.md (Why these defaults)."""

    stall_s: float = 1.0  #: T: this long without progress while work is pending is a stall (3 rules use it)
    heartbeat_stale_s: float = 0.5  #: a heartbeat older than this means the process runs no Python (5 missed beats)
    spin_rate: float = 1000.0  #: spins+yields per second that count as spinning, for livelock
    freeze_occupancy: float = 0.75  #: freeze_risk needs the ring at least this full ...
    freeze_horizon_s: float = 5.0  #: ... and projected to be full within this many seconds
    freeze_hold_occupancy: float = 0.5  #: once raised, freeze_risk holds while the ring is at least this full
    freeze_polls: int = 3  #: polls in a row of a high ring that does not drain (2 if the slowest reader stands still)
    rate_window_s: float = 1.0  #: window for the fill rate behind time-to-full
    clear_after_s: float = 2.0  #: an alert clears after its condition has been false this long

    def __post_init__(self) -> None:
        if not 0 < self.freeze_hold_occupancy <= self.freeze_occupancy <= 1:
            raise ValueError("need 0 < freeze_hold_occupancy <= freeze_occupancy <= 1")
        if self.freeze_polls < 2:
            raise ValueError("freeze_polls must be at least 2")
        for name in ("stall_s", "heartbeat_stale_s", "freeze_horizon_s", "rate_window_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")


@dataclasses.dataclass(frozen=True)
class Blocker:
    """A reader that holds the lowest position (ring bytes read), named in writer_blocked and freeze_risk findings."""

    reader: int
    pid: int
    state: str
    lag: int
    cause: Cause


@dataclasses.dataclass(frozen=True)
class Finding:
    """One rule holding for one participant (or, for freeze_risk, the queue's writer) at one poll."""

    rule: str  #: one of names.RULES
    role: str  #: "writer" or "reader"
    reader: int  #: the reader index; -1 for the writer
    cause: Cause
    pid: int  #: the process the finding is about (0 for a reader index nobody attached to)
    start_time: int  #: its start time, to ask it for stacks without hitting a reused pid
    state: str  #: its participant state
    lag: int  #: messages pending for it (readers) or in the ring (writer)
    occupancy: int  #: ring bytes in use
    capacity: int  #: the ring's bytes
    stalled_s: float  #: seconds without progress while work was pending
    spin_rate: float  #: its spins+yields per second
    time_to_full_s: float  #: projected seconds until the ring is full (inf: not filling)
    blockers: tuple[Blocker, ...] = ()  #: readers that hold the lowest position (writer_blocked, freeze_risk)

    @property
    def key(self) -> tuple[str, str, int]:
        return self.rule, self.role, self.reader

    @property
    def label(self) -> str:
        return "writer" if self.reader < 0 else f"reader {self.reader}"


class _Sample(NamedTuple):
    """A past poll, for the fill rate; two ints, so a window of them costs little to keep."""

    monotonic_ns: int
    occupancy: int


class _Track:
    """What the watchdog remembers about one record between polls.

    Spins are counted from a reference point that moves with the cursor and when
    work starts pending, so the spin rate of a stalled participant is its rate
    while stalled, not diluted by an idle wait before.
    """

    __slots__ = ("owner", "cursor", "moved_ns", "pending_since_ns", "spins_ref", "ref_ns")

    def __init__(self, p: ParticipantStats, now_ns: int) -> None:
        self.owner = (p.pid, p.start_time)
        self.cursor = p.cursor
        self.moved_ns = min(p.progress_ns, now_ns) if p.progress_ns else now_ns
        self.pending_since_ns: int | None = now_ns  # unknown before we looked: count from the first look
        self.restart_spins(p, now_ns)

    def restart_spins(self, p: ParticipantStats, now_ns: int) -> None:
        self.spins_ref = p.spins + p.yields
        self.ref_ns = now_ns

    def spin_rate(self, p: ParticipantStats, now_ns: int) -> float:
        """Spins plus yields per second since the reference point."""
        seconds = (now_ns - self.ref_ns) / 1e9
        return max(0, p.spins + p.yields - self.spins_ref) / seconds if seconds > 0 else 0.0

    def stalled_ns(self, now_ns: int) -> int:
        """How long work has been pending without the cursor moving (0 with nothing pending)."""
        if self.pending_since_ns is None:
            return 0
        return now_ns - max(self.moved_ns, self.pending_since_ns)


class QueueMonitor:
    """Applies the rules to one queue, one snapshot at a time.

    `is_alive(pid, start_time)` and `run_state(pid)` are injected (see
    ``liveness.PidWatch`` and ``shmq.procs.run_state``) so the rules can be
    tested on made-up snapshots.
    """

    def __init__(self, thresholds: Thresholds, *, is_alive: Callable[[int, int], bool],
                 run_state: Callable[[int], str | None]) -> None:
        self.t = thresholds
        self._is_alive = is_alive
        self._run_state = run_state
        self._stall_ns = int(thresholds.stall_s * 1e9)
        self._tracks: dict[int, _Track] = {}  # record number (0 = writer, 1 + i = reader i) -> track
        self._history: collections.deque[_Sample] = collections.deque()
        self._high: collections.deque[tuple[int, int]] = collections.deque(maxlen=thresholds.freeze_polls)
        self.time_to_full_s = math.inf  #: the latest projection, for the time-to-full gauge

    def observe(self, snap: QueueStats, active: set[tuple[str, str, int]]) -> list[Finding]:
        """Findings for this snapshot. `active` holds the keys of alerts already raised (for hysteresis)."""
        now = snap.monotonic_ns
        occupancy = snap.occupancy_bytes
        self._remember(snap, occupancy)
        self.time_to_full_s = self._time_to_full(snap, occupancy)
        findings: list[Finding] = []
        dead = set()
        for number, p in enumerate((snap.writer, *snap.readers)):
            track = self._track(number, p, snap.writer_cursor, now)
            if p.state in ATTACHED and p.pid and not self._alive(p):
                dead.add(number)
                findings.append(self._dead(p, snap))
            elif number and p.state < State.CLOSED and track.stalled_ns(now) >= self._stall_ns:
                findings.append(self._reader_stalled(p, snap, now, occupancy, track.stalled_ns(now)))
        if 0 not in dead:
            for finding in (self._writer_blocked(snap, now, occupancy),
                            self._freeze_risk(snap, occupancy, (N.RULE_FREEZE_RISK, "writer", -1) in active)):
                if finding is not None:
                    findings.append(finding)
        findings.extend(self._livelock(snap, now, occupancy, dead))
        return findings

    # -- history ---------------------------------------------------------------------------
    def _track(self, number: int, p: ParticipantStats, writer_cursor: int, now: int) -> _Track:
        track = self._tracks.get(number)
        if track is None or track.owner != (p.pid, p.start_time):
            track = self._tracks[number] = _Track(p, now)
        if p.cursor != track.cursor:
            track.cursor = p.cursor
            track.moved_ns = now
            track.restart_spins(p, now)
        elif p.progress_ns > track.moved_ns:
            track.moved_ns = min(p.progress_ns, now)  # the owner's heartbeat saw a move we missed
            track.restart_spins(p, now)
        if number and writer_cursor <= p.cursor:
            track.pending_since_ns = None
        elif track.pending_since_ns is None:
            track.pending_since_ns = now
            track.restart_spins(p, now)
        return track

    def _remember(self, snap: QueueStats, occupancy: int) -> None:
        history = self._history
        history.append(_Sample(snap.monotonic_ns, occupancy))
        keep_ns = int(self.t.rate_window_s * 1e9) + 200_000_000
        while len(history) > 2 and snap.monotonic_ns - history[1].monotonic_ns >= keep_ns:
            history.popleft()

    def _past(self, window_s: float) -> _Sample:
        """The oldest remembered sample not older than `window_s` (the newest if none is)."""
        limit = self._history[-1].monotonic_ns - int(window_s * 1e9)
        for sample in self._history:
            if sample.monotonic_ns >= limit:
                return sample
        return self._history[-1]


    # -- classification ---------------------------------------------------------------------
    def classify(self, p: ParticipantStats, now: int) -> Cause:
        """Why a reader with pending data does not move (dead ones are reported by the dead rule)."""
        if p.state == State.PENDING:
            return Cause.NOT_ATTACHED
        if not self._alive(p):
            return Cause.EXITED  # a dead reader holding the lowest position, until the writer evicts it
        if now - p.heartbeat_ns > self.t.heartbeat_stale_s * 1e9 or \
                not p.remote and self._run_state(p.pid) in HALTED_RUN_STATES:
            return Cause.FROZEN
        if p.state == State.WAITING_READ:
            return Cause.WAITING_WITH_DATA
        return Cause.BUSY

    def _alive(self, p: ParticipantStats) -> bool:
        """A local process by its pid; a remote reader by its heartbeat, which the writer stamps while it
        sees the reader's connection."""
        return p.alive if p.remote else self._is_alive(p.pid, p.start_time)

    def _blockers(self, snap: QueueStats, now: int) -> tuple[Blocker, ...]:
        gating = snap.gating_readers
        if not gating:
            return ()
        lowest = min(r.position for r in gating)
        return tuple(Blocker(r.index, r.pid, r.state.name.lower(), snap.lag(r), self.classify(r, now))
                     for r in gating if r.position == lowest)

    # -- rules -------------------------------------------------------------------------------
    def _finding(self, rule: str, p: ParticipantStats, cause: Cause, snap: QueueStats, occupancy: int,
                 stalled_ns: int = 0, spin_rate: float = 0.0, blockers: tuple[Blocker, ...] = ()) -> Finding:
        writer = p.role == Role.WRITER
        return Finding(
            rule=rule, role="writer" if writer else "reader", reader=-1 if writer else p.index, cause=cause,
            pid=p.pid, start_time=p.start_time, state=p.state.name.lower(),
            lag=snap.occupancy if writer else snap.lag(p), occupancy=occupancy, capacity=snap.ring_bytes,
            stalled_s=round(stalled_ns / 1e9, 3), spin_rate=round(spin_rate, 1),
            time_to_full_s=self.time_to_full_s, blockers=blockers,
        )

    def _dead(self, p: ParticipantStats, snap: QueueStats) -> Finding:
        cause = Cause.EXITED if p.remote or self._run_state(p.pid) in (None, "Z") else Cause.PID_REUSED
        return self._finding(N.RULE_DEAD, p, cause, snap, snap.occupancy_bytes)

    def _reader_stalled(self, p: ParticipantStats, snap: QueueStats, now: int, occupancy: int,
                        stalled: int) -> Finding:
        return self._finding(N.RULE_READER_STALLED, p, self.classify(p, now), snap, occupancy, stalled,
                             self._tracks[1 + p.index].spin_rate(p, now))

    def _writer_blocked(self, snap: QueueStats, now: int, occupancy: int) -> Finding | None:
        w = snap.writer
        if w.state != State.WAITING_WRITE or now - w.state_since_ns < self._stall_ns:
            return None
        blockers = self._blockers(snap, now)
        cause = blockers[0].cause if blockers and snap.may_be_full else Cause.WAITING_WITH_SPACE
        return self._finding(N.RULE_WRITER_BLOCKED, w, cause, snap, occupancy, now - w.state_since_ns,
                             self._tracks[0].spin_rate(w, now), blockers)

    def _time_to_full(self, snap: QueueStats, occupancy: int) -> float:
        if occupancy >= snap.ring_bytes:
            return 0.0
        then = self._past(self.t.rate_window_s)
        seconds = (snap.monotonic_ns - then.monotonic_ns) / 1e9
        growth = occupancy - then.occupancy
        if seconds < self.t.rate_window_s / 4 or growth <= 0:
            return math.inf  # too little history for a rate, or not filling
        return (snap.ring_bytes - occupancy) / (growth / seconds)

    def _freeze_risk(self, snap: QueueStats, occupancy: int, raised: bool) -> Finding | None:
        """Raised when the ring is high and filling on consecutive polls, in one of two shapes:

        - 2 polls while the slowest reader has not moved at all (a stall in the making), or
        - `freeze_polls` polls while the occupancy never fell (a consumer slower than the writer).

        A healthy burst fills the ring too, but its slowest reader keeps moving and
        the ring drains between bursts, so it matches neither. It is raised only
        while the ring is not yet full (it warns before the writer blocks); once
        raised it holds while the ring stays at least half full and filling or full.
        """
        t, capacity, ttf = self.t, snap.ring_bytes, self.time_to_full_s
        high = self._high
        if raised:  # hysteresis: hold at a lower occupancy, as long as the ring still fills (or is full)
            high.clear()
            holds = occupancy >= t.freeze_hold_occupancy * capacity and ttf < 2 * t.freeze_horizon_s
            return self._freeze_finding(snap, occupancy) if holds else None
        if not t.freeze_occupancy * capacity <= occupancy < capacity or ttf >= t.freeze_horizon_s or \
                snap.writer.state == State.WAITING_WRITE:
            high.clear()  # a full ring is writer_blocked's business: this rule is the warning before it
            return None
        high.append((occupancy, snap.writer_position - occupancy))  # (occupancy, the slowest reader's position)
        recent = list(high)
        standing = len(recent) >= 2 and recent[-1][1] == recent[-2][1]
        climbing = len(recent) == t.freeze_polls and all(a[0] <= b[0] for a, b in zip(recent, recent[1:]))
        return self._freeze_finding(snap, occupancy) if standing or climbing else None

    def _freeze_finding(self, snap: QueueStats, occupancy: int) -> Finding:
        blockers = self._blockers(snap, snap.monotonic_ns)  # not empty: occupancy > 0 needs a gating reader
        return self._finding(N.RULE_FREEZE_RISK, snap.writer, blockers[0].cause, snap, occupancy, blockers=blockers)

    def _livelock(self, snap: QueueStats, now: int, occupancy: int, dead: set[int]) -> list[Finding]:
        """Participants that spin although what they wait for is there, while no cursor in the queue moves."""
        quiet_ns = now - max(track.moved_ns for track in self._tracks.values())
        if quiet_ns < self._stall_ns:
            return []
        findings = []
        waiting = [(0, snap.writer, not snap.may_be_full and snap.writer.state == State.WAITING_WRITE,
                    Cause.SPINNING_WITH_SPACE)]
        waiting += [(1 + r.index, r, r.state == State.WAITING_READ and snap.lag(r) > 0, Cause.SPINNING_WITH_DATA)
                    for r in snap.readers]
        for number, p, satisfiable, cause in waiting:
            if not satisfiable or number in dead:
                continue
            rate = self._tracks[number].spin_rate(p, now)
            if rate >= self.t.spin_rate:
                findings.append(self._finding(N.RULE_LIVELOCK, p, cause, snap, occupancy, quiet_ns, rate))
        return findings
