"""The writer: claims room in the ring behind the slowest reader, writes frames there, publishes its cursor."""

from __future__ import annotations

import os
import struct
import time

from . import hooks as hooks_module
from . import layout as L
from . import procs, sync
from . import wait as wait_module
from .errors import BadQueueArgument, MessageTooLarge, QueueClosed, QueueTimeout, ReaderDead, ShmqError
from .handle import Handle
from .participant import (
    CLOSE_WAIT_S, DEFAULT_WARN_AFTER_S, R_BYTES, R_CURSOR, R_MESSAGES, R_OVERFLOW, R_OWNER, R_PID, R_POSITION,
    R_PROGRESS, R_STATE, R_STATE_SINCE, WAITING_WRITE, Participant, State, checked_timeout,
    log,
)
from ._ring import compare_exchange, frame_length
from .segment import SHM_DIR, Segment
from .serialization import Serializer, resolve

DEFAULT_MAX_MESSAGE_BYTES = 1 << 31
ON_DEAD_READER = ("raise", "evict")
# The fixed slots of shmq before the byte ring, for create(chunk_bytes=..., n_chunks=...) given one of them.
OLD_DEFAULT_CHUNK_BYTES = 1 << 20
OLD_DEFAULT_N_CHUNKS = 16
REMOTE_CLOSE_DRAIN_S = 5.0  # how long close() keeps sending remote readers the rest of the stream

_GATING = State.CLOSED  # states below this hold the writer back; CLOSED and EVICTED do not


