"""Timeouts, cancellation, dead peers, late and returning readers: never a silent hang."""

from __future__ import annotations

import logging
import os
import random
import signal
import threading
import time
import types

import pytest

import shmq
from shmq import participant, procs, wait
from shmq.testing import fill_ring

from .conftest import FORK


def fill(writer, count):
    for i in range(count):
        writer.put(i, timeout=5)


def test_get_on_an_empty_queue_times_out(writer):
    with shmq.attach(writer.handle, 0) as reader:
        start = time.monotonic()
        with pytest.raises(shmq.QueueTimeout) as raised:
            reader.get(timeout=0.2)
        assert 0.19 < time.monotonic() - start < 2
        assert isinstance(raised.value, TimeoutError)
        assert "waiting for the writer" in str(raised.value)
        with pytest.raises(shmq.WouldBlock):
            reader.get_nowait()


def test_put_on_a_full_ring_times_out_and_names_the_slow_reader(writer):
    with shmq.attach(writer.handle, 0) as reader, shmq.attach(writer.handle, 1) as other:
        count = fill_ring(writer)
        reader.get()
        with pytest.raises(shmq.QueueTimeout, match=rf"reader 1 \(pid {os.getpid()}, state idle, lag {count} "
                                                    r"messages, [\d,]+ of 33,792 ring bytes"):
            writer.put("one too many", timeout=0.2)
        with pytest.raises(shmq.WouldBlock, match="reader 1"):
            writer.put_nowait("one too many")
        other.get()  # in a backlog: the writer sees the room it frees at its next publish (a heartbeat)
        writer.put("fits now", timeout=5)
        with shmq.stats.open(writer.handle) as view:
            assert view.snapshot().writer.timeouts == 1


# Each strategy with few steps before its way of waiting, so that the test holds on a loaded machine too
# (with more runnable processes than cores, each of the default's 200 yields may hand over the core for ms).
WAITING_BY = {"busy": [wait.BusySpin(), wait.Yield()], "parked": [wait.SpinYieldPark(spins=5, yields=5)],
              "asleep": [wait.Backoff(spins_per_sleep=5)]}


@pytest.mark.parametrize("waits_by, strategy", [(by, s) for by, strategies in WAITING_BY.items() for s in strategies],
                         ids=lambda x: x if isinstance(x, str) else type(x).__name__)
def test_a_waits_time_is_counted_busy_parked_or_asleep_by_what_the_strategy_did(queue_name, waits_by, strategy):
    with shmq.create(1, name=queue_name, ring_bytes=4096, wait=strategy) as writer, \
            shmq.attach(writer.handle, 0, wait=strategy) as reader:
        with pytest.raises(shmq.QueueTimeout):
            reader.get(timeout=0.3)  # the reader waits for a message
        fill_ring(writer)
        with pytest.raises(shmq.QueueTimeout):
            writer.put("one too many", timeout=0.3)  # the writer waits for room
        with shmq.stats.open(writer.handle) as view:
            snapshot = view.snapshot()
    for who in (snapshot.readers[0], snapshot.writer):
        split = {"busy": who.busy_wait_ns, "parked": who.parked_ns, "asleep": who.backoff_sleep_ns}
        assert sum(split.values()) == who.wait_ns >= 0.3e9, (who.label, split)
        assert split[waits_by] >= 0.5 * who.wait_ns, (who.label, split)
        # What the strategy never does takes none of the time (busy time it always has: spins, and
        # the moments between a park or a sleep ending and the process running again).
        never = {"busy": ("parked", "asleep"), "parked": ("asleep",), "asleep": ("parked",)}[waits_by]
        assert all(split[key] == 0 for key in never), (who.label, split)


class CountingParker:
    def __init__(self) -> None:
        self.parks = 0

    def park(self, timeout_s: float) -> None:
        self.parks += 1

    def idle_event(self, name: str, start_ns: int, duration_ns: int) -> None:
        pass


@pytest.mark.parametrize("yield_takes_ns, yields_before_park", [(2_000, 200), (2_000_000, 1)],
                         ids=["the core is free", "a yield handed it over for a slice"])
