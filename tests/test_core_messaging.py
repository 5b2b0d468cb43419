"""Every live reader receives every message exactly once, in order, unchanged afterwards."""

from __future__ import annotations

import array
import json
import os
import random
import signal
import threading
import time

import numpy as np
import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

import shmq
from shmq import layout as L
from shmq import wait

from .conftest import FORK

RING = 16 << 10  # frames of up to 8 KiB less a header; the largest messages are three rings long
STRATEGIES = {
    "BusySpin": wait.BusySpin,
    "Yield": wait.Yield,
    "Backoff": wait.Backoff,
    "SpinYieldPark": wait.SpinYieldPark,
}


def payload_for(seq: int, size: int) -> bytes:
    return bytes([seq % 251]) * size


def sizes(count: int, seed: int = 7) -> list[int]:
    """From 0 B to 3 rings: mostly small, a sixth up to a ring, a fiftieth up to three; the edges first."""
    rng = random.Random(seed)
    frame = L.default_frame_bytes(RING)
    piece = L.default_piece_bytes(RING, frame)
    edges = [0, piece, piece + 1, frame - 64, frame, frame + 1, RING, 3 * RING]
    return edges + [rng.randint(0, 3 * RING) if rng.random() < 0.02 else rng.randint(0, RING)
                    if rng.random() < 0.17 else rng.randint(0, 300) for _ in range(count - len(edges))]


def verify_stream(handle, reader, count, strategy_name, results, remote=False):
    """Child: read `count` messages and report how many arrived in order and intact."""
    problems = []
    if remote:
        source = shmq.attach_remote(handle)
    else:
        source = shmq.attach(handle, reader, wait=STRATEGIES[strategy_name]())
    with source:
        for expected, size in enumerate(sizes(count)):
            seq, body = source.get(timeout=60)
            if seq != expected:
                problems.append(f"got {seq}, expected {expected}")
                break
            if body != payload_for(seq, size):
                problems.append(f"message {seq} has a corrupt body of {len(body)} bytes")
                break
    results.put((reader, problems))


@pytest.mark.timeout(150)
@pytest.mark.parametrize("strategy", list(STRATEGIES))
def test_eight_readers_on_two_cores_get_every_message_in_order(strategy, queue_name, children):
    count, n_readers = 6_000, 8
    results = FORK.Queue()
    with shmq.create(n_readers, name=queue_name, ring_bytes=RING, wait=STRATEGIES[strategy]()) as writer:
        for i in range(n_readers):
            children(verify_stream, writer.handle, i, count, strategy, results)
        writer.wait_for_readers(timeout=30)
        for seq, size in enumerate(sizes(count)):
            writer.put((seq, payload_for(seq, size)), timeout=60)
        reports = dict(results.get(timeout=120) for _ in range(n_readers))
    assert reports == {i: [] for i in range(n_readers)}


@pytest.mark.timeout(120)
def test_remote_reader_gets_the_same_stream_as_local_readers(queue_name, children):
    count = 20_000
    results = FORK.Queue()
    with shmq.create(2, name=queue_name, ring_bytes=RING, n_remote_readers=1) as writer:
        assert writer.handle.endpoint.startswith("tcp://127.0.0.1:")
        children(verify_stream, writer.handle, 0, count, "SpinYieldPark", results)
        children(verify_stream, writer.handle, 1, count, "SpinYieldPark", results)
        children(verify_stream, writer.handle, "remote", count, "SpinYieldPark", results, True)
        writer.wait_for_readers(timeout=30)
        for seq, size in enumerate(sizes(count)):
            writer.put((seq, payload_for(seq, size)), timeout=60)
        reports = dict(results.get(timeout=100) for _ in range(3))
    assert reports == {0: [], 1: [], "remote": []}


