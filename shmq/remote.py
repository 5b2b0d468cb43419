"""Readers on other machines: the ring's frames over ZeroMQ TCP, acknowledged and resumable.

Each remote reader holds one of the queue's remote slots: a reader record in the segment, kept by the
writer's remote server (a thread in the writer's process). The server reads the ring ahead of the
slot's record and sends the frames; the record moves only when the reader acknowledges what it has
consumed. So the ring itself is the resend buffer, and a slot gates the writer exactly as a local
reader does: a slow remote reader blocks the writer, and `window_bytes` (default: the ring) bounds
what is in flight, hence what the writer's socket and the reader's socket can buffer.

The protocol (ROUTER at the writer, DEALER at each reader). Every message is multipart; its first
part starts with a kind byte:
  reader -> server  HELLO  the queue's instance id, slot, resume cursor (-1: a new reader), pid, token, host
                    ACK    frames consumed, message and byte totals, state (busy or waiting)
                    BYE    the reader closed
  server -> reader  WELCOME  start cursor, window, frame size, writer pid, start time, host
                    REFUSED  why (OTHER_QUEUE: the handle names another queue)
                    FRAME    seq, frame bytes, message bytes, flags, [traceparent]; then the payload
                    BATCH    small frames back to back, each as a FRAME's two parts would be
                    TICK     the writer's cursor, once a second: the writer's heartbeat
                    END      the writer closed after frame c
                    EVICTED  why
A connection that drops loses what was in flight; the reader's HELLO with its next expected frame
resumes the slot there, and it drops anything it already has, so nothing is lost or duplicated.
ZeroMQ heartbeats close a connection whose peer went silent; the server sees a slot's connection
gone when a send to it fails (ROUTER_MANDATORY), and calls the reader dead after `remote_grace_s`
without one.
"""

from __future__ import annotations

import collections
import math
import os
import secrets
import socket as socket_module
import struct
import threading
import time
from typing import Any

import zmq
from zmq.utils.monitor import recv_monitor_message

from . import hooks as hooks_module
from . import layout as L
from . import _ring, procs, sync
from .errors import (
    AlreadyAttached, BadHandle, BadQueueArgument, ConnectionLost, CorruptMessage, NotAuthorized, NotRawMessage,
    QueueClosed, QueueTimeout, ReaderEvicted, WouldBlock, WriterDead,
)
from .handle import Handle
from .participant import (
    BUSY, R_ATTACHES, R_CURSOR, R_HEARTBEAT, R_INDEX, R_OWNER, R_PID, R_POSITION, R_PROGRESS, R_ROLE, R_START_TIME,
    R_STATE, WAITING_READ, State, W_WRITER_CURSOR, checked_timeout, log,
)
from .reader import Receiving
from ._ring import batch_frame, frame_spans, uninitialized_bytearray
from .serialization import resolve, stream_decoder

DEFAULT_GRACE_S = 10.0  # how long a slot's connection may stay lost before its reader is called dead
ATTACH_TIMEOUT_S = 10.0  # how long attach_remote waits for the writer's answer
TICK_S = 1.0  # the server's heartbeat to each reader, and its check of each slot's connection
ZMQ_HEARTBEAT_MS = 1000  # ZeroMQ's own pings: a connection silent for ZMQ_HEARTBEAT_TIMEOUT_MS is closed
ZMQ_HEARTBEAT_TIMEOUT_MS = 3000
ACK_EVERY = 256  # frames a reader consumes between acknowledgements while a backlog lasts
BATCH_BYTES = 64 << 10  # frames below this go to a reader in batches of about this size
# What a frame in flight costs against the window: its ring bytes, and what libzmq allocates beside each
# message it queues (measured here: ~12.5 KiB per message over 8 KiB, ~1 KiB for a 1 KB one).
ZMQ_MESSAGE_BYTES = 16 << 10
_POLL_MS = 50  # how often a blocked get() looks at cancel(), the connection and the grace
# Payloads the server hands ZeroMQ in place in the ring, and a reader takes from ZeroMQ, without a copy
# (below, the copy is cheaper than what a zero-copy message costs).
ZERO_COPY_BYTES = 64 << 10
RELEASE_TIMEOUT_S = 5.0  # how long a closing server waits for ZeroMQ to let go of the ring's frames
# A refused handshake (a connection closed during one, NO_DETAIL, is a network fault, not a refusal)
_HANDSHAKE_FAILED = zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL

HELLO, ACK, BYE = b"H", b"A", b"B"
WELCOME, REFUSED, OTHER_QUEUE, FRAME, BATCH, TICK, END, EVICTED = b"W", b"R", b"Q", b"F", b"M", b"T", b"E", b"X"
_HELLO = struct.Struct("<16sIqi16s")  # queue instance id, slot, resume cursor (-1: new), pid, token; the host follows
_ACK = struct.Struct("<QQQQ")  # cursor, messages, bytes, state
# start cursor, window, frame bytes, piece bytes, max message bytes, writer pid and start time
_WELCOME = struct.Struct("<QQQQQiQ")
_FRAME = struct.Struct("<QQQQ")  # seq, frame bytes, message bytes, flags; the traceparent follows if traced
_CURSOR = struct.Struct("<Q")
# shmq/_ring.c batches frames and reads them back in this format (gather_batch, batch_frame).
if (_ring.WIRE_FRAME, _ring.WIRE_BATCH, _ring.WIRE_HEADER_BYTES) != (FRAME[0], BATCH[0], 1 + _FRAME.size):
    raise ImportError("shmq/_ring.c and shmq/remote.py disagree on the wire format of frames: rebuild shmq")


def frame_cost(frame: int) -> int:
    """What a frame of `frame` payload bytes sent alone counts against the window: its ring bytes, and what
    ZeroMQ keeps beside a message. In a batch (gather_batch) only its first frame counts the latter."""
    return L.frame_stride(frame) + ZMQ_MESSAGE_BYTES


# What a reader counts against the window for a frame beside its payload: frame_cost(n) is less than
# n + this, so a reader never counts less than the writer does.
_MOST_BESIDE_A_FRAME = frame_cost(0) + L.FRAME_ALIGN


def _checked_seconds(name: str, value) -> float:
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        raise BadQueueArgument(f"{name} must be a number of seconds, got {value!r}") from None
    if not 0 <= seconds < math.inf:
        raise BadQueueArgument(f"{name} must be a finite number of seconds >= 0, got {value!r}")
    return seconds


