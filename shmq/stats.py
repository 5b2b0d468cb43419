"""Read-only views of queue segments, for telemetry, the watchdog and ``shmq top``.

A view maps the segment read-only, so nothing it does can disturb the queue.
``Segments`` finds the queues to view in /dev/shm and follows them as they
appear and go; the exporter, the watchdog, ``shmq top`` and ``open()`` share it.
``snapshot()`` copies each participant record in one slice and returns frozen
dataclasses; counters are monotonic, so rates are differences of snapshots.
Timestamps in records are ``time.monotonic_ns()`` (one clock for every process on
a Linux host); ``QueueStats.wall_time_s`` converts them.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import operator
import os
import time
from typing import Callable, Iterable

from . import _ring
from . import layout as L
from . import procs
from .handle import Handle
from .errors import ShmqError
from .segment import PREFIX, SHM_DIR, QueueNotFound, Segment

State = L.ParticipantState


@dataclasses.dataclass(frozen=True)
class ParticipantStats:
    """One participant record, as read at snapshot time."""

    role: L.Role  #: writer, reader or remote reader
    index: int  #: the reader index; -1 for the writer
    pid: int  #: process id of the owner (0 before it attached); a remote reader's is on its host
    start_time: int  #: the owner's start time in clock ticks, to tell a reused pid apart
    state: L.ParticipantState  #: where the owner is (idle, busy, waiting_read, ...)
    state_since_ns: int  #: monotonic time of the last state change
    heartbeat_ns: int  #: monotonic time of the owner's last heartbeat
    progress_ns: int  #: monotonic time the cursor last moved (to heartbeat resolution)
    cursor: int  #: frames produced (writer) or consumed (reader) so far
    position: int  #: ring bytes produced (writer) or consumed (reader) so far
    messages: int  #: messages sent or received
    bytes: int  #: payload bytes sent or received
    spins: int  #: busy-poll iterations while waiting
    yields: int  #: sched_yield calls while waiting
    backoff_sleeps: int  #: sleeps taken by the Backoff strategy
    backoff_sleep_ns: int  #: total time in those sleeps
    parks: int  #: futex parks (or fallback sleeps)
    wakeups: int  #: futex wake calls issued to parked peers
    timeouts: int  #: put()/get() calls that timed out
    overflow_messages: int  #: messages sent or received in pieces (larger than a frame)
    waits: int  #: calls that had to wait; equals sum(histogram)
    wait_ns: int  #: total time spent in those waits
    parked_ns: int  #: of that, time parked on the futex (no CPU)
    busy_wait_ns: int  #: of that, time spinning and yielding (CPU burnt, unless a yield handed the core over)
    attaches: int  #: how many times a process attached to this record
    histogram: tuple[int, ...]  #: wait counts per bucket (not cumulative); bounds in layout.HISTOGRAM_UPPER_BOUNDS_S
    # The Adaptive wait strategy's decisions (0 under any other strategy).
    predicted_wakes: int = 0  #: timed wake-ups just before a predicted arrival
    prediction_hits: int = 0  #: arrivals within the spin budget after a predicted wake-up
    prediction_misses: int = 0  #: arrivals before the predicted wake-up, or after the spin budget ran out
    spin_before_arrival_ns: int = 0  #: time spun from predicted wake-ups to the arrivals they hit
    host: str = ""  #: a remote reader's host ("" for local participants)
    grace_ns: int = 0  #: a remote reader is alive while its heartbeat (its connection, seen by the writer) is younger

    @property
    def remote(self) -> bool:
        return self.role == L.Role.REMOTE_READER

    @property
    def alive(self) -> bool:
        """Whether the owner process still runs (always False before it attached); for a remote reader,
        whether the writer saw its connection within the grace."""
        if self.remote:
            return self.pid != 0 and time.monotonic_ns() - self.heartbeat_ns < self.grace_ns
        return procs.is_alive(self.pid, self.start_time)

    @property
    def label(self) -> str:
        if self.role == L.Role.WRITER:
            return "writer"
        return f"reader {self.index} (remote, {self.host or 'not attached'})" if self.remote else f"reader {self.index}"


@dataclasses.dataclass(frozen=True)
class QueueStats:
    """A whole queue at one instant."""

    shm_name: str  #: the shared-memory object
    name: str  #: the queue's logical name
    creator_pid: int  #: the process that created the segment
    created_ns: int  #: wall-clock creation time
    n_readers: int  #: local reader indexes
    n_remote_readers: int  #: remote reader slots (reader indexes n_readers and above)
    ring_bytes: int  #: the ring's size
    frame_bytes: int  #: the largest payload of one frame
    stats_enabled: bool  #: whether counters are kept
    endpoint: str  #: ZeroMQ endpoint of remote readers, or ""
    writer_cursor: int  #: frames published so far
    writer_position: int  #: ring bytes published so far
    monotonic_ns: int  #: time.monotonic_ns() when the snapshot was taken
    time_ns: int  #: time.time_ns() when the snapshot was taken
    writer: ParticipantStats  #: the writer's record
    readers: tuple[ParticipantStats, ...]  #: one record per reader index
    #: While the writer is parked for room: the reader position that makes it (shmq/_ring.c: park_writer).
    #: 0 otherwise, as while it spins or yields before parking.
    writer_waits_for: int = 0

    @property
    def gating_readers(self) -> tuple[ParticipantStats, ...]:
        """Readers that hold the writer back: attached or pending, not closed or evicted."""
        return tuple(r for r in self.readers if r.state < State.CLOSED)

    @property
    def occupancy(self) -> int:
        """Frames published that the slowest gating reader has not consumed."""
        gating = self.gating_readers
        return max(0, self.writer_cursor - min(r.cursor for r in gating)) if gating else 0

    @property
    def occupancy_bytes(self) -> int:
        """Ring bytes published that the slowest gating reader has not consumed: the ring is full when
        the next frame does not fit in ring_bytes minus this."""
        gating = self.gating_readers
        return max(0, self.writer_position - min(r.position for r in gating)) if gating else 0

    @property
    def may_be_full(self) -> bool:
        """Whether the next frame may not fit. A parked writer says exactly: a gating reader is still
        short of the position it waits for. Otherwise: less room left than two of the largest frames
        (one, and the padding that precedes it when it would cross the end of the ring)."""
        if self.writer_waits_for:
            return any(r.position < self.writer_waits_for for r in self.gating_readers)
        return self.ring_bytes - self.occupancy_bytes < 2 * L.frame_stride(self.frame_bytes)

    def lag(self, reader: ParticipantStats) -> int:
        """Frames published that `reader` has not consumed."""
        return max(0, self.writer_cursor - reader.cursor)

    def lag_bytes(self, reader: ParticipantStats) -> int:
        """Ring bytes published that `reader` has not consumed."""
        return max(0, self.writer_position - reader.position)

    def wall_time_s(self, monotonic_ns: int) -> float:
        """A record's monotonic timestamp as Unix time in seconds."""
        return (self.time_ns - (self.monotonic_ns - monotonic_ns)) / 1e9