def test_received_array_never_changes_afterwards(writer):
    reader = shmq.attach(writer.handle, 0)
    other = shmq.attach(writer.handle, 1)
    with reader, other:
        original = np.arange(256, dtype=np.float64)
        writer.put(original)
        kept = reader.get()
        other.get()
        for i in range(3 * writer.handle.ring_bytes // L.frame_stride(256 * 8)):
            writer.put(np.full(256, -1.0))
            reader.get()
            other.get()
        np.testing.assert_array_equal(kept, original)
        assert kept.flags.writeable


def test_messages_larger_than_the_whole_ring_stream_through_it(queue_name, children):
    results = FORK.Queue()
    big = np.random.default_rng(1).integers(0, 2**31, size=50_000, dtype=np.int64)  # 400 kB, ring is 32 kB

    def read_big(handle, results):
        with shmq.attach(handle, 0) as reader:
            results.put(reader.get(timeout=30))

    with shmq.create(1, name=queue_name, chunk_bytes=4096, n_chunks=8) as writer:
        children(read_big, writer.handle, results)
        writer.wait_for_readers(timeout=10)
        writer.put(big, timeout=30)
        np.testing.assert_array_equal(results.get(timeout=30), big)
        with shmq.stats.open(writer.handle) as view:
            assert view.snapshot().writer.overflow_messages == 1


@pytest.mark.timeout(30)
def test_a_reader_joining_while_a_message_is_half_sent_in_pieces_starts_at_the_next_whole_one(queue_name):
    ring = 64 << 10
    big = b"b" * (4 * ring)  # in pieces: the writer stops mid-message once the ring is full
    with shmq.create(2, name=queue_name, ring_bytes=ring) as writer, shmq.attach(writer.handle, 0) as first, \
            shmq.stats.open(writer.handle) as view:
        shmq.attach(writer.handle, 1).close()  # reader 1 joins at the head when it attaches again
        sending = threading.Thread(target=lambda: [writer.put_bytes(body, timeout=20) for body in (big, b"next")])
        sending.start()
        deadline = time.monotonic() + 10
        while view.snapshot().writer.state != shmq.ParticipantState.WAITING_WRITE:
            assert time.monotonic() < deadline, "the writer never waited for room"
            time.sleep(0.01)
        pieces = -(-(len(big) + L.ONE_SEGMENT.size) // L.default_piece_bytes(ring, writer.handle.frame_bytes))
        assert 0 < view.snapshot().writer_cursor < pieces, "the writer should be inside the big message"
        with shmq.attach(writer.handle, 1) as joining:  # at the head: among the big message's pieces
            joined = []
            reading = threading.Thread(target=lambda: joined.append(joining.get_bytes(timeout=10)))
            reading.start()  # it gates the writer from where it joined, so it reads beside the first reader
            assert first.get_bytes(timeout=10) == big
            assert first.get_bytes(timeout=10) == b"next"
            reading.join(10)
        assert joined == [b"next"]
        sending.join(10)
        assert not sending.is_alive()


def test_a_message_up_to_a_quarter_of_the_ring_is_one_frame_and_a_larger_one_goes_in_sixteenths(queue_name):
    ring = 1 << 20
    frame = ring // 4 + L.PAGE_BYTES - L.FRAME_HEADER_BYTES
    one_frame = frame - L.ONE_SEGMENT.size  # a raw message's frame is its bytes and a one-segment table
    with shmq.create(1, name=queue_name, ring_bytes=ring) as writer, shmq.attach(writer.handle, 0) as reader, \
            shmq.stats.open(writer.handle) as view:
        assert writer.handle.frame_bytes == frame
        # 260 KiB and a byte, then 3 MiB, in pieces of 68 KiB less a header
        for size, frames in ((one_frame, 1), (one_frame + 1, 4), (3 * ring, 46)):
            before = view.snapshot().writer_cursor
            body = bytes([size % 251]) * size
            sending = threading.Thread(target=writer.put_bytes, args=(body,))
            sending.start()
            assert reader.get_bytes(timeout=10) == body
            sending.join(10)
            assert view.snapshot().writer_cursor - before == frames, size


def test_bytes_pass_through_without_pickle(writer):
    with shmq.attach(writer.handle, 0) as reader, shmq.attach(writer.handle, 1) as other:
        writer.put_bytes(b"raw \x00 bytes")
        writer.put_bytes(bytearray(b"x" * 10_000))
        assert reader.get_bytes() == b"raw \x00 bytes"
        assert reader.get() == b"x" * 10_000  # get() hands raw messages back as bytes too
        writer.put({"pickled": True})
        with pytest.raises(shmq.ShmqError, match="read it with get"):
            reader.get_bytes()
        assert [other.get_bytes(), other.get_bytes(), other.get()] == [b"raw \x00 bytes", b"x" * 10_000,
                                                                      {"pickled": True}]


def test_put_bytes_sends_every_byte_of_a_buffer_whatever_its_item_size(queue_name):
    doubles = array.array("d", range(10))  # len() counts 10 items; the buffer holds 80 bytes
    matrix = np.arange(1000, dtype=np.float64).reshape(10, 100)  # 8000 bytes: two pieces of 4 KiB
    with shmq.create(1, name=queue_name, chunk_bytes=4096, n_chunks=8) as writer, \
            shmq.attach(writer.handle, 0) as reader:
        writer.put_bytes(doubles)
        writer.put_bytes(matrix)
        assert reader.get_bytes(timeout=5) == doubles.tobytes()
        assert reader.get_bytes(timeout=5) == matrix.tobytes()
        with pytest.raises(ValueError, match="contiguous"):
            writer.put_bytes(matrix[:, ::2])
        writer.put_bytes(b"after")  # the refused buffer took no room
        assert reader.get_bytes(timeout=5) == b"after"


def test_bytes_queue_refuses_objects_and_never_unpickles(queue_name):
    with shmq.create(1, name=queue_name, chunk_bytes=4096, n_chunks=4, serializer="bytes") as writer:
        with shmq.attach(writer.handle, 0) as reader:
            with pytest.raises(TypeError, match="bytes-like"):
                writer.put({"not": "bytes"})
            writer.put(b"payload")
            assert reader.get() == b"payload"


ARRAYS = {  # plain arrays of builtin dtypes take shmq's short reduction; the rest numpy's own
    "bool": np.array([True, False, True]), "int8": np.arange(-4, 4, dtype=np.int8),
    "float16": np.linspace(0, 1, 5, dtype=np.float16), "complex128": np.arange(6).astype(np.complex128),
    "2d": np.arange(12.0).reshape(3, 4), "0d": np.array(2.5), "empty": np.zeros((2, 0, 4), dtype=np.uint8),
    "big-endian": np.arange(5, dtype=">i4"), "datetime64": np.arange(3).astype("M8[ns]"),
    "unicode": np.array(["ab", "c"]), "structured": np.zeros(2, dtype=[("a", "<i4"), ("b", "<f8")]),
    "object": np.array([1, "x", None], dtype=object), "fortran": np.asfortranarray(np.arange(6.0).reshape(2, 3)),
    "strided": np.arange(12)[::3], "masked": np.ma.masked_array([1, 2, 3], mask=[0, 1, 0]),
}


@pytest.mark.parametrize("kind", list(ARRAYS))
def test_every_kind_of_array_comes_back_equal_with_its_type_dtype_and_layout(writer, kind):
    sent = ARRAYS[kind]
    with shmq.attach(writer.handle, 0) as reader, shmq.attach(writer.handle, 1) as leaser:
        writer.put({"array": sent})
        got = reader.get()["array"]
        with leaser.lease() as message:
            leased = message["array"]
            assert type(leased) is type(sent) and leased.dtype == sent.dtype and leased.shape == sent.shape
            assert leased.tolist() == sent.tolist()
            del leased, message
    assert type(got) is type(sent) and got.dtype == sent.dtype and got.shape == sent.shape
    assert got.tolist() == sent.tolist()
    assert got.flags.writeable
    if kind == "fortran":
        assert got.flags.f_contiguous
    if isinstance(sent, np.ma.MaskedArray):
        assert got.mask.tolist() == sent.mask.tolist()


class JsonSerializer:
    """A serializer of the caller's own: any object with raw, encode and decode."""

    raw = False

    def encode(self, obj):
        return [json.dumps(obj).encode()]

    def decode(self, stream, buffers):
        assert not buffers
        return json.loads(bytes(stream))


def test_a_serializer_of_the_callers_own_carries_every_message(queue_name):
    with shmq.create(1, name=queue_name, chunk_bytes=256, n_chunks=8, serializer=JsonSerializer()) as writer, \
            shmq.attach(writer.handle, 0, serializer=JsonSerializer()) as reader:
        sent = [{"seq": i, "text": "x" * (i * 40)} for i in range(20)]  # the last ones go in pieces
        received = []
        for message in sent:
            writer.put(message)
            received.append(reader.get())
        assert received == sent


def test_lease_aliases_the_ring_until_the_block_exits(writer):
    with shmq.attach(writer.handle, 0) as reader, shmq.attach(writer.handle, 1) as other:
        writer.put(np.arange(100, dtype=np.int32))
        with reader.lease() as array:
            assert not array.flags.writeable
            assert int(array.sum()) == 4950
            assert reader.lag == 1  # the frame is still held
        assert reader.lag == 0
        np.testing.assert_array_equal(other.get(), np.arange(100, dtype=np.int32))


def test_a_reader_closes_while_an_array_it_leased_is_still_referenced(queue_name):
    with shmq.create(1, name=queue_name) as writer:
        reader = shmq.attach(writer.handle, 0)
        writer.put(np.arange(100, dtype=np.int32))
        with reader.lease() as array:
            kept = array  # against the rules: it aliases the ring after the block
        reader.close()  # the mapping stays until `kept` is collected
    assert int(kept.sum()) == 4950


def test_handle_round_trips_through_its_string_form(writer):
    text = str(writer.handle)
    assert "\n" not in text
    assert shmq.Handle.parse(text) == writer.handle
    import pickle

    assert pickle.loads(pickle.dumps(writer.handle)) == writer.handle


def exactly_to_the_end(writer) -> int | None:
    """The size of a raw message whose frame fills the ring to the end of its lap, if one fits a frame."""
    ring, frame = writer.handle.ring_bytes, writer.handle.frame_bytes
    left = ring - writer._ring.position % ring
    size = left - L.FRAME_HEADER_BYTES - L.ONE_SEGMENT.size
    return size if 0 <= size <= frame - L.ONE_SEGMENT.size else None


def read_then_die(handle, count, attached, done):
    """Reader 2: reads `count` messages, then waits to be killed."""
    with shmq.attach(handle, 2) as reader:
        attached.set()
        for _ in range(count):
            reader.get_bytes(timeout=30)
        done.set()
        time.sleep(60)


@pytest.mark.timeout(300)
@settings(max_examples=60, deadline=None)
@given(ring_lines=st.integers(4, 96), actions=st.lists(st.one_of(
    st.tuples(st.just("put"), st.integers(0, 40_000)),  # up to three times the largest ring
    st.tuples(st.just("put"), st.integers(0, 300)),
    st.tuples(st.just("to the end"), st.just(0)),  # a frame of exactly the room left before the end
    st.tuples(st.just("join"), st.integers(0, 2_000))), min_size=1, max_size=40),
    # a reader killed after it read so many messages, holding one more unread or none
    victim=st.none() | st.tuples(st.integers(0, 3), st.booleans()))
def test_any_mix_of_sizes_through_any_ring_arrives_whole_and_in_order_past_joining_and_dying_readers(
        ring_lines, actions, victim):
    ring = ring_lines * L.FRAME_ALIGN
    sent, joined = [], []
    kill_at, holds_one = (min(victim[0], len(actions)), victim[1]) if victim else (None, False)
    with shmq.create(3, name="hypothesis-ring", ring_bytes=ring, on_dead_reader="evict") as writer:
        with shmq.attach(writer.handle, 0) as follower:
            shmq.attach(writer.handle, 1).close()  # reader 1 holds nothing until it joins
            if not victim:
                shmq.attach(writer.handle, 2).close()
            else:  # forked before the reading thread starts
                attached, done = FORK.Event(), FORK.Event()
                dying = FORK.Process(target=read_then_die, args=(writer.handle, kill_at, attached, done), daemon=True)
                dying.start()
                assert attached.wait(10)
            received = []
            reading = threading.Thread(target=lambda: received.extend(
                follower.get_bytes(timeout=30) for _ in range(len(actions) + holds_one)))
            reading.start()
            for index, (action, size) in enumerate([*actions, ("end", 0)]):
                if index == kill_at:  # it has read every message so far: the writer never waited for it
                    assert done.wait(30)
                    if holds_one:
                        writer.put_bytes(b"", timeout=10)  # the smallest frame: room beside what it holds
                        sent.append(b"")
                    os.kill(dying.pid, signal.SIGKILL)
                    dying.join(10)
                if action == "end":
                    break
                if action == "to the end":
                    size = exactly_to_the_end(writer)
                    body = b"e" * (size if size is not None else 1)
                elif action == "join":  # at the head, mid-stream: its first message is the next one sent
                    body = bytes([len(sent) % 251]) * min(size, writer.handle.frame_bytes - L.ONE_SEGMENT.size)
                    with shmq.attach(writer.handle, 1) as late:
                        writer.put_bytes(body, timeout=10)
                        joined.append(late.get_bytes(timeout=10) == body)
                else:
                    body = bytes([len(sent) % 251]) * size
                if action != "join":
                    writer.put_bytes(body, timeout=30)
                sent.append(body)
            reading.join(60)
            with shmq.stats.open(writer.handle) as view:
                snapshot = view.snapshot()
    assert not reading.is_alive() and received == sent
    assert all(joined)
    if victim:  # the writer went more than a ring past where it died: only by evicting it
        dead = snapshot.readers[2]
        evicted = dead.state == shmq.ParticipantState.EVICTED
        event(f"the dead reader was {'evicted' if evicted else 'never in the way'}")
        assert evicted == (snapshot.writer_position - dead.position > ring)