def _heartbeats(sock: zmq.Socket) -> None:
    sock.setsockopt(zmq.HEARTBEAT_IVL, ZMQ_HEARTBEAT_MS)
    sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, ZMQ_HEARTBEAT_TIMEOUT_MS)


def _certificate(path: str, what: str, secret: bool) -> tuple[bytes, bytes | None]:
    """(public, secret) keys from a ZeroMQ certificate file (zmq.auth.create_certificates makes them)."""
    from zmq.auth import load_certificate

    try:
        public, secret_key = load_certificate(path)
    except (OSError, ValueError) as e:
        raise BadQueueArgument(f"{what} {path!r} is not a readable ZeroMQ certificate: {e}") from None
    if secret and secret_key is None:
        raise BadQueueArgument(f"{what} {path!r} holds no secret key (a .key_secret file is needed)")
    return public, secret_key


# -- the writer's side ---------------------------------------------------------------------------
class _Slot:
    """One remote reader slot: its record, the ring read ahead for it, and who holds it."""

    def __init__(self, number: int, index: int, ring, words: memoryview) -> None:
        self.number = number  # 0..n_remote_readers - 1, as attach_remote names it
        self.index = index  # the reader index of its record
        self.ring = ring  # reads ahead of the record; acknowledge() publishes (shmq/_ring.c)
        self.rec = L.word(L.record_offset(1 + index))
        self.words = words
        self.peer: bytes | None = None  # the holder's ZeroMQ routing id
        self.token = b""  # the holder's, from its HELLO: a resume must carry it
        self.pid = 0
        self.host = ""
        self.connected = False
        self.lost_since = 0  # monotonic ns when its connection was found gone
        self.lost: str | None = None  # why it is dead, once the grace ran out (on_dead_reader="raise")
        # (cursor, position, cost) after each batch or lone frame sent and not yet acknowledged, oldest
        # first: an acknowledgement releases only what it covers whole (a reader acknowledges between them)
        self.in_flight: collections.deque = collections.deque()
        self.in_flight_bytes = 0  # the sum of their costs: what the reader's socket may hold

    def forget_in_flight(self) -> None:
        self.in_flight.clear()
        self.in_flight_bytes = 0

    @property
    def state(self) -> int:
        return self.words[self.rec + R_STATE]

    def describe(self) -> str:
        who = f"pid {self.pid} on {self.host}" if self.peer is not None else "nobody"
        return f"remote reader {self.number} (reader {self.index}, {who})"


