"""The transports a benchmark row can run: shmq in any configuration, and its peers.

Every transport is used the way its documentation suggests for this job, with
its loss switched off, and behind one small interface:

* ``Peer.open(workload, workdir)`` runs in the trial process before the readers
  fork and returns a ``Link`` (what must exist before forking: the shmq segment,
  the multiprocessing queues...);
* ``Link.sender()`` runs in the trial process after the fork, ``Link.receiver(i)``
  in reader process i;
* ``Sender.send(message)`` and ``Receiver.take(timeout) -> (seq, sent_ns, nbytes) | None``.

Sockets that drop what is sent before a subscriber is connected (pyzmq, iceoryx2,
zenoh) set ``probe``: the writer sends probe messages (seq -1) until every reader has
seen one, and readers skip them.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.util
import json
import multiprocessing
import os
import pickle
import queue as queue_module
import shutil
import socket
import struct
import subprocess
import sys
import time

from .configs import ShmqConfig
from .sidecar import TracingSidecar
from .workloads import MiB, Workload

PROBE = {"seq": -1, "t": 0}
#: How long a writer may block on a full queue before the row is reported stalled.
SEND_TIMEOUT_S = 30.0


def fields(message) -> tuple[int, int, int]:
    """(seq, send time, array bytes) of a benchmark message: what every reader checks."""
    data = message.get("data")
    return message["seq"], message["t"], 0 if data is None else data.nbytes


def pickle_frames(message) -> list:
    """Pickle protocol 5 with out-of-band buffers: the stream, then each array's raw bytes."""
    buffers: list = []
    stream = pickle.dumps(message, protocol=5, buffer_callback=buffers.append)
    return [stream, *(b.raw() for b in buffers)]


_LENGTH = struct.Struct("<Q")


def frame_table(frames: list) -> bytes:
    """The head of a one-buffer message: the frame count, then each frame's length."""
    return struct.pack(f"<{1 + len(frames)}Q", len(frames), *(memoryview(f).nbytes for f in frames))


def framed(frames: list) -> bytes:
    """Pickle frames as one buffer, for transports that carry one payload per message."""
    return b"".join((frame_table(frames), *frames))


def unframed(view: memoryview):
    """The message in a buffer made by framed(); array buffers are copied out, so `view` may be released."""
    count = _LENGTH.unpack_from(view, 0)[0]
    lengths = struct.unpack_from(f"<{count}Q", view, _LENGTH.size)
    position = _LENGTH.size * (1 + count)
    parts = []
    for length in lengths:
        parts.append(view[position : position + length])
        position += length
    return pickle.loads(parts[0], buffers=[bytearray(p) for p in parts[1:]])


class Sender:
    probe = False

    def send(self, message) -> None:
        raise NotImplementedError

    def close(self) -> None:
        pass


class Receiver:
    probe = False

    def take(self, timeout: float) -> tuple[int, int, int] | None:
        """The next message's fields, or None when nothing arrived within `timeout` seconds."""
        raise NotImplementedError

    def close(self) -> None:
        pass


class Link:
    def sender(self) -> Sender:
        raise NotImplementedError

    def receiver(self, index: int) -> Receiver:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def measures(self) -> dict:
        """Figures of the row that the link measured itself (Row fields), once it is closed."""
        return {}


class Peer:
    label: str
    is_shmq = False
    #: the Python module that must be importable, or "" for the standard library
    module = ""

    def missing(self) -> str:
        """Why this peer cannot run here ("" when it can)."""
        if self.module and importlib.util.find_spec(self.module) is None:
            return f"skipped: {self.module} not installed"
        return ""

    def open(self, workload: Workload, workdir: str) -> Link:
        raise NotImplementedError


