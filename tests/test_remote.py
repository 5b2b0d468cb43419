"""Remote readers over real TCP: flow control, a cut connection, slots, a dead writer or reader.

Every test counts what each remote reader received against what was sent: nothing lost, nothing twice.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

import shmq
from shmq.errors import (
    AlreadyAttached, BadQueueArgument, ConnectionLost, QueueClosed, QueueTimeout, ReaderDead, ReaderEvicted, WriterDead,
)

from shmq.cli.bench.trial import rss_anon

from .conftest import FORK
from .watchdog_harness import ROOT


class CuttableProxy:
    """A TCP proxy on loopback that the test can cut (every connection dropped, new ones refused) and restore."""

    def __init__(self, target_port: int) -> None:
        self._target = ("127.0.0.1", target_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._cut = threading.Event()
        self._lock = threading.Lock()
        self._open: list[socket.socket] = []
        self._stop = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._stop:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if self._cut.is_set():
                client.close()  # refused while cut: ZeroMQ keeps retrying
                continue
            try:
                upstream = socket.create_connection(self._target)
            except OSError:  # the writer has closed
                client.close()
                continue
            with self._lock:
                self._open += [client, upstream]
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        for s in (source, sink):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def cut(self) -> None:
        self._cut.set()
        with self._lock:
            for s in self._open:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()
            self._open.clear()

    def restore(self) -> None:
        self._cut.clear()

    def close(self) -> None:
        self._stop = True
        self.cut()
        self._listener.close()

    def __enter__(self) -> CuttableProxy:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def port_of(endpoint: str) -> int:
    return int(endpoint.rsplit(":", 1)[1])


class Collector:
    """A remote reader read in a thread: every message, and the error that ended it."""

    def __init__(self, remote, stop_after: int | None = None) -> None:
        self.remote, self.received, self.error = remote, [], None
        self._stop_after = stop_after
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        try:
            while self._stop_after is None or len(self.received) < self._stop_after:
                self.received.append(self.remote.get(timeout=20))
        except QueueClosed:
            pass
        except Exception as e:  # the test reports it by name
            self.error = e

    def join(self) -> None:
        self.thread.join(30)
        assert not self.thread.is_alive(), "the remote reader never finished"
        assert self.error is None, repr(self.error)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("window", [None, shmq.layout.frame_stride(shmq.layout.default_frame_bytes(64 << 10))],
                         ids=["the ring", "one frame"])
def test_every_message_reaches_local_and_remote_readers_once_in_order_through_a_small_ring(queue_name, window):
    sizes = [i * 997 % 20_000 for i in range(3000)] + [300_000, 5]  # pieces too: larger than the ring
    with shmq.create(1, name=queue_name, ring_bytes=64 << 10, n_remote_readers=2,
                     remote_window_bytes=window) as writer, \
            shmq.attach(writer.handle, 0) as local, \
            shmq.attach_remote(writer.handle, 0) as first, shmq.attach_remote(writer.handle, 1) as second:
        writer.wait_for_readers(timeout=10)
        readers = [Collector(first, stop_after=len(sizes)), Collector(second, stop_after=len(sizes))]
        got_local = []
        reading = threading.Thread(target=lambda: got_local.extend(local.get_bytes(timeout=20) for _ in sizes))
        reading.start()
        sent = [bytes([i % 251]) * n for i, n in enumerate(sizes)]
        for body in sent:
            writer.put_bytes(body, timeout=20)
        reading.join(30)
        for r in readers:
            r.join()
            assert r.received == sent
    assert got_local == sent


@pytest.mark.timeout(60)
def test_a_remote_readers_arrays_are_its_own_in_a_batch_alone_or_in_pieces(queue_name):
    # With a 4 MiB ring a frame holds 266,112 bytes: 1 kB goes in a batch, 200 kB alone (taken from
    # ZeroMQ without a copy), 3 MB in pieces.
    sizes = (1000, 200_000, 3_000_000)
    with shmq.create(0, name=queue_name, ring_bytes=4 << 20, n_remote_readers=1) as writer, \
            shmq.attach_remote(writer.handle, 0) as remote:
        def receive(value: int) -> list:
            received = []
            for n in sizes:
                writer.put(np.full(n, value, dtype=np.uint8), timeout=10)
                received.append(remote.get(timeout=10))
            return received

        got = receive(7)
        later = receive(9)
    for array, n in zip(got, sizes):
        assert array.shape == (n,) and (array == 7).all(), "what came after changed an array received before"
        assert array.flags.writeable
        array[:] = 1  # the reader's own: writing it changes nothing else
    assert [a.shape for a in later] == [(n,) for n in sizes] and all((a == 9).all() for a in later)


SLOW_REMOTE_READER = """
import os, sys, time, shmq
from shmq.cli.bench.trial import rss_anon
with shmq.attach_remote(sys.argv[1], 0) as remote:
    remote.get_bytes(timeout=20)
    before = rss_anon()
    print("ready", flush=True)
    end = time.monotonic() + float(sys.argv[2])
    while time.monotonic() < end:
        remote.get_bytes(timeout=20)
        time.sleep(0.05)  # 20 messages a second
    print(rss_anon() - before, flush=True)
