"""A local reader: follows the writer cursor, copies each message out, then publishes its own cursor."""

from __future__ import annotations

import contextlib
import time
from typing import Any, Iterator

from . import hooks as hooks_module
from . import layout as L
from . import procs, sync
from . import wait as wait_module
from .errors import (
    AlreadyAttached, BadHandle, CorruptMessage, MessageOverwritten, NotRawMessage, QueueClosed, QueueTimeout,
    WriterDead,
)
from .handle import Handle
from .participant import (
    CLOSE_WAIT_S, DEFAULT_WARN_AFTER_S, R_CURSOR, R_OWNER, R_PID, R_PROGRESS, R_START_TIME, R_STATE,
    R_POSITION, W_WRITER_CURSOR, WAITING_READ, Participant, State, checked_timeout,
)
from ._ring import NOTHING, compare_exchange, frame_spans, uninitialized_bytearray
from .segment import SHM_DIR, Segment
from .serialization import BytesSerializer, Serializer, resolve, stream_decoder

_FRAME_HEAD = L.FRAME_HEAD
_HEADER_BYTES = L.FRAME_HEADER_BYTES
_FRAGMENT = L.FRAME_FRAGMENT
_WRITER_RECORD = L.word(L.record_offset(0))
_PUBLISH_EVERY = 64  # frames a reader reads through a backlog between publishes (shmq/_ring.c: release_read)


class Receiving:
    """The get() API that local and remote readers share; each implements ``_receive(timeout, raw)``."""

    def get(self, *, timeout: float | None = None) -> Any:
        """The next message. Blocks until one arrives; `timeout` in seconds (None or inf: for ever)."""
        return self._receive(None if timeout is None else checked_timeout(timeout), False)

    def get_nowait(self) -> Any:
        """The next message, or WouldBlock at once if there is none."""
        return self._receive(0, raw=False)

    def get_bytes(self, *, timeout: float | None = None) -> bytes:
        """The next message, which must have been sent with put_bytes() or to a serializer='bytes' queue."""
        return self._receive(None if timeout is None else checked_timeout(timeout), raw=True)

    def _receive(self, timeout: float | None, raw: bool) -> Any:
        raise NotImplementedError


def _deadline(timeout: float | None) -> int | None:
    """time.monotonic_ns() when a call's `timeout` (checked_timeout's) runs out."""
    return None if timeout is None else time.monotonic_ns() + int(max(timeout, 0) * 1e9)


def _remaining(deadline: int | None) -> float | None:
    """Seconds left before `deadline` (0 once it passed), for a wait inside a call."""
    return None if deadline is None else max(0, deadline - time.monotonic_ns()) / 1e9


class _Assembly:
    """A message in pieces, being copied in: progress is the reader's cursor, so the copy resumes
    where an interrupt or a timeout left it. Piece k holds bytes k * piece_bytes onwards."""

    __slots__ = ("first", "total", "flags", "whole", "traceparent", "waited", "wait_start")

    def __init__(self, first: int, total: int, flags: int, traceparent: bytes | None, wait_start: int) -> None:
        self.first, self.total, self.flags, self.traceparent = first, total, flags, traceparent
        self.whole = memoryview(uninitialized_bytearray(total))
        self.waited, self.wait_start = 0, wait_start


