"""Hostile use of a local queue: racing attaches, fork, threads, interrupts, timeouts, corrupt frames,
edited handles. Each ends in correct data or a named error, never a hang, and other readers lose nothing."""

from __future__ import annotations

import inspect
import math
import mmap
import os
import random
import signal
import struct
import threading
import time

import pytest

import shmq
from shmq import layout as L
from shmq.testing import fill_ring

from .conftest import FORK

ROUNDS, RACERS = 250, 4  # 1,000 racing attaches


def racer(handle: str, barrier, results) -> None:
    for round_ in range(ROUNDS):
        barrier.wait(30)
        try:
            reader = shmq.attach(handle, 0, stack_dumps=False)
            results.put((round_, "won", os.getpid()))
        except shmq.AlreadyAttached as e:
            reader = None
            results.put((round_, "lost", str(e)))
        barrier.wait(30)  # every racer has tried before the winner lets go
        if reader is not None:
            reader.close()


@pytest.mark.timeout(120)
def test_of_processes_attaching_the_same_reader_at_once_exactly_one_wins(queue_name, children):
    with shmq.create(1, name=queue_name, n_chunks=4096, chunk_bytes=64) as writer:
        barrier, results = FORK.Barrier(RACERS), FORK.Queue()
        racers = [children(racer, str(writer.handle), barrier, results) for _ in range(RACERS)]
        outcomes = [results.get(timeout=60) for _ in range(ROUNDS * RACERS)]
        for process in racers:
            process.join(30)
            assert process.exitcode == 0
    rounds: dict[int, list] = {}
    for round_, kind, detail in outcomes:
        rounds.setdefault(round_, []).append((kind, detail))
    assert sorted(rounds) == list(range(ROUNDS))
    for attempts in rounds.values():
        assert len(attempts) == RACERS
        winners = [pid for kind, pid in attempts if kind == "won"]
        assert len(winners) == 1, attempts
        for kind, message in attempts:
            if kind == "lost":
                assert f"attached by live pid {winners[0]}" in message


def hold_and_die(handle: str, ready) -> None:
    shmq.attach(handle, 0, stack_dumps=False)
    ready.set()
    time.sleep(60)


def take_over(handle: str, barrier, results) -> None:
    barrier.wait(30)
    try:
        reader = shmq.attach(handle, 0, stack_dumps=False)
    except shmq.AlreadyAttached:
        reader = None
        results.put(("lost", None))
    else:
        results.put(("won", reader.get(timeout=10)))
    barrier.wait(30)  # every racer has tried before the winner lets go
    if reader is not None:
        reader.close()


@pytest.mark.timeout(120)
def test_the_record_of_a_dead_reader_is_taken_over_by_exactly_one_of_several_racers(queue_name, children):
    barrier, results = FORK.Barrier(3), FORK.Queue()
    with shmq.create(1, name=queue_name, n_chunks=8, chunk_bytes=256) as writer:
        for round_ in range(10):
            ready = FORK.Event()
            holder = children(hold_and_die, str(writer.handle), ready)
            assert ready.wait(30)
            writer.put(round_, timeout=10)
            holder.kill()
            holder.join(10)
            racers = [children(take_over, str(writer.handle), barrier, results) for _ in range(3)]
            outcomes = sorted((results.get(timeout=30) for _ in range(3)), key=str)
            # The winner resumes where the dead holder stopped: it receives this round's message.
            assert outcomes == [("lost", None), ("lost", None), ("won", round_)]
            for racer_process in racers:
                racer_process.join(10)


def use_inherited(reader, writer, results) -> None:
    outcomes = []
    for call in (reader.get_nowait, lambda: reader.get(timeout=1), reader.cancel, lambda: writer.put("child")):
        try:
            call()
            outcomes.append("no error")
        except shmq.ForkedParticipant as e:
            outcomes.append(str(e))
    reader.close()  # unmaps the child's copy only
    writer.close()  # must not unlink the parent's queue
    results.put(outcomes)


@pytest.mark.timeout(60)
def test_a_forked_child_cannot_use_its_parents_reader_or_writer_and_the_parent_loses_nothing(queue_name, children):
    with shmq.create(1, name=queue_name, n_chunks=8, chunk_bytes=256) as writer:
        with shmq.attach(writer.handle, 0) as reader:
            for i in range(6):
                writer.put(i)
            assert [reader.get(), reader.get()] == [0, 1]
            results = FORK.Queue()
            child = children(use_inherited, reader, writer, results)
            outcomes = results.get(timeout=30)
            child.join(10)
            assert child.exitcode == 0
            assert len(outcomes) == 4
            for outcome in outcomes:
                assert f"belongs to pid {os.getpid()}; this process (pid {child.pid}) was forked" in outcome
            assert [reader.get(timeout=5) for _ in range(4)] == [2, 3, 4, 5]
            writer.put("after")
            assert reader.get(timeout=5) == "after"
            assert os.path.exists(os.path.join("/dev/shm", writer.handle.shm_name))