# -- shmq ----------------------------------------------------------------------------------
class ShmqPeer(Peer):
    is_shmq = True

    def __init__(self, config: ShmqConfig) -> None:
        self.config = config
        self.label = config.label

    def open(self, workload: Workload, workdir: str) -> Link:
        self.config.install_hooks()
        writer = self.config.module().create(workload.n_readers, name=f"bench-{os.getpid()}",
                                             **self.config.create_arguments())
        return _ShmqLink(writer, self.config)


class _ShmqLink(Link):
    def __init__(self, writer, config: ShmqConfig) -> None:
        self._writer = writer
        self._handle = str(writer.handle)
        self._config = config
        self._sidecar = None
        self._measures: dict = {}
        if config.sidecar:
            try:
                self._sidecar = TracingSidecar(writer.handle.name)
            except BaseException:
                writer.close()
                raise

    def sender(self) -> Sender:
        return _ShmqSender(self._writer)

    def receiver(self, index: int) -> Receiver:
        self._config.install_hooks()
        module = self._config.module()
        reader = module.attach(self._handle, reader=index, wait=self._config.strategy())
        return (_ShmqLeaseReceiver if self._config.lease else _ShmqReceiver)(reader, module.QueueTimeout)

    def close(self) -> None:
        try:
            if self._sidecar is not None:  # before the writer's close: its last poll still finds the queue
                cpu, traced = self._sidecar.stop()
                self._measures = {"sidecar_cpu_pct": cpu, "sidecar_traced_pct": traced}
        finally:
            self._writer.close()

    def measures(self) -> dict:
        return self._measures


class _ShmqSender(Sender):
    def __init__(self, writer) -> None:
        self._put = writer.put

    def send(self, message) -> None:
        self._put(message, timeout=SEND_TIMEOUT_S)


class _ShmqReceiver(Receiver):
    def __init__(self, reader, timed_out: type[Exception]) -> None:
        self._reader = reader
        self._get = reader.get
        self._timed_out = timed_out  # the QueueTimeout of the shmq package the row runs

    def take(self, timeout: float):
        try:
            return fields(self._get(timeout=timeout))
        except self._timed_out:
            return None

    def close(self) -> None:
        self._reader.close()


class _ShmqLeaseReceiver(_ShmqReceiver):
    """Zero-copy: the array aliases the ring while the fields are read, then its frame is released."""

    def take(self, timeout: float):
        try:
            with self._reader.lease(timeout=timeout) as message:
                return fields(message)
        except self._timed_out:
            return None


# -- shmq across hosts (here: loopback TCP) -----------------------------------------------------------
class ShmqRemotePeer(Peer):
    """shmq with every reader remote: each holds a remote slot over TCP (acknowledged, resumable)."""

    is_shmq = True
    label = "shmq remote readers (tcp)"

    def open(self, workload: Workload, workdir: str) -> Link:
        import shmq

        writer = shmq.create(0, name=f"bench-{os.getpid()}", n_remote_readers=workload.n_readers)
        return _ShmqRemoteLink(writer)


class _ShmqRemoteLink(_ShmqLink):
    def __init__(self, writer) -> None:
        super().__init__(writer, ShmqConfig(label=""))

    def receiver(self, index: int) -> Receiver:
        import shmq

        return _ShmqReceiver(shmq.attach_remote(self._handle, index), shmq.QueueTimeout)


class ShmqRelayPeer(Peer):
    """shmq across a host boundary the recommended way: one remote reader, ``shmq relay``, in its own
    process, republishing into a local queue that the N readers read from shared memory."""

    is_shmq = True
    label = "shmq relay (tcp) -> local readers"

    def open(self, workload: Workload, workdir: str) -> Link:
        import shmq

        writer = shmq.create(0, name=f"bench-{os.getpid()}", n_remote_readers=1)
        relay = subprocess.Popen([sys.executable, "-m", "shmq", "relay", str(writer.handle), "--readers",
                                  str(workload.n_readers), "--name", f"bench-relay-{os.getpid()}"],
                                 stdout=subprocess.PIPE, text=True)
        return _ShmqRelayLink(writer, relay, relay.stdout.readline().strip())


