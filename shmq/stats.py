"""Read-only views of queue segments, for telemetry, the watchdog and ``shmq top``.

A view maps the segment read-only, so nothing it does can disturb the queue.
``snapshot()`` copies each participant record in one slice and returns frozen
dataclasses; counters are monotonic, so rates are differences of snapshots.
Timestamps in records are ``time.monotonic_ns()`` (one clock for every process on
a Linux host); ``QueueStats.wall_time_s`` converts them.
"""

from __future__ import annotations

import dataclasses
import operator
import time

from . import layout as L
from . import procs
from .handle import Handle
from .segment import SHM_DIR, QueueNotFound, Segment, list_segments

State = L.ParticipantState


@dataclasses.dataclass(frozen=True)
class ParticipantStats:
    """One participant record, as read at snapshot time."""

    role: L.Role  #: writer or reader
    index: int  #: the reader index; -1 for the writer
    pid: int  #: process id of the owner (0 before it attached)
    start_time: int  #: the owner's start time in clock ticks, to tell a reused pid apart
    state: L.ParticipantState  #: where the owner is (idle, busy, waiting_read, ...)
    state_since_ns: int  #: monotonic time of the last state change
    heartbeat_ns: int  #: monotonic time of the owner's last heartbeat
    progress_ns: int  #: monotonic time the cursor last moved (to heartbeat resolution)
    cursor: int  #: slots produced (writer) or consumed (reader) so far
    messages: int  #: messages sent or received
    bytes: int  #: payload bytes sent or received
    spins: int  #: busy-poll iterations while waiting
    yields: int  #: sched_yield calls while waiting
    backoff_sleeps: int  #: sleeps taken by the Backoff strategy
    backoff_sleep_ns: int  #: total time in those sleeps
    parks: int  #: futex parks (or fallback sleeps)
    wakeups: int  #: futex wake calls issued to parked peers
    timeouts: int  #: put()/get() calls that timed out
    overflow_messages: int  #: messages that spanned several slots
    waits: int  #: calls that had to wait; equals sum(histogram)
    wait_ns: int  #: total time spent in those waits
    attaches: int  #: how many times a process attached to this record
    histogram: tuple[int, ...]  #: wait counts per bucket (not cumulative); bounds in layout.HISTOGRAM_UPPER_BOUNDS_S
    # The Adaptive wait strategy's decisions (0 under any other strategy).
    predicted_wakes: int = 0  #: timed wake-ups just before a predicted arrival
    prediction_hits: int = 0  #: arrivals within the spin budget after a predicted wake-up
    prediction_misses: int = 0  #: arrivals before the predicted wake-up, or after the spin budget ran out
    spin_before_arrival_ns: int = 0  #: time spun from predicted wake-ups to the arrivals they hit

    @property
    def alive(self) -> bool:
        """Whether the owner process still runs (always False before it attached)."""
        return procs.is_alive(self.pid, self.start_time)

    @property
    def label(self) -> str:
        return "writer" if self.role == L.Role.WRITER else f"reader {self.index}"


@dataclasses.dataclass(frozen=True)
class QueueStats:
    """A whole queue at one instant."""

    shm_name: str  #: the shared-memory object
    name: str  #: the queue's logical name
    creator_pid: int  #: the process that created the segment
    created_ns: int  #: wall-clock creation time
    n_readers: int  #: local reader slots
    n_chunks: int  #: ring capacity in slots
    chunk_bytes: int  #: payload bytes per slot
    stats_enabled: bool  #: whether counters are kept
    endpoint: str  #: ZeroMQ endpoint of remote readers, or ""
    writer_cursor: int  #: slots published so far
    monotonic_ns: int  #: time.monotonic_ns() when the snapshot was taken
    time_ns: int  #: time.time_ns() when the snapshot was taken
    writer: ParticipantStats  #: the writer's record
    readers: tuple[ParticipantStats, ...]  #: one record per reader index

    @property
    def gating_readers(self) -> tuple[ParticipantStats, ...]:
        """Readers that hold the writer back: attached or pending, not closed or evicted."""
        return tuple(r for r in self.readers if r.state < State.CLOSED)

    @property
    def occupancy(self) -> int:
        """Slots published that the slowest gating reader has not consumed."""
        gating = self.gating_readers
        return self.writer_cursor - min(r.cursor for r in gating) if gating else 0

    def lag(self, reader: ParticipantStats) -> int:
        return max(0, self.writer_cursor - reader.cursor)

    def wall_time_s(self, monotonic_ns: int) -> float:
        """A record's monotonic timestamp as Unix time in seconds."""
        return (self.time_ns - (self.monotonic_ns - monotonic_ns)) / 1e9