@pytest.mark.timeout(30)
def test_a_second_thread_calling_into_a_reader_gets_concurrent_use_and_cancel_still_works(writer):
    with shmq.attach(writer.handle, 0) as reader, shmq.attach(writer.handle, 1):
        outcome = []

        def blocked_get():
            try:
                reader.get(timeout=20)
            except shmq.QueueClosed as e:
                outcome.append(e)

        thread = threading.Thread(target=blocked_get)
        thread.start()
        time.sleep(0.2)
        with pytest.raises(shmq.ConcurrentUse, match="in use by another thread"):
            reader.get_nowait()
        with pytest.raises(shmq.ConcurrentUse):
            with reader.lease(timeout=0):
                pass
        reader.cancel()
        thread.join(5)
        assert not thread.is_alive() and len(outcome) == 1


@pytest.mark.timeout(30)
def test_a_second_thread_calling_into_a_writer_gets_concurrent_use(writer):
    with shmq.attach(writer.handle, 0), shmq.attach(writer.handle, 1):
        fill_ring(writer)
        errors = []

        def blocked_put():
            try:
                writer.put("full", timeout=1.0)
            except shmq.QueueTimeout as e:
                errors.append(e)

        thread = threading.Thread(target=blocked_put)
        thread.start()
        time.sleep(0.2)
        with pytest.raises(shmq.ConcurrentUse, match="writer .* is in use by another thread"):
            writer.put_nowait("second thread")
        thread.join(5)
        assert len(errors) == 1


class Interrupt(Exception):
    """What the test's signal handler raises, as a KeyboardInterrupt would be."""


def _fast_path_take() -> tuple:
    """Reader.get()'s code, and the line of its fast path's one C call."""
    lines, first = inspect.getsourcelines(shmq.Reader.get)
    return shmq.Reader.get.__code__, first + next(i for i, line in enumerate(lines) if "take_one()" in line)


_GET, _TAKE_LINE = _fast_path_take()


def raise_interrupt(signum, frame):
    """Raise anywhere inside get() or put() but at one point: right after get()'s fast path, whose
    one C call took and decoded the message, the value is in flight to the caller, and a function's
    value is lost to an exception there whatever the function does (as it is in the caller's own
    assignment), so that window is the caller's, not the queue's.

    The first two checks call nothing: a signal arriving meanwhile runs this handler again inside
    this one, and that nested run leaves the decision to the run it interrupted."""
    if frame.f_code is raise_interrupt.__code__ or frame.f_code is _GET and frame.f_lineno == _TAKE_LINE:
        return
    while frame is not None:
        if frame.f_code.co_name in ("get", "_send") and frame.f_code.co_filename.endswith(("reader.py", "writer.py")):
            raise Interrupt()
        frame = frame.f_back


def messages(seed: int, count: int, chunk_bytes: int) -> list:
    """Small messages and messages in pieces, mixed."""
    rng = random.Random(seed)
    return [(i, bytes([i % 251]) * rng.choice([10, 100, chunk_bytes * 3, chunk_bytes * 7])) for i in range(count)]


def interrupted_reader(handle: str, index: int, count: int, ready, results) -> None:
    signal.signal(signal.SIGUSR1, raise_interrupt)
    received, interrupts = [], 0
    with shmq.attach(handle, index, stack_dumps=False) as reader:
        ready.set()
        while len(received) < count:
            try:
                received.append(reader.get(timeout=30))
            except Interrupt:
                interrupts += 1
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    results.put((index, received, interrupts))