class _ShmqRelayLink(_ShmqLink):
    def __init__(self, writer, relay: subprocess.Popen, local_handle: str) -> None:
        super().__init__(writer, ShmqConfig(label=""))
        self._relay = relay
        self._local = local_handle

    def receiver(self, index: int) -> Receiver:
        import shmq

        return _ShmqReceiver(shmq.attach(self._local, reader=index), shmq.QueueTimeout)

    def close(self) -> None:
        super().close()  # the origin closes: the relay closes its queue and exits
        try:
            self._relay.wait(10)
        except subprocess.TimeoutExpired:
            self._relay.kill()
            self._relay.wait()
        self._relay.stdout.close()


class ZmqTcpPeer(Peer):
    """pyzmq PUB/SUB over loopback TCP, HWM=0 (lossless while nobody is slow, unbounded memory if one is)."""

    label = "pyzmq PUB/SUB tcp (HWM=0)"
    module = "zmq"

    def open(self, workload: Workload, workdir: str) -> Link:
        with socket.socket() as probe:  # a free port; PUB binds it after the fork
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        return _ZmqLink(f"tcp://127.0.0.1:{port}", zero_copy=workload.array_bytes > 0)


def remote_rows(*, zmq: bool) -> list[Peer]:
    """The transports across hosts (over loopback here), in table order."""
    return [ShmqRemotePeer(), ShmqRelayPeer(), *([ZmqTcpPeer()] if zmq else [])]


# -- multiprocessing.Queue -------------------------------------------------------------------
class MpQueuePeer(Peer):
    """The standard library: one multiprocessing.Queue per reader (it has no broadcast)."""

    label = "multiprocessing.Queue"

    def open(self, workload: Workload, workdir: str) -> Link:
        context = multiprocessing.get_context("fork")
        return _QueuesLink([context.Queue() for _ in range(workload.n_readers)])


class _QueuesLink(Link):
    """One queue per reader; the sender puts each message into every queue."""

    def __init__(self, queues: list) -> None:
        self._queues = queues

    def sender(self) -> Sender:
        return _QueuesSender(self._queues)

    def receiver(self, index: int) -> Receiver:
        return _QueueReceiver(self._queues[index])

    def close(self) -> None:
        for q in self._queues:
            if hasattr(q, "cancel_join_thread"):
                q.cancel_join_thread()  # never wait at exit for a feeder whose reader is gone
            q.close()


class _QueuesSender(Sender):
    def __init__(self, queues: list) -> None:
        self._queues = queues

    def send(self, message) -> None:
        for q in self._queues:
            q.put(message, timeout=SEND_TIMEOUT_S)


class _QueueReceiver(Receiver):
    def __init__(self, q) -> None:
        self._get = q.get

    def take(self, timeout: float):
        try:
            return fields(self._get(timeout=timeout))
        except queue_module.Empty:
            return None


# -- faster-fifo -------------------------------------------------------------------------------
class FasterFifoPeer(Peer):
    """faster-fifo: a C++ ring per reader behind the multiprocessing.Queue interface."""

    label = "faster-fifo"
    module = "faster_fifo"

    def open(self, workload: Workload, workdir: str) -> Link:
        from faster_fifo import Queue

        # Room for several messages, so a full queue blocks the writer rather than failing.
        size = max(4 * MiB, 4 * (workload.array_bytes + 4096))
        return _QueuesLink([Queue(max_size_bytes=size) for _ in range(workload.n_readers)])


# -- pyzmq --------------------------------------------------------------------------------------
class ZmqPeer(Peer):
    """PUB/SUB over ipc with both high-water marks at 0 (unbounded): the default of 1000 drops a burst."""

    label = "pyzmq PUB/SUB (HWM=0)"
    module = "zmq"

    def open(self, workload: Workload, workdir: str) -> Link:
        return _ZmqLink(f"ipc://{workdir}/pubsub", zero_copy=workload.array_bytes > 0)