class RemoteServer:
    """The writer's remote end: one ROUTER socket and one thread that serves every remote slot."""

    def __init__(self, segment, writer, bind: str, *, grace_s: float | None, window_bytes: int | None,
                 on_dead_reader: str, secret_key: str | None = None, authorized_keys: str | None = None) -> None:
        self._segment = segment
        self._words = segment.words
        self._buf = segment.buf
        self._queue_name = segment.name
        grace_s = DEFAULT_GRACE_S if grace_s is None else _checked_seconds("remote_grace_s", grace_s)
        self._grace_ns = int(grace_s * 1e9)
        window = segment.ring_bytes if window_bytes is None else window_bytes
        if type(window) is not int or not L.frame_stride(segment.frame_bytes) <= window <= segment.ring_bytes:
            raise BadQueueArgument(f"remote_window_bytes must be an int from one frame "
                                   f"({L.frame_stride(segment.frame_bytes):,}: frames grow with the ring, so a smaller "
                                   f"window needs a smaller ring_bytes) to the ring ({segment.ring_bytes:,}), "
                                   f"got {window!r}")
        self.window_bytes = window
        self._evict = on_dead_reader == "evict"
        self._writer_pid = os.getpid()
        self._writer_start = procs.start_time(self._writer_pid) or 0
        self._owner = writer._owner
        host = socket_module.gethostname()
        self._host = host.encode()[: L.HOST_BYTES - 1].decode("utf-8", "ignore")
        first = segment.n_local_readers
        self._slots = []
        for number in range(segment.n_remote_readers):
            slot = _Slot(number, first + number, segment.ring(1 + first + number), self._words)
            self._init_record(slot)
            self._slots.append(slot)
        if (secret_key is None) != (authorized_keys is None):
            raise BadQueueArgument("CurveZMQ needs both remote_secret_key (the writer's certificate) and "
                                   "remote_authorized_keys (a directory of the readers' public certificates)")
        if authorized_keys is not None and not os.path.isdir(authorized_keys):
            raise BadQueueArgument(f"remote_authorized_keys {authorized_keys!r} is not a directory")
        self._context = zmq.Context()
        self._socket = self._context.socket(zmq.ROUTER)
        # Frames sent in place: ZeroMQ reads them from the ring until these say it is done (the slot's
        # position keeps them from being overwritten: it moves only when the reader acknowledges them).
        self._in_place: collections.deque[zmq.MessageTracker] = collections.deque()
        self._authenticator = None
        try:
            if secret_key is not None:  # every reader must prove a key from authorized_keys; others are refused
                from zmq.auth.thread import ThreadAuthenticator

                public, secret = _certificate(secret_key, "remote_secret_key", secret=True)
                self._authenticator = ThreadAuthenticator(self._context)
                self._authenticator.start()
                self._authenticator.configure_curve(domain="*", location=authorized_keys)
                self._socket.curve_server = True
                self._socket.curve_publickey, self._socket.curve_secretkey = public, secret
            self._socket.setsockopt(zmq.ROUTER_MANDATORY, 1)  # a send to a lost connection fails: we notice
            self._socket.setsockopt(zmq.SNDHWM, 0)  # the window bounds what is queued, not the HWM
            self._socket.setsockopt(zmq.RCVHWM, 0)
            self._socket.setsockopt(zmq.LINGER, 0)
            _heartbeats(self._socket)
            self._socket.bind(bind)
        except BaseException:  # a context left to the garbage collector hangs interpreter exit in term()
            self._close_sockets()
            raise
        self.endpoint = self._socket.getsockopt_string(zmq.LAST_ENDPOINT)
        self._wake_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self.parked = False  # the thread sleeps in poll(): a publish must notify() it
        self._closing: int | None = None  # the final cursor, once the writer closes
        self._seen_cursor = 0
        self._thread = threading.Thread(target=self._run, name=f"shmq-remote-{segment.name}", daemon=True)
        self._thread.start()

    # -- called from the writer's thread --------------------------------------------------------
    def notify(self) -> None:
        """The writer published: wake the server if it sleeps (a plain flag: the GIL orders the two), once:
        it may not run again before many more puts."""
        if self.parked:
            self.parked = False
            os.eventfd_write(self._wake_fd, 1)

    def lost(self, index: int) -> str | None:
        """Why the remote reader of reader record `index` is dead, or None (alive, or not a remote slot)."""
        slot = self._slot_at(index)
        return None if slot is None else slot.lost

    def host_of(self, index: int) -> str | None:
        """The host of the remote reader of reader record `index`, or None if it is a local reader's."""
        slot = self._slot_at(index)
        return None if slot is None else slot.host

    def _slot_at(self, index: int) -> _Slot | None:
        number = index - self._segment.n_local_readers
        return self._slots[number] if 0 <= number < len(self._slots) else None

    def close(self, cursor: int, drain_s: float, *, goodbye: bool = True) -> None:
        """Send every held slot the rest of the stream (up to `drain_s` while they acknowledge), then END;
        without `goodbye`, stop at once and say nothing (the readers see the writer's heartbeat stop)."""
        self._goodbye = goodbye
        self._drain_deadline = time.monotonic_ns() + int(drain_s * 1e9)
        self._closing = cursor
        os.eventfd_write(self._wake_fd, 1)
        self._thread.join(drain_s + 5)
        self._close_sockets()
        os.close(self._wake_fd)

    def _close_sockets(self) -> None:
        if self._authenticator is not None:
            self._authenticator.stop()
        self._socket.close(linger=0)
        self._context.term()  # drops what is queued; the ring must stay mapped until ZeroMQ let go of it
        deadline = time.monotonic() + RELEASE_TIMEOUT_S
        try:
            for tracker in self._in_place:
                tracker.wait(max(0.0, deadline - time.monotonic()))
        except zmq.NotDone:  # the segment stays mapped until they are collected (Segment.close)
            log.warning("shmq queue %r: ZeroMQ still held frames of the ring %g s after its socket closed",
                        self._queue_name, RELEASE_TIMEOUT_S)

    # -- the records --------------------------------------------------------------------------------
    def _init_record(self, slot: _Slot) -> None:
        w, rec = self._words, slot.rec
        w[rec + R_ROLE] = L.Role.REMOTE_READER
        w[rec + R_INDEX] = slot.index
        w[rec + L.word(L.REC_GRACE_NS)] = self._grace_ns
        w[rec + R_OWNER] = self._owner  # no local process may claim it

    def _store_holder(self, slot: _Slot) -> None:
        w, rec, now = self._words, slot.rec, time.monotonic_ns()
        w[rec + R_PID] = slot.pid
        w[rec + R_START_TIME] = 0
        w[rec + R_HEARTBEAT] = now
        w[rec + R_PROGRESS] = now
        w[rec + R_ATTACHES] += 1
        off = L.record_offset(1 + slot.index) + L.REC_HOST
        self._buf[off : off + L.HOST_BYTES] = slot.host.encode()[: L.HOST_BYTES - 1].ljust(L.HOST_BYTES, b"\0")

    # -- the thread ---------------------------------------------------------------------------------
    def _run(self) -> None:
        poller = zmq.Poller()
        poller.register(self._socket, zmq.POLLIN)
        poller.register(self._wake_fd, zmq.POLLIN)
        next_tick = 0
        try:
            while True:
                self._receive_all()
                sent, hungry = self._send_all()
                now = time.monotonic_ns()
                if now >= next_tick:
                    next_tick = now + int(TICK_S * 1e9)
                    self._tick(now)
                if self._closing is not None and self._drained(now):
                    if self._goodbye:
                        self._end()
                    return
                if sent:
                    continue
                # Woken by the writer only while a slot waits for frames; one that waits for
                # acknowledgements (its window is full) is woken by them, on the socket.
                self.parked = hungry
                if hungry and self._words[W_WRITER_CURSOR] != self._seen_cursor and self._closing is None:
                    self.parked = False  # published after our look: no wake-up will come for it
                    continue
                poller.poll(max(1, (next_tick - now) // 1_000_000))
                self.parked = False
                try:
                    os.eventfd_read(self._wake_fd)
                except BlockingIOError:
                    pass
        except Exception:  # the remote readers then see the writer's heartbeat stop
            log.exception("shmq queue %r: the remote server stopped", self._queue_name)

    def _receive_all(self) -> None:
        sock = self._socket
        while True:
            try:
                parts = sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            if len(parts) < 2 or not parts[1]:
                continue
            peer, body = parts[0], parts[1]
            kind = body[:1]
            try:
                if kind == HELLO and len(body) >= 1 + _HELLO.size:
                    self._hello(peer, body)
                elif kind == ACK and len(body) == 1 + _ACK.size:
                    self._ack(peer, *_ACK.unpack_from(body, 1))
                elif kind == BYE:
                    self._bye(peer)
            except zmq.ZMQError:  # the peer went away while we answered: its slot notices on the next send
                pass
            except (ValueError, OverflowError) as e:  # numbers no reader sends: the others are served on
                log.warning("shmq queue %r: ignored a malformed %r message from a remote reader: %s",
                            self._queue_name, kind, e)

    def _holder(self, peer: bytes) -> _Slot | None:
        for slot in self._slots:
            if slot.peer == peer:
                return slot
        return None

    def _hello(self, peer: bytes, body: bytes) -> None:
        instance, number, resume, pid, token = _HELLO.unpack_from(body, 1)
        host = body[1 + _HELLO.size :][: L.HOST_BYTES - 1].decode("utf-8", "ignore")  # what the record holds
        if instance.hex() != self._segment.instance_id:  # a stale or edited handle, or another writer's port
            self._send(peer, [OTHER_QUEUE + f"the writer at this endpoint serves queue {self._queue_name!r} "
                                            f"(instance {self._segment.instance_id}), not instance {instance.hex()}: "
                                            "the handle is stale or was edited".encode()], None)
            return
        if not 0 <= number < len(self._slots):
            self._refuse(peer, f"queue {self._queue_name!r} has {len(self._slots)} remote reader slots; there is "
                               f"no remote reader {number}")
            return
        slot = self._slots[number]
        if resume >= 0:
            if slot.token != token or slot.peer is None:
                evicted = slot.state == State.EVICTED and slot.token == token
                why = "evicted: its connection stayed lost for the writer's grace" if evicted else "taken over"
                self._send(peer, [(EVICTED if evicted else REFUSED) +
                                  f"remote reader {number} is no longer this reader's: it was {why}".encode()], None)
                return
            slot.peer, slot.connected, slot.lost = peer, True, None
            self._restart(slot, resume)
            log.info("shmq queue %r: %s resumed at frame %d", self._queue_name, slot.describe(), resume)
            return
        if slot.peer is not None and slot.token != token and self._holder_alive(slot):
            self._refuse(peer, f"{slot.describe()} is attached and connected; attach another remote reader, or "
                               "close that one first")
            return
        state = slot.state
        if state in (State.CLOSED, State.EVICTED):  # nobody held it since: join at the writer's head
            cursor, position = slot.ring.join_head()
            at_head = True
        else:  # never attached (the writer kept everything), or taken over where the last holder acknowledged
            cursor, position = self._words[slot.rec + R_CURSOR], self._words[slot.rec + R_POSITION]
            at_head = False
        w = self._words
        w[slot.rec + R_CURSOR] = cursor
        w[slot.rec + R_POSITION] = position
        slot.ring.set_state(State.IDLE)
        sync.full_fence()  # as a local reader joining at the head (shmq/reader.py, Reader.__init__)
        if at_head:
            cursor, position = slot.ring.join_head()
            w[slot.rec + R_CURSOR] = cursor
            w[slot.rec + R_POSITION] = position
        slot.ring.bind_reader(slot.index, cursor, position, 0)
        slot.forget_in_flight()
        slot.peer, slot.token, slot.pid, slot.host = peer, token, pid, host
        slot.connected, slot.lost = True, None
        self._store_holder(slot)
        self._send(slot.peer, [self._welcome_body(cursor)], slot)
        log.info("shmq queue %r: %s attached at frame %d", self._queue_name, slot.describe(), cursor)

    def _holder_alive(self, slot: _Slot) -> bool:
        """Whether the slot's holder is still connected: a probe it would ignore (ROUTER_MANDATORY)."""
        if slot.connected:
            self._send(slot.peer, [TICK + _CURSOR.pack(self._words[W_WRITER_CURSOR])], slot)
        return slot.connected

    def _restart(self, slot: _Slot, cursor: int) -> None:
        """Send again from frame `cursor`: what the reader expects next, after a lost connection."""
        ring = slot.ring
        ring.rewind()
        slot.forget_in_flight()
        while ring.cursor < cursor:  # what it has: acknowledged at no cost, as it will be
            if ring.head() is None:
                break
            ring.release_read()
            slot.in_flight.append((ring.cursor, ring.position, 0))
        self._send(slot.peer, [self._welcome_body(ring.cursor)], slot)

    def _welcome_body(self, cursor: int) -> bytes:
        """The answer to a HELLO: the slot starts (or resumes) at frame `cursor`, and what this writer is."""
        return WELCOME + _WELCOME.pack(cursor, self.window_bytes, self._segment.frame_bytes,
                                       self._segment.piece_bytes, self._segment.max_message_bytes, self._writer_pid,
                                       self._writer_start) + self._host.encode()

    def _refuse(self, peer: bytes, reason: str) -> None:
        self._send(peer, [REFUSED + reason.encode()], None)

    def _ack(self, peer: bytes, cursor: int, messages: int, nbytes: int, state: int) -> None:
        slot = self._holder(peer)
        if slot is None:
            return
        now = time.monotonic_ns()
        w = self._words
        w[slot.rec + R_HEARTBEAT] = now
        if state in (BUSY, WAITING_READ) and state != slot.state:
            slot.ring.set_state(state)
        acked = None  # the end of the last batch or frame it covers whole: a reader cannot vouch for more
        while slot.in_flight and slot.in_flight[0][0] <= cursor:
            *acked, cost = slot.in_flight.popleft()
            slot.in_flight_bytes -= cost
        if acked is not None:
            slot.ring.acknowledge(*acked, messages, nbytes)
            w[slot.rec + R_PROGRESS] = now

    def _bye(self, peer: bytes) -> None:
        slot = self._holder(peer)
        if slot is None:
            return
        slot.ring.set_state(State.CLOSED)
        slot.peer, slot.token, slot.connected = None, b"", False
        log.info("shmq queue %r: %s closed", self._queue_name, slot.describe())

    def _send(self, peer: bytes, parts: list, slot: _Slot | None, in_place: bool = False) -> bool:
        """Send to a peer (`in_place`: its last part, a frame, read by ZeroMQ from the ring); a lost
        connection marks `slot` lost (from now) instead of raising."""
        try:
            if not in_place:
                self._socket.send_multipart([peer, *parts], copy=True)
                return True
            while self._in_place and self._in_place[0].done:
                self._in_place.popleft()
            self._in_place.append(self._socket.send_multipart([peer, *parts], copy=False, track=True))
            return True
        except zmq.ZMQError as e:
            if e.errno != zmq.EHOSTUNREACH:
                raise
            if slot is not None and slot.connected:
                slot.connected = False
                slot.lost_since = time.monotonic_ns()
                slot.ring.rewind()  # what was in flight is sent again when the reader resumes
                slot.forget_in_flight()
                log.warning("shmq queue %r: lost the connection of %s", self._queue_name, slot.describe())
            return False

    def _send_all(self) -> tuple[bool, bool]:
        """Send each connected slot what is published and fits its window. Returns whether anything
        went, and whether a slot has sent everything published with room left in its window."""
        self._seen_cursor = self._words[W_WRITER_CURSOR]
        any_sent = hungry = False
        for slot in self._slots:
            sent, caught_up = self._send_slot(slot)
            any_sent, hungry = any_sent or sent, hungry or caught_up
        return any_sent, hungry

    def _send_slot(self, slot: _Slot) -> tuple[bool, bool]:
        """Send one slot what is published and fits its window: frames under BATCH_BYTES together, one
        ZeroMQ message per batch (a message costs more than its bytes), gathered in C; larger ones alone."""
        ring, buf = slot.ring, self._buf
        sent = False
        while slot.connected and slot.peer is not None:
            gathered = ring.gather_batch(max(0, self.window_bytes - slot.in_flight_bytes), BATCH_BYTES,
                                         ZMQ_MESSAGE_BYTES)
            if gathered is not None:
                batch, cursor, position, cost = gathered
                slot.in_flight.append((cursor, position, cost))
                slot.in_flight_bytes += cost
                sent = True
                if not self._send(slot.peer, [batch], slot):
                    break
                continue
            # What gather_batch leaves: nothing published, a corrupt header, a large frame, or one the
            # window has no room for (which goes alone if nothing is in flight).
            head = ring.head()
            if head is None:  # hungry, unless what it has not consumed yet will bring an acknowledgement soon
                return sent, slot.connected and slot.in_flight_bytes <= BATCH_BYTES
            seq, frame, total, flags, position = L.FRAME_HEAD.unpack_from(buf, head)
            if seq != ring.cursor or position != ring.position or frame > self._segment.frame_bytes or \
                    not L.within_lap(position, frame, self._segment.ring_bytes):
                # A header its writer cannot have written (a hostile edit): the reader hears of it.
                self._send(slot.peer, [FRAME + _FRAME.pack(ring.cursor, 0, 0, L.FRAME_ABORT)], slot)
                slot.forget_in_flight()
                ring.skip()
                continue
            cost = frame_cost(frame)
            if slot.in_flight_bytes and slot.in_flight_bytes + cost > self.window_bytes:
                break
            header = FRAME + _FRAME.pack(seq, frame, total, flags)
            if flags & L.FRAME_TRACED:
                header += bytes(buf[head + L.FRAME_TRACEPARENT : head + L.FRAME_TRACEPARENT + L.TRACEPARENT_BYTES])
            payload = buf[head + L.FRAME_HEADER_BYTES : head + L.FRAME_HEADER_BYTES + frame]
            if not self._send(slot.peer, [header, payload], slot, in_place=frame >= ZERO_COPY_BYTES):
                break
            ring.release_read()
            slot.in_flight.append((ring.cursor, ring.position, cost))
            slot.in_flight_bytes += cost
            sent = True
        return sent, False

    def _tick(self, now: int) -> None:
        """Once a second: each holder hears the writer is alive; a lost slot past the grace is dead."""
        tick = TICK + _CURSOR.pack(self._words[W_WRITER_CURSOR])
        for slot in self._slots:
            if slot.peer is None:
                continue
            if slot.connected and self._send(slot.peer, [tick], slot):
                self._words[slot.rec + R_HEARTBEAT] = now  # its connection is alive
            if slot.connected or slot.lost is not None or now - slot.lost_since < self._grace_ns:
                continue
            lag = self._words[W_WRITER_CURSOR] - self._words[slot.rec + R_CURSOR]
            reason = (f"{slot.describe()} of queue {self._queue_name!r} lost its connection "
                      f"{(now - slot.lost_since) / 1e9:.1f} s ago (remote_grace_s {self._grace_ns / 1e9:g}), "
                      f"{lag} messages behind the writer")
            if self._evict:
                self._evict_slot(slot, reason)
            else:
                slot.lost = reason
                log.warning("shmq %s", reason)

    def _evict_slot(self, slot: _Slot, reason: str) -> None:
        w = self._words
        slot.ring.set_state(State.EVICTED)
        slot.ring.record(L.FlightOp.EVICT, w[slot.rec + R_CURSOR], slot.index)
        slot.peer, slot.connected = None, False  # its token stays: a resume hears it was evicted
        log.warning("shmq %s: evicted", reason)

    def _drained(self, now: int) -> bool:
        """Closing: whether every connected holder has acknowledged the final cursor, or the time is up."""
        if now >= self._drain_deadline:
            return True
        return all(not s.connected or s.peer is None or self._words[s.rec + R_CURSOR] >= self._closing
                   for s in self._slots)

    def _end(self) -> None:
        for slot in self._slots:
            if slot.connected and slot.peer is not None:
                self._send(slot.peer, [END + _CURSOR.pack(self._closing)], slot)
        time.sleep(0.05)  # LINGER is 0: give the END a moment on the wire


# -- the reader's side ---------------------------------------------------------------------------
class RemoteReader(Receiving):
    """A reader on another host, holding remote slot `reader` (None: the first free one). Same get()
    API as a local Reader; made by ``shmq.attach_remote``."""

    def __init__(self, handle: Handle | str, reader: int | None, *, endpoint: str | None = None, serializer=None,
                 hooks: hooks_module.MessageHooks | None = None, grace_s: float = DEFAULT_GRACE_S,
                 timeout: float = ATTACH_TIMEOUT_S, secret_key: str | None = None,
                 server_key: str | None = None) -> None:
        self._grace_ns = int(_checked_seconds("grace_s", grace_s) * 1e9)
        handle = Handle.coerce(handle)
        self.queue_name = handle.name
        if reader is not None and (not isinstance(reader, int) or not 0 <= reader < handle.n_remote_readers):
            raise BadHandle(f"queue {handle.name!r} has {handle.n_remote_readers} remote reader slots; there is no "
                            f"remote reader {reader!r}")
        self._endpoint = endpoint or handle.endpoint
        if not self._endpoint:
            raise BadHandle(f"queue {handle.name!r} has no remote endpoint: create it with n_remote_readers > 0")
        self._serializer = resolve(serializer)
        self._loads = stream_decoder(self._serializer)
        self._hooks = hooks if hooks is not None else hooks_module.installed()
        self._token = secrets.token_bytes(16)
        try:
            self._instance = bytes.fromhex(handle.instance_id)
        except ValueError:
            raise BadHandle(f"handle of queue {handle.name!r} has a malformed instance id "
                            f"{handle.instance_id!r}") from None
        self._host = socket_module.gethostname()
        if (secret_key is None) != (server_key is None):
            raise BadQueueArgument("CurveZMQ needs both secret_key (this reader's certificate) and server_key "
                                   "(the writer's public certificate)")
        keys = None
        if secret_key is not None:
            server_public, _ = _certificate(server_key, "server_key", secret=False)
            keys = (*_certificate(secret_key, "secret_key", secret=True), server_public)
        self._context = zmq.Context()
        self._socket = self._context.socket(zmq.DEALER)
        if keys is not None:
            self._socket.curve_publickey, self._socket.curve_secretkey, self._socket.curve_serverkey = keys
        self._socket.setsockopt(zmq.RCVHWM, 0)
        self._socket.setsockopt(zmq.SNDHWM, 0)
        self._socket.setsockopt(zmq.LINGER, 0)
        _heartbeats(self._socket)
        self._monitor = self._socket.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED
                                                        | _HANDSHAKE_FAILED)
        self._socket.connect(self._endpoint)
        self._cancelled = self._closed = False
        self._connections = 0
        self._lost_since: int | None = None  # monotonic ns the connection dropped, None while connected
        self._heard = time.monotonic_ns()
        self._messages = self._bytes = 0
        self._acked = 0
        self._state = 0
        self._assembly = None  # (first frame, total, flags, bytearray) of a message in pieces
        self._kept = None  # a message whose decode an exception interrupted: the next get()'s
        self._resumed_at = -1  # the frame the last resume asked for
        self._unacked_bytes = 0  # the payload of the frames consumed since the last acknowledgement
        self._batch: memoryview | None = None  # a BATCH being read, and where its next frame is
        self._batch_at = 0
        try:
            self._claim(range(handle.n_remote_readers) if reader is None else [reader], timeout)
        except BaseException:
            self.close()
            raise
        self.index = handle.n_readers + self.slot  #: the reader index of its record, as stats and metrics name it
        #: Sequence number of the first frame this reader reads (where its slot starts).
        self.start_seq = self._expected
        self._acked = self._expected

    # -- the handshake --------------------------------------------------------------------------------
    def _claim(self, slots, timeout: float) -> None:
        """Hold the first of `slots` the writer gives us."""
        refusals = []
        for slot in slots:
            self.slot = slot
            self._hello(-1)
            try:
                self._welcome(timeout)
                return
            except AlreadyAttached as e:
                refusals.append(str(e))
        raise AlreadyAttached("; ".join(refusals)) if len(refusals) == 1 else \
            AlreadyAttached(f"queue {self.queue_name!r}: every remote reader slot is held ({'; '.join(refusals)})")

    def _resume(self, again: bool = False) -> None:
        """Ask the writer to send again from the frame we expect: once per gap (each frame after a gap
        would ask again, and each ask rewinds the writer's sending), or `again` on a new connection."""
        if again or self._resumed_at != self._expected:
            self._resumed_at = self._expected
            self._hello(self._expected)

    def _hello(self, resume: int) -> None:
        body = HELLO + _HELLO.pack(self._instance, self.slot, resume, os.getpid(), self._token) + self._host.encode()
        self._socket.send(body)

    def _welcome(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise QueueTimeout(f"remote reader {self.slot} of queue {self.queue_name!r}: no answer from the writer "
                                   f"at {self._endpoint} within {timeout} s")
            if self._socket.poll(min(_POLL_MS, max(1, int(left * 1000))), zmq.POLLIN):
                body = self._socket.recv()
                kind = body[:1]
                if kind == WELCOME:
                    self._welcomed(body)
                    self._expected = _WELCOME.unpack_from(body, 1)[0]
                    return
                if kind in (REFUSED, EVICTED, OTHER_QUEUE):
                    self._control(kind, body)
            self._watch_connection(resend_hello=False)

    def _welcomed(self, body: bytes) -> None:
        """The writer's answer to a HELLO: what it is. Where a resume starts, we know already: frames
        before what we expect are dropped as they come (an answer to an older HELLO starts earlier)."""
        _, self._window, self._frame_bytes, self._piece_bytes, self._max, self._writer_pid, self._writer_start = \
            _WELCOME.unpack_from(body, 1)
        self._writer_host = body[1 + _WELCOME.size :].decode("utf-8", "replace")
        self._heard = time.monotonic_ns()

    # -- receiving ------------------------------------------------------------------------------------
    def get(self, *, timeout: float | None = None) -> Any:
        """The next message. Blocks until one arrives; `timeout` in seconds (None or inf: for ever)."""
        # As Reader.get: the usual message (the next whole frame of a batch) without the general path's
        # calls, and the timeout checked only when the call may have to wait.
        if self._kept is None and (kept := self._batched()) is not None:
            self._kept = kept
            return self._decode_kept(False)
        return self._receive(None if timeout is None else checked_timeout(timeout), False)

    def _receive(self, timeout: float | None, raw: bool) -> Any:
        if self._kept is None:
            self._kept = self._batched() or self._next_message(timeout)
        return self._decode_kept(raw)

    def _batched(self) -> tuple | None:
        """The usual message, the next whole frame of the batch being read, in one C call (batch_frame);
        None for anything else, which _next_message takes and names what is wrong with."""
        if self._batch is None or self._cancelled or self._closed:
            return None
        got = batch_frame(self._batch, self._batch_at, self._expected, self._frame_bytes)
        if got is None:
            return None
        self._batch_at, frame, message = got
        self._consumed(self._expected, frame, 1, frame)
        return (message, [], 0) if message.__class__ is bytes else (*message, 0)

    def receive_encoded(self, *, timeout: float | None = None) -> tuple[Any, list, int]:
        """The next message as it was sent, not decoded: (stream, buffers, frame flags). For a relay,
        which republishes messages without unpickling them (shmq.relay)."""
        message = self._kept if self._kept is not None else \
            self._batched() or self._next_message(None if timeout is None else checked_timeout(timeout))
        self._kept = None
        return message

    def _next_message(self, timeout: float | None) -> tuple[Any, list, int]:
        if self._cancelled or self._closed:
            raise QueueClosed(f"remote reader {self.slot} of queue {self.queue_name!r} was cancelled or closed")
        self._ack_if_due()
        deadline = None if timeout is None else time.monotonic_ns() + int(timeout * 1e9)
        wait_start = time.monotonic_ns()
        waited = False
        while True:
            got = self._next(deadline, timeout)
            if got is None:
                waited = True
                continue
            seq, frame, total, flags, header, payload = got
            if waited:
                self._ack(BUSY)
            if flags & L.FRAME_ABORT and not flags & L.FRAME_FRAGMENT:  # the server stepped over a corrupt frame
                self._consumed(seq, frame, 0, 0)
                raise CorruptMessage(f"queue {self.queue_name!r}: frame {seq} was corrupt in the writer's ring; "
                                     f"remote reader {self.slot} skipped it")
            message = self._take(seq, frame, total, flags, payload)
            if message is None:
                continue
            traceparent = bytes(header[1 + _FRAME.size :]).rstrip(b"\x00") if flags & L.FRAME_TRACED else b""
            if traceparent and self._hooks is not None:
                self._hooks.received(queue=self.queue_name, reader=self.index, message_id=seq, body_size=total,
                                     traceparent=traceparent, wait_start_ns=wait_start,
                                     wait_ns=time.monotonic_ns() - wait_start, spins=0, events=[])
            return message

    def _take(self, seq: int, frame: int, total: int, flags: int, payload) -> tuple | None:
        """Frame `seq`: a whole message (stream, buffers, flags), or None for a piece of one not yet whole."""
        if len(payload) != frame or frame > self._frame_bytes or total > self._max:
            self._consumed(seq, frame, 0, 0)
            raise CorruptMessage(f"queue {self.queue_name!r}: frame {seq} says {frame:,} bytes of a {total:,}-byte "
                                 f"message and carries {len(payload):,}; remote reader {self.slot} dropped it")
        if not flags & L.FRAME_FRAGMENT:
            self._assembly = None
            self._consumed(seq, frame, 1, total)
            return (*self._split(payload, frame, seq), flags)
        if flags & L.FRAME_ABORT:  # the writer gave this message up
            self._assembly = None
            self._consumed(seq, frame, 0, 0)
            return None
        if flags & L.FRAME_FIRST:
            self._assembly = (seq, total, flags, uninitialized_bytearray(total))
        if self._assembly is None:  # the rest of a message that began before our slot's start
            self._consumed(seq, frame, 0, 0)
            return None
        first, whole_total, first_flags, whole = self._assembly
        offset = (seq - first) * self._piece_bytes
        if total != whole_total or not L.piece_continues(offset, frame, total, flags & L.FRAME_LAST,
                                                         self._piece_bytes):
            self._assembly = None
            self._consumed(seq, frame, 0, 0)
            raise CorruptMessage(f"queue {self.queue_name!r}: piece {seq - first} of message {first} does not "
                                 f"continue it; remote reader {self.slot} dropped the message")
        whole[offset : offset + frame] = payload
        if not flags & L.FRAME_LAST:
            self._consumed(seq, frame, 0, 0)
            self._ack_if_due()  # a message larger than the window streams only if its pieces are
            return None
        self._assembly = None
        self._consumed(seq, frame, 1, total)
        return (*self._split(whole, total, first), first_flags)

    def _split(self, message, length: int, seq: int) -> tuple[memoryview, list]:
        """A whole message's stream and out-of-band buffers. The buffers are views where its memory is this
        reader's alone and writable (a ZeroMQ message taken without a copy, a message assembled from its
        pieces), and private copies where it is not (a batch is read-only, and its other frames share it)."""
        spans = frame_spans(message, 0, length)
        if spans is None:
            raise CorruptMessage(f"queue {self.queue_name!r}: message {seq} has a corrupt frame table; remote "
                                 f"reader {self.slot} dropped it")
        view = memoryview(message)
        buffers = [view[a:b] for a, b in spans[1:]]
        return view[spans[0][0] : spans[0][1]], [bytearray(b) for b in buffers] if view.readonly else buffers

    def _decode_kept(self, raw: bool) -> Any:
        stream, buffers, flags = self._kept
        if (raw or self._serializer.raw) and not flags & L.FRAME_RAW:
            raise NotRawMessage(f"queue {self.queue_name!r}: the next message was sent with put() and is not raw "
                                "bytes; read it with get() (it is still there)")
        try:
            if flags & L.FRAME_RAW:
                message = bytes(stream)
            else:
                message = self._serializer.decode(stream, buffers) if buffers else self._loads(stream)
        except Exception:  # the message's own fault: dropped, as a local reader drops it the second time
            self._kept = None
            raise
        self._kept = None
        return message

    def _consumed(self, seq: int, frame: int, messages: int, nbytes: int) -> None:
        """Frame `seq` (of `frame` bytes) is ours."""
        self._expected = seq + 1
        self._messages += messages
        self._bytes += nbytes
        self._unacked_bytes += frame

    def _ack_if_due(self) -> None:
        """Acknowledge in batches while a backlog lasts, of ACK_EVERY frames or a quarter of the window, so
        the writer's sending never stops for an acknowledgement. Called when a get() takes a message that
        is not the next of a batch (what it acknowledges, earlier calls returned: a reader killed now loses
        nothing to its successor) and between the pieces of a message; a reader also acknowledges before
        it waits. Only between the writer's batches: the writer releases a batch only whole."""
        if self._batch is not None and self._batch_at < len(self._batch):
            return
        frames = self._expected - self._acked
        if frames >= ACK_EVERY or 4 * (self._unacked_bytes + frames * _MOST_BESIDE_A_FRAME) >= self._window:
            self._ack(BUSY)

    def _ack(self, state: int) -> None:
        try:
            self._socket.send(ACK + _ACK.pack(self._expected, self._messages, self._bytes, state), zmq.NOBLOCK)
        except zmq.Again:  # no connection at the moment: still owed, the next acknowledgement carries it
            return
        self._acked = self._expected
        self._unacked_bytes = 0
        self._state = state

    def _next(self, deadline: int | None, timeout: float | None) -> tuple | None:
        """The next frame we expect, as (seq, frame bytes, message bytes, flags, header, payload), handling
        what else comes; None after a wait slice."""
        sock = self._socket
        while True:
            if self._batch is not None:
                got = self._from_batch()
            else:
                try:
                    head = sock.recv(zmq.NOBLOCK)
                except zmq.Again:
                    break
                self._heard = time.monotonic_ns()
                kind = head[:1]
                if kind == BATCH:
                    self._batch, self._batch_at = memoryview(head), 1
                    continue
                if kind != FRAME:
                    self._control(kind, head)
                    continue
                seq, frame, total, flags = _FRAME.unpack_from(head, 1)
                # A large payload is not copied out of ZeroMQ's message: what takes it copies it once.
                payload = sock.recv(copy=frame < ZERO_COPY_BYTES) if sock.getsockopt(zmq.RCVMORE) else b""
                got = seq, frame, total, flags, head, payload if payload.__class__ is bytes else payload.buffer
            if got is None:
                continue
            seq = got[0]
            if seq == self._expected:
                return got
            if seq > self._expected:  # frames lost on the way (a dropped connection): from where we are
                self._resume()
            else:  # sent again after a resume, and we have it; the writer forgot our acknowledgements from it on
                self._acked = min(self._acked, seq)
        # Nothing to read: acknowledge what we consumed (the writer may wait for it), then wait a slice.
        if self._acked != self._expected or self._state != WAITING_READ:
            self._ack(WAITING_READ)
        now = time.monotonic_ns()
        if deadline is not None and now >= deadline:
            if timeout == 0:
                raise WouldBlock(f"no message for remote reader {self.slot} of queue {self.queue_name!r}")
            raise QueueTimeout(f"remote reader {self.slot} of queue {self.queue_name!r} timed out after {timeout} s")
        if self._cancelled or self._closed:
            raise QueueClosed(f"remote reader {self.slot} of queue {self.queue_name!r} was cancelled or closed")
        self._watch_connection(resend_hello=True)
        self._check_writer(now)
        slice_ms = _POLL_MS if deadline is None else max(1, min(_POLL_MS, (deadline - now) // 1_000_000))
        sock.poll(slice_ms, zmq.POLLIN)
        return None

    def _from_batch(self) -> tuple | None:
        """The next frame of the batch being read (as _next returns it, header and payload views of the
        batch), or None at its end."""
        view, at = self._batch, self._batch_at
        if at + 1 + _FRAME.size > len(view):
            self._batch = None
            return None
        seq, frame, total, flags = _FRAME.unpack_from(view, at + 1)
        body = at + 1 + _FRAME.size + (L.TRACEPARENT_BYTES if flags & L.FRAME_TRACED else 0)
        if body + frame > len(view):
            self._batch = None
            raise CorruptMessage(f"queue {self.queue_name!r}: a batch of frames from the writer ends inside one; "
                                 f"remote reader {self.slot} dropped the rest of it")
        self._batch_at = body + frame
        return seq, frame, total, flags, view[at:body], view[body : body + frame]

    def _control(self, kind: bytes, body: bytes) -> None:
        if kind == END:
            end = _CURSOR.unpack_from(body, 1)[0]
            missing = f"; it did not receive frames {self._expected}..{end - 1}" if self._expected < end else ""
            raise QueueClosed(f"queue {self.queue_name!r} was closed by its writer after {end} frames{missing}")
        if kind == EVICTED:
            raise ReaderEvicted(f"queue {self.queue_name!r}: {body[1:].decode('utf-8', 'replace')}")
        if kind == REFUSED:
            raise AlreadyAttached(f"queue {self.queue_name!r}: {body[1:].decode('utf-8', 'replace')}")
        if kind == OTHER_QUEUE:
            raise BadHandle(f"remote reader of queue {self.queue_name!r} at {self._endpoint}: "
                            f"{body[1:].decode('utf-8', 'replace')}")
        if kind == WELCOME:  # the answer to a resume
            self._welcomed(body)

    def _watch_connection(self, resend_hello: bool) -> None:
        while self._monitor.poll(0, zmq.POLLIN):
            event = recv_monitor_message(self._monitor)["event"]
            # Connected means the handshake came through: a TCP connection alone may be a proxy or load
            # balancer that accepts while the writer is unreachable, and each retry would ask for a resume.
            if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                self._connections += 1
                self._lost_since = None
                if resend_hello and self._connections > 1:  # a new connection: resume where we are
                    self._resume(again=True)
            elif event == zmq.EVENT_DISCONNECTED and self._lost_since is None:
                self._lost_since = time.monotonic_ns()
            elif event & _HANDSHAKE_FAILED:
                raise NotAuthorized(f"the writer of queue {self.queue_name!r} at {self._endpoint} refused remote "
                                    f"reader {self.slot}'s handshake: CurveZMQ keys missing, unknown to the writer "
                                    "(remote_authorized_keys), or given where the writer has none")

    def _check_writer(self, now: int) -> None:
        """WriterDead when the writer is gone for sure (on this host, its pid; anywhere, its heartbeat
        stopped on a live connection); ConnectionLost when the connection stays lost for the grace."""
        silent = now - self._heard
        if silent < 2 * TICK_S * 1e9:
            return
        if self._writer_host == self._host and not procs.is_alive(self._writer_pid, self._writer_start):
            raise WriterDead(f"the writer (pid {self._writer_pid}) of queue {self.queue_name!r} died; remote reader "
                             f"{self.slot} received every frame below {self._expected}")
        if silent < self._grace_ns:
            return
        if self._lost_since is None:
            raise WriterDead(f"the writer of queue {self.queue_name!r} at {self._endpoint} has not been heard from "
                             f"for {silent / 1e9:.1f} s on a live connection (grace_s {self._grace_ns / 1e9:g}): "
                             "its heartbeat stopped")
        raise ConnectionLost(f"remote reader {self.slot} of queue {self.queue_name!r} has had no connection to "
                             f"{self._endpoint} for {(now - self._lost_since) / 1e9:.1f} s (grace_s "
                             f"{self._grace_ns / 1e9:g}): the network or the writer's host is down")

    # -- lifecycle ------------------------------------------------------------------------------------
    def cancel(self) -> None:
        """Make a get() blocked in another thread raise QueueClosed within 50 ms. Thread-safe."""
        self._cancelled = True

    def close(self) -> None:
        """Give the slot back (the next holder joins at the writer's head) and close the socket."""
        if self._closed:
            return
        self._closed = True
        try:
            self._socket.send(BYE, zmq.NOBLOCK)
            time.sleep(0.01)  # LINGER is 0
        except zmq.ZMQError:
            pass
        self._socket.disable_monitor()
        self._monitor.close(linger=0)
        self._socket.close(linger=0)
        self._context.term()

    def __enter__(self) -> RemoteReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def attach_remote(handle: Handle | str, reader: int | None = None, *, endpoint: str | None = None, serializer=None,
                  hooks: hooks_module.MessageHooks | None = None, grace_s: float = DEFAULT_GRACE_S,
                  timeout: float = ATTACH_TIMEOUT_S, secret_key: str | None = None,
                  server_key: str | None = None) -> RemoteReader:
    """Attach remote reader `reader` (one of the queue's n_remote_readers slots; None: the first free
    one) through ZeroMQ TCP.

    `endpoint` overrides the handle's (e.g. the writer host's address). The reader starts at the first
    frame its slot has not acknowledged (``start_seq``). A connection lost for longer than `grace_s`
    seconds makes get() raise ConnectionLost; WriterDead means the writer is gone for sure.
    With CurveZMQ (the writer's remote_secret_key), give this reader's certificate as `secret_key`
    and the writer's public one as `server_key` (files zmq.auth.create_certificates makes).
    """
    return RemoteReader(handle, reader, endpoint=endpoint, serializer=serializer, hooks=hooks, grace_s=grace_s,
                        timeout=checked_timeout(timeout) or ATTACH_TIMEOUT_S, secret_key=secret_key,
                        server_key=server_key)
