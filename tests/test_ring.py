"""shmq/_ring.c as a unit, on private memory: the frames and records it writes are the ones layout.py describes."""

from __future__ import annotations

import pickle
import threading
import random
import struct
import subprocess
import sys

import pytest

import shmq
from shmq import _ring
from shmq import layout as L
from shmq import remote

# A ring of 2,048 bytes: 8 frames of a small message (256 bytes each), frames of at most 256 bytes of payload.
N_READERS, RING, FRAME, FLIGHT_ENTRIES = 3, 2048, 256, 8
SMALL = 256  # the ring bytes of a frame of a few bytes: its header, then its table and payload, padded


@pytest.fixture
def memory():
    return bytearray(L.segment_bytes(N_READERS, RING, FLIGHT_ENTRIES))


def ring_on(memory, ring_bytes: int = RING, frame_bytes: int = FRAME) -> _ring.Ring:
    return _ring.Ring(memory, ring_offset=L.ring_offset(N_READERS), ring_bytes=ring_bytes, frame_bytes=frame_bytes,
                      writer_cursor_offset=L.OFF_WRITER_CURSOR, writer_position_offset=L.OFF_WRITER_POSITION,
                      reader_parked_offset=L.OFF_READER_PARKED, n_readers=N_READERS,
                      writer_parked_offset=L.OFF_WRITER_PARKED, writer_wake_offset=L.OFF_WRITER_WAKE)


def bound_ring_on(memory, participant: int) -> _ring.Ring:
    ring = ring_on(memory)
    ring.bind_record(L.record_offset(participant), True, L.RECORD_FIELDS, L.HIST_FINITE_BUCKETS)
    return ring


def reader_ring_on(memory, index: int = 0, publish_every: int = 1, cursor: int = 0, position: int = 0) -> _ring.Ring:
    """A reader's ring whose decoders hand back what it copied out: the stream, or (stream, buffers)."""
    ring = bound_ring_on(memory, 1 + index)
    ring.bind_reader(index, cursor, position, publish_every)
    return decoding_as_copied(ring)


def decoding_as_copied(ring: _ring.Ring) -> _ring.Ring:
    ring.bind_decoders(lambda stream: stream, lambda stream, buffers: (stream, buffers))
    return ring


def words(memory) -> memoryview:
    return memoryview(memory).cast("Q")


def record_word(memory, index: int, field: int) -> int:
    return words(memory)[L.word(L.record_offset(1 + index) + field)]


def at(position: int) -> int:
    """Where the frame at ring position `position` is in the segment."""
    return L.ring_offset(N_READERS) + position % RING


def test_put_one_writes_the_frame_layout_py_reads_publishes_cursor_and_position_and_counts(memory):
    ring = bound_ring_on(memory, 0)
    assert ring.put_one(0, [b"first"], None) is False  # nobody parked: no wake
    stream = pickle.dumps({"seq": 1}, protocol=5)
    traceparent = b"00-" + b"a" * 32 + b"-" + b"b" * 16 + b"-01"
    assert ring.put_one(L.FRAME_TRACED, [stream], traceparent) is False
    frame = len(stream) + L.ONE_SEGMENT.size
    assert (ring.written, ring.position) == (2, SMALL + L.frame_stride(frame))
    base = at(SMALL)  # the second frame follows the first
    assert L.FRAME_HEAD.unpack_from(memory, base) == (1, frame, frame, L.FRAME_TRACED, SMALL)
    assert L.ONE_SEGMENT.unpack_from(memory, base + L.FRAME_HEADER_BYTES) == (1, len(stream))
    field = memory[base + L.FRAME_TRACEPARENT : base + L.FRAME_TRACEPARENT + L.TRACEPARENT_BYTES]
    assert field == traceparent.ljust(L.TRACEPARENT_BYTES, b"\x00")
    body = base + L.FRAME_HEADER_BYTES + L.ONE_SEGMENT.size
    assert memory[body : body + len(stream)] == stream
    assert words(memory)[L.word(L.OFF_WRITER_CURSOR)] == 2
    assert words(memory)[L.word(L.OFF_WRITER_POSITION)] == ring.position
    record = L.record_offset(0)
    assert words(memory)[L.word(record + L.REC_MESSAGES)] == 2
    assert words(memory)[L.word(record + L.REC_BYTES)] == frame + len(b"first") + L.ONE_SEGMENT.size