class _ZmqLink(Link):
    def __init__(self, endpoint: str, zero_copy: bool) -> None:
        self._endpoint = endpoint
        self._zero_copy = zero_copy

    def sender(self) -> Sender:
        return _ZmqSender(self._endpoint, self._zero_copy)

    def receiver(self, index: int) -> Receiver:
        return _ZmqReceiver(self._endpoint, self._zero_copy)


def _zmq_socket(kind: str, **options):
    """A pyzmq socket of `kind` with `options`, in a context of its own (made after the fork), and that context."""
    import zmq

    context = zmq.Context()
    socket = context.socket(getattr(zmq, kind))
    socket.setsockopt(zmq.LINGER, 0)  # closing never waits for a reader that is gone
    for name, value in options.items():
        socket.setsockopt(getattr(zmq, name), value)
    return context, socket


class _ZmqSender(Sender):
    probe = True

    def __init__(self, endpoint: str, zero_copy: bool) -> None:
        self._context, self._socket = _zmq_socket("PUB", SNDHWM=0)
        self._socket.bind(endpoint)
        self._zero_copy = zero_copy  # pyzmq: copying beats zero-copy below ~64 kB

    def send(self, message) -> None:
        self._socket.send_multipart(pickle_frames(message), copy=not self._zero_copy)

    def close(self) -> None:
        self._socket.close()
        self._context.term()


class _ZmqReceiver(Receiver):
    probe = True

    def __init__(self, endpoint: str, zero_copy: bool) -> None:
        import zmq

        self._context, self._socket = _zmq_socket("SUB", RCVHWM=0, SUBSCRIBE=b"")
        self._socket.connect(endpoint)
        self._again = zmq.Again
        self._rcvtimeo = zmq.RCVTIMEO
        self._timeout_ms = None
        self._copy = not zero_copy

    def take(self, timeout: float):
        timeout_ms = int(timeout * 1000)
        if timeout_ms != self._timeout_ms:  # a socket option, so set it only when a phase changes it
            self._socket.setsockopt(self._rcvtimeo, timeout_ms)
            self._timeout_ms = timeout_ms
        try:
            frames = self._socket.recv_multipart(copy=self._copy)
        except self._again:
            return None
        if not self._copy:
            frames = [f.buffer for f in frames]
        return fields(pickle.loads(frames[0], buffers=frames[1:]))

    def close(self) -> None:
        self._socket.close()
        self._context.term()


# -- iceoryx2 -----------------------------------------------------------------------------------
class Iceoryx2Peer(Peer):
    """iceoryx2 publish/subscribe of byte slices, made lossless, plus an event service to wake readers.

    Lossless means: no safe overflow (its default overwrites the oldest sample)
    and a publisher that retries until delivered. Readers block on an event
    listener that the publisher notifies after each sample.
    """

    label = "iceoryx2 pub/sub (lossless)"
    module = "iceoryx2"

    def open(self, workload: Workload, workdir: str) -> Link:
        service = f"shmq-bench/{os.getpid()}/{os.path.basename(workdir)}"
        if workload.kind == "small":
            buffer, max_len = 256, 4096
        else:
            buffer, max_len = 4, workload.array_bytes + 4096
        return _Iceoryx2Link(service, workload.n_readers, buffer, max_len)