def test_spin_yield_park_stops_yielding_once_a_yield_handed_the_core_to_another_process(
        monkeypatch, yield_takes_ns, yields_before_park):
    clock = [0]  # ns; each yield takes yield_takes_ns of it

    def sched_yield() -> None:
        clock[0] += yield_takes_ns

    monkeypatch.setattr(wait, "os", types.SimpleNamespace(sched_yield=sched_yield))
    parker, counters = CountingParker(), wait.WaitCounters()
    template = wait.SpinYieldPark(spins=0, yields=200)
    template._now = lambda: clock[0]
    strategy = template.bound(parker, counters)
    while not parker.parks:
        strategy.idle()
    assert counters.yields == yields_before_park


def test_a_reader_with_a_backlog_publishes_in_batches_and_wakes_the_parked_writer_once(queue_name, monkeypatch):
    # Small ints take 256-byte frames: 64 fill this ring, and a reader with a backlog publishes its
    # position every 4 of them (a sixteenth of the ring), so the position the parked writer waits
    # for (256: the end of the first frame) is jumped over, not landed on.
    monkeypatch.setattr(participant, "HEARTBEAT_INTERVAL_S", 60.0)  # no heartbeat publishes meanwhile
    never_spin = wait.SpinYieldPark(spins=0, yields=0)
    with shmq.create(1, name=queue_name, ring_bytes=64 * 256, wait=never_spin) as writer, \
            shmq.attach(writer.handle, 0) as reader, shmq.stats.open(writer.handle) as view:
        assert fill_ring(writer) == 64
        blocked = threading.Thread(target=writer.put, args=("one more",), kwargs={"timeout": 10})
        blocked.start()
        deadline = time.monotonic() + 5
        while (parked := view.snapshot()).writer_waits_for == 0 and time.monotonic() < deadline:
            time.sleep(0.001)
        assert parked.writer_waits_for == 256 and parked.may_be_full  # what a watchdog reads of it
        assert reader.get() == 0
        assert view.snapshot().readers[0].cursor == 0  # a backlog: the first message is not published yet
        assert [reader.get() for _ in range(3)] == [0, 0, 0]
        blocked.join(timeout=5)
        assert not blocked.is_alive()
        snap = view.snapshot()
        assert snap.readers[0].cursor == 4 and snap.readers[0].messages == 4
        assert snap.readers[0].wakeups == 1  # the batch crossing the writer's mark woke it
        assert snap.writer_waits_for == 0
        assert [reader.get() for _ in range(61)] == [0] * 60 + ["one more"]
        snap = view.snapshot()  # caught up: cursor and counts are published at once
        assert snap.readers[0].cursor == snap.writer_cursor == 65 and snap.readers[0].messages == 65


def test_a_reader_that_stops_in_a_backlog_has_its_cursor_and_counts_published_by_its_heartbeat(queue_name):
    # The application stops calling get() one message into a batch: within a heartbeat or two
    # the writer and any monitor see that message consumed and counted, and the progress.
    with shmq.create(1, name=queue_name, chunk_bytes=256, n_chunks=64) as writer, \
            shmq.attach(writer.handle, 0) as reader, shmq.stats.open(writer.handle) as view:
        fill(writer, 20)
        time.sleep(0.3)
        before = view.snapshot().readers[0].progress_ns
        assert reader.get() == 0
        deadline = time.monotonic() + 2
        while view.snapshot().readers[0].cursor == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        snap = view.snapshot()
        assert snap.readers[0].cursor == 1 and snap.readers[0].messages == 1
        assert snap.readers[0].progress_ns > before


def test_cancel_wakes_a_blocked_get_which_raises_queue_closed(writer):
    with shmq.attach(writer.handle, 0) as reader:
        outcome = []

        def blocked_get():
            try:
                reader.get(timeout=30)
            except shmq.QueueClosed as e:
                outcome.append(e)

        thread = threading.Thread(target=blocked_get)
        thread.start()
        time.sleep(0.2)  # let it park
        start = time.monotonic()
        reader.cancel()
        thread.join(5)
        assert outcome and time.monotonic() - start < 1
        with pytest.raises(shmq.QueueClosed):
            reader.get_nowait()