def test_take_one_returns_only_a_published_plain_message_and_counts_it(memory):
    writer, reader = ring_on(memory), reader_ring_on(memory)
    stream = pickle.dumps("hello", protocol=5)
    assert reader.take_one() is _ring.NOTHING  # nothing published
    writer.put_one(0, [stream], None)
    assert reader.take_one() == stream and reader.cursor == 1 and reader.available == 1
    assert reader.position == SMALL
    writer.put_one(L.FRAME_RAW, [stream], None)
    assert reader.take_one() is _ring.NOTHING and reader.cursor == 1  # flags: the Python path decides
    reader.advance()
    writer.put_one(0, [stream], None)
    words(memory)[L.word(at(2 * SMALL))] = 99  # the header names another frame now
    assert reader.take_one() is _ring.NOTHING and reader.cursor == 2
    frame = len(stream) + L.ONE_SEGMENT.size
    assert record_word(memory, 0, L.REC_MESSAGES) == 1 and record_word(memory, 0, L.REC_BYTES) == frame
    assert record_word(memory, 0, L.REC_CURSOR) == 2 and record_word(memory, 0, L.REC_POSITION) == 2 * SMALL


def test_out_of_band_buffers_are_laid_out_as_layout_py_says_and_come_back_as_private_copies(memory):
    writer, reader = ring_on(memory), reader_ring_on(memory)
    buffers = [b"a" * 7, bytearray(b"b" * 33), memoryview(b"c" * 64), b""]
    segments = [b"stream", *buffers]
    lengths = [len(segment) for segment in segments]
    offsets, frame = L.segment_layout(lengths)
    assert _ring.frame_length(segments) == frame
    writer.put_one(0, segments, None)
    start = at(0) + L.FRAME_HEADER_BYTES
    assert struct.unpack_from(f"<{1 + len(segments)}Q", memory, start) == (len(segments), *lengths)
    for offset, segment in zip(offsets, segments):
        assert memory[start + offset : start + offset + len(segment)] == bytes(segment)
    stream, copies = reader.take_one()
    assert stream == b"stream" and copies == [bytearray(b) for b in buffers]
    assert all(type(copy) is bytearray for copy in copies)
    memory[start + offsets[1]] = ord("z")  # the frame is overwritten: the copies do not change
    assert copies[0] == b"a" * 7
    assert record_word(memory, 0, L.REC_BYTES) == frame


def test_frame_spans_finds_the_segments_layout_py_lays_out_and_refuses_a_corrupt_table():
    rng = random.Random(3)
    for count in (1, 2, 9, 20):  # 9 and 20: more segments than _ring.c keeps on its stack
        lengths = [rng.randrange(0, 300) for _ in range(count)]
        offsets, frame = L.segment_layout(lengths)
        buffer = bytearray(8) + struct.pack(f"<{1 + count}Q", count, *lengths) + bytearray(frame)
        spans = _ring.frame_spans(buffer, 8, frame)
        assert spans == [(8 + start, 8 + start + n) for start, n in zip(offsets, lengths)]
        assert _ring.frame_spans(buffer, 8, frame + 1) is None  # the segments do not fill it
    assert _ring.frame_spans(bytes(16), 0, 16) is None  # zero segments
    with pytest.raises(ValueError, match="does not fit"):
        _ring.frame_spans(bytes(16), 8, 16)