# Word indexes, resolved once: the watchdog takes a snapshot of every queue ten times a second.
_COUNTER_NAMES = tuple(name for name, _ in L.COUNTER_FIELDS)
_counter_values = operator.itemgetter(*(L.word(offset) for _, offset in L.COUNTER_FIELDS))
_PID, _START_TIME, _ROLE, _STATE, _STATE_SINCE, _HEARTBEAT, _PROGRESS, _CURSOR = (L.word(offset) for offset in (
    L.REC_PID, L.REC_START_TIME, L.REC_ROLE, L.REC_STATE, L.REC_STATE_SINCE_NS, L.REC_HEARTBEAT_NS,
    L.REC_PROGRESS_NS, L.REC_CURSOR))
_HISTOGRAM = L.word(L.REC_HISTOGRAM)
_RECORD_WORDS = L.RECORD_BYTES // L.WORD
_WRITER_CURSOR = L.word(L.OFF_WRITER_CURSOR)
_STATES = {state.value: state for state in State}
_ROLES = {role.value: role for role in L.Role}


class QueueView:
    """A read-only mapping of one queue segment."""

    def __init__(self, segment: Segment) -> None:
        self._segment = segment
        self.shm_name = segment.shm_name
        self.name = segment.name

    def snapshot(self) -> QueueStats:
        seg = self._segment
        w = seg.words
        writer_cursor = w[_WRITER_CURSOR]
        writer = self._record(w, 0, cursor=writer_cursor)  # the writer publishes its cursor in the header
        readers = tuple(self._record(w, p) for p in range(1, 1 + seg.n_readers))
        return QueueStats(
            shm_name=seg.shm_name, name=seg.name, creator_pid=seg.creator_pid, created_ns=seg.created_ns,
            n_readers=seg.n_readers, n_chunks=seg.n_chunks, chunk_bytes=seg.chunk_bytes,
            stats_enabled=bool(seg.flags & L.FLAG_STATS), endpoint=seg.endpoint, writer_cursor=writer_cursor,
            monotonic_ns=time.monotonic_ns(), time_ns=time.time_ns(), writer=writer, readers=readers,
        )

    @staticmethod
    def _record(w: memoryview, participant: int, cursor: int | None = None) -> ParticipantStats:
        base = L.word(L.record_offset(participant))
        r = w[base : base + _RECORD_WORDS].tolist()  # one copy, so fields are close in time
        role = _ROLES.get(r[_ROLE]) if r[_ROLE] else (L.Role.WRITER if participant == 0 else L.Role.READER)
        if role is None:
            role = L.Role(r[_ROLE])  # raises: a corrupt record
        fields = dict(zip(_COUNTER_NAMES, _counter_values(r)))
        fields.update(
            role=role,
            index=participant - 1,
            pid=r[_PID],
            start_time=r[_START_TIME],
            state=_STATES.get(r[_STATE], State.PENDING),
            state_since_ns=r[_STATE_SINCE],
            heartbeat_ns=r[_HEARTBEAT],
            progress_ns=r[_PROGRESS],
            cursor=r[_CURSOR] if cursor is None else cursor,
            histogram=tuple(r[_HISTOGRAM : _HISTOGRAM + L.HIST_BUCKETS]),
        )
        # Every field is set here, so the frozen dataclass's __init__ (one object.__setattr__ per
        # field, most of a snapshot's cost) is skipped; the result is equal to what it builds.
        record = object.__new__(ParticipantStats)
        record.__dict__.update(fields)
        return record

    def close(self) -> None:
        self._segment.close()

    def __enter__(self) -> QueueView:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open(handle_or_name: Handle | str, *, shm_dir: str = SHM_DIR) -> QueueView:  # noqa: A001 - the documented name
    """Map a queue read-only, by Handle, handle string, shm object name or logical queue name."""
    if isinstance(handle_or_name, Handle) or str(handle_or_name).startswith("shmq://"):
        shm_name = Handle.coerce(handle_or_name).shm_name
    elif str(handle_or_name).startswith("shmq-"):
        shm_name = handle_or_name
    else:
        matches = [s.shm_name for s in list_segments(shm_dir) if s.name == handle_or_name and not s.error]
        if not matches:
            raise QueueNotFound(f"no shmq segment in {shm_dir} holds a queue named {handle_or_name!r}")
        if len(matches) > 1:
            raise QueueNotFound(f"{len(matches)} segments hold a queue named {handle_or_name!r}: {matches}; "
                                "open one by its shm name")
        shm_name = matches[0]
    return QueueView(Segment.open(shm_name, writable=False, shm_dir=shm_dir, ready_timeout_s=1.0))


def histogram_quantile(counts, q: float) -> float | None:
    """Upper bound in seconds of the bucket that holds quantile `q` of a (non-cumulative) wait histogram:
    a participant's ``histogram`` or a difference of two. None when it counts no wait; inf for the last bucket."""
    total = sum(counts)
    if not total:
        return None
    rank, seen = q * total, 0
    for bound, count in zip((*L.HISTOGRAM_UPPER_BOUNDS_S, float("inf")), counts):
        seen += count
        if seen >= rank:
            return bound
    return float("inf")
