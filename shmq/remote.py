"""Readers on other machines: the same message stream over ZeroMQ TCP.

The writer publishes every message on an XPUB socket with no high-water mark, so
nothing is dropped (pyzmq's default HWM silently drops a burst). XPUB_VERBOSE
reports each subscription, which is how ``Writer.wait_for_readers`` knows a
remote reader is connected before the first message goes out. Each message
carries its sequence number and the next one's, so a remote reader notices any
gap instead of silently skipping it, reports it once and reads on.

A lost connection is not a dead writer: ZeroMQ reconnects by itself, so the reader
waits up to `grace_s` for the connection to return before it raises WriterDead.
"""

from __future__ import annotations

import math
import struct
import time
from typing import Any

import zmq
from zmq.utils.monitor import recv_monitor_message

from . import hooks as hooks_module
from .errors import (
    BadHandle, BadQueueArgument, MessagesLost, NotRawMessage, QueueClosed, QueueTimeout, WouldBlock, WriterDead,
)
from .handle import Handle
from .reader import Receiving
from . import layout as L
from .serialization import BytesSerializer, resolve

_HEAD = struct.Struct("<QQQ")  # seq, next seq, frame flags; the traceparent follows
_END = 1 << 63  # flag: the writer closed
_ZERO_COPY_BYTES = 64 << 10  # frames sent without a copy start here (RemotePublisher.send)
_POLL_MS = 50  # how often a blocked get() looks at cancel() and the connection
DEFAULT_GRACE_S = 10.0  # how long a lost connection may stay lost before the writer is called dead


def _checked_grace(grace_s) -> float:
    try:
        seconds = float(grace_s)
    except (TypeError, ValueError):
        raise BadQueueArgument(f"grace_s must be a number of seconds, got {grace_s!r}") from None
    if not 0 <= seconds < math.inf:
        raise BadQueueArgument(f"grace_s must be a finite number of seconds >= 0, got {grace_s!r}")
    return seconds


class RemotePublisher:
    """The writer's side: one XPUB socket that every remote reader subscribes to."""

    def __init__(self, bind: str, n_remote_readers: int) -> None:
        self._context = zmq.Context()
        self._socket = self._context.socket(zmq.XPUB)
        try:
            self._socket.setsockopt(zmq.SNDHWM, 0)
            self._socket.setsockopt(zmq.XPUB_VERBOSE, 1)
            self._socket.bind(bind)
        except BaseException:  # a context left to the garbage collector hangs interpreter exit in term()
            self._socket.close(linger=0)
            self._context.term()
            raise
        self.endpoint = self._socket.getsockopt_string(zmq.LAST_ENDPOINT)
        self._expected = n_remote_readers
        self._subscribed = 0

    def missing(self) -> int:
        """Remote readers that have not subscribed yet."""
        while self._socket.poll(0, zmq.POLLIN):
            event = self._socket.recv()
            self._subscribed += 1 if event[:1] == b"\x01" else -1
        return max(0, self._expected - self._subscribed)

    def send(self, seq: int, next_seq: int, flags: int, traceparent: bytes, segments: list) -> None:
        frames = [_HEAD.pack(seq, next_seq, flags) + traceparent, *segments]
        last = len(frames) - 1
        for i, frame in enumerate(frames):
            # Large immutable bytes go without a copy; a caller's buffer is copied, as it may change after
            # put(), and so is a small frame: pyzmq frees zero-copy frames through a thread of its own,
            # which costs more than the copy below tens of kB and can hold Context.term() at close.
            zero_copy = isinstance(frame, bytes) and len(frame) >= _ZERO_COPY_BYTES
            self._socket.send(frame, zmq.SNDMORE if i < last else 0, copy=not zero_copy)

    def close(self, cursor: int) -> None:
        self._socket.send(_HEAD.pack(cursor, cursor, _END))
        self._socket.close(linger=2000)
        self._context.term()