@pytest.mark.timeout(120)
def test_a_reader_interrupted_at_random_moments_receives_every_message_once_whole_and_in_order(queue_name,
                                                                                               children):
    count, chunk = 1500, 256
    sent = messages(7, count, chunk)
    with shmq.create(2, name=queue_name, n_chunks=8, chunk_bytes=chunk) as writer:
        ready, results = FORK.Event(), FORK.Queue()
        victim = children(interrupted_reader, str(writer.handle), 0, count, ready, results)
        children(interrupted_reader, str(writer.handle), 1, count, FORK.Event(), results)
        assert ready.wait(30)
        writer.wait_for_readers(timeout=30)
        stop = threading.Event()

        def interrupter():
            rng = random.Random(3)
            while not stop.wait(rng.uniform(0.0001, 0.0005)):
                os.kill(victim.pid, signal.SIGUSR1)

        thread = threading.Thread(target=interrupter, daemon=True)
        thread.start()
        try:
            for message in sent:
                writer.put(message, timeout=30)
            outcomes = {index: (got, interrupts) for index, got, interrupts in (results.get(timeout=60),
                                                                                results.get(timeout=60))}
        finally:
            stop.set()
            thread.join(5)
    assert outcomes[1][0] == sent
    assert outcomes[0][0] == sent
    assert outcomes[0][1] > 10, "the interrupter must really have interrupted get()"


def interrupted_writer(handle_queue, name: str, count: int, chunk: int, results) -> None:
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)  # interrupts count from the first put()
    completed, interrupted = [], 0
    with shmq.create(1, name=name, n_chunks=4, chunk_bytes=chunk, stack_dumps=False) as writer:
        handle_queue.put(str(writer.handle))
        writer.wait_for_readers(timeout=30)
        signal.signal(signal.SIGUSR1, raise_interrupt)
        for message in messages(11, count, chunk):
            try:
                writer.put(message, timeout=30)
                completed.append(message[0])
            except Interrupt:
                interrupted += 1
        signal.signal(signal.SIGUSR1, signal.SIG_IGN)
        writer.put("end", timeout=30)
        results.put((completed, interrupted))


@pytest.mark.timeout(120)
def test_a_writer_interrupted_mid_message_never_delivers_a_partial_or_duplicate_message(queue_name, children):
    count, chunk = 3000, 256
    handles, results = FORK.Queue(), FORK.Queue()
    victim = children(interrupted_writer, handles, queue_name, count, chunk, results)
    with shmq.attach(handles.get(timeout=30), 0) as reader:
        stop = threading.Event()

        def interrupter():
            rng = random.Random(5)
            while not stop.wait(rng.uniform(0.0001, 0.0005)):
                try:
                    os.kill(victim.pid, signal.SIGUSR1)
                except ProcessLookupError:
                    return

        thread = threading.Thread(target=interrupter, daemon=True)
        thread.start()
        received = []
        try:
            while (message := reader.get(timeout=30)) != "end":
                received.append(message)
        finally:
            stop.set()
            thread.join(5)
        completed, interrupted = results.get(timeout=30)
    expected = dict(messages(11, count, chunk))
    ids = [i for i, _ in received]
    assert ids == sorted(set(ids)), "a message came twice or out of order"
    assert all(body == expected[i] for i, body in received), "a message came corrupt"
    assert set(completed) <= set(ids), "a put() that returned was not delivered"
    assert interrupted > 0, "the interrupter must really have interrupted put()"


@pytest.mark.timeout(30)
def test_timeouts_inf_waits_nan_is_refused_and_zero_or_negative_do_not_wait(writer):
    with shmq.attach(writer.handle, 0) as reader, shmq.attach(writer.handle, 1) as other:
        for bad in (math.nan, "soon"):
            with pytest.raises(shmq.BadTimeout):
                reader.get(timeout=bad)  # nothing to read: the call would wait
        assert shmq.stats.open(writer.handle).snapshot().readers[0].state == shmq.ParticipantState.IDLE
        for no_wait in (0, -1, -math.inf):
            with pytest.raises(shmq.WouldBlock):
                reader.get(timeout=no_wait)
        # A call that need not wait does not look at its timeout (the fast path pays nothing for it).
        writer.put("ready", timeout=math.nan)
        assert reader.get(timeout="soon") == "ready" and other.get() == "ready"
        filled = 0
        while True:  # fill the ring, so that put() would wait
            try:
                writer.put_nowait(filled)
            except shmq.WouldBlock:
                break
            filled += 1
        for bad in (math.nan, "soon"):
            with pytest.raises(shmq.BadTimeout):
                writer.put("x", timeout=bad)
        # A refused call never waited: the states say what the last call that ran did.
        assert shmq.stats.open(writer.handle).snapshot().writer.state == shmq.ParticipantState.BUSY
        assert [reader.get_nowait() for _ in range(filled)] == list(range(filled))
        assert [other.get_nowait() for _ in range(filled)] == list(range(filled))
        threading.Timer(0.3, writer.put, args=("late",)).start()
        assert reader.get(timeout=math.inf) == "late"