class _Iceoryx2Link(Link):
    def __init__(self, service: str, n_readers: int, buffer: int, max_len: int) -> None:
        self._service = service
        self._n_readers = n_readers
        self._buffer = buffer
        self._max_len = max_len

    def _open(self):
        import iceoryx2 as iox2

        iox2.set_log_level(iox2.LogLevel.Error)
        node = iox2.NodeBuilder.new().create(iox2.ServiceType.Ipc)
        pubsub = (
            node.service_builder(iox2.ServiceName.new(self._service))
            .publish_subscribe(iox2.Slice[ctypes.c_uint8])
            .enable_safe_overflow(False)
            .subscriber_max_buffer_size(self._buffer)
            .max_subscribers(self._n_readers)
            .max_publishers(1)
            .max_nodes(self._n_readers + 1)
            .history_size(0)
            .open_or_create()
        )
        events = (
            node.service_builder(iox2.ServiceName.new(self._service + "/wake"))
            .event()
            .max_listeners(self._n_readers)
            .max_notifiers(1)
            .max_nodes(self._n_readers + 1)
            .open_or_create()
        )
        return iox2, node, pubsub, events

    def sender(self) -> Sender:
        iox2, node, pubsub, events = self._open()
        publisher = (
            pubsub.publisher_builder()
            .initial_max_slice_len(self._max_len)
            .allocation_strategy(iox2.AllocationStrategy.PowerOfTwo)
            .backpressure_strategy(iox2.BackpressureStrategy.RetryUntilDelivered)
            .create()
        )
        return _Iceoryx2Sender(node, (pubsub, events), publisher, events.notifier_builder().create())

    def receiver(self, index: int) -> Receiver:
        iox2, node, pubsub, events = self._open()
        subscriber = pubsub.subscriber_builder().buffer_size(self._buffer).create()
        return _Iceoryx2Receiver(iox2, node, (pubsub, events), subscriber, events.listener_builder().create())


class _Iceoryx2Sender(Sender):
    """One sample per message: a table of frame lengths, then the pickle frames."""

    probe = True

    def __init__(self, node, services, publisher, notifier) -> None:
        self._keep = (node, services)
        self._publisher = publisher
        self._notifier = notifier

    def send(self, message) -> None:
        frames = pickle_frames(message)
        table = frame_table(frames)
        total = len(table) + sum(memoryview(f).nbytes for f in frames)
        sample = self._publisher.loan_slice_uninit(total)
        target = memoryview((ctypes.c_char * total).from_address(sample.payload_ptr)).cast("B")
        position = 0
        for part in (table, *frames):
            n = memoryview(part).nbytes
            target[position : position + n] = part
            position += n
        target.release()
        sample.assume_init().send()
        self._notifier.notify()

    def close(self) -> None:
        self._notifier.delete()
        self._publisher.delete()


class _Iceoryx2Receiver(Receiver):
    probe = True

    def __init__(self, iox2, node, services, subscriber, listener) -> None:
        self._duration = iox2.Duration.from_secs_f64
        self._keep = (node, services)
        self._subscriber = subscriber
        self._listener = listener

    def take(self, timeout: float):
        sample = self._subscriber.receive()
        if sample is None:
            deadline = time.monotonic() + timeout
            while sample is None:
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._listener.timed_wait(self._duration(left))
                sample = self._subscriber.receive()
        try:
            n = sample.payload().len()
            view = memoryview((ctypes.c_char * n).from_address(sample.payload_ptr)).cast("B")
            try:
                message = unframed(view)  # the stream is read in place, before the sample is released
            finally:
                view.release()
        finally:
            sample.delete()
        return fields(message)

    def close(self) -> None:
        self._listener.delete()
        self._subscriber.delete()


_ICEORYX2_ROOT = "/tmp/iceoryx2"  # its default config: node and service records live here


def iceoryx2_global_state() -> set[str]:
    """The files iceoryx2 keeps between runs: its /tmp/iceoryx2 tree and its /dev/shm management objects."""
    found = {_ICEORYX2_ROOT} if os.path.isdir(_ICEORYX2_ROOT) else set()
    try:
        found.update(os.path.join("/dev/shm", n) for n in os.listdir("/dev/shm") if n.startswith("iox2_"))
    except OSError:
        pass
    return found


