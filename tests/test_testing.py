"""shmq.testing.blind: a reader that stops seeing new messages, and sees them all, in order, once it ends."""

from __future__ import annotations

import threading
import time

import pytest

import shmq
from shmq import wait
from shmq.testing import NotBlindable, blind

from .conftest import FORK


def read_blind_while(handle: str, fault, received) -> None:
    """A worker that is blind while `fault` is set; it reports each message, then None when the queue closes."""
    with shmq.attach(handle, reader=0, wait=wait.BusySpin()) as reader:
        blind(reader, while_=fault)
        try:
            while True:
                received.put(reader.get(timeout=30))
        except shmq.QueueClosed:
            received.put(None)


def wait_until(condition, what: str, timeout_s: float = 10.0):
    deadline = time.monotonic() + timeout_s
    while not (value := condition()):
        assert time.monotonic() < deadline, f"not within {timeout_s} s: {what}"
        time.sleep(0.02)
    return value


@pytest.mark.timeout(40)
def test_a_blinded_reader_spins_without_consuming_then_reads_everything_in_order(queue_name, children):
    fault, received = FORK.Event(), FORK.Queue()
    fault.set()
    with shmq.create(1, name=queue_name, chunk_bytes=256, n_chunks=16) as writer:
        worker = children(read_blind_while, str(writer.handle), fault, received)
        writer.wait_for_readers(timeout=10)
        writer.put("seen")
        with shmq.stats.open(writer.handle) as view:
            for i in range(10):
                writer.put(i)
            first = view.snapshot().readers[0]
            later = wait_until(lambda: (r := view.snapshot().readers[0]).spins > first.spins + 100_000 and r,
                               "the blind reader spins")
            assert (first.cursor, later.cursor, view.snapshot().lag(later)) == (0, 0, 11), "it consumed nothing"
            assert later.state == shmq.ParticipantState.WAITING_READ
            assert received.empty()
            fault.clear()
            got = [received.get(timeout=10) for _ in range(11)]
            assert got == ["seen", *range(10)]
            wait_until(lambda: view.snapshot().readers[0].cursor == 11, "its cursor reaches the writer's")
    assert received.get(timeout=10) is None
    worker.join(10)
    assert worker.exitcode == 0


def test_blind_for_a_with_block_then_sight_returns(writer):
    with shmq.attach(writer.handle, 0) as reader, shmq.attach(writer.handle, 1):
        writer.put(0)
        with blind(reader):
            writer.put(1)
            with pytest.raises(shmq.WouldBlock):  # it had not looked since message 0 was published
                reader.get_nowait()
            with pytest.raises(shmq.QueueTimeout):
                reader.get(timeout=0.05)
        assert [reader.get_nowait(), reader.get_nowait()] == [0, 1]


def test_blind_follows_its_event_both_ways(writer):
    fault = threading.Event()
    with shmq.attach(writer.handle, 0) as reader, shmq.attach(writer.handle, 1):
        blindfold = blind(reader, while_=fault)
        writer.put(1)
        assert reader.get_nowait() == 1
        fault.set()
        writer.put(2)
        with pytest.raises(shmq.WouldBlock):
            reader.get_nowait()
        fault.clear()
        assert reader.get_nowait() == 2
        fault.set()
        blindfold.end()  # for good, whatever the event says
        writer.put(3)
        assert reader.get_nowait() == 3


def test_blind_names_what_it_cannot_blind(writer):
    with pytest.raises(NotBlindable, match="needs a shmq.Reader of this process .*not Writer") as raised:
        blind(writer)
    assert isinstance(raised.value, shmq.ShmqError) and isinstance(raised.value, TypeError)
    with shmq.attach(writer.handle, 0) as reader:
        with pytest.raises(NotBlindable, match=r"anything with is_set\(\), not bool"):
            blind(reader, while_=True)


class FailsOnce:
    """Its first unpickling raises (an unpickler error in the reader's process)."""

    failed = False

    def __setstate__(self, state):
        if not FailsOnce.failed:
            FailsOnce.failed = True
            raise ValueError("the first unpickling fails")
        self.__dict__.update(state)


def test_a_message_whose_decode_fails_under_a_blindfold_is_kept_for_the_next_get(queue_name):
    sight_lost = threading.Event()  # never set: the blindfold is on, the reader sees
    with shmq.create(1, name=queue_name, chunk_bytes=256, n_chunks=8, stack_dumps=False) as writer, \
            shmq.attach(writer.handle, 0, stack_dumps=False) as reader, blind(reader, while_=sight_lost):
        kept = FailsOnce()
        kept.n = 1
        writer.put(kept)
        writer.put("next")
        with pytest.raises(ValueError, match="first unpickling"):
            reader.get(timeout=5)
        assert reader.get(timeout=5).n == 1 and reader.get(timeout=5) == "next"