# Word indexes, resolved once: the watchdog takes a snapshot of every queue ten times a second.
_COUNTER_NAMES = tuple(name for name, _ in L.COUNTER_FIELDS)
_counter_values = operator.itemgetter(*(L.word(offset) for _, offset in L.COUNTER_FIELDS))
_PID, _START_TIME, _ROLE, _STATE, _STATE_SINCE, _HEARTBEAT, _PROGRESS, _CURSOR, _POSITION = (
    L.word(offset) for offset in (L.REC_PID, L.REC_START_TIME, L.REC_ROLE, L.REC_STATE, L.REC_STATE_SINCE_NS,
                                  L.REC_HEARTBEAT_NS, L.REC_PROGRESS_NS, L.REC_CURSOR, L.REC_POSITION))
_HISTOGRAM = L.word(L.REC_HISTOGRAM)
_HOST, _GRACE = L.word(L.REC_HOST), L.word(L.REC_GRACE_NS)
_RECORD_WORDS = L.RECORD_BYTES // L.WORD
_WRITER_CURSOR = L.word(L.OFF_WRITER_CURSOR)
_WRITER_POSITION = L.word(L.OFF_WRITER_POSITION)
_WRITER_PARKED = L.word(L.OFF_WRITER_PARKED)
_STATES = {state.value: state for state in State}
_ROLES = {role.value: role for role in L.Role}