"""


@pytest.mark.timeout(60)
def test_a_slow_remote_reader_holds_the_writer_to_the_window_and_both_memories_stay_within_it(queue_name):
    """A reader 1,000x slower than the writer (20 messages of 60 kB a second): the writer waits for it,
    and neither side buffers more than the window (issue: the old path grew by 500 MiB on each side in 2 s).
    The reader is a fresh interpreter: a forked one would count the pages it copies on write as growth.
    (60 kB, not 64 KiB: a frame of 64 KiB may start the ring's next lap early, which fills it sooner.)"""
    window, body = shmq.layout.DEFAULT_RING_BYTES, os.urandom(60_000)  # the default window: the ring
    with shmq.create(0, name=queue_name, n_remote_readers=1) as writer:
        reader = subprocess.Popen([sys.executable, "-c", SLOW_REMOTE_READER, str(writer.handle), "2.5"], cwd=ROOT,
                                  stdout=subprocess.PIPE, text=True)
        try:
            writer.put_bytes(body, timeout=10)
            assert reader.stdout.readline() == "ready\n"
            writer_before = rss_anon()
            sent, end = 0, time.monotonic() + 2.0
            while time.monotonic() < end:
                try:
                    writer.put_bytes(body, timeout=0.1)
                    sent += 1
                except QueueTimeout:
                    pass
            writer_growth = rss_anon() - writer_before
            reader_growth = int(reader.stdout.readline())
        finally:
            reader.kill()
            reader.wait(10)
            reader.stdout.close()
    ring_frames = window // shmq.layout.frame_stride(len(body) + 16)
    assert sent <= ring_frames + 2 * 20 + 5, f"the writer ran {sent} messages ahead of a reader reading 20 a second"
    print(f"window {window:,} B: writer grew {writer_growth:,} B, reader {reader_growth:,} B, {sent} messages sent")
    assert writer_growth <= window * 1.1, f"the writer grew {writer_growth:,} bytes; the window is {window:,}"
    assert reader_growth <= window * 1.1, f"the reader grew {reader_growth:,} bytes; the window is {window:,}"


@pytest.mark.timeout(60)
def test_a_cut_connection_resumes_with_nothing_lost_or_twice(queue_name, caplog):
    """A 3 s cut (every connection dropped, new ones refused) while the writer keeps sending: the reader
    asks for one resume when the connection is back, not one per connection attempt the cut refused."""
    caplog.set_level("INFO", logger="shmq")
    with shmq.create(1, name=queue_name, ring_bytes=1 << 20, n_remote_readers=1) as writer, \
            shmq.attach(writer.handle, 0) as local:
        proxy = CuttableProxy(port_of(writer.handle.endpoint))
        with proxy, shmq.attach_remote(writer.handle, 0, endpoint=f"tcp://127.0.0.1:{proxy.port}") as remote:
            collector = Collector(remote)
            sent = 0

            def send_for(seconds: float) -> None:
                nonlocal sent
                end = time.monotonic() + seconds
                while time.monotonic() < end:
                    try:
                        writer.put(sent, timeout=0.05)  # the ring fills while the reader is cut off
                    except QueueTimeout:
                        continue
                    local.get(timeout=10)
                    sent += 1
                    time.sleep(0.001)

            send_for(0.5)
            proxy.cut()
            send_for(3.0)
            proxy.restore()
            send_for(1.0)
            deadline = time.monotonic() + 15
            while len(collector.received) < sent and collector.error is None and time.monotonic() < deadline:
                time.sleep(0.01)
            remote.cancel()
            collector.thread.join(10)
    assert collector.error is None, repr(collector.error)
    assert collector.received == list(range(sent)), \
        f"{sent} sent, {len(collector.received)} received, {len(set(collector.received))} distinct"
    resumes = [r.getMessage() for r in caplog.records if "resumed at frame" in r.getMessage()]
    assert len(resumes) == 1, resumes


def remote_reader_reporting(handle, conn) -> None:
    """Child: remote reader 0, sending the parent each message it gets, until it is killed."""
    with shmq.attach_remote(handle, 0) as remote:
        conn.send(("start", remote.start_seq))
        while True:
            conn.send(("got", remote.get(timeout=30)))


@pytest.mark.timeout(60)
def test_a_killed_remote_readers_slot_is_taken_over_where_it_acknowledged(queue_name, children):
    def reporting_reader():
        parent_end, child_end = FORK.Pipe()
        child = children(remote_reader_reporting, writer.handle, child_end)
        assert parent_end.poll(10)
        kind, start = parent_end.recv()
        assert kind == "start"
        return child, parent_end, start

    def receive(parent_end, until: int, got: list) -> None:
        while len(got) < until:
            assert parent_end.poll(10)
            got.append(parent_end.recv()[1])

    with shmq.create(0, name=queue_name, ring_bytes=1 << 20, n_remote_readers=1) as writer:
        first, first_end, start = reporting_reader()
        assert start == 0
        for i in range(200):
            writer.put(i, timeout=10)
        got = []
        receive(first_end, 150, got)
        os.kill(first.pid, signal.SIGKILL)  # mid-stream: what it took since the writer last heard from it comes again
        first.join(10)
        try:
            while first_end.poll(0):
                got.append(first_end.recv()[1])
        except EOFError:  # all it sent has been read
            pass
        # The successor starts at the first message the writer holds unacknowledged, at or before where the
        # dead reader got to: nothing is skipped.
        second, second_end, start = reporting_reader()
        assert got == list(range(len(got))) and start <= len(got)
        with pytest.raises(AlreadyAttached, match="remote reader 0 .* is attached and connected"):
            shmq.attach_remote(writer.handle, 0)
        rest = []
        receive(second_end, 200 - start, rest)
        assert rest == list(range(start, 200))
        # Waiting, it acknowledged everything: killed now, its successor starts exactly after it.
        deadline = time.monotonic() + 10
        while acknowledged(writer.handle, 0) != 200:
            assert time.monotonic() < deadline, "the writer never heard the acknowledgement of all 200"
            time.sleep(0.01)
        os.kill(second.pid, signal.SIGKILL)
        second.join(10)
        for i in range(200, 250):
            writer.put(i, timeout=10)
        with shmq.attach_remote(writer.handle, 0) as third:
            assert third.start_seq == 200
            assert [third.get(timeout=10) for _ in range(50)] == list(range(200, 250))


def acknowledged(handle, slot_index: int) -> int:
    """The cursor the writer holds for a reader record: where its slot's next holder starts."""
    with shmq.stats.open(handle) as view:
        return view.snapshot().readers[slot_index].cursor


def writer_until_killed(queue_name, conn) -> None:
    """Child: a writer that sends a numbered message every 10 ms until it is killed."""
    with shmq.create(0, name=queue_name, ring_bytes=1 << 20, n_remote_readers=1) as writer:
        conn.send(writer.handle)
        i = 0
        while True:
            writer.put(i)
            i += 1
            time.sleep(0.01)


@pytest.mark.timeout(30)
def test_a_killed_writer_on_this_host_is_writer_dead_within_seconds(queue_name, children):
    parent_end, child_end = FORK.Pipe()
    child = children(writer_until_killed, queue_name, child_end)
    assert parent_end.poll(10), "the writer did not start"
    handle = parent_end.recv()
    try:
        with shmq.attach_remote(handle, grace_s=10) as remote:
            assert remote.get(timeout=10) == 0
            os.kill(child.pid, signal.SIGKILL)
            killed = time.monotonic()
            with pytest.raises(WriterDead, match=f"pid {child.pid}"):
                while True:
                    remote.get(timeout=20)
            noticed = time.monotonic() - killed
    finally:
        if os.path.exists(f"/dev/shm/{handle.shm_name}"):
            os.unlink(f"/dev/shm/{handle.shm_name}")
    assert noticed < 5, f"WriterDead came {noticed:.2f} s after the kill, well inside the 10 s grace"


@pytest.mark.timeout(30)
def test_a_connection_lost_past_the_grace_is_connection_lost_and_the_writer_raises_reader_dead(queue_name):
    with shmq.create(0, name=queue_name, ring_bytes=4096, n_remote_readers=1, remote_grace_s=1) as writer:
        proxy = CuttableProxy(port_of(writer.handle.endpoint))
        with proxy, shmq.attach_remote(writer.handle, 0, endpoint=f"tcp://127.0.0.1:{proxy.port}",
                                       grace_s=1) as remote:
            writer.put(0)
            assert remote.get(timeout=10) == 0
            proxy.cut()
            with pytest.raises(ReaderDead, match="remote reader 0 .* lost its connection"):
                for i in range(1, 1000):
                    writer.put(i, timeout=10)  # a 4 KiB ring fills at once
            with pytest.raises(ConnectionLost, match="grace_s 1"):
                while True:
                    remote.get(timeout=10)


@pytest.mark.timeout(30)
def test_an_evicted_remote_reader_hears_so_and_the_writer_carries_on(queue_name):
    with shmq.create(0, name=queue_name, ring_bytes=4096, n_remote_readers=1, remote_grace_s=1,
                     on_dead_reader="evict") as writer:
        proxy = CuttableProxy(port_of(writer.handle.endpoint))
        with proxy, shmq.attach_remote(writer.handle, 0, endpoint=f"tcp://127.0.0.1:{proxy.port}",
                                       grace_s=30) as remote:
            writer.put(0)
            assert remote.get(timeout=10) == 0
            proxy.cut()
            for i in range(1, 200):
                writer.put(i, timeout=10)  # blocked until the server evicts the lost reader
            state = shmq.stats.open(writer.handle).snapshot().readers[0].state
            assert state == shmq.ParticipantState.EVICTED, state
            proxy.restore()
            with pytest.raises(ReaderEvicted, match="remote reader 0 is no longer this reader's: it was evicted"):
                while True:
                    remote.get(timeout=10)
        with shmq.attach_remote(writer.handle, 0) as again:  # the slot is free: it joins at the head
            assert again.start_seq == 199 + 1
            writer.put("next")
            assert again.get(timeout=10) == "next"


@pytest.mark.timeout(30)
def test_a_remote_reader_attaching_late_gets_everything_and_one_attaching_after_a_close_joins_at_the_head(
        queue_name):
    with shmq.create(0, name=queue_name, ring_bytes=1 << 20, n_remote_readers=1) as writer:
        for i in range(10):  # nobody attached yet: the pending slot holds them
            writer.put(i, timeout=0)
        with shmq.attach_remote(writer.handle) as remote:
            assert remote.start_seq == 0 and remote.index == 0 and remote.slot == 0
            assert [remote.get(timeout=10) for _ in range(10)] == list(range(10))
        for i in range(10, 15):  # the slot was given back: these hold nobody
            writer.put(i, timeout=0)
        with shmq.attach_remote(writer.handle) as remote:
            assert remote.start_seq == 15
            writer.put(15)
            assert remote.get(timeout=10) == 15


@pytest.mark.timeout(30)
def test_remote_readers_show_in_stats_with_their_host_lag_and_liveness(queue_name):
    with shmq.create(1, name=queue_name, ring_bytes=1 << 20, n_remote_readers=2) as writer, \
            shmq.attach(writer.handle, 0) as local, shmq.attach_remote(writer.handle, 1) as remote:
        for i in range(5):
            writer.put(i)
            local.get()
        assert [remote.get(timeout=10) for _ in range(5)] == list(range(5)) and remote.index == 2
        with pytest.raises(QueueTimeout):
            remote.get(timeout=0.1)  # it acknowledges all five before it waits
        with shmq.stats.open(writer.handle) as view:
            snap = view.snapshot()
        assert snap.n_readers == 1 and snap.n_remote_readers == 2
        pending, held = snap.readers[1], snap.readers[2]
        assert pending.role == held.role == shmq.Role.REMOTE_READER
        assert pending.state == shmq.ParticipantState.PENDING and not pending.alive
        assert held.alive and held.pid == os.getpid() and held.host == socket.gethostname()
        assert held.label == f"reader 2 (remote, {held.host})"
        assert (held.cursor, held.messages, snap.lag(held)) == (5, 5, 0)
        assert held.state == shmq.ParticipantState.WAITING_READ


@pytest.mark.parametrize("grace", [-1, float("nan"), float("inf"), "soon"])
def test_a_bad_grace_is_refused(queue_name, grace):
    with shmq.create(0, name=queue_name, ring_bytes=4096, n_remote_readers=1) as writer:
        with pytest.raises(BadQueueArgument, match="grace_s"):
            shmq.attach_remote(writer.handle, grace_s=grace)
    with pytest.raises(BadQueueArgument, match="remote_grace_s"):
        shmq.create(0, name=queue_name, n_remote_readers=1, remote_grace_s=grace)


@pytest.mark.parametrize("window", [0, 100, 1 << 30, 4096.0])
def test_a_window_outside_one_frame_to_the_ring_is_refused(queue_name, window):
    with pytest.raises(BadQueueArgument, match=r"remote_window_bytes must be an int from one frame \(266,240: .* to "
                                               r"the ring \(1,048,576\)"):
        shmq.create(0, name=queue_name, ring_bytes=1 << 20, n_remote_readers=1, remote_window_bytes=window)


@pytest.mark.timeout(30)
def test_a_remote_slot_that_does_not_exist_is_refused(queue_name):
    with shmq.create(1, name=queue_name, ring_bytes=4096, n_remote_readers=1) as writer:
        with pytest.raises(shmq.BadHandle, match="1 remote reader slots; there is no remote reader 1"):
            shmq.attach_remote(writer.handle, 1)
        with pytest.raises(shmq.BadHandle, match="no reader 1"):
            shmq.attach(writer.handle, 1)  # the remote slot's record is not a local reader's


@pytest.fixture
def curve_keys(tmp_path):
    """A writer's certificate, an authorized reader's (its public half in the writer's directory), a stranger's."""
    import zmq.auth

    authorized = tmp_path / "authorized"
    authorized.mkdir()
    server_public, server_secret = zmq.auth.create_certificates(tmp_path, "writer")
    reader_public, reader_secret = zmq.auth.create_certificates(tmp_path, "reader")
    os.rename(reader_public, authorized / "reader.key")
    _, stranger_secret = zmq.auth.create_certificates(tmp_path, "stranger")
    return {"server_public": server_public, "server_secret": server_secret, "authorized": str(authorized),
            "reader_secret": reader_secret, "stranger_secret": stranger_secret}


@pytest.mark.timeout(60)
def test_with_curve_an_authorized_reader_reads_and_others_are_refused_by_name(queue_name, curve_keys):
    k = curve_keys
    with shmq.create(0, name=queue_name, ring_bytes=1 << 20, n_remote_readers=1, serializer="bytes",
                     remote_secret_key=k["server_secret"], remote_authorized_keys=k["authorized"]) as writer:
        for secret in (k["stranger_secret"], None):
            keys = {"secret_key": secret, "server_key": k["server_public"]} if secret else {}
            with pytest.raises(shmq.NotAuthorized, match="refused remote reader 0's handshake"):
                shmq.attach_remote(writer.handle, timeout=10, **keys)
        with shmq.attach_remote(writer.handle, secret_key=k["reader_secret"], server_key=k["server_public"]) as remote:
            writer.put(b"over curve")
            assert remote.get(timeout=10) == b"over curve"


def test_curve_keys_must_come_in_pairs_and_be_certificates(queue_name, curve_keys, tmp_path):
    k = curve_keys
    with pytest.raises(BadQueueArgument, match="needs both remote_secret_key"):
        shmq.create(0, name=queue_name, n_remote_readers=1, remote_secret_key=k["server_secret"])
    with pytest.raises(BadQueueArgument, match="holds no secret key"):
        shmq.create(0, name=queue_name, n_remote_readers=1, remote_secret_key=k["server_public"],
                    remote_authorized_keys=k["authorized"])
    (tmp_path / "junk").write_text("not a certificate")
    with pytest.raises(BadQueueArgument, match="not a readable ZeroMQ certificate"):
        shmq.create(0, name=queue_name, n_remote_readers=1, remote_secret_key=str(tmp_path / "junk"),
                    remote_authorized_keys=k["authorized"])


@pytest.mark.timeout(30)
def test_a_handle_of_another_queue_at_the_same_endpoint_is_refused_by_name(queue_name):
    with shmq.create(0, name=queue_name, ring_bytes=4096, n_remote_readers=1) as writer:
        stale = dataclasses.replace(writer.handle, instance_id="00" * 16)  # a queue that used this port before
        with pytest.raises(shmq.BadHandle, match=f"serves queue {queue_name!r} .* not instance 0+: the handle is "
                                                 "stale or was edited"):
            shmq.attach_remote(stale)
        with pytest.raises(shmq.BadHandle, match="malformed instance id"):
            shmq.attach_remote(dataclasses.replace(writer.handle, instance_id="not hex"))
        with shmq.attach_remote(writer.handle) as remote:  # the slot was never taken by the refused ones
            assert remote.start_seq == 0


@pytest.mark.timeout(30)
def test_a_reader_acknowledging_what_it_was_never_sent_changes_nothing_and_the_others_are_served(queue_name):
    import zmq

    from shmq import remote as R

    with shmq.create(0, name=queue_name, ring_bytes=1 << 20, n_remote_readers=2) as writer, \
            shmq.attach_remote(writer.handle, 1) as honest, zmq.Context() as context:
        rogue = context.socket(zmq.DEALER)
        rogue.connect(writer.handle.endpoint)
        rogue.send(R.HELLO + R._HELLO.pack(bytes.fromhex(writer.handle.instance_id), 0, -1, 1, b"r" * 16) + b"x")
        assert rogue.poll(10_000) and rogue.recv()[:1] == R.WELCOME
        writer.put(0)
        rogue.send(R.ACK + R._ACK.pack(1 << 40, 5, 5, 3))  # frame 2**40 consumed: far past what was sent
        for i in range(1, 50):
            writer.put(i, timeout=10)
        assert [honest.get(timeout=10) for _ in range(50)] == list(range(50))
        with shmq.stats.open(writer.handle) as view:
            assert view.snapshot().readers[0].cursor <= 50, "a slot was acknowledged past what it was sent"
        rogue.close(linger=0)


class FakeWriter:
    """A writer that is only a ROUTER speaking the protocol, so a test can send what no real writer would;
    `reader` is the remote reader attached to it (slot 0)."""

    FRAME_BYTES, PIECE_BYTES = 4096, 2048

    def __init__(self) -> None:
        import zmq

        from shmq import procs
        from shmq import remote as R

        self._context = zmq.Context()
        self.router = self._context.socket(zmq.ROUTER)
        port = self.router.bind_to_random_port("tcp://127.0.0.1")
        handle = shmq.Handle("shmq-fake", "fake", n_readers=0, ring_bytes=1 << 20, frame_bytes=self.FRAME_BYTES,
                             instance_id="ab" * 16, endpoint=f"tcp://127.0.0.1:{port}", n_remote_readers=1)
        attached = []
        attaching = threading.Thread(target=lambda: attached.append(shmq.attach_remote(handle, 0, timeout=10)))
        attaching.start()
        assert self.router.poll(10_000)
        self.peer, hello = self.router.recv_multipart()
        assert hello[:1] == R.HELLO
        self.router.send_multipart([self.peer, R.WELCOME + R._WELCOME.pack(
            0, 1 << 20, self.FRAME_BYTES, self.PIECE_BYTES, 1 << 30, os.getpid(),
            procs.start_time(os.getpid()) or 0) + socket.gethostname().encode()])
        attaching.join(10)
        (self.reader,) = attached

    @staticmethod
    def whole(obj, seq: int) -> tuple[bytes, bytes]:
        """The wire header and payload of `obj` pickled as frame `seq`, a whole message."""
        import pickle

        from shmq import layout as L
        from shmq import remote as R

        stream = pickle.dumps(obj, 5)
        payload = L.ONE_SEGMENT.pack(1, len(stream)) + stream
        return R.FRAME + R._FRAME.pack(seq, len(payload), len(payload), 0), payload

    def send(self, *parts: bytes) -> None:
        self.router.send_multipart([self.peer, *parts])

    def __enter__(self) -> FakeWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.reader.close()
        self.router.close(linger=0)
        self._context.term()


@pytest.mark.timeout(30)
@pytest.mark.parametrize("pieces, problem", [
    ([(0, 1000, 3000, "first"), (1, 2000, 3000, "last")], "piece 0 of message 0 does not continue it"),
    ([(0, 2048, 3000, "first"), (1, 1000, 3000, "last")], "piece 1 of message 0 does not continue it"),
    ([(0, 2048, 3000, "first"), (1, 2048, 3000, "last")], "piece 1 of message 0 does not continue it"),
])
def test_a_piece_of_the_wrong_length_from_the_writer_is_a_named_error_and_the_remote_reader_reads_on(
        pieces, problem):
    """Pieces that are not piece_bytes long, or overrun their message."""
    from shmq import layout as L
    from shmq import remote as R

    with FakeWriter() as fake:
        for seq, frame, total, kind in pieces:
            flags = L.FRAME_FRAGMENT | (L.FRAME_FIRST if kind == "first" else L.FRAME_LAST)
            fake.send(R.FRAME + R._FRAME.pack(seq, frame, total, flags), b"p" * frame)
        fake.send(*fake.whole("after", len(pieces)))
        with pytest.raises(shmq.CorruptMessage, match=problem):
            fake.reader.get(timeout=10)
        assert fake.reader.get(timeout=10) == "after"


def _batch_of(*frames: tuple[bytes, bytes]) -> bytes:
    from shmq import remote as R

    return R.BATCH + b"".join(header + payload for header, payload in frames)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("case", ["ends inside a frame", "frame over frame_bytes", "corrupt frame table"])
def test_a_batch_whose_frames_lie_about_their_lengths_is_a_named_error_and_the_remote_reader_reads_on(case):
    """A batch (small frames back to back in one ZeroMQ message) with a frame that does not fit it, is
    larger than a frame may be, or whose table of segments points outside it. The frames before it are
    delivered; the reader names what is wrong, and reads the next message the writer sends."""
    from shmq import layout as L
    from shmq import remote as R

    with FakeWriter() as fake:
        good = fake.whole("before", 0)
        if case == "ends inside a frame":
            header, payload = fake.whole("x" * 500, 1)
            bad, next_seq = (header, payload[:100]), 1  # the rest of the batch is dropped unread
            problem = "a batch of frames from the writer ends inside one"
        elif case == "frame over frame_bytes":
            payload = bytes(FakeWriter.FRAME_BYTES + 8)
            bad, next_seq = (R.FRAME + R._FRAME.pack(1, len(payload), len(payload), 0), payload), 2
            problem = "frame 1 says 4,104 bytes"
        else:
            payload = L.ONE_SEGMENT.pack(1, 1 << 20) + b"too short"
            bad, next_seq = (R.FRAME + R._FRAME.pack(1, len(payload), len(payload), 0), payload), 2
            problem = "message 1 has a corrupt frame table"
        fake.send(_batch_of(good, bad))
        fake.send(*fake.whole("after", next_seq))
        assert fake.reader.get(timeout=10) == "before"
        with pytest.raises(shmq.CorruptMessage, match=problem):
            fake.reader.get(timeout=10)
        assert fake.reader.get(timeout=10) == "after"


def read_one_then_stop(handle, ready):
    reader = shmq.attach_remote(handle, 0)
    reader.get(timeout=10)
    ready.set()
    time.sleep(60)  # stopped by the test: its socket stops draining the connection


@pytest.mark.timeout(30)
def test_a_writer_closes_while_zeromq_still_holds_frames_it_sends_from_the_ring(queue_name, children, monkeypatch):
    monkeypatch.setattr(shmq.writer, "REMOTE_CLOSE_DRAIN_S", 0.2)  # the reader will not acknowledge the rest
    data = np.arange(1 << 20, dtype=np.uint8)
    writer = shmq.create(0, name=queue_name, n_remote_readers=1, ring_bytes=64 << 20)
    ready = FORK.Event()
    stopped = children(read_one_then_stop, writer.handle, ready)
    writer.put(data, timeout=10)
    assert ready.wait(10)
    os.kill(stopped.pid, signal.SIGSTOP)  # what is sent now stays queued in ZeroMQ, read from the ring
    try:
        for _ in range(40):  # frames of 1 MiB, sent without a copy: more than the sockets' buffers hold
            writer.put(data, timeout=5)
        time.sleep(1.5)  # the server, which waits for an acknowledgement, sends them at its next tick
        writer.close()  # unmaps the ring only once ZeroMQ let go of the frames still queued for the reader
    finally:
        os.kill(stopped.pid, signal.SIGCONT)
    assert not os.path.exists(os.path.join("/dev/shm", writer.handle.shm_name))
