"""A local reader: follows the writer cursor, copies each message out, then publishes its own cursor."""

from __future__ import annotations

import contextlib
import os
import time
from typing import Any, Iterator

from . import hooks as hooks_module
from . import layout as L
from . import procs, sync
from . import wait as wait_module
from .errors import AlreadyAttached, BadHandle, LayoutMismatch, QueueClosed, ShmqError, WriterDead
from .handle import Handle
from .participant import (
    DEFAULT_WARN_AFTER_S, R_CURSOR, R_PID, R_PROGRESS, R_START_TIME, R_STATE,
    W_WRITER_CURSOR, WAITING_READ, Participant, State,
)
from ._ring import frame_spans
from .segment import SHM_DIR, Segment
from .serialization import BytesSerializer, Serializer, resolve, stream_decoder

_SLOT_HEAD = L.SLOT_HEAD
_HEADER_BYTES = L.SLOT_HEADER_BYTES
_FRAGMENT = L.SLOT_FRAGMENT
_WRITER_RECORD = L.word(L.record_offset(0))


class Receiving:
    """The get() API that local and remote readers share; each implements ``_receive(timeout, raw)``."""

    def get(self, *, timeout: float | None = None) -> Any:
        """The next message. Blocks until one arrives; `timeout` in seconds."""
        return self._receive(timeout, False)

    def get_nowait(self) -> Any:
        """The next message, or WouldBlock at once if there is none."""
        return self._receive(0, raw=False)

    def get_bytes(self, *, timeout: float | None = None) -> bytes:
        """The next message, which must have been sent with put_bytes() or to a serializer='bytes' queue."""
        return self._receive(timeout, raw=True)

    def _receive(self, timeout: float | None, raw: bool) -> Any:
        raise NotImplementedError