@pytest.mark.timeout(30)
def test_a_timeout_mid_message_is_honoured_on_both_sides_and_the_next_calls_carry_on(queue_name):
    with shmq.create(1, name=queue_name, n_chunks=4, chunk_bytes=256) as writer:
        with shmq.attach(writer.handle, 0) as reader:
            with pytest.raises(shmq.QueueTimeout):
                writer.put_bytes(b"b" * 2000, timeout=0.3)  # 4 of its 8 pieces fit, then nobody reads
            with pytest.raises(shmq.QueueTimeout, match="in the middle of message 0"):
                reader.get_bytes(timeout=0.3)  # the 4 pieces, then no more
            writer.put_bytes(b"next")  # first publishes the abort piece of the cut message
            assert reader.get_bytes(timeout=5) == b"next"  # the cut message is dropped, nothing else
            writer.put_bytes(b"c" * 700)
            assert reader.get_bytes(timeout=5) == b"c" * 700


def frame_offset(mm, handle, frame: int) -> int:
    """Where frame `frame` of the first lap of the ring is in the segment, found by walking the headers."""
    start, position = L.ring_offset(handle.n_readers), 0
    while True:
        seq, length, _, flags, _ = L.FRAME_HEAD.unpack_from(mm, start + position)
        if flags & L.FRAME_PADDING:
            raise AssertionError("the frame is past the first lap")
        if seq == frame:
            return start + position
        position += L.frame_stride(length)


def corrupt(writer, message: int, **fields) -> None:
    """Overwrite header words of frame `message`, as a buggy process could."""
    offsets = {"seq": L.FRAME_SEQ, "frame": L.FRAME_LEN, "total": L.FRAME_TOTAL_LEN, "flags": L.FRAME_FLAGS}
    with open(os.path.join("/dev/shm", writer.handle.shm_name), "r+b") as f, mmap.mmap(f.fileno(), 0) as mm:
        base = frame_offset(mm, writer.handle, message)
        for name, value in fields.items():
            mm[base + offsets[name] : base + offsets[name] + 8] = value.to_bytes(8, "little")


@pytest.mark.timeout(30)
@pytest.mark.parametrize("message, fields, problem", [
    ("small", {"frame": 1 << 40, "total": 1 << 40}, "a frame holds at most"),
    ("small", {"frame": 40, "total": 90}, "one frame, yet"),
    ("small", {"seq": 12345}, "cannot have written"),
    ("large", {"total": 1 << 62}, "max_message_bytes"),
    ("large", {"frame": 100}, "every piece but the last holds"),
])
def test_a_corrupt_frame_is_a_named_error_and_every_reader_reads_on(writer, message, fields, problem):
    payload = "s" if message == "small" else b"L" * 10_000
    with shmq.attach(writer.handle, 0) as reader, shmq.attach(writer.handle, 1) as other:
        writer.put(payload)
        writer.put("after")
        corrupt(writer, 0, **fields)
        for r in (reader, other):
            with pytest.raises(shmq.CorruptMessage, match=problem):
                r.get(timeout=5)
            assert r.get(timeout=5) == "after"


@pytest.mark.timeout(30)
def test_a_length_that_would_run_past_the_end_of_the_ring_is_a_named_error_not_a_read_beyond_it(queue_name):
    with shmq.create(1, name=queue_name, ring_bytes=4096) as writer, shmq.attach(writer.handle, 0) as reader:
        for i in range(15):  # a lap holds 16 small frames: all but the last
            writer.put(i)
            assert reader.get(timeout=5) == i
        writer.put("the lap's last frame")  # at ring position 3,840, ending at the lap's end
        writer.put("after")
        # Its length and its table say 1,000 bytes, as one consistent edit could: 744 past the ring's end.
        corrupt(writer, 15, frame=1000, total=1000)
        with open(os.path.join("/dev/shm", writer.handle.shm_name), "r+b") as f, mmap.mmap(f.fileno(), 0) as mm:
            table = frame_offset(mm, writer.handle, 15) + L.FRAME_HEADER_BYTES
            mm[table : table + 16] = struct.pack("<QQ", 1, 1000 - 16)
        with pytest.raises(shmq.CorruptMessage, match="says 1,000 bytes, which would run past the end of the ring"):
            reader.get(timeout=5)
        assert reader.get(timeout=5) == "after"


@pytest.mark.timeout(30)
def test_a_bad_second_piece_drops_its_message_and_the_next_one_arrives(queue_name):
    with shmq.create(1, name=queue_name, n_chunks=8, chunk_bytes=256) as writer:
        with shmq.attach(writer.handle, 0) as reader:
            writer.put(b"L" * 1000)  # 5 pieces
            writer.put("after")
            corrupt(writer, 1, total=999_999)
            with pytest.raises(shmq.CorruptMessage, match="piece 1 of message 0 does not continue it"):
                reader.get(timeout=5)
            assert reader.get(timeout=5) == "after"