class RemoteReader(Receiving):
    """A reader on another host. Same get() API as a local Reader; made by ``shmq.attach_remote``."""

    def __init__(self, handle: Handle | str, *, endpoint: str | None = None, serializer=None,
                 hooks: hooks_module.MessageHooks | None = None, index: int = -1,
                 grace_s: float = DEFAULT_GRACE_S) -> None:
        self._grace_s = _checked_grace(grace_s)
        handle = Handle.coerce(handle)
        self.queue_name = handle.name
        self.index = index
        self._endpoint = endpoint or handle.endpoint
        if not self._endpoint:
            raise BadHandle(f"queue {handle.name!r} has no remote endpoint: create it with n_remote_readers > 0")
        self._serializer = resolve(serializer)
        self._hooks = hooks if hooks is not None else hooks_module.installed()
        self._context = zmq.Context()
        self._socket = self._context.socket(zmq.SUB)
        self._socket.setsockopt(zmq.RCVHWM, 0)
        self._monitor = self._socket.get_monitor_socket(zmq.EVENT_CONNECTED | zmq.EVENT_DISCONNECTED)
        self._socket.connect(self._endpoint)
        self._socket.setsockopt(zmq.SUBSCRIBE, b"")
        self._expected: int | None = None
        self._after_gap: list | None = None  # the message that revealed a gap, for the get() after MessagesLost
        #: Sequence number of the first message this reader received; None before the first one.
        self.start_seq: int | None = None
        self._connected = False
        self._lost_since: float | None = None  # monotonic time the connection dropped, None while connected
        self._cancelled = False
        self._closed = False

    def _receive(self, timeout: float | None, raw: bool) -> Any:
        start = time.monotonic_ns()
        frames, self._after_gap = self._after_gap, None
        if frames is None:
            frames = self._await_frames(timeout)
        waited = time.monotonic_ns() - start
        seq, next_seq, flags = _HEAD.unpack_from(frames[0].buffer)
        if flags & _END:
            raise QueueClosed(f"queue {self.queue_name!r} was closed by its writer after {seq} messages")
        if self.start_seq is None:
            self.start_seq = seq
        expected = self._expected
        if expected is not None and seq != expected:
            # Reported once; the message that showed the gap is the next get()'s.
            self._after_gap, self._expected = frames, seq
            raise MessagesLost(f"remote reader of queue {self.queue_name!r} expected message {expected} "
                               f"and got {seq}: {seq - expected} messages were lost on the way")
        self._expected = next_seq
        traceparent = bytes(frames[0].buffer[_HEAD.size :])
        stream = frames[1].buffer
        if flags & L.FRAME_RAW:
            message = bytes(stream)
        elif raw or isinstance(self._serializer, BytesSerializer):
            raise NotRawMessage(f"queue {self.queue_name!r}: this message was sent with put(); read it with get()")
        else:
            message = self._serializer.decode(stream, [bytearray(f.buffer) for f in frames[2:]])
        if traceparent and self._hooks is not None:
            body = L.segment_layout([len(f.buffer) for f in frames[1:]])[1]  # as local readers count it
            self._hooks.received(queue=self.queue_name, reader=self.index, message_id=seq, body_size=body,
                                 traceparent=traceparent, wait_start_ns=start, wait_ns=waited, spins=0, events=[])
        return message

    def _await_frames(self, timeout: float | None) -> list:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if self._cancelled or self._closed:
                raise QueueClosed(f"remote reader of queue {self.queue_name!r} was cancelled or closed")
            if self._socket.poll(0, zmq.POLLIN):
                return self._socket.recv_multipart(copy=False)
            self._watch_connection()
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    if timeout == 0:
                        raise WouldBlock(f"no message for the remote reader of queue {self.queue_name!r}")
                    raise QueueTimeout(f"remote reader of queue {self.queue_name!r} timed out after {timeout} s")
                poll_ms = min(_POLL_MS, max(1, int(left * 1000)))
            else:
                poll_ms = _POLL_MS
            self._socket.poll(poll_ms, zmq.POLLIN)

    def _watch_connection(self) -> None:
        while self._monitor.poll(0, zmq.POLLIN):
            event = recv_monitor_message(self._monitor)
            if event["event"] == zmq.EVENT_CONNECTED:
                self._connected = True
                self._lost_since = None
            elif event["event"] == zmq.EVENT_DISCONNECTED and self._connected:
                self._connected = False
                self._lost_since = time.monotonic()
        # The writer sends an end marker before it closes; a connection lost without one that
        # stays lost for the grace, after draining what arrived, means the writer is gone.
        if self._lost_since is not None and time.monotonic() - self._lost_since >= self._grace_s \
                and not self._socket.poll(0, zmq.POLLIN):
            raise WriterDead(f"the writer of queue {self.queue_name!r} at {self._endpoint} went away without "
                             f"closing the queue: no connection for {self._grace_s:g} s (grace_s)")

    def cancel(self) -> None:
        """Make a get() blocked in another thread raise QueueClosed within 50 ms. Thread-safe."""
        self._cancelled = True

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._socket.disable_monitor()
        self._monitor.close(linger=0)
        self._socket.close(linger=0)
        self._context.term()

    def __enter__(self) -> RemoteReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def attach_remote(handle: Handle | str, *, endpoint: str | None = None, serializer=None,
                  hooks: hooks_module.MessageHooks | None = None, index: int = -1,
                  grace_s: float = DEFAULT_GRACE_S) -> RemoteReader:
    """Attach a reader through ZeroMQ TCP; `endpoint` overrides the handle's (e.g. the writer host's address).

    A connection lost for longer than `grace_s` seconds makes get() raise WriterDead.
    """
    return RemoteReader(handle, endpoint=endpoint, serializer=serializer, hooks=hooks, index=index,
                        grace_s=grace_s)