def test_readers_drain_then_see_the_writer_close(queue_name):
    writer = shmq.create(1, name=queue_name, chunk_bytes=4096, n_chunks=4)
    reader = shmq.attach(writer.handle, 0)
    writer.put("last words")
    writer.close()
    assert reader.get(timeout=1) == "last words"
    with pytest.raises(shmq.QueueClosed, match="closed by its writer after 1 messages"):
        reader.get(timeout=5)
    reader.close()
    with pytest.raises(shmq.QueueClosed):
        writer.put("after close")


def attach_and_wait(handle, index, attached):
    reader = shmq.attach(handle, index)
    attached.set()
    time.sleep(60)  # killed by the test long before
    reader.close()


@pytest.mark.timeout(30)
def test_a_killed_reader_makes_a_blocked_put_raise_reader_dead_within_a_second(queue_name, children):
    attached = FORK.Event()
    with shmq.create(2, name=queue_name, chunk_bytes=4096, n_chunks=4) as writer:
        victim = children(attach_and_wait, writer.handle, 0, attached)
        attached.wait(10)
        with shmq.attach(writer.handle, 1) as survivor:
            for _ in range(fill_ring(writer)):
                survivor.get()
            os.kill(victim.pid, signal.SIGKILL)
            victim.join(5)
            start = time.monotonic()
            with pytest.raises(shmq.ReaderDead, match=rf"reader 0 \(pid {victim.pid}\)"):
                writer.put("blocked", timeout=10)
            assert time.monotonic() - start < 1.0


@pytest.mark.timeout(30)
def test_a_killed_reader_is_evicted_and_the_others_lose_nothing(queue_name, children, caplog):
    attached = FORK.Event()
    with shmq.create(2, name=queue_name, chunk_bytes=4096, n_chunks=4, on_dead_reader="evict") as writer:
        victim = children(attach_and_wait, writer.handle, 0, attached)
        attached.wait(10)
        with shmq.attach(writer.handle, 1) as survivor:
            os.kill(victim.pid, signal.SIGKILL)
            victim.join(5)
            received, count = [], 3 * writer.handle.ring_bytes // 256  # small ints take 256-byte frames
            for i in range(count):  # three times the ring: only possible once reader 0 is evicted
                writer.put(i, timeout=5)
                received.append(survivor.get(timeout=5))
            assert received == list(range(count))
            with shmq.stats.open(writer.handle) as view:
                assert view.snapshot().readers[0].state == shmq.ParticipantState.EVICTED
    assert f"evicted dead reader 0 (pid {victim.pid})" in caplog.text


def read_mid_stream_then_hang(handle, index, read, ready):
    reader = shmq.attach(handle, index)
    for _ in range(read):
        reader.get(timeout=10)
    ready.set()
    time.sleep(60)  # killed by the test long before, holding frames of a stream that wraps the ring