def test_a_raw_read_of_a_pickled_message_is_refused_and_leaves_it_for_get(writer):
    with shmq.attach(writer.handle, 0) as reader, shmq.attach(writer.handle, 1):
        writer.put({"k": 1})
        with pytest.raises(shmq.NotRawMessage) as raised:
            reader.get_bytes(timeout=5)
        assert isinstance(raised.value, TypeError)
        assert reader.get(timeout=5) == {"k": 1}


@pytest.mark.parametrize("arguments, error, problem", [
    ({"ring_bytes": 1000}, shmq.BadQueueArgument, "ring_bytes must be a multiple of 128"),
    ({"ring_bytes": 1 << 60}, shmq.BadQueueArgument, "ring_bytes must be a multiple of 128 in"),
    ({"ring_bytes": 1 << 40}, shmq.ShmFull, "no room for a"),
    ({"ring_bytes": "1M"}, shmq.BadQueueArgument, "ring_bytes must be an int, got str"),
    ({"ring_bytes": 1 << 20, "n_chunks": 8}, shmq.BadQueueArgument, "not both"),
    ({"chunk_bytes": 2**62}, shmq.BadQueueArgument, "chunk_bytes must be an int in"),
    ({"chunk_bytes": 1 << 40, "n_chunks": 4}, shmq.ShmFull, "no room for a"),
    ({"n_chunks": "8"}, shmq.BadQueueArgument, "n_chunks must be an int in .*, got str"),
    ({"n_readers": 0}, shmq.BadQueueArgument, "a queue needs a reader: n_readers local ones, or n_remote_readers"),
    ({"n_readers": 65}, shmq.BadQueueArgument, "n_readers must be in 0..64"),
    ({"max_message_bytes": -1}, shmq.BadQueueArgument, "max_message_bytes must be in"),
    ({"name": "x" * 100}, shmq.BadQueueArgument, "queue name"),
    ({"flight_entries": 1000}, shmq.BadQueueArgument, "flight_entries must be 0 .no flight recorder. or a power of two"),
    ({"flight_entries": -1}, shmq.BadQueueArgument, "flight_entries must be in"),
])
def test_absurd_queue_arguments_get_a_named_error(queue_name, arguments, error, problem):
    arguments = {"n_readers": 1, "name": queue_name, **arguments}
    with pytest.raises(error, match=problem):
        shmq.create(arguments.pop("n_readers"), **arguments)


def test_a_handle_naming_dot_dot_or_another_queue_is_refused_naming_both(queue_name):
    with shmq.create(1, name=queue_name, n_chunks=4, chunk_bytes=256) as mine, \
            shmq.create(1, name=queue_name + "-other", n_chunks=4, chunk_bytes=256) as other:
        dot_dot = str(mine.handle).replace(mine.handle.shm_name, "..")
        with pytest.raises(shmq.QueueNotFound, match="not the name of a shmq shared-memory object"):
            shmq.attach(dot_dot, 0)
        edited = str(mine.handle).replace(mine.handle.shm_name, other.handle.shm_name)
        with pytest.raises(shmq.BadHandle) as raised:
            shmq.attach(edited, 0)
        message = str(raised.value)
        assert f"queue {queue_name!r} (instance {mine.handle.instance_id})" in message
        assert f"holds queue {queue_name + '-other'!r} (instance {other.handle.instance_id})" in message


def attach_as_nobody(handle: str, results) -> None:
    os.setgid(65534)
    os.setuid(65534)
    try:
        shmq.attach(handle, 0)
        results.put("attached")
    except shmq.ForeignSegment as e:
        results.put(f"ForeignSegment: {e}")
    except Exception as e:  # the outcome this test rules out
        results.put(f"{type(e).__name__}: {e}")


@pytest.mark.timeout(30)
def test_a_segment_this_uid_cannot_open_is_a_foreign_segment_naming_owner_and_fix(writer, children):
    if os.getuid() != 0:
        pytest.skip("needs root to drop to another uid")
    results = FORK.Queue()
    children(attach_as_nobody, str(writer.handle), results)
    outcome = results.get(timeout=20)
    assert outcome.startswith("ForeignSegment: ") and "owner uid 0, mode 600" in outcome
    assert "cannot be opened for writing by uid 65534" in outcome