class Reader(Receiving, Participant):
    """Local reader `index` of a queue. Made by ``shmq.attach``."""

    _role = L.Role.READER

    def __init__(self, segment: Segment, index: int, *, serializer: Serializer,
                 wait: wait_module.WaitStrategy | None, warn_after_s: float,
                 hooks: hooks_module.MessageHooks | None, stack_dumps: bool | str = True) -> None:
        if not isinstance(index, int) or not 0 <= index < segment.n_local_readers:
            readers = f"readers 0..{segment.n_local_readers - 1}" if segment.n_local_readers else \
                "only remote readers (shmq.attach_remote)"
            raise BadHandle(f"queue {segment.name!r} has {readers}; there is no reader {index!r}")
        super().__init__(segment, 1 + index, wait=wait, warn_after_s=warn_after_s, hooks=hooks)
        self.index = index
        cursor, position, at_head = self._take_record()
        self._serializer = BytesSerializer() if segment.flags & L.FLAG_RAW_ONLY else serializer
        self._raw_only = self._serializer.raw
        self._frame_bytes = segment.frame_bytes
        self._piece_bytes = segment.piece_bytes
        self._ring_bytes = segment.ring_bytes
        self._max = segment.max_message_bytes
        # The ring keeps our cursor, position and totals and publishes them (shmq/_ring.c): once per
        # batch while a backlog lasts, and at once when we catch up, as a publish (stores, a full fence,
        # the parked check) costs a fifth of a small get(). If the application stops reading mid-batch,
        # the heartbeat thread publishes the rest (_publish_behind).
        self._ring.bind_reader(index, cursor, position, _PUBLISH_EVERY)
        # The ring decodes the usual message in the call that takes it, and keeps what a call took
        # and has not returned yet (ring.unfinished): an interrupt then never loses a message.
        self._ring.bind_decoders(stream_decoder(self._serializer), self._serializer.decode)
        self._buf = segment.buf
        self._register(index, stack_dumps)
        self._ring.first_read_state = State.BUSY
        # A writer that scanned the readers before our state reached it may write up to ring_bytes past
        # where it was then, which is at most the head we load after this fence (the writer's fence
        # after each publish makes the pair a Dekker handshake: shmq/_ring.c, publish_writer_cursor).
        # Joining at the head, we begin there; a reader gating from before (pending, or taking over a
        # dead one's record) was never out of the writer's sight.
        sync.full_fence()
        if at_head:
            self._ring.bind_reader(index, *self._ring.join_head(), _PUBLISH_EVERY)

    def _take_record(self) -> tuple[int, int, bool]:
        """Claim our record (a compare-and-swap of its owner word) and choose where to start reading:
        (cursor, position, whether that is the writer's head).

        Of two processes attaching at once exactly one swaps in its owner word; the other then sees
        a live owner and gets AlreadyAttached. A record is free when its owner word is 0 (never
        attached, closed, evicted) or names a dead process (taken over where it stopped).
        """
        w, rec = self._w, self._rec
        owner_offset = L.record_offset(1 + self.index) + L.REC_OWNER
        give_up = time.monotonic() + 1.0  # the writer holds OWNER_EVICTING for a few stores
        while True:
            owner = w[rec + R_OWNER]
            if owner == L.OWNER_EVICTING and time.monotonic() < give_up:
                time.sleep(0.001)
                continue
            if owner and procs.owner_is_alive(owner):
                raise AlreadyAttached(f"reader {self.index} of queue {self.queue_name!r} is attached by live pid "
                                      f"{owner & 0xFFFFFFFF}; attach another index, or close that reader first")
            if compare_exchange(self._segment.buf, owner_offset, owner, self._owner) == owner:
                break
        state = w[rec + R_STATE]
        at_head = state in (State.CLOSED, State.EVICTED)
        if state == State.PENDING:
            cursor = position = 0  # first attach: the writer has waited for us, everything is still here
        elif at_head:
            cursor, position = self._ring.join_head()  # the writer went on without us: join at the head
        else:
            # The previous owner died un-evicted: carry on from what it last published, so what it
            # had taken from a backlog but not yet published (< 64 messages) comes again.
            cursor, position = w[rec + R_CURSOR], w[rec + R_POSITION]
        # Before the state: the writer loads state, then position.
        w[rec + R_CURSOR] = cursor
        w[rec + R_POSITION] = position
        return cursor, position, at_head

    # -- receiving ------------------------------------------------------------------------
    @contextlib.contextmanager
    def lease(self, *, timeout: float | None = None) -> Iterator[Any]:
        """Zero-copy access: the message's buffers alias the ring until the block exits.

        Arrays in it are read-only and must not be kept after the block: its frame is
        released on exit and the writer will reuse it. A message in pieces, or one an
        interrupted call already took, is copied.
        """
        timeout = None if timeout is None else checked_timeout(timeout)
        try:
            self._enter()
            if self._ring.unfinished is not None:
                message = self._receive_framed(self._cursor, 0, time.monotonic_ns(), timeout, raw=False)
                try:
                    yield message
                finally:
                    self._ring.unfinished = None  # the block had it
                return
            c, waited, wait_start = self._await_message(timeout)
            c, head, frame, total, flags = self._next_head(c, _deadline(timeout))
            self._check_raw(flags, False)
            if flags & _FRAGMENT:
                yield self._receive_pieces(c, total, flags, waited, wait_start, timeout, raw=False)
                return
            traceparent = self._traceparent(head, flags)
            held = self._ring.lease_begins(c, total)  # recorded as held until the block exits
            try:
                stream, buffers = self._frame(head, frame, c, copy=False)
                yield self._decode(stream, buffers, flags, raw=False)
            finally:
                stream = buffers = None  # drop our views of the frame before releasing it
                self._ring.lease_ends(held, total)
                self._advance()
                self._trace_received(c, total, traceparent, waited, wait_start)
        finally:
            self._ring.leave()

    # Each call that returns a message takes it in one C call (take_one: copied out, released and
    # decoded), or keeps what it took in the ring (ring.unfinished) until its last store before its
    # return clears it: an interrupt (a signal handler raising) anywhere before that leaves the
    # message to the next call, which returns it once. They repeat these lines because a helper's
    # return would open a window for the interrupt between the clear and the caller's return.
    def get(self, *, timeout: float | None = None) -> Any:
        """The next message. Blocks until one arrives; `timeout` in seconds (None or inf: for ever)."""
        # The timeout is checked when the call has to wait: the fast path pays nothing for it.
        message = self._ring.take_one()
        if message is NOTHING:
            message = self._receive(None if timeout is None else checked_timeout(timeout), False)
            self._ring.unfinished = None
        return message

    def get_nowait(self) -> Any:
        """The next message, or WouldBlock at once if there is none."""
        message = self._ring.take_one()
        if message is NOTHING:
            message = self._receive(0, False)
            self._ring.unfinished = None
        return message

    def get_bytes(self, *, timeout: float | None = None) -> bytes:
        """The next message, which must have been sent with put_bytes() or to a serializer='bytes' queue."""
        message = self._receive(None if timeout is None else checked_timeout(timeout), True)
        self._ring.unfinished = None
        return message

    def _receive(self, timeout: float | None, raw: bool) -> Any:
        """Every message take_one() declines: not published yet, raw, traced, in pieces, left by an
        interrupted call, or corrupt; or another thread's call is in progress. What it returns stays
        in ring.unfinished for its caller to clear."""
        try:
            if not self._ring.enter():
                raise self._busy_error()
            waited = wait_start = 0
            c = self._cursor
            if self._ring.unfinished is None and not c < self._ring.available:
                c, waited, wait_start = self._await_message(timeout)
                if not raw and (message := self._ring.take_one(True)) is not NOTHING:
                    return message
            return self._receive_framed(c, waited, wait_start, timeout, raw)
        finally:
            self._ring.leave()

    def _receive_framed(self, c: int, waited: int, wait_start: int, timeout: float | None, raw: bool) -> Any:
        """Message `c`, published, read with its frame table: buffers, raw bytes, traced, in pieces,
        kept from an interrupted call, or corrupt."""
        unfinished = self._ring.unfinished
        if unfinished.__class__ is tuple:
            return self._decode_kept(raw)
        if unfinished is not None:
            return self._receive_pieces(c, 0, 0, waited, wait_start, timeout, raw)
        deadline = _deadline(timeout)
        c, head, frame, total, flags = self._next_head(c, deadline)
        self._check_raw(flags, raw)  # before anything is taken: the message stays for get()
        if flags & _FRAGMENT:
            return self._receive_pieces(c, total, flags, waited, wait_start, timeout, raw)
        traceparent = self._traceparent(head, flags)
        try:
            stream, buffers = self._frame(head, frame, c, copy=True)
        except CorruptMessage:
            self._skip()
            raise
        stream = bytes(stream)  # private, so the frame is released before the decode (bytes(raw) is no copy)
        self._check_unchanged(c)
        return self._deliver(c, total, stream, buffers, flags, raw, traceparent, waited, wait_start)

    def _deliver(self, c: int, total: int, stream, buffers: list, flags: int, raw: bool, traceparent: bytes | None,
                 waited: int, wait_start: int) -> Any:
        """Count and release message `c` (its frame copied out of the ring), keeping it until the call
        returns it, then decode it."""
        self._ring.deliver(total, (stream, buffers, flags, 0), self._cursor == c)
        if flags & _FRAGMENT and self._stats:
            self._w[self._rec + L.word(L.REC_OVERFLOW)] += 1
        self._trace_received(c, total, traceparent, waited, wait_start)
        return self._decode_kept(raw)

    def _decode_kept(self, raw: bool) -> Any:
        """The message kept in ring.unfinished, which a call took and has not returned yet."""
        stream, _, flags, _ = self._ring.unfinished
        self._check_raw(flags, raw)
        return bytes(stream) if flags & L.FRAME_RAW else self._ring.decode_unfinished()

    def _next_head(self, c: int, deadline: int | None) -> tuple[int, int, int, int, int]:
        """The header of the next message at or after published frame `c` that a reader can begin:
        (c, header offset, frame, total, flags). Pieces of a message begun before `c` (we joined or were
        moved past its start) are skipped; a header no writer could have written is skipped and
        reported."""
        while True:
            head, frame, total, flags = self._checked_head(c)
            if flags & _FRAGMENT and not flags & L.FRAME_FIRST:
                self._advance()  # the rest of a message we did not see begin
            else:
                problem = self._head_problem(frame, total, flags)
                if not problem:
                    return c, head, frame, total, flags
                raise CorruptMessage(f"queue {self.queue_name!r}: message {c} is corrupt ({problem}); reader "
                                     f"{self.index} {self._skip()} and reads on from the next message")
            if not c + 1 < self._ring.load_available():
                c, _, _ = self._await_message(_remaining(deadline))
            else:
                c += 1

    def _checked_head(self, c: int) -> tuple[int, int, int, int]:
        """Published frame `c`'s header, which says it is frame `c` at our position: (its offset, frame,
        total, flags); a header that does not is reported, and the reader moves on to the next frame it
        can find."""
        head = self._ring.head()
        seq, frame, total, flags, position = _FRAME_HEAD.unpack_from(self._buf, head)
        expected = self._ring.position
        if seq == c and position == expected:
            # A frame ends within its lap; a length past a frame's is named by the caller.
            if frame > self._frame_bytes or L.within_lap(expected, frame, self._ring_bytes):
                return head, frame, total, flags
            self._ring.skip()
            raise CorruptMessage(f"queue {self.queue_name!r}: the header of message {c} at ring position "
                                 f"{expected:,} says {frame:,} bytes, which would run past the end of the ring; "
                                 f"reader {self.index} skipped to message {self._cursor}")
        available = self._ring.available
        self._ring.skip()
        skipped = f"skipped to message {self._cursor}"
        if position == expected and c < seq < available:
            raise MessageOverwritten(f"queue {self.queue_name!r}: the writer overwrote message {c} (frame {seq} is "
                                     f"there now) before reader {self.index} read it: was this reader evicted? "
                                     f"It {skipped}")
        raise CorruptMessage(f"queue {self.queue_name!r}: the header at ring position {expected:,}, where message "
                             f"{c} belongs, says frame {seq} at position {position:,}, which its writer cannot have "
                             f"written; reader {self.index} {skipped}")

    def _skip(self) -> str:
        """Step over the frame at the cursor, which is corrupt, to the next header found after it (its
        length may be what is corrupt: shmq/_ring.c, skip). Says what was skipped."""
        c = self._cursor
        skipped = self._ring.skip() - c
        return "skipped it" if skipped == 1 else f"skipped {skipped} messages"

    def _head_problem(self, frame: int, total: int, flags: int) -> str:
        """What is wrong with a first frame's lengths, or "" (checked before any allocation they size)."""
        if frame > self._frame_bytes:
            return f"its header says {frame:,} bytes; a frame holds at most {self._frame_bytes:,}"
        if total > self._max:
            return f"it says {total:,} bytes; the queue's max_message_bytes is {self._max:,}"
        if flags & _FRAGMENT:
            if frame != self._piece_bytes or total <= self._frame_bytes:
                return f"its first piece holds {frame:,} of {total:,} bytes, but only a message larger than a " \
                       f"frame ({self._frame_bytes:,} bytes) is split, and every piece but the last holds " \
                       f"{self._piece_bytes:,}"
        elif frame != total:
            return f"it is one frame, yet says {frame:,} bytes in the frame and {total:,} in all"
        return ""

    def _await_message(self, timeout: float | None) -> tuple[int, int, int]:
        c = self._cursor
        wait_start = time.monotonic_ns()
        waited = 0
        if self._cancelled:
            raise QueueClosed(f"{self._describe()} was cancelled")
        if not c < self._ring.load_available():
            self._ring.publish_behind()  # a reader that waits holds no frame it has read
            if self._hooks is not None:
                self._events = []
            waited = self._block(self._message_or_close, timeout, WAITING_READ)
        if self._cancelled:
            raise QueueClosed(f"{self._describe()} was cancelled")
        if not c < self._ring.available:
            raise QueueClosed(f"queue {self.queue_name!r} was closed by its writer after {c} messages")
        return c, waited, wait_start

    def _message_or_close(self) -> bool:
        return (self._cursor < self._ring.load_available() or self._cancelled
                or self._w[_WRITER_RECORD + R_STATE] == State.CLOSED)

    def _receive_pieces(self, c: int, total: int, flags: int, waited: int, wait_start: int,
                        timeout: float | None, raw: bool) -> Any:
        """Assemble a message in pieces, releasing each frame as soon as it is copied.

        Begins the assembly at first piece `c` (with its total and flags), or resumes the one an
        interrupt or a timeout left. A timeout counts from this call's start, for every piece.
        """
        assembly = self._ring.unfinished
        if assembly is None:
            assembly = _Assembly(c, total, flags, self._traceparent(self._ring.head(), flags), wait_start)
            self._ring.unfinished = assembly
        assembly.waited += waited
        deadline = _deadline(timeout)
        cap, buf, whole = self._piece_bytes, self._buf, assembly.whole
        while (self._cursor - assembly.first) * cap < assembly.total:  # pieces left
            c = self._cursor
            if not c < self._ring.load_available():
                try:
                    remaining = _remaining(deadline)
                    if remaining == 0:
                        raise QueueTimeout(f"{self._describe()} timed out after {timeout} s")
                    c, more_wait, _ = self._await_message(remaining)
                except QueueTimeout as e:
                    raise QueueTimeout(f"{e}, in the middle of message {assembly.first} ({(c - assembly.first) * cap:,} "
                                       f"of {assembly.total:,} bytes); the next get() resumes it") from None
                assembly.waited += more_wait
            try:
                head, frame, total, flags = self._checked_head(c)
            except (CorruptMessage, MessageOverwritten):
                self._ring.unfinished = None
                raise
            filled = (c - assembly.first) * cap
            if flags & L.FRAME_ABORT:
                self._ring.unfinished = None
                self._advance()
                # The writer gave it up: nobody receives it. Read on from the next message.
                if not self._cursor < self._ring.load_available():
                    self._await_message(_remaining(deadline))
                return self._receive_framed(self._cursor, assembly.waited, assembly.wait_start,
                                            _remaining(deadline), raw)
            last = flags & L.FRAME_LAST
            if (total != assembly.total or not flags & _FRAGMENT or flags & L.FRAME_FIRST and c != assembly.first
                    or not L.piece_continues(filled, frame, assembly.total, last, cap)):
                self._ring.unfinished = None
                self._skip()
                raise CorruptMessage(f"queue {self.queue_name!r}: piece {c - assembly.first} of message "
                                     f"{assembly.first} does not continue it ({frame:,} bytes at {filled:,} of "
                                     f"{assembly.total:,}, flags {flags:#x}); reader {self.index} dropped the "
                                     "message and reads on from the next one")
            whole[filled : filled + frame] = buf[head + _HEADER_BYTES : head + _HEADER_BYTES + frame]
            self._check_unchanged(c)
            self._advance()  # progress is the cursor: an interrupt from here on resumes at c + 1
        stream, buffers = self._frame_in(whole, 0, assembly.total, assembly.first)
        return self._deliver(assembly.first, assembly.total, stream, buffers, assembly.flags, raw, assembly.traceparent,
                             assembly.waited, assembly.wait_start)

    # -- frames --------------------------------------------------------------------------
    def _frame(self, head: int, length: int, c: int, copy: bool) -> tuple[memoryview, list]:
        """The frame's stream and buffers: buffers copied out, or read-only views of the ring for a lease."""
        buf = self._buf if copy else self._segment.readonly
        stream, views = self._frame_in(buf, head + _HEADER_BYTES, length, c)
        return stream, [bytearray(v) for v in views] if copy else views

    def _frame_in(self, buf: memoryview, offset: int, length: int, c: int) -> tuple[memoryview, list]:
        """Split a frame (table of segment lengths, then segments) into views of `buf`."""
        spans = frame_spans(buf, offset, length)
        if spans is None:
            raise CorruptMessage(f"queue {self.queue_name!r}: message {c} has a corrupt frame (its table does not "
                                 f"describe a {length:,}-byte frame); reader {self.index} skipped it")
        views = [buf[start:stop] for start, stop in spans]
        return views[0], views[1:]

    def _check_raw(self, flags: int, raw: bool) -> None:
        if (raw or self._serializer.raw) and not flags & L.FRAME_RAW:
            raise NotRawMessage(f"queue {self.queue_name!r}: the next message was sent with put() and is not raw "
                                "bytes; read it with get() (it is still there)")

    def _decode(self, stream: memoryview, buffers: list, flags: int, raw: bool) -> Any:
        return bytes(stream) if flags & L.FRAME_RAW else self._serializer.decode(stream, buffers)

    def _check_unchanged(self, c: int) -> None:
        # After the copy: a writer that started a frame here meanwhile changed the header.
        if not self._ring.header_intact(c):
            self._ring.skip()
            raise MessageOverwritten(f"queue {self.queue_name!r}: message {c} was overwritten while reader "
                                     f"{self.index} copied it (was this reader evicted?); it skipped to message "
                                     f"{self._cursor}")

    # -- publishing our progress -------------------------------------------------------------
    @property
    def _cursor(self) -> int:
        """Every message below it has been read (it is published in batches: see _ring.c)."""
        return self._ring.cursor

    def _advance(self) -> None:
        """Done with the frame at the cursor: publish now, so the writer may reuse its room."""
        self._ring.advance()

    def _publish_behind(self) -> None:
        """From the heartbeat: publish what the calling thread read but has not published yet."""
        self._ring.publish_behind()

    def _traceparent(self, head: int, flags: int) -> bytes | None:
        """The producer's traceparent, copied while the frame is still ours (None if untraced)."""
        if flags & L.FRAME_TRACED and self._hooks is not None:
            field = self._buf[head + L.FRAME_TRACEPARENT : head + L.FRAME_TRACEPARENT + L.TRACEPARENT_BYTES]
            return bytes(field).rstrip(b"\x00")
        return None

    def _trace_received(self, c: int, total: int, traceparent: bytes | None, waited: int, wait_start: int) -> None:
        if traceparent is not None:
            events, self._events = self._events or [], None
            self._hooks.received(queue=self.queue_name, reader=self.index, message_id=c, body_size=total,
                                 traceparent=traceparent, wait_start_ns=wait_start,
                                 wait_ns=waited, spins=self._last_wait_spins if waited else 0, events=events)
        else:
            self._events = None

    # -- waiting -----------------------------------------------------------------------------
    def park(self, timeout_s: float) -> None:
        if self._cancelled:
            return
        start = time.monotonic_ns()
        if self._ring.park_reader(self._park_timeout(timeout_s)):  # the handshake with the writer, in C
            self.idle_event("park", start, time.monotonic_ns() - start)

    def _check_peers(self, waited_ns: int) -> None:
        w = self._w
        pid = w[_WRITER_RECORD + R_PID]
        if w[_WRITER_RECORD + R_STATE] != State.CLOSED and not procs.is_alive(pid, w[_WRITER_RECORD + R_START_TIME]):
            raise WriterDead(f"the writer (pid {pid}) of queue {self.queue_name!r} died; reader {self.index} "
                             f"received all {self._cursor} messages it published")

    def _blockers(self, waited_ns: int) -> str:
        w = self._w
        pid = w[_WRITER_RECORD + R_PID]
        state = State(w[_WRITER_RECORD + R_STATE]).name.lower()
        idle = (time.monotonic_ns() - w[_WRITER_RECORD + R_PROGRESS]) / 1e9
        return f"waiting for the writer (pid {pid}, state {state}, no new message for {idle:.1f} s)"

    def _describe(self) -> str:
        return f"shmq queue {self.queue_name!r}: reader {self.index} (pid {self._pid})"

    def _would_block_reason(self) -> str:
        return f"queue {self.queue_name!r} has no message for reader {self.index}"

    # -- lifecycle ---------------------------------------------------------------------------
    def cancel(self) -> None:
        """Wake a get() blocked in another thread, which raises QueueClosed, as does every later get()
        that finds no message. Thread-safe."""
        if self._inherited:
            self._ring.wake_readers()  # raises ForkedParticipant: the waiters to wake are the parent's
        self._cancelled = True
        if not self._segment.closed:
            self._ring.wake_readers()

    def close(self) -> None:
        """Detach: the writer stops waiting for this reader. The index can be attached again.

        A get() blocked in another thread is cancelled first. In a process forked after attach(),
        close() only unmaps this process's copy: the record is the parent's.
        """
        if self._closed:
            return
        if self._inherited:
            self._closed = True
            self._segment.close()
            return
        self.cancel()
        try:
            self._enter(CLOSE_WAIT_S)
            self._closed = True
            self._ring.publish_behind()  # the cursor and counts of the last batch
            self._set_state(State.CLOSED)
            self._release_owner()
            self._stop_heartbeat()
        finally:
            self._ring.leave()
        self._segment.close()  # releases the rings made on it, ours included

    @property
    def lag(self) -> int:
        """Messages published that this reader has not read yet."""
        return self._w[W_WRITER_CURSOR] - self._cursor

    def __repr__(self) -> str:
        where = f"inherited from pid {self._pid}" if self._inherited else f"cursor={self._cursor}"
        return f"<shmq.Reader {self.queue_name!r} reader={self.index} {where}>"