def _host(record: list[int]) -> str:
    """A remote reader's host, from its record's words."""
    return L.decode_text(b"".join(word.to_bytes(L.WORD, "little") for word in record[_HOST : _HOST + L.HOST_BYTES // L.WORD]))


class QueueView:
    """A read-only mapping of one queue segment."""

    def __init__(self, segment: Segment) -> None:
        self._segment = segment
        self.shm_name = segment.shm_name
        self.name = segment.name
        self.n_readers = segment.n_readers  # reader records: local and remote
        self.flight_entries = segment.flight_entries  #: each participant's flight ring size (0: none)

    def snapshot(self) -> QueueStats:
        seg = self._segment
        w = seg.words
        # The readers first: a reader is never ahead of the writer's cursor and position loaded after it.
        readers = tuple(self._record(w, p) for p in range(1, 1 + seg.n_readers))
        writer_cursor, writer_position = w[_WRITER_CURSOR], w[_WRITER_POSITION]
        # After the readers: readers seen past the position it waits for passed it before it was read, so
        # its wake-up is due or was lost.
        writer_waits_for = w[_WRITER_PARKED]
        # The writer publishes its cursor and position in the header.
        writer = self._record(w, 0, cursor=writer_cursor, position=writer_position)
        return QueueStats(
            shm_name=seg.shm_name, name=seg.name, creator_pid=seg.creator_pid, created_ns=seg.created_ns,
            n_readers=seg.n_local_readers, n_remote_readers=seg.n_remote_readers, ring_bytes=seg.ring_bytes, frame_bytes=seg.frame_bytes,
            stats_enabled=bool(seg.flags & L.FLAG_STATS), endpoint=seg.endpoint, writer_cursor=writer_cursor,
            writer_position=writer_position,
            monotonic_ns=time.monotonic_ns(), time_ns=time.time_ns(), writer=writer, readers=readers,
            writer_waits_for=writer_waits_for,
        )

    @staticmethod
    def _record(w: memoryview, participant: int, cursor: int | None = None,
                position: int | None = None) -> ParticipantStats:
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
            position=r[_POSITION] if position is None else position,
            histogram=tuple(r[_HISTOGRAM : _HISTOGRAM + L.HIST_BUCKETS]),
            host=_host(r) if role == L.Role.REMOTE_READER else "",
            grace_ns=r[_GRACE],
        )
        # Every field is set here, so the frozen dataclass's __init__ (one object.__setattr__ per
        # field, most of a snapshot's cost) is skipped; the result is equal to what it builds.
        record = object.__new__(ParticipantStats)
        record.__dict__.update(fields)
        return record

    def flight_ring(self, participant: int, last: int | None = None, after: int = 0) -> list[tuple]:
        """Participant `participant`'s flight ring (0: the writer, 1 + i: reader i), oldest first, or its
        `last` newest entries, and of those only the ones stamped above `after` (a stamp read before);
        the raw entries shmq.flight reads (one being written is left out)."""
        seg = self._segment
        if not self.flight_entries:
            return []
        return _ring.flight_entries(seg.buf, seg.flight_offset(participant), self.flight_entries,
                                    self.flight_entries if last is None else last, after)

    def close(self) -> None:
        self._segment.close()

    def __enter__(self) -> QueueView:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open(handle_or_name: Handle | str, *, shm_dir: str = SHM_DIR) -> QueueView:  # noqa: A001 - the documented name
    """Map a queue read-only, by Handle, handle string, shm object name or logical queue name."""
    shm_name = shm_name_of(handle_or_name)
    if shm_name is None:
        found = Segments([handle_or_name], shm_dir=shm_dir)
        found.refresh()
        matches = sorted(found.views)
        if len(matches) != 1:
            found.close()
            if not matches:
                raise QueueNotFound(f"no shmq segment in {shm_dir} holds a queue named {handle_or_name!r}")
            raise QueueNotFound(f"{len(matches)} segments hold a queue named {handle_or_name!r}: {matches}; "
                                "open one by its shm name")
        return found.views.pop(matches[0])
    return QueueView(Segment.open(shm_name, writable=False, shm_dir=shm_dir, ready_timeout_s=1.0))


def shm_name_of(item: Handle | str) -> str | None:
    """The shm object a Handle, handle string or ``shmq-...`` name names; None for a logical queue name."""
    if isinstance(item, Handle) or str(item).startswith("shmq://"):
        return Handle.coerce(item).shm_name
    return str(item) if str(item).startswith(PREFIX) else None


#: A segment this young that fails to open may still be being created (its version word comes last).
CREATION_GRACE_S = 2.0


@dataclasses.dataclass(frozen=True)
class QueueId:
    """A watched segment: its shm object and the label its metrics and events carry."""

    shm_name: str
    label: str  #: the queue's logical name, or name/shm_name when two segments share a name


class Segments:
    """The queues in `shm_dir` that `selection` picks, mapped read-only and followed as they come and go.

    `selection` None means every shmq segment. Otherwise each item is a Handle, a
    handle string, a ``shmq-...`` shm name or a logical queue name (every segment
    holding a queue of that name, including ones created later).

    A segment that cannot be read (corrupt, foreign, another layout version) is
    logged, counted in `skipped` and looked at again only when its file changes, so
    a bad file costs one ``stat`` per refresh; one that may still be being created
    (younger than CREATION_GRACE_S) is retried at the next refresh.
    """

    def __init__(self, selection: Iterable[Handle | str] | None = None, *, shm_dir: str = SHM_DIR,
                 clock: Callable[[], float] = time.time, log: logging.Logger = logging.getLogger("shmq.stats")) -> None:
        self.shm_dir = shm_dir
        self._clock = clock
        self._log = log
        self._shm_names: set[str] = set()
        self._names: set[str] | None = None if selection is None else set()
        for item in selection or ():
            shm_name = shm_name_of(item)
            if shm_name is None:
                self._names.add(str(item))
            else:
                self._shm_names.add(shm_name)
        self.views: dict[str, QueueView] = {}
        self.ids: dict[str, QueueId] = {}
        self.skipped = 0  #: unreadable segments passed over, each counted once while its file stays the same
        # Segments passed over: unreadable ones by (inode, size, mtime), looked at again when those change;
        # ones of other queues by inode alone, since a segment's name never changes.
        self._passed: dict[str, tuple[int, ...]] = {}
        self._listed: tuple[int, float] | None = None  # (directory mtime, monotonic time) of the last listing
        self._retry = False  # a segment that may still be being created waits for the next refresh

    def refresh(self) -> tuple[list[str], list[QueueId]]:
        """Map new segments and unmap unlinked ones. Returns the added shm names and the removed queues.

        The directory is listed only when its mtime changed (a segment was created or
        unlinked), or a second has passed since the last listing: mtimes are kept at
        the kernel's coarse clock, so two changes a few ms apart may share one.
        """
        try:
            mtime = os.stat(self.shm_dir).st_mtime_ns
            now = time.monotonic()
            if not self._retry and self._listed is not None and self._listed[0] == mtime and now - self._listed[1] < 1:
                return [], []
            self._listed = (mtime, now)
            present = {n for n in os.listdir(self.shm_dir) if n.startswith(PREFIX)}
        except FileNotFoundError:
            present = set()
        self._retry = False
        if self._names is not None and not self._names:
            present &= self._shm_names  # only logical names need every header read
        removed = [self.ids[shm_name] for shm_name in sorted(self.views.keys() - present)]
        for queue in removed:
            self.views.pop(queue.shm_name).close()
        for shm_name in self._passed.keys() - present:
            del self._passed[shm_name]
        added = [shm_name for shm_name in sorted(present - self.views.keys()) if self._open(shm_name)]
        if added or removed:
            self._label()
        return added, removed

    def _open(self, shm_name: str) -> bool:
        try:
            st = os.stat(os.path.join(self.shm_dir, shm_name))
        except FileNotFoundError:
            return False
        identity = (st.st_ino, st.st_size, st.st_mtime_ns)
        if self._passed.get(shm_name) in (identity, identity[:1]):
            return False
        try:
            segment = Segment.open(shm_name, writable=False, shm_dir=self.shm_dir, ready_timeout_s=0)
        except FileNotFoundError:
            return False
        except (ShmqError, OSError, ValueError) as e:
            if self._clock() - st.st_mtime < CREATION_GRACE_S:
                self._retry = True  # maybe still being made
            else:
                self._log.warning("%s: skipping %s: %s", self._log.name, shm_name, e)
                self._passed[shm_name] = identity
                self.skipped += 1
            return False
        if self._names is not None and shm_name not in self._shm_names and segment.name not in self._names:
            segment.close()
            self._passed[shm_name] = identity[:1]
            return False
        self.views[shm_name] = QueueView(segment)
        return True

    def _label(self) -> None:
        counts = collections.Counter(view.name for view in self.views.values())
        self.ids = {shm_name: QueueId(shm_name, view.name if counts[view.name] == 1 else f"{view.name}/{shm_name}")
                    for shm_name, view in self.views.items()}

    def close(self) -> None:
        for view in self.views.values():
            view.close()
        self.views.clear()


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
