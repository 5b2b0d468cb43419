"""Remote readers over real TCP: a cut connection, a dead writer, where a reader starts."""

from __future__ import annotations

import os
import re
import signal
import socket
import threading
import time

import pytest

import shmq
from shmq.errors import BadQueueArgument, MessagesLost, QueueClosed, QueueTimeout, WriterDead

from .conftest import FORK


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


@pytest.mark.timeout(30)
def test_a_cut_connection_within_the_grace_is_not_a_dead_writer(queue_name):
    """A 1.5 s cut: the reader reports the messages the cut lost once, as MessagesLost, and reads on.

    The loss itself is the XPUB path's: messages sent while no subscriber is connected are dropped.
    """
    with shmq.create(1, name=queue_name, chunk_bytes=4096, n_chunks=16, n_remote_readers=1) as writer, \
            shmq.attach(writer.handle, 0) as local:
        proxy = CuttableProxy(port_of(writer.handle.endpoint))
        remote = shmq.attach_remote(writer.handle, endpoint=f"tcp://127.0.0.1:{proxy.port}", grace_s=5)
        received, gaps, errors = [], [], []
        done = threading.Event()

        def read() -> None:
            while not done.is_set():
                try:
                    received.append(remote.get(timeout=10))
                except MessagesLost as e:
                    gaps.append(str(e))
                except QueueClosed:
                    if not done.is_set():
                        errors.append("closed before the end")
                    return
                except Exception as e:  # anything else fails the test below, with its name
                    errors.append(repr(e))
                    return

        reading = threading.Thread(target=read, daemon=True)
        with proxy, remote:
            deadline = time.monotonic() + 10
            while remote.start_seq is None and time.monotonic() < deadline:  # until the subscription is through
                writer.put(-1)
                local.get()
                reading.is_alive() or reading.start()
                time.sleep(0.01)
            assert remote.start_seq is not None, "the remote reader never received a message"
            sent = 0

            def send_for(seconds: float) -> None:
                nonlocal sent
                end = time.monotonic() + seconds
                while time.monotonic() < end:
                    writer.put(sent)
                    local.get()
                    sent += 1
                    time.sleep(0.002)

            send_for(0.5)
            proxy.cut()
            send_for(1.5)
            proxy.restore()
            send_for(2.0)
            last = sent - 1
            deadline = time.monotonic() + 10
            while (not received or received[-1] != last) and not errors and time.monotonic() < deadline:
                time.sleep(0.01)
            done.set()
            remote.cancel()
            reading.join(5)
    assert errors == [], errors
    numbered = [m for m in received if m >= 0]
    assert numbered[-1] == last, f"the last message {last} never arrived after the connection came back"
    assert numbered == sorted(set(numbered)), "a message arrived twice or out of order"
    assert len(gaps) == 1, f"the cut should lose the messages sent during it, reported once: {gaps}"
    # Nothing beyond what was reported is lost: the message that showed the gap is the next get()'s.
    holes = [(before, after) for before, after in zip(numbered, numbered[1:]) if after != before + 1]
    reported = int(re.search(r": (\d+) messages were lost", gaps[0])[1])
    assert len(holes) == 1 and holes[0][1] - holes[0][0] - 1 == reported, (holes, gaps)


def killable_writer(queue_name, conn) -> None:
    """Child: a writer that sends a numbered message every 10 ms until it is killed."""
    with shmq.create(1, name=queue_name, chunk_bytes=4096, n_chunks=16, n_remote_readers=1) as writer, \
            shmq.attach(writer.handle, 0) as local:
        conn.send(writer.handle)
        i = 0
        while True:
            writer.put(i)
            local.get()
            i += 1
            time.sleep(0.01)


@pytest.mark.timeout(30)
def test_a_killed_writer_is_writer_dead_after_the_grace(queue_name, children):
    grace = 1.0
    parent_end, child_end = FORK.Pipe()
    child = children(killable_writer, queue_name, child_end)
    assert parent_end.poll(10), "the writer did not start"
    handle = parent_end.recv()
    try:
        with shmq.attach_remote(handle, grace_s=grace) as remote:
            remote.get(timeout=10)
            os.kill(child.pid, signal.SIGKILL)
            killed = time.monotonic()
            with pytest.raises(WriterDead, match="grace_s"):
                while True:
                    remote.get(timeout=10)
            noticed = time.monotonic() - killed
    finally:
        if os.path.exists(f"/dev/shm/{handle.shm_name}"):
            os.unlink(f"/dev/shm/{handle.shm_name}")
    assert grace <= noticed < grace + 5, f"WriterDead came {noticed:.2f} s after the kill, grace {grace} s"


@pytest.mark.timeout(30)
def test_a_late_reader_tells_where_it_started(queue_name):
    with shmq.create(1, name=queue_name, chunk_bytes=4096, n_chunks=16, n_remote_readers=1) as writer, \
            shmq.attach(writer.handle, 0) as local:
        for i in range(5):  # nobody remote listens yet: these go nowhere
            writer.put(i)
            local.get()
        with shmq.attach_remote(writer.handle) as remote:
            assert remote.start_seq is None
            deadline = time.monotonic() + 10
            i, first = 5, None
            while first is None and time.monotonic() < deadline:
                writer.put(i)
                local.get()
                i += 1
                try:
                    first = remote.get(timeout=0.05)
                except QueueTimeout:
                    pass
            assert first is not None, "the late reader never received a message"
            assert first >= 5 and remote.start_seq == first  # messages are numbered from 0, as put


@pytest.mark.parametrize("grace", [-1, float("nan"), float("inf"), "soon"])
def test_a_bad_grace_is_refused(writer, grace):
    with pytest.raises(BadQueueArgument, match="grace_s"):
        shmq.attach_remote(writer.handle, endpoint="tcp://127.0.0.1:1", grace_s=grace)


@pytest.mark.timeout(30)
def test_a_queue_with_only_remote_readers_never_holds_its_writer_back(queue_name):
    with shmq.create(0, name=queue_name, ring_bytes=4096, n_remote_readers=1) as writer:
        with pytest.raises(shmq.BadHandle, match="only remote readers"):
            shmq.attach(writer.handle, 0)
        with shmq.attach_remote(writer.handle) as remote:
            writer.wait_for_readers(timeout=10)
            sent = [bytes([i % 251]) * (i * 37 % 3000) for i in range(500)]  # 500 kB through a 4 KiB ring
            for body in sent:
                writer.put_bytes(body, timeout=0)  # nothing local to wait for
            assert [remote.get_bytes(timeout=10) for _ in sent] == sent
