"""A relay (shmq relay / shmq.relay.Relay): one remote reader republishing into a local queue."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

import shmq

from .conftest import FORK
from .test_remote import writer_until_killed
from .watchdog_harness import ROOT


class RelayProcess:
    """``shmq relay`` in its own process; `handle` is the local queue it prints."""

    def __init__(self, origin: shmq.Handle, readers: int, *extra: str) -> None:
        self.process = subprocess.Popen([sys.executable, "-m", "shmq", "relay", str(origin), "--readers", str(readers),
                                         *extra], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = self.process.stdout.readline()
        assert line.startswith("shmq://"), f"the relay printed {line!r}; stderr: {self.process.stderr.read()}"
        self.handle = shmq.Handle.parse(line)

    def wait(self) -> tuple[int, str]:
        code = self.process.wait(30)
        error = self.process.stderr.read()
        self.process.stdout.close()
        self.process.stderr.close()
        return code, error


def read_all(handle, index: int, conn) -> None:
    with shmq.attach(handle, index) as reader:
        got = []
        try:
            while True:
                got.append(reader.get(timeout=30))
        except shmq.QueueClosed:
            conn.send(("closed", got))
        except shmq.ShmqError as e:
            conn.send((type(e).__name__, got))


@pytest.mark.timeout(60)
def test_a_relay_feeds_four_local_readers_everything_once_in_order_and_closes_with_the_origin(queue_name, children):
    sent = [{"i": i, "pad": bytes(i % 3000)} for i in range(3000)] + [bytes(3 << 20)]  # and one in pieces
    with shmq.create(0, name=queue_name, ring_bytes=1 << 20, n_remote_readers=1) as origin:
        relay = RelayProcess(origin.handle, 4, "--ring-bytes", str(256 << 10))
        pipes = []
        for i in range(4):
            parent_end, child_end = FORK.Pipe()
            children(read_all, relay.handle, i, child_end)
            pipes.append(parent_end)
        for message in sent:
            origin.put(message, timeout=30)
    code, error = relay.wait()
    assert code == 0, error
    assert f"the origin closed after {len(sent)} messages" in error
    for parent_end in pipes:
        assert parent_end.poll(30)
        how, got = parent_end.recv()
        assert how == "closed" and got == sent


@pytest.mark.timeout(60)
def test_a_slow_reader_behind_the_relay_holds_the_origin_back(queue_name, children):
    with shmq.create(0, name=queue_name, ring_bytes=64 << 10, n_remote_readers=1) as origin:
        relay = RelayProcess(origin.handle, 1, "--ring-bytes", str(64 << 10))
        with shmq.attach(relay.handle, 0) as behind:  # attached, and not reading
            with pytest.raises(shmq.QueueTimeout, match=r"blocked by reader 0 \(remote"):
                for i in range(10_000):
                    origin.put_bytes(bytes(1000), timeout=2)
            assert i < 200, f"{i} messages got past a relay whose reader took none"
            for _ in range(i):
                behind.get_bytes(timeout=10)
    assert relay.wait()[0] == 0


@pytest.mark.timeout(60)
def test_the_origin_dying_reaches_the_readers_behind_the_relay_as_writer_dead(queue_name, children):
    parent_end, child_end = FORK.Pipe()
    origin = children(writer_until_killed, queue_name, child_end)
    assert parent_end.poll(10)
    handle = parent_end.recv()
    try:
        relay = RelayProcess(handle, 1)
        with shmq.attach(relay.handle, 0) as behind:
            assert behind.get(timeout=10) == 0
            os.kill(origin.pid, signal.SIGKILL)
            code, error = relay.wait()
            with pytest.raises(shmq.WriterDead, match=f"pid {relay.process.pid}"):
                while True:
                    behind.get(timeout=10)
    finally:
        if os.path.exists(f"/dev/shm/{handle.shm_name}"):
            os.unlink(f"/dev/shm/{handle.shm_name}")
    assert code == 1 and f"WriterDead: the writer (pid {origin.pid})" in error
    assert not os.path.exists(f"/dev/shm/{relay.handle.shm_name}"), "the abandoned local queue was not unlinked"