@pytest.mark.timeout(60)
def test_a_reader_killed_mid_stream_of_every_size_is_evicted_and_the_survivor_gets_every_message(
        queue_name, children):
    ring = 16 << 10
    rng = random.Random(5)
    sizes = [rng.choice([0, 50, 300, 5000, ring // 3, ring, 3 * ring]) for _ in range(300)]
    sizes[20:25] = [50] * 5  # the 5 the victim never reads: they fit beside what it holds
    with shmq.create(2, name=queue_name, ring_bytes=ring, on_dead_reader="evict") as writer, \
            shmq.attach(writer.handle, 1) as survivor:
        ready = FORK.Event()
        victim = children(read_mid_stream_then_hang, writer.handle, 0, 20, ready)
        received = []
        reading = threading.Thread(target=lambda: received.extend(survivor.get_bytes(timeout=30) for _ in sizes))
        reading.start()
        for i, size in enumerate(sizes):
            if i == 25:
                assert ready.wait(10)
                os.kill(victim.pid, signal.SIGKILL)  # in the middle of the stream, holding 5 messages unread
            writer.put_bytes(bytes([i % 251]) * size, timeout=30)
        reading.join(60)
        assert received == [bytes([i % 251]) * size for i, size in enumerate(sizes)]
        with shmq.stats.open(writer.handle) as view:
            assert view.snapshot().readers[0].state == shmq.ParticipantState.EVICTED


def write_then_die(handle_box, count, ready):
    writer = shmq.create(1, name="doomed-writer", chunk_bytes=4096, n_chunks=8)
    handle_box.put(str(writer.handle))
    ready.wait(10)
    fill(writer, count)
    os.kill(os.getpid(), signal.SIGKILL)


@pytest.mark.timeout(30)
def test_a_killed_writer_makes_a_blocked_get_raise_writer_dead_after_the_last_message(children):
    handle_box, ready = FORK.Queue(), FORK.Event()
    children(write_then_die, handle_box, 3, ready)
    handle = handle_box.get(timeout=10)
    try:
        with shmq.attach(handle, 0) as reader:
            ready.set()
            assert [reader.get(timeout=5) for _ in range(3)] == [0, 1, 2]
            start = time.monotonic()
            with pytest.raises(shmq.WriterDead, match="received all 3 messages"):
                reader.get(timeout=10)
            assert time.monotonic() - start < 1.0
    finally:
        assert shmq.Handle.parse(handle).shm_name in shmq.cleanup()


def test_a_reader_that_attaches_late_gets_everything_from_the_start(writer):
    with shmq.attach(writer.handle, 1) as early:
        count = fill_ring(writer)  # the ring is now full: reader 0 holds it
        with pytest.raises(shmq.QueueTimeout, match="reader 0 has not attached"):
            writer.put("waits for reader 0", timeout=0.1)
        with shmq.attach(writer.handle, 0) as late:
            assert [late.get() for _ in range(count)] == [0] * count
        assert [early.get() for _ in range(count)] == [0] * count


def test_a_reader_that_closes_stops_gating_and_can_attach_again(writer):
    with shmq.attach(writer.handle, 1) as steady:
        first = shmq.attach(writer.handle, 0)
        writer.put("before")
        assert first.get() == "before"
        first.close()
        assert steady.get() == "before"
        for i in range(20):  # more than the ring: reader 0 no longer holds the writer back
            writer.put(i, timeout=1)
            assert steady.get(timeout=1) == i
        with shmq.attach(writer.handle, 0) as again:
            writer.put("after")
            assert again.get(timeout=1) == "after"
        assert steady.get() == "after"


def test_a_reader_index_held_by_a_live_process_cannot_be_taken(writer):
    with shmq.attach(writer.handle, 0):
        with pytest.raises(shmq.AlreadyAttached, match=f"live pid {os.getpid()}"):
            shmq.attach(writer.handle, 0)


def test_a_long_wait_logs_who_blocks_it(queue_name, caplog):
    with shmq.create(1, name=queue_name, chunk_bytes=4096, n_chunks=2, warn_after_s=0.2) as writer:
        with shmq.attach(writer.handle, 0):
            count = fill_ring(writer)
            with caplog.at_level(logging.WARNING, logger="shmq"), pytest.raises(shmq.QueueTimeout):
                writer.put("blocked", timeout=0.5)
    assert f"writer (pid {os.getpid()}) has waited" in caplog.text
    assert f"reader 0 (pid {os.getpid()}, state idle, lag {count} messages, " in caplog.text


def idle_reader(handle, index):
    with shmq.attach(handle, index, wait=wait.SpinYieldPark()) as reader:
        reader.get(timeout=30)


@pytest.mark.timeout(30)
def test_idle_readers_use_almost_no_cpu(queue_name, children):
    with shmq.create(2, name=queue_name, chunk_bytes=4096, n_chunks=4) as writer:
        readers = [children(idle_reader, writer.handle, i) for i in range(2)]
        writer.wait_for_readers(timeout=10)
        time.sleep(0.5)  # past spinning and yielding, into parking
        before = [procs.cpu_seconds(p.pid) for p in readers]
        time.sleep(2.0)
        used = [(procs.cpu_seconds(p.pid) - b) / 2.0 for p, b in zip(readers, before)]
        writer.put("wake up")
        for p in readers:
            p.join(10)
            assert p.exitcode == 0
    # The benchmark reports the real figure; 5 % of a core leaves room for a noisy machine.
    assert max(used) < 0.05, used