def test_batch_frame_copies_out_a_remote_batchs_next_whole_frame_and_leaves_anything_else_to_python():
    def frame_of(*segments: bytes) -> bytes:
        offsets, frame = L.segment_layout([len(segment) for segment in segments])
        payload = bytearray(frame)
        payload[: 8 * (1 + len(segments))] = struct.pack(f"<{1 + len(segments)}Q", len(segments),
                                                        *(len(segment) for segment in segments))
        for offset, segment in zip(offsets, segments):
            payload[offset : offset + len(segment)] = segment
        return bytes(payload)

    def wire(seq: int, payload: bytes, total: int | None = None, flags: int = 0, kind: bytes = remote.FRAME) -> bytes:
        return kind + remote._FRAME.pack(seq, len(payload), len(payload) if total is None else total, flags) + payload

    one, two = frame_of(b"stream"), frame_of(b"main", b"\x01" * 40, b"")
    batch = remote.BATCH + wire(7, one) + wire(8, two)
    at, frame, message = _ring.batch_frame(batch, 1, 7, FRAME)
    assert (frame, message) == (len(one), b"stream")
    at, frame, message = _ring.batch_frame(batch, at, 8, FRAME)
    assert (at, frame) == (len(batch), len(two))
    assert message == (b"main", [bytearray(b"\x01" * 40), bytearray()])
    assert all(type(buffer) is bytearray for buffer in message[1])
    assert _ring.batch_frame(batch, at, 9, FRAME) is None  # the batch's end

    others = {
        "another frame than expected": (remote.BATCH + wire(6, one), 7),
        "flags (traced, raw, a piece)": (remote.BATCH + wire(7, one, flags=L.FRAME_FRAGMENT), 7),
        "a message larger than its frame": (remote.BATCH + wire(7, one, total=len(one) + 1), 7),
        "a frame over frame_bytes": (remote.BATCH + wire(7, frame_of(b"x" * (FRAME + 1))), 7),
        "a payload cut short": (remote.BATCH + wire(7, one)[:-1], 7),
        "a kind that is not a frame": (remote.BATCH + wire(7, one, kind=remote.BATCH), 7),
        "a corrupt table": (remote.BATCH + wire(7, bytes(len(one))), 7),
    }
    for what, (corrupt, expected) in others.items():
        assert _ring.batch_frame(corrupt, 1, expected, FRAME) is None, what
    assert _ring.batch_frame(batch, len(batch) + 1, 7, FRAME) is None  # past the end
    assert _ring.batch_frame(batch, -1, 7, FRAME) is None


def test_gather_batch_sends_a_remote_slots_next_frames_in_the_wire_format_and_stops_where_python_decides(memory):
    writer = ring_on(memory)
    slot = bound_ring_on(memory, 1)
    slot.bind_reader(0, 0, 0, 0)  # a remote slot's read-ahead: its record moves only on acknowledge
    traceparent = b"00-" + b"a" * 32 + b"-" + b"b" * 16 + b"-01"
    writer.put_one(0, [b"first"], None)
    writer.put_one(L.FRAME_TRACED, [b"second"], traceparent)
    writer.put_one(0, [b"third", b"buffer"], None)
    batch, cursor, position, cost = slot.gather_batch(1 << 20, 1 << 16, 1000)
    assert batch[:1] == remote.BATCH and slot.cursor == 3 and record_word(memory, 0, L.REC_CURSOR) == 0
    assert (cursor, position, cost) == (3, 3 * SMALL, 3 * SMALL + 1000)  # after its last frame; the first pays 1000
    offset, frames = 1, []
    while offset < len(batch):
        seq, frame, total, flags = remote._FRAME.unpack_from(batch, offset + 1)
        assert batch[offset : offset + 1] == remote.FRAME and total == frame
        body = offset + 1 + remote._FRAME.size + (L.TRACEPARENT_BYTES if flags & L.FRAME_TRACED else 0)
        spans = _ring.frame_spans(batch[body : body + frame], 0, frame)
        frames.append((seq, flags, bytes(batch[body - L.TRACEPARENT_BYTES : body]) if flags else b"",
                       [bytes(batch[body + a : body + b]) for a, b in spans]))
        offset = body + frame
    assert offset == len(batch)
    field = traceparent.ljust(L.TRACEPARENT_BYTES, b"\x00")
    assert frames == [(0, 0, b"", [b"first"]), (1, L.FRAME_TRACED, field, [b"second"]), (2, 0, b"", [b"third", b"buffer"])]
    assert slot.gather_batch(1 << 20, 1 << 16, 1000) is None  # nothing more published

    writer.put_one(0, [b"fourth"], None)
    writer.put_one(0, [b"fifth"], None)
    assert slot.gather_batch(SMALL + 999, 1 << 16, 1000) is None  # no room for the first frame's cost
    batch, *after = slot.gather_batch(1 << 20, 40, 0)  # the batch is full after one frame
    assert after == [4, 4 * SMALL, SMALL] and _ring.batch_frame(batch, 1, 3, FRAME)[2] == b"fourth"
    assert slot.gather_batch(1 << 20, 10, 0) is None  # a frame as large as the limit goes alone
    words(memory)[L.word(at(4 * SMALL))] = 99  # the header names another frame now
    assert slot.gather_batch(1 << 20, 1 << 16, 0) is None and slot.cursor == 4