class Writer(Participant):
    """The one writer of a queue. Made by ``shmq.create``."""

    _role = L.Role.WRITER

    def __init__(self, segment: Segment, *, serializer: Serializer, on_dead_reader: str,
                 wait: wait_module.WaitStrategy | None, warn_after_s: float,
                 hooks: hooks_module.MessageHooks | None, remote_bind: str, remote_grace_s: float | None,
                 remote_window_bytes: int | None, remote_secret_key: str | None = None,
                 remote_authorized_keys: str | None = None, stack_dumps: bool | str = True) -> None:
        super().__init__(segment, 0, wait=wait, warn_after_s=warn_after_s, hooks=hooks)
        self._serializer = serializer
        self._raw_flag = L.FRAME_RAW if serializer.raw else 0
        self._on_dead_reader = on_dead_reader
        self._frame_bytes = segment.frame_bytes
        self._piece_bytes = segment.piece_bytes
        self._ring_bytes = segment.ring_bytes
        self._max = segment.max_message_bytes
        self._reader_records = [L.word(L.record_offset(1 + i)) for i in range(segment.n_readers)]
        self._buf = segment.buf
        # The ring gates our position on these readers' (shmq/_ring.c: claim, the Disruptor's gating sequence).
        self._ring.bind_gating(tuple(L.record_offset(1 + i) for i in range(segment.n_readers)), L.REC_STATE,
                               L.REC_POSITION, _GATING)
        self._remote = None
        if segment.n_remote_readers:
            from .remote import RemoteServer  # pyzmq is only needed with remote readers

            self._remote = RemoteServer(segment, self, remote_bind, grace_s=remote_grace_s,
                                        window_bytes=remote_window_bytes, on_dead_reader=on_dead_reader,
                                        secret_key=remote_secret_key, authorized_keys=remote_authorized_keys)
            segment.set_endpoint(self._remote.endpoint)
        self.handle = Handle(
            shm_name=segment.shm_name, name=segment.name, n_readers=segment.n_local_readers,
            ring_bytes=segment.ring_bytes, frame_bytes=segment.frame_bytes, instance_id=segment.instance_id,
            endpoint=segment.endpoint, n_remote_readers=segment.n_remote_readers,
        )
        self._register(0, stack_dumps)

    # -- sending -----------------------------------------------------------------------
    def put(self, obj, *, timeout: float | None = None) -> None:
        """Send `obj` to every reader. Blocks while the ring is full; `timeout` in seconds (None or inf: for ever)."""
        self._send(self._serializer.encode(obj), self._raw_flag, timeout)

    def put_nowait(self, obj) -> None:
        """Send `obj`, or raise WouldBlock at once if the ring is full."""
        self._send(self._serializer.encode(obj), self._raw_flag, 0)

    def put_bytes(self, data, *, timeout: float | None = None) -> None:
        """Send raw bytes; readers get them back unpickled-free with get_bytes() or get()."""
        self._send([data], L.FRAME_RAW, timeout)

    def put_encoded(self, segments: list, flags: int, *, timeout: float | None = None) -> None:
        """Send a message as another queue's reader received it (RemoteReader.receive_encoded): its
        stream and buffers, and its frame flags (only whether it is raw bytes matters). For relays."""
        self._send(segments, flags & L.FRAME_RAW, timeout)

    def _send(self, segments: list, flags: int, timeout: float | None) -> None:
        if self._closed:
            raise QueueClosed(f"{self._describe()} is closed")
        total = frame_length(segments)
        if total > self._max:
            raise MessageTooLarge(f"a {total:,}-byte message exceeds max_message_bytes={self._max:,} of queue "
                                  f"{self.queue_name!r}")
        trace = traceparent = None
        if self._hooks is not None:
            trace = self._hooks.start_send(self.queue_name)
            if trace is not None:
                traceparent = trace.traceparent
                flags |= L.FRAME_TRACED
                self._events = []
        s = self._ring.written
        waited = 0
        try:
            # The usual message: one C call claims its room (ending within ring_bytes of the slowest reader),
            # writes, publishes and counts it, or refuses (ring full, another thread inside): the slow path.
            if total > self._frame_bytes or self._ring.open_pieces is not None or \
                    self._ring.put_one(flags, segments, traceparent) is None:
                try:
                    if not self._ring.enter():
                        raise self._busy_error()
                    s = self._cursor
                    # The timeout is checked here, when the call has to wait: the fast path pays nothing for it.
                    waited = self._send_slow(segments, total, flags, traceparent,
                                             None if timeout is None else checked_timeout(timeout))
                finally:
                    self._ring.leave()
        except BaseException as e:
            if trace is not None:
                self._finish_trace(trace, s, total, waited, e)
            raise
        if self._idle:
            self._mark_busy()
        if trace is not None:
            self._finish_trace(trace, s, total, waited, None)
        if self._remote is not None:
            self._remote.notify()

    def _send_slow(self, segments: list, total: int, flags: int, traceparent: bytes | None,
                   timeout: float | None) -> int:
        """Send a message that must wait for room, goes in pieces, or follows one cut short. Returns the wait."""
        if self._ring.open_pieces is not None:
            self._abort_unfinished(timeout)
        if total > self._frame_bytes:
            waited = self._send_pieces(segments, total, flags, traceparent, timeout)
            if self._stats:
                self._w[self._rec + R_MESSAGES] += 1
                self._w[self._rec + R_BYTES] += total
            return waited
        waited = self._claim(total, timeout)
        self._ring.put_one(flags, segments, traceparent)
        return waited

    def _finish_trace(self, trace, message_id: int, total: int, waited: int, error) -> None:
        events, self._events = self._events or [], None
        trace.finish(message_id=message_id, body_size=total, wait_ns=waited,
                     spins=self._last_wait_spins if waited else 0, events=events, error=error)

    def _send_pieces(self, segments: list, total: int, flags: int, traceparent: bytes | None,
                     timeout: float | None) -> int:
        """A message larger than a frame, `total` bytes, streamed through consecutive frames of piece_bytes.

        Each frame is published as soon as it is full, so readers copy piece k while
        the writer fills piece k+1 and a message may be larger than the whole ring.
        `timeout` covers every piece. If the call ends early (a timeout, an interrupt) after a
        piece was published, the message is unfinished (the ring's open_pieces, which each publish
        keeps in C, so no bytecode the interrupt lands on can miss it): the next put() or close()
        publishes an abort piece, and every reader drops what it assembled of it.
        """
        views = [memoryview(segment).cast("B") for segment in segments]
        offsets, _ = L.segment_layout([len(view) for view in views])
        table = struct.pack(f"<{1 + len(views)}Q", len(views), *(len(view) for view in views))
        sources = [memoryview(table)]
        position = len(table)
        for offset, view in zip(offsets, views):
            if offset > position:
                sources.append(memoryview(bytes(offset - position)))  # alignment padding
            sources.append(view)
            position = offset + len(view)
        flags |= L.FRAME_FRAGMENT
        if self._stats:
            self._w[self._rec + R_OVERFLOW] += 1
        piece_bytes = self._piece_bytes
        n_pieces = -(-total // piece_bytes)
        buf = self._buf
        source, offset = 0, 0
        waited = 0
        deadline = None if timeout is None else time.monotonic_ns() + int(timeout * 1e9)
        for piece in range(n_pieces):
            frame = min(piece_bytes, total - piece * piece_bytes)
            kind = (L.FRAME_FIRST if piece == 0 else 0) | (L.FRAME_LAST if piece == n_pieces - 1 else 0)
            if not self._ring.room(frame):
                remaining = timeout if piece == 0 or deadline is None else \
                    max(1e-9, (deadline - time.monotonic_ns()) / 1e9)  # > 0: a timeout, not WouldBlock
                waited += self._claim(frame, remaining)
            dest, need = self._ring.reserve(frame, total, flags | kind, traceparent), frame
            while need:
                view = sources[source]
                take = min(need, len(view) - offset)
                buf[dest : dest + take] = view[offset : offset + take]
                dest += take
                need -= take
                offset += take
                if offset == len(view):
                    source, offset = source + 1, 0
            self._publish()
        return waited

    def _abort_unfinished(self, timeout: float | None) -> None:
        """Publish the abort piece of the message an earlier call left unfinished."""
        first, total = self._ring.open_pieces
        s = self._cursor
        self._claim(0, timeout)
        self._ring.reserve(0, total, L.FRAME_FRAGMENT | L.FRAME_LAST | L.FRAME_ABORT, None)
        self._publish()  # ends the message: open_pieces is None from here on
        log.warning("shmq queue %r: message %d was interrupted after %d of its pieces; readers drop it",
                    self.queue_name, first, s - first)

    @property
    def _cursor(self) -> int:
        """Every message below it is published (shmq/_ring.c keeps it: see Ring.written)."""
        return self._ring.written

    def _publish(self) -> None:
        # The frame's stores, the release store of the cursor, a full fence, then a wake for the
        # readers parked for this frame: shmq/_ring.c argues the order.
        self._ring.publish()
        if self._remote is not None:  # the remote server streams the pieces as they come
            self._remote.notify()

    # -- waiting for room --------------------------------------------------------------
    def _claim(self, frame: int, timeout: float | None) -> int:
        """Make room for a frame of `frame` payload bytes: rescan the readers, and wait while the slowest
        still holds it."""
        room = self._ring.room
        if room(frame):
            return 0
        return self._block(lambda: room(frame), timeout, WAITING_WRITE)

    def park(self, timeout_s: float) -> None:
        if self._closed:
            return
        start = time.monotonic_ns()
        if self._ring.park_writer(self._park_timeout(timeout_s)):  # the handshake with the readers, in C
            self.idle_event("park", start, time.monotonic_ns() - start)

    def _gating_readers(self) -> list[int]:
        """Indexes of the readers whose positions keep the next frame from fitting."""
        w, wanted = self._w, self._ring.wanted
        return [i for i, rec in enumerate(self._reader_records)
                if w[rec + R_STATE] < _GATING and w[rec + R_POSITION] < wanted]

    def _check_peers(self, waited_ns: int) -> None:
        w = self._w
        for i in self._gating_readers():
            rec = self._reader_records[i]
            lost = self._remote.lost(i) if self._remote is not None else None
            if lost is not None:  # a remote reader: its server evicts it itself under on_dead_reader='evict'
                raise ReaderDead(f"{lost}; create the queue with on_dead_reader='evict' to carry on without it")
            owner = w[rec + R_OWNER]
            if w[rec + R_STATE] == State.PENDING or owner in (0, L.OWNER_EVICTING) or procs.owner_is_alive(owner):
                continue
            pid = owner & 0xFFFFFFFF
            lag = self._cursor - w[rec + R_CURSOR]
            if self._on_dead_reader == "raise":
                raise ReaderDead(f"reader {i} (pid {pid}) of queue {self.queue_name!r} died {lag} messages behind "
                                 f"the writer; create the queue with on_dead_reader='evict' to carry on without it")
            # Claim the record from its dead owner first: a process taking it over at this moment wins
            # or loses against us as a second attacher would, so a live reader is never marked evicted.
            owner_offset = L.record_offset(1 + i) + L.REC_OWNER
            if compare_exchange(self._buf, owner_offset, owner, L.OWNER_EVICTING) != owner:
                continue
            w[rec + R_STATE_SINCE] = time.monotonic_ns()
            w[rec + R_STATE] = State.EVICTED
            compare_exchange(self._buf, owner_offset, L.OWNER_EVICTING, 0)
            self._ring.record(L.FlightOp.EVICT, w[rec + R_CURSOR], i)
            log.warning("shmq queue %r: evicted dead reader %d (pid %d), %d messages behind", self.queue_name,
                        i, pid, lag)

    def _blockers(self, waited_ns: int) -> str:
        w, now = self._w, time.monotonic_ns()
        parts = []
        for i in self._gating_readers():
            rec = self._reader_records[i]
            if w[rec + R_STATE] == State.PENDING:
                parts.append(f"reader {i} has not attached")
                continue
            host = self._remote.host_of(i) if self._remote is not None else None
            where = f"remote, pid {w[rec + R_PID]} on {host}" if host is not None else f"pid {w[rec + R_PID]}"
            parts.append(f"reader {i} ({where}, state {State(w[rec + R_STATE]).name.lower()}, "
                         f"lag {self._cursor - w[rec + R_CURSOR]} messages, "
                         f"{self._ring.position - w[rec + R_POSITION]:,} of {self._ring_bytes:,} ring bytes, "
                         f"no progress for {(now - w[rec + R_PROGRESS]) / 1e9:.1f} s)")
        return "blocked by " + ("; ".join(parts) if parts else "no reader any more")

    def _describe(self) -> str:
        return f"shmq queue {self.queue_name!r}: writer (pid {self._pid})"

    def _would_block_reason(self) -> str:
        return f"queue {self.queue_name!r} is full: {self._blockers(0)}"

    # -- readers ---------------------------------------------------------------------
    def wait_for_readers(self, timeout: float | None = None) -> None:
        """Wait until every reader, local and remote, has attached once."""
        timeout = None if timeout is None else checked_timeout(timeout)
        deadline = None if timeout is None else time.monotonic() + timeout
        w = self._w
        while True:
            missing = [i for i, rec in enumerate(self._reader_records) if w[rec + R_STATE] == State.PENDING]
            if not missing:
                return
            if deadline is not None and time.monotonic() > deadline:
                raise QueueTimeout(f"queue {self.queue_name!r}: after {timeout} s, readers {missing} have not "
                                   f"attached (remote readers are {self._segment.n_local_readers} and above)")
            time.sleep(0.001)

    # -- lifecycle ---------------------------------------------------------------------
    def close(self) -> None:
        """Mark the queue closed (readers drain what is left, then get QueueClosed) and unlink it."""
        if self._closed:
            return
        self._closed = True  # a put() blocked in another thread raises QueueClosed at its next check
        if self._inherited:  # a forked child: the queue is the parent's; only unmap our copy
            self._segment.close()
            return
        try:
            self._enter(CLOSE_WAIT_S)
            self._close_held()
        finally:
            self._ring.leave()

    def _close_held(self) -> None:
        if self._ring.open_pieces is not None:
            try:
                self._abort_unfinished(0)
            except ShmqError:  # no room: readers waiting for its rest see the close instead
                pass
        self._set_state(State.CLOSED)
        sync.full_fence()
        self._ring.wake_readers()  # parked readers see the close now, not at their timeout
        if self._remote is not None:  # remote readers get the rest of the stream first
            self._remote.close(self._cursor, drain_s=REMOTE_CLOSE_DRAIN_S)
        self._stop_heartbeat()
        self._segment.unlink()
        self._segment.close()

    def abandon(self) -> None:
        """Unlink the queue without closing it: its readers see the writer die once this process exits,
        instead of a clean close (a relay whose origin died)."""
        if self._closed:
            return
        self._closed = True
        if self._remote is not None:
            self._remote.close(self._cursor, drain_s=0, goodbye=False)
        self._stop_heartbeat()
        self._segment.unlink()
        self._segment.close()

    def __repr__(self) -> str:
        where = f"inherited from pid {self._pid}" if self._inherited else f"cursor={self._cursor}"
        return f"<shmq.Writer {self.queue_name!r} {self.handle.shm_name} {where}>"


def create(n_readers: int, *, name: str | None = None, ring_bytes: int | None = None,
           chunk_bytes: int | None = None, n_chunks: int | None = None, wait: wait_module.WaitStrategy | None = None,
           serializer=None, on_dead_reader: str = "raise", n_remote_readers: int = 0,
           remote_bind: str = "tcp://127.0.0.1:*", remote_grace_s: float | None = None,
           remote_window_bytes: int | None = None, remote_secret_key: str | None = None,
           remote_authorized_keys: str | None = None, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
           stats: bool = True, warn_after_s: float = DEFAULT_WARN_AFTER_S,
           hooks: hooks_module.MessageHooks | None = None, shm_dir: str = SHM_DIR,
           stack_dumps: bool | str = True, flight_entries: int = L.DEFAULT_FLIGHT_ENTRIES) -> Writer:
    """Create a queue in shared memory and return its writer.

    One ring of `ring_bytes` (default 16 MiB, a multiple of 128) holds messages of every size as
    frames: a message up to a quarter of the ring and a page is one frame, a larger one (up to
    `max_message_bytes`, even larger than the ring) streams through it in pieces of a sixteenth
    of the ring and a page. `chunk_bytes` and `n_chunks`, the fixed slots of shmq's layout 3, are
    still accepted: they make a ring that holds `n_chunks` messages of `chunk_bytes`, whose larger
    messages go in pieces of `chunk_bytes`; they cannot be combined with `ring_bytes`.
    `n_readers` local readers attach with ``shmq.attach(writer.handle, reader=i)``;
    `n_remote_readers` more attach over ZeroMQ TCP at `remote_bind` with
    ``shmq.attach_remote(writer.handle, reader=j)`` (a queue may have only those). A remote reader
    gates the writer as a local one does, through what it acknowledges; at most
    `remote_window_bytes` of ring (default: all of it) is in flight to it, which bounds what its
    socket and ours buffer. A remote reader whose connection stays lost for `remote_grace_s`
    (default 10 s) is dead (`on_dead_reader` applies); one that comes back sooner resumes where it was. `stats=False`
    turns the per-participant counters off (for measuring their cost). `stack_dumps`
    lets a watchdog ask this process for its Python stacks (shmq.diagnostics); a
    string is the directory for the dump file. `flight_entries` sizes each participant's
    flight recorder (its last operations, read by ``shmq flight``; 64 bytes each, a power
    of two), 0 turns it off.
    """
    if on_dead_reader not in ON_DEAD_READER:
        raise ValueError(f"on_dead_reader must be one of {ON_DEAD_READER}, got {on_dead_reader!r}")
    if n_readers == 0 and not n_remote_readers:
        raise BadQueueArgument("a queue needs a reader: n_readers local ones, or n_remote_readers remote ones")
    ring_bytes, frame_bytes, piece_bytes = _geometry(ring_bytes, chunk_bytes, n_chunks)
    resolved = resolve(serializer)
    flags = (L.FLAG_STATS if stats else 0) | (L.FLAG_RAW_ONLY if resolved.raw else 0)
    segment = Segment.create(
        name=name or f"queue-{os.getpid()}", n_readers=n_readers, ring_bytes=ring_bytes, frame_bytes=frame_bytes,
        piece_bytes=piece_bytes, flags=flags, max_message_bytes=max_message_bytes, flight_entries=flight_entries,
        n_remote_readers=n_remote_readers, shm_dir=shm_dir,
    )
    try:
        return Writer(segment, serializer=resolved, on_dead_reader=on_dead_reader, wait=wait,
                      warn_after_s=warn_after_s, hooks=hooks, remote_bind=remote_bind, remote_grace_s=remote_grace_s,
                      remote_window_bytes=remote_window_bytes, remote_secret_key=remote_secret_key,
                      remote_authorized_keys=remote_authorized_keys, stack_dumps=stack_dumps)
    except BaseException:
        segment.unlink()
        segment.close()
        raise


def _geometry(ring_bytes: int | None, chunk_bytes: int | None, n_chunks: int | None) -> tuple[int, int, int]:
    """(ring_bytes, frame_bytes, piece_bytes) from create()'s arguments: the ring's size, or the fixed slots
    of old."""
    if chunk_bytes is None and n_chunks is None:
        ring_bytes = L.DEFAULT_RING_BYTES if ring_bytes is None else ring_bytes
        if type(ring_bytes) is not int:
            raise BadQueueArgument(f"ring_bytes must be an int, got {type(ring_bytes).__name__} {ring_bytes!r}")
        frame_bytes = L.default_frame_bytes(ring_bytes)
        return ring_bytes, frame_bytes, L.default_piece_bytes(ring_bytes, frame_bytes)
    if ring_bytes is not None:
        raise BadQueueArgument("give ring_bytes, or the old chunk_bytes and n_chunks, not both: one ring now "
                               "serves every message size")
    chunk_bytes = OLD_DEFAULT_CHUNK_BYTES if chunk_bytes is None else chunk_bytes
    n_chunks = OLD_DEFAULT_N_CHUNKS if n_chunks is None else n_chunks
    for what, value, low, high in (("chunk_bytes", chunk_bytes, L.MIN_FRAME_BYTES, 1 << 40),
                                   ("n_chunks", n_chunks, 2, 1 << 32)):
        if type(value) is not int or not low <= value <= high:
            raise BadQueueArgument(f"{what} must be an int in {low:,}..{high:,}, got {type(value).__name__} {value!r}")
    return n_chunks * L.frame_stride(chunk_bytes), chunk_bytes, chunk_bytes