def attach(handle: Handle | str, reader: int, *, wait: wait_module.WaitStrategy | None = None,
           serializer=None, warn_after_s: float = DEFAULT_WARN_AFTER_S,
           hooks: hooks_module.MessageHooks | None = None, shm_dir: str = SHM_DIR,
           stack_dumps: bool | str = True) -> Reader:
    """Attach local reader `reader` to the queue behind `handle` (a Handle or its string form)."""
    handle = Handle.coerce(handle)
    segment = Segment.open(handle.shm_name, writable=True, shm_dir=shm_dir)
    try:
        if (segment.n_local_readers, segment.ring_bytes, segment.frame_bytes) != (
                handle.n_readers, handle.ring_bytes, handle.frame_bytes):
            raise BadHandle(
                f"handle {handle} does not match segment {handle.shm_name}: the handle says "
                f"{handle.n_readers} readers, a {handle.ring_bytes:,}-byte ring and {handle.frame_bytes:,}-byte "
                f"frames, the segment {segment.n_local_readers}, {segment.ring_bytes:,} and {segment.frame_bytes:,}")
        if segment.instance_id != handle.instance_id:
            raise BadHandle(
                f"handle of queue {handle.name!r} (instance {handle.instance_id}) names shared-memory object "
                f"{handle.shm_name}, which holds queue {segment.name!r} (instance {segment.instance_id}): the handle "
                "was edited or is stale; pass the handle its writer made")
        return Reader(segment, reader, serializer=resolve(serializer), wait=wait, warn_after_s=warn_after_s,
                      hooks=hooks, stack_dumps=stack_dumps)
    except BaseException:
        segment.close()
        raise