def remove_iceoryx2_global_state(before: set[str]) -> None:
    """Leave the machine as found: remove iceoryx2's global files if this run created them and no node is left."""
    created = iceoryx2_global_state() - before
    if not created:
        return
    for sub in ("nodes", "services"):
        if os.listdir(os.path.join(_ICEORYX2_ROOT, sub)) if os.path.isdir(os.path.join(_ICEORYX2_ROOT, sub)) else []:
            return  # a node or service still exists (another user, or one we could not close)
    for path in created:
        if path == _ICEORYX2_ROOT:
            shutil.rmtree(path, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)


# -- zenoh -----------------------------------------------------------------------------------------
class ZenohPeer(Peer):
    """zenoh publish/subscribe, RELIABLE with CongestionControl.BLOCK: the writer waits rather than drops.

    Peer sessions over a Unix socket (the publisher listens, each subscriber
    connects; no scouting). zenoh's shared-memory transport needs payloads
    allocated from its SHM provider, which a plain put() does not do, so this is
    its default byte-copying transport. Samples reach a subscriber's callback
    on zenoh's own thread and are handed over through a SimpleQueue: its
    blocking channel has no timeout, which every take() needs.
    """

    label = "zenoh pub/sub (reliable, block)"
    module = "zenoh"

    def open(self, workload: Workload, workdir: str) -> Link:
        return _ZenohLink(f"unixsock-stream/{workdir}/zenoh.sock", f"shmq-bench/{os.getpid()}")


class _ZenohLink(Link):
    def __init__(self, endpoint: str, key: str) -> None:
        self._endpoint = endpoint
        self._key = key

    def sender(self) -> Sender:
        return _ZenohSender(self._endpoint, self._key)

    def receiver(self, index: int) -> Receiver:
        return _ZenohReceiver(self._endpoint, self._key)


def _zenoh_session(*, listen: str = "", connect: str = ""):
    """A peer session that talks only to the given endpoint: made after the fork, in the process that uses it."""
    import zenoh

    config = zenoh.Config()
    config.insert_json5("mode", '"peer"')
    config.insert_json5("scouting/multicast/enabled", "false")
    config.insert_json5("listen/endpoints", json.dumps([listen] if listen else []))
    config.insert_json5("connect/endpoints", json.dumps([connect] if connect else []))
    return zenoh, zenoh.open(config)


class _ZenohSender(Sender):
    probe = True

    def __init__(self, endpoint: str, key: str) -> None:
        zenoh, self._session = _zenoh_session(listen=endpoint)
        self._publisher = self._session.declare_publisher(
            key, congestion_control=zenoh.CongestionControl.BLOCK, reliability=zenoh.Reliability.RELIABLE)

    def send(self, message) -> None:
        self._publisher.put(framed(pickle_frames(message)))

    def close(self) -> None:
        self._publisher.undeclare()
        self._session.close()


class _ZenohReceiver(Receiver):
    probe = True

    def __init__(self, endpoint: str, key: str) -> None:
        _, self._session = _zenoh_session(connect=endpoint)
        arrived = queue_module.SimpleQueue()
        self._subscriber = self._session.declare_subscriber(key, lambda sample: arrived.put(sample.payload.to_bytes()))
        self._get = arrived.get

    def take(self, timeout: float):
        try:
            payload = self._get(timeout=timeout)
        except queue_module.Empty:
            return None
        return fields(unframed(memoryview(payload)))

    def close(self) -> None:
        self._subscriber.undeclare()
        self._session.close()


def peer_rows(*, mpq: bool, zmq: bool, faster_fifo: bool, iceoryx2: bool, zenoh: bool) -> list[Peer]:
    """The peers switched on, in table order."""
    chosen = [(mpq, MpQueuePeer), (zmq, ZmqPeer), (faster_fifo, FasterFifoPeer), (iceoryx2, Iceoryx2Peer),
              (zenoh, ZenohPeer)]
    return [cls() for on, cls in chosen if on]