def test_gather_batch_leaves_a_frame_whose_length_runs_past_the_end_of_the_ring_to_python(memory):
    writer = ring_on(memory)
    slot = bound_ring_on(memory, 1)
    slot.bind_reader(0, 0, 0, 0)
    for n in range(RING // SMALL):  # one lap, its last frame ending at the ring's end
        assert writer.put_one(0, [b"%d" % n], None) is not None
    words(memory)[L.word(at(RING - SMALL) + L.FRAME_LEN)] = FRAME  # a frame's length, but not here
    _, cursor, _, _ = slot.gather_batch(1 << 20, 1 << 16, 0)
    assert cursor == RING // SMALL - 1 and slot.gather_batch(1 << 20, 1 << 16, 0) is None


def test_a_corrupt_frame_table_is_left_to_the_python_path(memory):
    writer, reader = ring_on(memory), reader_ring_on(memory)
    start = at(0) + L.FRAME_HEADER_BYTES
    writer.put_one(0, [b"stream", b"buffer"], None)
    table = memoryview(memory)[start : start + 24].cast("Q")
    for count, first, second in ((0, 6, 6), (3, 6, 6), (2, 6, 7), (2, 6, 5), (2, 50, 6), (2, 2 ** 63, 6), (2, 6, 2 ** 64 - 1)):
        table[0], table[1], table[2] = count, first, second
        assert reader.take_one() is _ring.NOTHING and reader.cursor == 0
    table[0], table[1], table[2] = 2, 6, 6
    assert reader.take_one() == (b"stream", [bytearray(b"buffer")])
    table.release()


def test_a_piece_gets_its_header_at_once_and_is_published_when_its_payload_is_in(memory):
    writer, reader = bound_ring_on(memory, 0), reader_ring_on(memory)
    traceparent = b"00-" + b"c" * 32 + b"-" + b"d" * 16 + b"-01"
    payload = writer.reserve(FRAME, 3 * FRAME, L.FRAME_FRAGMENT | L.FRAME_FIRST, traceparent)
    assert payload == at(0) + L.FRAME_HEADER_BYTES
    assert L.FRAME_HEAD.unpack_from(memory, at(0)) == (0, FRAME, 3 * FRAME, L.FRAME_FRAGMENT | L.FRAME_FIRST, 0)
    assert memory[at(0) + L.FRAME_TRACEPARENT : at(0) + L.FRAME_TRACEPARENT + len(traceparent)] == traceparent
    assert words(memory)[L.word(L.OFF_WRITER_CURSOR)] == 0  # the caller fills the piece, then publishes
    assert reader.head() is None
    assert writer.publish() is False and (writer.written, writer.position) == (1, L.frame_stride(FRAME))
    assert reader.head() == at(0) and reader.header_intact(0) and not reader.header_intact(1)
    with pytest.raises(ValueError, match="larger than the ring's frames"):
        writer.reserve(FRAME + 1, 3 * FRAME, L.FRAME_FRAGMENT, None)
    with pytest.raises(RuntimeError, match="without a frame from reserve"):
        writer.publish()


def test_a_frame_that_would_cross_the_end_of_the_ring_starts_the_next_lap_after_a_padding_frame(memory):
    writer, reader = ring_on(memory), reader_ring_on(memory)
    for n in range(7):  # 7 small frames: 256 bytes of the ring are left
        writer.put_one(0, [b"%d" % n], None)
        assert reader.take_one() == b"%d" % n
    big = b"b" * 200  # a frame of 384 bytes does not fit the 256 left
    writer.put_one(0, [big], None)
    assert L.FRAME_HEAD.unpack_from(memory, at(7 * SMALL)) == (7, SMALL - L.FRAME_HEADER_BYTES, 0, L.FRAME_PADDING,
                                                               7 * SMALL)
    assert L.FRAME_HEAD.unpack_from(memory, at(RING))[::4] == (7, RING)  # seq and position: the next lap
    assert writer.position == RING + L.frame_stride(len(big) + L.ONE_SEGMENT.size)
    assert reader.take_one() == big and reader.position == writer.position


def test_a_backlog_is_published_once_per_batch_and_at_once_when_caught_up():
    memory = bytearray(L.segment_bytes(N_READERS, 16 * RING, FLIGHT_ENTRIES))  # a sixteenth is 8 small frames
    writer = ring_on(memory, ring_bytes=16 * RING)
    reader = ring_on(memory, ring_bytes=16 * RING)
    reader.bind_record(L.record_offset(1), True, L.RECORD_FIELDS, L.HIST_FINITE_BUCKETS)
    decoding_as_copied(reader).bind_reader(0, 0, 0, 2)
    for _ in range(3):
        writer.put_one(0, [b"x"], None)
    published = []
    for _ in range(3):
        reader.take_one()
        published.append((record_word(memory, 0, L.REC_CURSOR), record_word(memory, 0, L.REC_POSITION)))
    assert published == [(0, 0), (2, 2 * SMALL), (3, 3 * SMALL)]  # the batch of 2, then caught up
    writer.put_one(0, [b"x"], None)
    reader.publish_behind()  # nothing behind: no store
    reader.count(100)  # a message of the Python path, counted: the count is behind
    assert record_word(memory, 0, L.REC_MESSAGES) == 3
    reader.publish_behind()
    assert record_word(memory, 0, L.REC_MESSAGES) == 4 and reader.published == 3
    reader.advance()
    assert (reader.published, reader.position) == (4, 4 * SMALL)


def test_a_batch_of_large_frames_is_published_at_a_sixteenth_of_the_ring(memory):
    big = ring_on(memory, ring_bytes=RING, frame_bytes=RING // 2 - L.FRAME_HEADER_BYTES)
    reader = decoding_as_copied(bound_ring_on(memory, 1))
    reader.bind_reader(0, 0, 0, 64)
    big.put_one(0, [b"x" * 200], None)  # 384 bytes: more than a sixteenth of the ring (128)
    big.put_one(0, [b"x" * 200], None)
    reader.take_one()
    assert record_word(memory, 0, L.REC_CURSOR) == 1  # published although far from 64 frames


def test_the_writer_wakes_only_a_reader_parked_for_this_message_and_counts_it(memory):
    ring = bound_ring_on(memory, 0)
    memory[L.OFF_READER_PARKED + 1] = L.parked_mark(7)  # reader 1 sleeps until message 7 comes
    for n in range(7):
        assert ring.put_one(0, [b"x"], None) is False
    assert ring.put_one(0, [b"x"], None) is True
    assert words(memory)[L.word(L.record_offset(0) + L.REC_WAKEUPS)] == 1


def test_a_wait_ends_with_its_counters_its_histogram_bucket_and_the_next_state(memory):
    ring = bound_ring_on(memory, 0)
    start = ring.set_state(L.ParticipantState.WAITING_WRITE)
    record = L.record_offset(0)
    assert words(memory)[L.word(record + L.REC_STATE)] == L.ParticipantState.WAITING_WRITE
    assert words(memory)[L.word(record + L.REC_STATE_SINCE_NS)] == start
    ring.flush_counters(start - 3_000_000, 5, 0, 0, 0, 0)  # housekeeping in the middle of a long wait
    waited = ring.end_wait(start - 3_000_000, L.ParticipantState.BUSY, 2, 7, 1, 1000, 1)
    assert waited >= 3_000_000
    assert [words(memory)[L.word(record + field)] for field in (
        L.REC_SPINS, L.REC_YIELDS, L.REC_BACKOFF_SLEEPS, L.REC_BACKOFF_SLEEP_NS, L.REC_PARKS, L.REC_WAITS)] == \
        [7, 7, 1, 1000, 1, 1]
    assert words(memory)[L.word(record + L.REC_WAIT_NS)] == waited
    # No park took time here: all of it but the 1,000 ns Backoff slept was busy waiting.
    assert words(memory)[L.word(record + L.REC_PARKED_NS)] == 0
    assert words(memory)[L.word(record + L.REC_BUSY_WAIT_NS)] == waited - 1000
    histogram = [words(memory)[L.word(record + L.REC_HISTOGRAM) + i] for i in range(L.HIST_BUCKETS)]
    assert histogram[L.wait_bucket(waited)] == 1 and sum(histogram) == 1
    assert words(memory)[L.word(record + L.REC_STATE)] == L.ParticipantState.BUSY


def test_a_reader_wakes_the_writer_only_when_its_position_crosses_the_mark(memory):
    writer, reader = ring_on(memory), reader_ring_on(memory)
    for _ in range(4):
        writer.put_one(0, [b"x"], None)
    w = words(memory)
    w[L.word(L.OFF_WRITER_PARKED)] = 300  # the writer sleeps until some reader's position reaches 300
    reader.advance()  # 256
    assert record_word(memory, 0, L.REC_WAKEUPS) == 0
    reader.advance()  # 512: crosses 300
    assert record_word(memory, 0, L.REC_WAKEUPS) == 1
    assert w[L.word(L.OFF_WRITER_WAKE)] & 0xFFFFFFFF == (2 << 8) | 0
    reader.advance()  # already past it
    assert record_word(memory, 0, L.REC_WAKEUPS) == 1


def test_bad_arguments_are_refused_without_touching_memory(memory):
    for ring_bytes, frame_bytes in ((RING * 1000, FRAME), (RING, RING // 2), (RING + 64, FRAME), (RING, 8)):
        with pytest.raises(ValueError, match="geometry"):
            ring_on(memory, ring_bytes, frame_bytes)
    ring = ring_on(memory)
    before = bytes(memory)
    with pytest.raises(ValueError, match="larger than the ring's frames"):
        ring.put_one(0, [b"x" * FRAME], None)
    with pytest.raises(TypeError, match="list of buffers"):
        ring.put_one(0, [], None)
    with pytest.raises(TypeError, match="bytes-like"):
        ring.put_one(0, [b"x", "not a buffer"], None)
    with pytest.raises(ValueError, match="traceparent"):
        ring.put_one(0, [b"x"], b"t" * (L.TRACEPARENT_BYTES + 1))
    with pytest.raises(ValueError, match="outside the segment"):
        ring.bind_record(len(memory), True, L.RECORD_FIELDS, L.HIST_FINITE_BUCKETS)
    with pytest.raises(RuntimeError, match="bind_record"):
        ring.take_one()
    with pytest.raises(RuntimeError, match="bind_record"):
        ring.end_wait(0, -1, 0, 0, 0, 0, 0)
    assert bytes(memory) == before
    ring.release()
    with pytest.raises(ValueError, match="released"):
        ring.put_one(0, [b"x"], None)


def test_a_closed_reader_raises_instead_of_touching_the_unmapped_segment():
    with shmq.create(1, chunk_bytes=1024, n_chunks=4) as writer:
        reader = shmq.attach(writer.handle, 0)
        writer.put("kept")
        reader.close()
        with pytest.raises(ValueError):
            reader.get(timeout=1)


def test_the_writer_writes_no_byte_a_gating_reader_still_holds(memory):
    writer, reader = ring_on(memory), reader_ring_on(memory)
    writer.bind_gating(tuple(L.record_offset(1 + i) for i in range(N_READERS)), L.REC_STATE, L.REC_POSITION,
                       L.ParticipantState.CLOSED)
    for i in range(N_READERS):  # readers 1 and 2 have closed: they hold nothing
        words(memory)[L.word(L.record_offset(1 + i) + L.REC_STATE)] = L.ParticipantState.BUSY if i == 0 else \
            L.ParticipantState.CLOSED
    for n in range(RING // SMALL):
        assert writer.put_one(0, [b"%d" % n], None) is False
    assert writer.put_one(0, [b"full"], None) is None and not writer.room(1)  # reader 0 holds frame 0
    assert writer.wanted == SMALL  # the end of frame 0: reader 0's position must reach it
    assert writer.written == RING // SMALL and words(memory)[L.word(L.OFF_WRITER_CURSOR)] == RING // SMALL
    assert reader.take_one() == b"0"  # publishes its position: frame 0's bytes are free again
    assert writer.room(1) and not writer.room(SMALL)  # a frame of 1 byte fits the 256 freed, one of 256 does not
    assert writer.put_one(0, [b"next"], None) is False and writer.put_one(0, [b"more"], None) is None


def test_a_reader_joining_finds_its_frame_from_any_boundary_before_it(memory):
    writer = ring_on(memory)
    for n in range(5):
        writer.put_one(0, [b"%d" % n], None)
    joined = reader_ring_on(memory, 0, cursor=3, position=SMALL)  # frames 1 and 2 are stepped over
    assert joined.position == 3 * SMALL and joined.take_one() == b"3"
    head = reader_ring_on(memory, 1)
    assert head.join_head() == (5, 5 * SMALL)
    # The writer stores its cursor, then its position: a join between the two sees the position one frame
    # behind the cursor, and steps over that frame.
    words(memory)[L.word(L.OFF_WRITER_POSITION)] = 4 * SMALL
    assert head.join_head() == (5, 5 * SMALL)


def test_a_frame_whose_length_is_corrupt_is_skipped_to_the_next_header_found(memory):
    writer, reader = ring_on(memory), reader_ring_on(memory)
    writer.put_one(0, [b"x" * 150], None)  # 384 bytes
    writer.put_one(0, [b"after"], None)
    words(memory)[L.word(at(0) + L.FRAME_LEN)] = 1 << 40
    assert reader.take_one() is _ring.NOTHING  # not a frame's length: the Python path reports it
    assert reader.skip() == 1 and reader.position == 384
    assert reader.take_one() == b"after"
    writer.put_one(0, [b"last"], None)
    words(memory)[L.word(at(384 + SMALL) + L.FRAME_LEN)] = 1 << 40
    assert reader.skip() == 3 and reader.position == writer.position  # no frame after it yet: the head


def test_the_fast_paths_take_nothing_while_another_thread_holds_the_slow_path(memory):
    writer, reader = ring_on(memory), reader_ring_on(memory)
    assert writer.put_one(0, [b"x"], None) is False and writer.written == 1
    entered, done = threading.Event(), threading.Event()

    def hold():
        writer.enter()
        reader.enter()
        entered.set()
        done.wait(10)
        writer.leave()
        reader.leave()

    holder = threading.Thread(target=hold)
    holder.start()
    assert entered.wait(10)
    assert writer.enter() is False and reader.enter() is False  # held by the other thread
    writer.leave()  # not ours to release: still held
    assert writer.put_one(0, [b"y"], None) is None and writer.written == 1
    assert reader.take_one() is _ring.NOTHING and reader.cursor == 0
    done.set()
    holder.join(10)
    assert reader.take_one() == b"x" and reader.enter() is True
    assert reader.take_one() is _ring.NOTHING  # nothing published; the holder itself may take
    writer.put_one(0, [b"z"], None)
    assert reader.take_one() == b"z"


def test_the_layout_refuses_a_c_build_that_disagrees_with_it():
    code = ("import importlib, shmq._ring as c, shmq.layout as layout\n"
            "c.FRAME_FLAGS = 99\n"
            "try:\n    importlib.reload(layout)\nexcept ImportError as e:\n    print(e)\n")
    shown = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert "disagree on {'FRAME_FLAGS': (24, 99)}" in shown.stdout and "rebuild shmq" in shown.stdout, shown


def flight_of(memory, participant: int) -> list[tuple]:
    return _ring.flight_entries(memory, L.flight_offset(N_READERS, RING, FLIGHT_ENTRIES, participant),
                                FLIGHT_ENTRIES)


def test_the_flight_recorder_keeps_each_participants_last_operations_and_skips_a_torn_entry(memory):
    writer, reader = bound_ring_on(memory, 0), reader_ring_on(memory)
    for participant, ring in ((0, writer), (1, reader)):
        ring.bind_flight(L.flight_offset(N_READERS, RING, FLIGHT_ENTRIES, participant), FLIGHT_ENTRIES)
    for n in range(3):
        writer.put_one(0, [b"m%d" % n], None)
        assert reader.take_one() == b"m%d" % n
    writer.record(L.FlightOp.TIMEOUT, 3, 0)
    puts, gets = flight_of(memory, 0), flight_of(memory, 1)
    assert [(e[0], L.FlightOp(e[1]), e[2]) for e in puts] == [
        (1, L.FlightOp.PUT, 0), (2, L.FlightOp.PUT, 1), (3, L.FlightOp.PUT, 2), (4, L.FlightOp.TIMEOUT, 3)]
    offset = L.flight_offset(N_READERS, RING, FLIGHT_ENTRIES, 0)
    # What a poller has not read yet: the entries stamped above the newest it read, within the newest `last`.
    assert _ring.flight_entries(memory, offset, FLIGHT_ENTRIES, FLIGHT_ENTRIES, 2) == puts[2:]
    assert _ring.flight_entries(memory, offset, FLIGHT_ENTRIES, 1, 0) == puts[3:]
    assert _ring.flight_entries(memory, offset, FLIGHT_ENTRIES, FLIGHT_ENTRIES, 4) == []
    frame = 16 + 2  # the frame table of one segment, then its 2 bytes
    assert [(L.FlightOp(e[1]), e[2], e[3]) for e in gets] == [(L.FlightOp.GET, n, frame) for n in range(3)]
    assert [e[3] for e in puts[:3]] == [frame] * 3
    assert all(0 < e[4] <= e[5] for e in puts + gets)  # begin <= end, monotonic ns
    for n in range(3, 3 + FLIGHT_ENTRIES):  # the flight ring wraps: only the last FLIGHT_ENTRIES stay
        writer.put_one(0, [b"x"], None)
        reader.take_one()
    assert [e[2] for e in flight_of(memory, 1)] == list(range(3, 3 + FLIGHT_ENTRIES))
    # An entry its owner is writing (stamp 0) is left out, not read half-written.
    first = L.flight_offset(N_READERS, RING, FLIGHT_ENTRIES, 1) + L.FLIGHT_HEAD_BYTES
    words(memory)[L.word(first + L.FLIGHT_STAMP)] = 0
    assert len(flight_of(memory, 1)) == FLIGHT_ENTRIES - 1


def test_a_ring_without_a_flight_recorder_records_nothing(memory):
    writer = bound_ring_on(memory, 0)
    writer.put_one(0, [b"x"], None)
    assert flight_of(memory, 0) == []


def test_a_message_whose_decode_raises_is_kept_for_the_next_call_until_it_raises_twice(memory):
    writer, reader = ring_on(memory), reader_ring_on(memory)
    outcomes = iter([KeyboardInterrupt(), ValueError("bad"), "decoded", ValueError("bad"), ValueError("bad")])

    def loads(stream):
        outcome = next(outcomes)
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome, stream

    reader.bind_decoders(loads, lambda stream, buffers: None)
    writer.put_one(0, [b"first"], None)
    writer.put_one(0, [b"second"], None)
    with pytest.raises(KeyboardInterrupt):
        reader.take_one()
    assert reader.cursor == 1 and reader.unfinished == (b"first", [], 0, 0)  # taken; an interrupt is no failure
    assert reader.take_one() is _ring.NOTHING  # the kept message comes first
    with pytest.raises(ValueError):
        reader.decode_unfinished()
    assert reader.unfinished == (b"first", [], 0, 1)
    assert reader.decode_unfinished() == ("decoded", b"first") and reader.unfinished == (b"first", [], 0, 1)
    reader.unfinished = None  # the call that returned it clears it
    with pytest.raises(ValueError):
        reader.take_one()
    with pytest.raises(ValueError):
        reader.decode_unfinished()
    assert reader.unfinished is None and reader.cursor == 2  # the message's own error, twice: dropped
    assert record_word(memory, 0, L.REC_MESSAGES) == 2


def test_take_one_with_keep_and_deliver_keep_the_message_they_release_until_the_caller_clears_it(memory):
    writer, reader = ring_on(memory), reader_ring_on(memory)
    reader.first_read_state = L.ParticipantState.BUSY
    writer.put_one(0, [b"kept"], None)
    writer.put_one(0, [b"framed"], None)
    assert reader.take_one(True) == b"kept" and reader.unfinished == (b"kept", [], 0, 0)
    assert record_word(memory, 0, L.REC_STATE) == L.ParticipantState.BUSY and reader.first_read_state == 0
    reader.unfinished = None
    kept = (b"framed", [], L.FRAME_RAW, 0)
    reader.deliver(6, kept, True)  # the frame at the cursor is released with it
    assert reader.unfinished is kept and reader.cursor == 2 and reader.position == 2 * SMALL
    assert record_word(memory, 0, L.REC_MESSAGES) == 2
    with pytest.raises(ValueError, match="no message is kept"):
        reader.unfinished = "an assembly"
        reader.decode_unfinished()


def test_the_writer_ring_keeps_which_message_in_pieces_is_begun_and_not_ended(memory):
    writer = bound_ring_on(memory, 0)
    piece = L.FRAME_FRAGMENT
    writer.put_one(0, [b"whole"], None)
    assert writer.open_pieces is None
    for flags, open_after in ((piece | L.FRAME_FIRST, (1, 300)), (piece, (1, 300)), (piece | L.FRAME_LAST, None),
                              (piece | L.FRAME_FIRST, (4, 300)), (piece | L.FRAME_LAST | L.FRAME_ABORT, None)):
        before = writer.open_pieces
        writer.reserve(0 if flags & L.FRAME_ABORT else 100, 300, flags, None)
        assert writer.open_pieces == before  # reserved, not published: readers have not seen it
        writer.publish()
        assert writer.open_pieces == open_after