class Reader(Receiving, Participant):
    """Local reader `index` of a queue. Made by ``shmq.attach``."""

    _role = L.Role.READER

    def __init__(self, segment: Segment, index: int, *, serializer: Serializer,
                 wait: wait_module.WaitStrategy | None, warn_after_s: float,
                 hooks: hooks_module.MessageHooks | None, stack_dumps: bool | str = True) -> None:
        if not 0 <= index < segment.n_readers:
            raise BadHandle(f"queue {segment.name!r} has readers 0..{segment.n_readers - 1}; there is no reader {index}")
        super().__init__(segment, 1 + index, wait=wait, warn_after_s=warn_after_s, hooks=hooks)
        self.index = index
        cursor = self._take_record()
        self._serializer = BytesSerializer() if segment.flags & L.FLAG_RAW_ONLY else serializer
        self._raw_only = self._serializer.raw
        self._loads = stream_decoder(self._serializer)  # get() calls it for almost every message
        self._n = segment.n_chunks
        self._slot_base = [L.slot_offset(segment.n_readers, segment.chunk_bytes, i) for i in range(self._n)]
        self._cursor_address = segment.address + L.OFF_WRITER_CURSOR
        self._readonly = segment.buf.toreadonly()  # leases hand out views the caller cannot write through
        # The ring keeps our cursor and totals and publishes them (shmq/_ring.c): once per batch while
        # a backlog lasts, and at once when we catch up, as a publish (stores, a full fence, the parked
        # check) costs a fifth of a small get(). If the application stops reading mid-batch, the
        # heartbeat thread publishes the rest (_publish_behind).
        self._ring.bind_reader(index, cursor, max(1, min(64, self._n // 16)))
        self._buf = segment.buf
        self._register(index, stack_dumps)
        # The writer may scan before our stores above reach it; the fence bounds that, and
        # each slot's sequence number is checked after it is copied (take_one, _check_unchanged).
        sync.full_fence()

    def _take_record(self) -> int:
        """Claim our record and choose where to start reading."""
        w, rec = self._w, self._rec
        state, pid = w[rec + R_STATE], w[rec + R_PID]
        if state not in (State.PENDING, State.CLOSED, State.EVICTED) and procs.is_alive(pid, w[rec + R_START_TIME]):
            raise AlreadyAttached(f"reader {self.index} of queue {self.queue_name!r} is attached by live pid {pid}")
        if state == State.PENDING:
            cursor = 0  # first attach: the writer has waited for us, everything is still here
        elif state in (State.CLOSED, State.EVICTED):
            cursor = w[W_WRITER_CURSOR]  # the writer went on without us: join at the head
        else:
            # The previous owner died un-evicted: carry on from the cursor it last published, so
            # what it had taken from a backlog but not yet published (< 64 messages) comes again.
            cursor = w[rec + R_CURSOR]
        w[rec + R_CURSOR] = cursor  # before the state: the writer loads state, then cursor
        return cursor

    # -- receiving ------------------------------------------------------------------------
    @contextlib.contextmanager
    def lease(self, *, timeout: float | None = None) -> Iterator[Any]:
        """Zero-copy access: the message's buffers alias the ring slot until the block exits.

        Arrays in it are read-only and must not be kept after the block: the slot is
        released on exit and the writer will reuse it.
        """
        c, waited, wait_start = self._await_message(timeout)
        base = self._slot_base[c % self._n]
        seq, frame, total, flags = _SLOT_HEAD.unpack_from(self._buf, base)
        self._check_slot(c, seq)
        if flags & _FRAGMENT:
            yield self._receive_pieces(c, frame, total, flags, waited, wait_start, raw=False)
            return
        traceparent = self._traceparent(base, flags)
        try:
            stream, buffers = self._frame(base, frame, c, copy=False)
            yield self._decode(stream, buffers, flags, raw=False)
        finally:
            stream = buffers = None  # drop our views of the slot before releasing it
            self._ring.count(total)
            self._advance(c + 1)
            self._trace_received(c, total, traceparent, waited, wait_start)

    def _receive(self, timeout: float | None, raw: bool) -> Any:
        # The usual message, one slot with no flags, is copied out, counted and released in C.
        message = None if raw else self._ring.take_one()
        if message is None:
            waited = wait_start = 0
            c = self._cursor
            if not c < self._ring.available:  # nothing published for us yet
                c, waited, wait_start = self._await_message(timeout)
                message = None if raw else self._ring.take_one()
            if message is None:  # raw, traced, spanning slots, or corrupt
                return self._receive_framed(c, waited, wait_start, raw)
        if self._idle:
            self._mark_busy()
        if message.__class__ is tuple:  # (stream, private copies of its out-of-band buffers)
            return self._serializer.decode(*message)
        return self._loads(message)

    def _receive_framed(self, c: int, waited: int, wait_start: int, raw: bool) -> Any:
        """Message `c`, published, read with its frame table: buffers, raw bytes, traced or corrupt."""
        base = self._slot_base[c % self._n]
        seq, frame, total, flags = _SLOT_HEAD.unpack_from(self._buf, base)
        self._check_slot(c, seq)
        if flags & _FRAGMENT:
            return self._receive_pieces(c, frame, total, flags, waited, wait_start, raw)
        traceparent = self._traceparent(base, flags)
        try:
            stream, buffers = self._frame(base, frame, c, copy=True)
            message = self._decode(stream, buffers, flags, raw)
            self._check_unchanged(c)
            self._ring.count(total)
        finally:
            self._release_read(c + 1)
        self._trace_received(c, total, traceparent, waited, wait_start)
        return message

    def _await_message(self, timeout: float | None) -> tuple[int, int, int]:
        c = self._cursor
        wait_start = time.monotonic_ns()
        waited = 0
        if self._cancelled:
            raise QueueClosed(f"{self._describe()} was cancelled")
        if not c < self._ring.load_available():
            self._ring.publish_behind()  # a reader that waits holds no slot it has read
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

    def _receive_pieces(self, c: int, frame: int, total: int, flags: int, waited: int, wait_start: int,
                        raw: bool) -> Any:
        """Assemble a message that spans slots, releasing each slot as soon as it is copied."""
        import numpy  # only multi-slot messages need it

        # Not bytearray(total): that zero-fills every page first, which costs as much as the copy.
        whole = memoryview(numpy.empty(total, dtype=numpy.uint8))
        filled = 0
        first, first_flags = c, flags
        traceparent = self._traceparent(self._slot_base[c % self._n], flags)
        buf = self._buf
        while True:
            base = self._slot_base[c % self._n]
            if filled + frame > total or not flags & L.SLOT_FRAGMENT:
                raise LayoutMismatch(f"queue {self.queue_name!r}: slot for message {c} breaks a multi-slot "
                                     f"message ({filled + frame} of {total} bytes, flags {flags:#x})")
            whole[filled : filled + frame] = buf[base + _HEADER_BYTES : base + _HEADER_BYTES + frame]
            self._check_unchanged(c)
            filled += frame
            self._advance(c + 1)
            c += 1
            if flags & L.SLOT_LAST:
                break
            if not c < self._ring.available:
                c, more_wait, _ = self._await_message(None)  # once a message has begun, it finishes
                waited += more_wait
            base = self._slot_base[c % self._n]
            seq, frame, _, flags = _SLOT_HEAD.unpack_from(buf, base)
            self._check_slot(c, seq)
        if filled != total:
            raise LayoutMismatch(f"queue {self.queue_name!r}: message {first} ended after {filled} of {total} bytes")
        stream, buffers = self._frame_in(whole, 0, total, first)
        message = self._decode(stream, buffers, first_flags, raw)
        self._ring.count(total)
        self._advance(self._cursor)
        if self._stats:
            self._w[self._rec + L.word(L.REC_OVERFLOW)] += 1
        self._trace_received(first, total, traceparent, waited, wait_start)
        return message

    # -- frames --------------------------------------------------------------------------
    def _frame(self, base: int, length: int, c: int, copy: bool) -> tuple[memoryview, list]:
        """The frame's stream and buffers: buffers copied out, or read-only views of the slot for a lease."""
        stream, views = self._frame_in(self._buf if copy else self._readonly, base + _HEADER_BYTES, length, c)
        return stream, [bytearray(v) for v in views] if copy else views

    def _frame_in(self, buf: memoryview, offset: int, length: int, c: int) -> tuple[memoryview, list]:
        """Split a frame (table of segment lengths, then segments) into views of `buf`."""
        spans = frame_spans(buf, offset, length)
        if spans is None:
            raise LayoutMismatch(f"queue {self.queue_name!r}: message {c} has a corrupt frame (its table does not "
                                 f"describe a {length}-byte frame)")
        views = [buf[start:stop] for start, stop in spans]
        return views[0], views[1:]

    def _decode(self, stream: memoryview, buffers: list, flags: int, raw: bool) -> Any:
        if flags & L.SLOT_RAW:
            return bytes(stream)
        if raw or self._serializer.raw:
            raise ShmqError(f"queue {self.queue_name!r}: this message was sent with put() and is not raw bytes; "
                            "read it with get()")
        return self._serializer.decode(stream, buffers)

    def _check_slot(self, c: int, seq: int) -> None:
        if seq != c:
            raise LayoutMismatch(f"queue {self.queue_name!r}: the slot for message {c} holds message {seq}; "
                                 "the segment was overwritten by something other than its writer")

    def _check_unchanged(self, c: int) -> None:
        # After the copy: had the writer reused the slot meanwhile, the sequence would differ.
        if self._ring.seq_after_copy(c) != c:
            raise ShmqError(f"queue {self.queue_name!r}: message {c} was overwritten while reader {self.index} "
                            "copied it (the writer did not see this reader attach in time)")

    # -- publishing our progress -------------------------------------------------------------
    @property
    def _cursor(self) -> int:
        """Every message below it has been read (it is published in batches: see _ring.c)."""
        return self._ring.cursor

    def _release_read(self, cursor: int) -> None:
        """Done with every message below `cursor`: publish now if caught up or a batch is full."""
        if self._idle:
            self._mark_busy()
        self._ring.release_read(cursor)

    def _advance(self, cursor: int) -> None:
        """Done with every message below `cursor`: publish now, so the writer may reuse their slots."""
        if self._idle:
            self._mark_busy()
        self._ring.advance(cursor)

    def _publish_behind(self) -> None:
        """From the heartbeat: publish what the calling thread read but has not published yet."""
        self._ring.publish_behind()

    def _traceparent(self, base: int, flags: int) -> bytes | None:
        """The producer's traceparent, copied while the slot is still ours (None if untraced)."""
        if flags & L.SLOT_TRACED and self._hooks is not None:
            field = self._buf[base + L.SLOT_TRACEPARENT : base + L.SLOT_TRACEPARENT + L.TRACEPARENT_BYTES]
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
        parked = self._segment.parked
        parked[self.index] = L.parked_mark(self._cursor)
        sync.full_fence()  # the Dekker handshake with publish_writer_cursor (_ring.c): flag, fence, re-check
        available = self._w[W_WRITER_CURSOR]
        if available > self._cursor or self._cancelled:
            parked[self.index] = 0
            return
        start = time.monotonic_ns()
        sync.futex_wait(self._cursor_address, available, self._park_timeout(timeout_s))
        parked[self.index] = 0
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
        return f"shmq queue {self.queue_name!r}: reader {self.index} (pid {os.getpid()})"

    def _would_block_reason(self) -> str:
        return f"queue {self.queue_name!r} has no message for reader {self.index}"

    # -- lifecycle ---------------------------------------------------------------------------
    def cancel(self) -> None:
        """Wake a get() blocked in another thread, which raises QueueClosed, as does every later get()
        that finds no message. Thread-safe."""
        self._cancelled = True
        if not self._segment.closed:
            sync.futex_wake(self._cursor_address)

    def close(self) -> None:
        """Detach: the writer stops waiting for this reader. The index can be attached again."""
        if self._closed:
            return
        self._closed = True
        self._cancelled = True
        self._ring.publish_behind()  # the cursor and counts of the last batch
        self._set_state(State.CLOSED)
        self._stop_heartbeat()
        self._ring.release()
        try:
            self._readonly.release()
            self._segment.close()
        except BufferError:
            pass  # a lease's arrays still alias the mapping; it is unmapped when they are collected

    @property
    def lag(self) -> int:
        """Messages published that this reader has not read yet."""
        return self._w[W_WRITER_CURSOR] - self._cursor

    def __repr__(self) -> str:
        return f"<shmq.Reader {self.queue_name!r} reader={self.index} cursor={self._cursor}>"


def attach(handle: Handle | str, reader: int, *, wait: wait_module.WaitStrategy | None = None,
           serializer=None, warn_after_s: float = DEFAULT_WARN_AFTER_S,
           hooks: hooks_module.MessageHooks | None = None, shm_dir: str = SHM_DIR,
           stack_dumps: bool | str = True) -> Reader:
    """Attach local reader `reader` to the queue behind `handle` (a Handle or its string form)."""
    handle = Handle.coerce(handle)
    segment = Segment.open(handle.shm_name, writable=True, shm_dir=shm_dir)
    try:
        if (segment.n_readers, segment.n_chunks, segment.chunk_bytes) != (
                handle.n_readers, handle.n_chunks, handle.chunk_bytes):
            raise BadHandle(
                f"handle {handle} does not match segment {handle.shm_name}: the handle says "
                f"{handle.n_readers} readers x {handle.n_chunks} chunks x {handle.chunk_bytes} bytes, the segment "
                f"{segment.n_readers} x {segment.n_chunks} x {segment.chunk_bytes}")
        return Reader(segment, reader, serializer=resolve(serializer), wait=wait, warn_after_s=warn_after_s,
                      hooks=hooks, stack_dumps=stack_dumps)
    except BaseException:
        segment.close()
        raise
