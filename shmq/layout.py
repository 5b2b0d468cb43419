"""The bytes of a shmq segment. No other module knows an offset.

One POSIX shared-memory object holds one queue::

    +--------------------------------------------------------------+  0
    | HEADER (8 cache lines)                                       |
    |   line 0  magic | version | segment_bytes | creator_pid      |
    |           creator_start | creator_uid | created_ns | readers |
    |   line 1  ring_bytes | frame_bytes | flags | max_message_bytes |
    |           instance id (128 bits, random) | remote_readers    |
    |   line 2  queue name (64 B, UTF-8, NUL padded)               |
    |   line 3  remote endpoint (64 B, ASCII, NUL padded)          |
    |   line 4  writer_cursor (futex word: its low half) | position |
    |   line 5  reader_parked[64]        (one byte per reader)     |
    |   line 6  writer_parked | writer_wake (futex word)           |
    |   line 7  flight_entries (per participant; 0: no recorder)    |
    +--------------------------------------------------------------+  HEADER_BYTES
    | PARTICIPANT RECORD 0: the writer          (RECORD_BYTES each)|
    | PARTICIPANT RECORD 1..n_readers: reader 0..n_readers-1       |
    |   (the last remote_readers of them: remote readers' slots)   |
    +--------------------------------------------------------------+  ring_offset()
    | THE RING: ring_bytes of variable-length frames, each          |
    |   frame header (FRAME_HEADER_BYTES) | payload | pad to 128 B  |
    |   and a padding frame where a frame would cross the end      |
    +--------------------------------------------------------------+  flight_offset(..., 0)
    | FLIGHT RING 0..n_readers: each participant's last operations |
    |   line 0  head (entries written so far)                      |
    |   then flight_entries entries of FLIGHT_ENTRY_BYTES          |
    +--------------------------------------------------------------+  segment_bytes()

Every shared field is a naturally aligned 8-byte word, so the queue reads and
writes them through one ``memoryview.cast("Q")`` of the whole segment: CPython
moves such an item with a single aligned 8-byte load or store, which is never
torn. (``struct.pack_into`` is not used on shared fields: it zeroes the target
before packing, so a concurrent reader could see the zeros.) Frame headers and
payloads are only read after the cursor that publishes them, so they may be
packed with ``struct``.

Cursors count frames (messages, and the pieces of a message too large for one
frame); positions count bytes. Both are 64-bit and only grow. Gating is by
position: the writer may write a frame while it ends no more than ring_bytes
past the slowest gating reader's position. Everything outside the ring (lag,
the flight recorder, remote readers' sequence numbers, the park marks) speaks
in frames, which is why the cursor stays the frame count and the position is
kept beside it rather than replacing it.

Each participant record is written by exactly one process, its owner; the only
exception is a writer marking a *dead* reader evicted, when the owner can no
longer write. A remote reader's record is written by the writer's process (its
remote server), from what the reader reports over the network. Records are whole
cache lines apart, so readers never false-share.
"""

from __future__ import annotations

import enum
import struct

from . import _ring
from .errors import BadQueueArgument

CACHE_LINE = 64
WORD = 8

MAGIC = b"SHMQRNG\x00"
MAGIC_WORD = int.from_bytes(MAGIC, "little")
LAYOUT_VERSION = 7  # 2: instance id, record owner word, first/abort piece flags; 3: flight recorder; 4: byte ring;
# 5: remote readers' records; 6: parked and busy-waiting time in each record; 7: pieces smaller than a frame

MAX_READERS = 64  # one parked byte per reader (local or remote) fits one cache line
NAME_BYTES = 64
ENDPOINT_BYTES = 64

# -- header, line 0: identity (immutable once `version` is written) ----------
OFF_MAGIC = 0
OFF_VERSION = OFF_MAGIC + WORD  # written last: it is the "segment ready" signal
OFF_SEGMENT_BYTES = OFF_VERSION + WORD
OFF_CREATOR_PID = OFF_SEGMENT_BYTES + WORD
OFF_CREATOR_START = OFF_CREATOR_PID + WORD  # /proc start time, guards pid reuse
OFF_CREATOR_UID = OFF_CREATOR_START + WORD
OFF_CREATED_NS = OFF_CREATOR_UID + WORD  # wall clock, time.time_ns()
OFF_N_READERS = OFF_CREATED_NS + WORD  # reader records, local and remote
# -- line 1: geometry ----------------------------------------------------------
OFF_RING_BYTES = OFF_N_READERS + WORD
OFF_FRAME_BYTES = OFF_RING_BYTES + WORD  # the largest payload of one frame: a larger message goes in pieces
OFF_FLAGS = OFF_FRAME_BYTES + WORD
OFF_MAX_MESSAGE_BYTES = OFF_FLAGS + WORD
OFF_INSTANCE_ID = OFF_MAX_MESSAGE_BYTES + WORD  # two words: tells a queue from another of the same geometry
INSTANCE_ID_BYTES = 2 * WORD
OFF_N_REMOTE_READERS = OFF_INSTANCE_ID + INSTANCE_ID_BYTES  # the last of the reader records are remote slots
OFF_PIECE_BYTES = OFF_N_REMOTE_READERS + WORD  # the payload of each piece of such a message but its last
# -- lines 2-3: names ----------------------------------------------------------
OFF_NAME = 2 * CACHE_LINE
OFF_ENDPOINT = OFF_NAME + NAME_BYTES
# -- line 4: the writer cursor (frames published), then its position (the bytes they end at, stored
#    after the cursor: see shmq/_ring.c, publish_writer_cursor) ------------------
OFF_WRITER_CURSOR = OFF_ENDPOINT + ENDPOINT_BYTES
OFF_WRITER_POSITION = OFF_WRITER_CURSOR + WORD
# -- line 5: one "I am parked" byte per reader (0, or parked_mark(its cursor)) --
OFF_READER_PARKED = OFF_WRITER_CURSOR + CACHE_LINE
# -- line 6: the writer's park word (0, or the reader position that makes room for
#    the frame it waits to write) and the word it sleeps on ----------------------
OFF_WRITER_PARKED = OFF_READER_PARKED + CACHE_LINE
OFF_WRITER_WAKE = OFF_WRITER_PARKED + WORD
# -- line 7: the flight recorder's size ------------------------------------------
OFF_FLIGHT_ENTRIES = OFF_WRITER_PARKED + CACHE_LINE
HEADER_BYTES = OFF_FLIGHT_ENTRIES + CACHE_LINE

assert OFF_PIECE_BYTES + WORD <= OFF_NAME
assert OFF_WRITER_CURSOR % CACHE_LINE == 0 and OFF_READER_PARKED % CACHE_LINE == 0
assert HEADER_BYTES == 8 * CACHE_LINE

# Header flags.
FLAG_STATS = 1 << 0  # participants keep counters and histograms
FLAG_RAW_ONLY = 1 << 1  # serializer="bytes": readers never unpickle

# -- participant record --------------------------------------------------------
# line 0: identity and progress
REC_PID = 0
REC_START_TIME = REC_PID + WORD
REC_ROLE = REC_START_TIME + WORD
REC_INDEX = REC_ROLE + WORD
REC_STATE = REC_INDEX + WORD
REC_STATE_SINCE_NS = REC_STATE + WORD  # time.monotonic_ns() of the last change
REC_HEARTBEAT_NS = REC_STATE_SINCE_NS + WORD  # time.monotonic_ns()
REC_CURSOR = REC_HEARTBEAT_NS + WORD  # frames produced or consumed
# line 1: a reader's position (the bytes of the ring it is done with: what gates the writer), then
# counters, each a plain store by the owner
REC_POSITION = REC_CURSOR + WORD
REC_MESSAGES = REC_POSITION + WORD
REC_BYTES = REC_MESSAGES + WORD
REC_SPINS = REC_BYTES + WORD
REC_YIELDS = REC_SPINS + WORD
REC_BACKOFF_SLEEPS = REC_YIELDS + WORD
REC_BACKOFF_SLEEP_NS = REC_BACKOFF_SLEEPS + WORD
REC_PARKS = REC_BACKOFF_SLEEP_NS + WORD
REC_WAKEUPS = REC_PARKS + WORD
REC_TIMEOUTS = REC_WAKEUPS + WORD
REC_OVERFLOW = REC_TIMEOUTS + WORD  # messages sent or received in pieces
REC_WAITS = REC_OVERFLOW + WORD  # equals the sum of the histogram buckets
REC_WAIT_NS = REC_WAITS + WORD
REC_ATTACHES = REC_WAIT_NS + WORD
REC_PROGRESS_NS = REC_ATTACHES + WORD  # monotonic_ns when the cursor last moved (heartbeat thread)
# Who holds the record: 0 when free, else owner_word(pid, start time), claimed by compare-and-swap
# (shmq/_ring.c: compare_exchange), so two processes attaching at once cannot both win.
REC_OWNER = REC_PROGRESS_NS + WORD
# lines 3..: wait-time histogram, log2 buckets of microseconds
HIST_FINITE_BUCKETS = 27  # upper bounds 1 us, 2 us, ... 2**26 us (about 67 s)
HIST_BUCKETS = HIST_FINITE_BUCKETS + 1  # plus +Inf
REC_HISTOGRAM = 3 * CACHE_LINE
# after the histogram: what the Adaptive wait strategy decided (shmq/wait.py), stored by the owner in Python
REC_PREDICTED_WAKES = REC_HISTOGRAM + HIST_BUCKETS * WORD  # timed wake-ups just before a predicted arrival
REC_PREDICTION_HITS = REC_PREDICTED_WAKES + WORD  # arrivals within the spin budget after such a wake-up
REC_PREDICTION_MISSES = REC_PREDICTION_HITS + WORD  # arrivals before the predicted wake-up, or after the budget
REC_SPIN_BEFORE_ARRIVAL_NS = REC_PREDICTION_MISSES + WORD  # time spun from a predicted wake-up to a hit
# line 7: a remote reader's slot (written by the writer's remote server, shmq/remote.py): the reader's
# host; it is alive while its heartbeat is younger than the grace
REC_HOST = 7 * CACHE_LINE  # UTF-8, NUL padded
HOST_BYTES = 6 * WORD
REC_GRACE_NS = REC_HOST + HOST_BYTES
# line 8: where the waits' time went (shmq/_ring.c: park_ended, account_wait); the rest of a wait's time was
# spent asleep in Backoff (REC_BACKOFF_SLEEP_NS)
REC_PARKED_NS = 8 * CACHE_LINE  # parked on the futex
REC_BUSY_WAIT_NS = REC_PARKED_NS + WORD  # spinning and yielding (wall time: a yield may hand the core over)
RECORD_BYTES = 9 * CACHE_LINE

assert REC_OWNER + WORD <= REC_HISTOGRAM
assert REC_SPIN_BEFORE_ARRIVAL_NS + WORD <= REC_HOST
assert REC_GRACE_NS + WORD <= REC_PARKED_NS
assert REC_BUSY_WAIT_NS + WORD <= RECORD_BYTES

HISTOGRAM_UPPER_BOUNDS_S = tuple(2.0**k / 1e6 for k in range(HIST_FINITE_BUCKETS))

# Counter fields in record order, as named in snapshots and metrics.
COUNTER_FIELDS = (
    ("messages", REC_MESSAGES),
    ("bytes", REC_BYTES),
    ("spins", REC_SPINS),
    ("yields", REC_YIELDS),
    ("backoff_sleeps", REC_BACKOFF_SLEEPS),
    ("backoff_sleep_ns", REC_BACKOFF_SLEEP_NS),
    ("parks", REC_PARKS),
    ("wakeups", REC_WAKEUPS),
    ("timeouts", REC_TIMEOUTS),
    ("overflow_messages", REC_OVERFLOW),
    ("waits", REC_WAITS),
    ("wait_ns", REC_WAIT_NS),
    ("parked_ns", REC_PARKED_NS),
    ("busy_wait_ns", REC_BUSY_WAIT_NS),
    ("attaches", REC_ATTACHES),
    ("predicted_wakes", REC_PREDICTED_WAKES),
    ("prediction_hits", REC_PREDICTION_HITS),
    ("prediction_misses", REC_PREDICTION_MISSES),
    ("spin_before_arrival_ns", REC_SPIN_BEFORE_ARRIVAL_NS),
)


def wait_bucket(wait_ns: int) -> int:
    """Index of the histogram bucket that holds a wait of `wait_ns` (shmq/_ring.c counts waits)."""
    return _ring.wait_bucket(wait_ns, HIST_FINITE_BUCKETS)


class Role(enum.IntEnum):
    WRITER = 1
    READER = 2
    REMOTE_READER = 3  #: a reader on another host; its record is kept by the writer's remote server


class ParticipantState(enum.IntEnum):
    """Where a participant is. Stored in its record; 0 means never attached."""

    PENDING = 0  #: a reader index nobody has attached to yet; it gates the writer
    IDLE = 1  #: attached, no call made yet
    BUSY = 2  #: outside the queue, in application code
    WAITING_READ = 3  #: inside get(), no message available
    WAITING_WRITE = 4  #: inside put(), no room in the ring
    CLOSED = 5  #: closed cleanly; no longer gates the writer
    EVICTED = 6  #: found dead by the writer and left out of the minimum cursor


# -- frames ----------------------------------------------------------------------
# A frame is a header, then its payload, padded so the next frame starts FRAME_ALIGN-aligned. Two
# cache lines: a frame never shares a line pair (what adjacent-line prefetchers fetch together) with
# the next, and the end of the ring always has room for a padding frame's header.
FRAME_SEQ = 0  # the frame's number: a reader's cursor names the frame it expects
FRAME_LEN = FRAME_SEQ + WORD  # payload bytes in this frame
FRAME_TOTAL_LEN = FRAME_LEN + WORD  # payload bytes of the whole message
FRAME_FLAGS = FRAME_TOTAL_LEN + WORD
FRAME_POSITION = FRAME_FLAGS + WORD  # the frame's own position: a reader checks it is where it expects
FRAME_TRACEPARENT = CACHE_LINE
TRACEPARENT_BYTES = 64  # W3C traceparent is 55 ASCII characters
FRAME_HEADER_BYTES = 2 * CACHE_LINE
FRAME_ALIGN = FRAME_HEADER_BYTES
assert FRAME_POSITION + WORD <= FRAME_TRACEPARENT
assert FRAME_TRACEPARENT + TRACEPARENT_BYTES <= FRAME_HEADER_BYTES

FRAME_HEAD = struct.Struct("<QQQQQ")  # seq, frame_len, total_len, flags, position

# Frame flags.
FRAME_RAW = 1 << 0  # payload is the caller's bytes, not a serialized object
FRAME_FRAGMENT = 1 << 1  # one piece of a message larger than frame_bytes
FRAME_LAST = 1 << 2  # the final piece of a message
FRAME_TRACED = 1 << 3  # the traceparent field holds a W3C traceparent
FRAME_FIRST = 1 << 4  # the first piece of a message in pieces: where a reader may start one
FRAME_ABORT = 1 << 5  # an empty last piece: the writer gave up this message (interrupt, timeout); drop it
FRAME_PADDING = 1 << 6  # no message: the rest of the ring is skipped, the frame seq follows at its start

MIN_FRAME_BYTES = 2 * WORD  # the table of one empty segment (shmq/_ring.c: MIN_FRAME_BYTES)

MIN_RING_BYTES = 4 * FRAME_ALIGN  # two frames of the smallest message
PAGE_BYTES = 4096

#: The ring's default size, and the memory a queue costs (plus 512 B per reader and the flight rings).
DEFAULT_RING_BYTES = 16 << 20


def frame_stride(payload: int) -> int:
    """The ring bytes a frame of `payload` bytes takes: its header, the payload and the padding after it."""
    return align(FRAME_HEADER_BYTES + payload, FRAME_ALIGN)


def within_lap(position: int, payload: int, ring_bytes: int) -> bool:
    """Whether a frame of `payload` bytes at ring position `position` ends within its lap, as every frame a
    writer writes does (a padding frame fills the end instead; shmq/_ring.c: within_lap)."""
    return position % ring_bytes + frame_stride(payload) <= ring_bytes


def piece_continues(filled: int, frame: int, total: int, last: bool, piece_bytes: int) -> bool:
    """Whether a piece of `frame` bytes at byte `filled` of a `total`-byte message in pieces is one its writer
    wrote: every piece but the last holds piece_bytes, the last ends the message, and none runs past it."""
    return frame == (total - filled if last else piece_bytes) and filled + frame <= total


def default_frame_bytes(ring_bytes: int) -> int:
    """The largest frame payload a ring of `ring_bytes` takes: a quarter of the ring and a page, so that an
    array of a quarter of the ring (arrays are often a power of two) and its pickle stream is one frame,
    which its readers copy in one go once it is written (in a ring too small for that, half of it): faster
    than pieces of it (docs/benchmarks.md, "One ring for every size")."""
    return min(ring_bytes // 4 + PAGE_BYTES - FRAME_HEADER_BYTES, max_frame_bytes(ring_bytes))


def default_piece_bytes(ring_bytes: int, frame_bytes: int) -> int:
    """The pieces a message larger than a frame streams through the ring in: a sixteenth of it and a page
    (at most a frame), so that readers copy one while the writer fills the next, and the writer needs
    little room to go on (pieces of a quarter of the ring were slower: docs/benchmarks.md)."""
    return min(ring_bytes // 16 + PAGE_BYTES - FRAME_HEADER_BYTES, frame_bytes)


def max_frame_bytes(ring_bytes: int) -> int:
    """The largest frame payload a ring can take: half the ring, so that a frame fits after the padding
    that the end of the ring may cost it, once every reader has caught up (shmq/_ring.c: claim)."""
    return ring_bytes // 2 - FRAME_HEADER_BYTES


# A serialized message is a table of segment lengths, then the segments:
#   u64 count | u64 len[0] ... u64 len[count-1] | segment 0 | pad | segment 1 | pad | ...
# Segment 0 is the pickle stream; the rest are pickle-5 out-of-band buffers, each
# starting SEGMENT_ALIGN-aligned from the frame start so leased arrays are aligned.
ONE_SEGMENT = struct.Struct("<QQ")  # the table of a one-segment frame: count 1, its length
SEGMENT_ALIGN = CACHE_LINE


def segment_layout(lengths: list[int] | tuple[int, ...]) -> tuple[list[int], int]:
    """Offsets of each segment from the frame start, and the frame's total length."""
    position = WORD * (1 + len(lengths)) + lengths[0]
    offsets = [position - lengths[0]]
    for n in lengths[1:]:
        position = align(position, SEGMENT_ALIGN)
        offsets.append(position)
        position += n
    return offsets, position


PARKED_BIT = 0x80
PARKED_CURSOR_MASK = 0x7F


def parked_mark(cursor: int) -> int:
    """A parked reader's byte: bit 7 set, and the low 7 bits of the cursor it waits past.

    It tells the writer which message the reader sleeps for, so the writer wakes it
    once, for that message, rather than on every message until it runs again.
    """
    return PARKED_BIT | (cursor & PARKED_CURSOR_MASK)


def owner_word(pid: int, start_time: int) -> int:
    """A record's owner word: the pid, and the low 32 bits of its start time (guards pid reuse)."""
    return (start_time & 0xFFFFFFFF) << 32 | pid


#: The owner word while the writer evicts a dead reader: no (pid, start time) makes it.
OWNER_EVICTING = (1 << 64) - 1


def align(n: int, to: int = CACHE_LINE) -> int:
    return (n + to - 1) // to * to


def record_offset(participant: int) -> int:
    """Record 0 is the writer; record 1 + i is reader i."""
    return HEADER_BYTES + participant * RECORD_BYTES


def ring_offset(n_readers: int) -> int:
    """Where the ring starts: after the records, at a frame boundary (frames are FRAME_ALIGN-aligned)."""
    return align(record_offset(1 + n_readers), FRAME_ALIGN)


def flight_offset(n_readers: int, ring_bytes: int, flight_entries: int, participant: int) -> int:
    return ring_offset(n_readers) + ring_bytes + participant * flight_ring_bytes(flight_entries)


def segment_bytes(n_readers: int, ring_bytes: int, flight_entries: int) -> int:
    return flight_offset(n_readers, ring_bytes, flight_entries, 1 + n_readers)


def word(byte_offset: int) -> int:
    """Index of an 8-byte field in the segment's ``cast("Q")`` view."""
    return byte_offset // WORD


def encode_text(text: str, size: int, what: str) -> bytes:
    raw = text.encode("utf-8")
    if len(raw) >= size:
        raise BadQueueArgument(f"{what} {text!r} is {len(raw)} bytes; the limit is {size - 1}")
    return raw.ljust(size, b"\x00")


def decode_text(raw: bytes) -> str:
    return bytes(raw).split(b"\x00", 1)[0].decode("utf-8", "replace")


# -- the flight recorder -----------------------------------------------------------
# Each participant's ring of its last operations, written by its owner's C paths with plain stores
# (shmq/_ring.c: flight_record) and read from outside (shmq/flight.py). An entry is one cache line:
FLIGHT_STAMP = 0  # the entry's index + 1, stored last; 0 while it is being written
FLIGHT_OP = FLIGHT_STAMP + WORD  # a FlightOp
FLIGHT_SEQ = FLIGHT_OP + WORD  # the message the operation concerns
FLIGHT_SIZE = FLIGHT_SEQ + WORD  # its size in bytes, where it has one
FLIGHT_BEGIN_NS = FLIGHT_SIZE + WORD  # time.monotonic_ns(): a wait that led to it counts
FLIGHT_END_NS = FLIGHT_BEGIN_NS + WORD  # 0 while it lasts (a park, a lease)
FLIGHT_SPINS_YIELDS = FLIGHT_END_NS + WORD  # spins << 32 | yields of its wait
FLIGHT_PARKS = FLIGHT_SPINS_YIELDS + WORD
FLIGHT_ENTRY_BYTES = FLIGHT_PARKS + WORD
assert FLIGHT_ENTRY_BYTES == CACHE_LINE
FLIGHT_HEAD_BYTES = CACHE_LINE  # the head word (entries written so far), alone on its line
#: 1,024 entries: 64 KiB per participant, the last seconds of a queue at engine cadence.
DEFAULT_FLIGHT_ENTRIES = 1024


class FlightOp(enum.IntEnum):
    PUT = 1  #: a message written and published
    PIECE = 2  #: one piece of a message sent in pieces, published
    GET = 3  #: a message taken
    PARK = 4  #: asleep on the futex until woken or timed out (end_ns 0 while asleep)
    WAKE = 5  #: a futex wake issued for a parked peer
    TIMEOUT = 6  #: a put() or get() that timed out
    DEAD_CHECK = 7  #: a wait found its peer dead
    EVICT = 8  #: the writer evicted a dead reader (seq: its cursor; size: its index)
    INTERRUPTED = 9  #: a wait ended by cancel(), close() or an exception
    LEASE = 10  #: a message held by a lease() block (end_ns 0 until the block exits)


def flight_ring_bytes(flight_entries: int) -> int:
    return FLIGHT_HEAD_BYTES + flight_entries * FLIGHT_ENTRY_BYTES if flight_entries else 0


# -- what shmq/_ring.c assumes ---------------------------------------------------------
#: The record words the C paths store, in the order of its enum Field (bind_record takes their offsets).
RECORD_FIELDS = (REC_STATE, REC_STATE_SINCE_NS, REC_CURSOR, REC_POSITION, REC_MESSAGES, REC_BYTES, REC_SPINS, REC_YIELDS,
                 REC_BACKOFF_SLEEPS, REC_BACKOFF_SLEEP_NS, REC_PARKS, REC_WAKEUPS, REC_WAITS, REC_WAIT_NS,
                 REC_PARKED_NS, REC_BUSY_WAIT_NS, REC_HISTOGRAM)
# The C extension reads and writes frame headers and parked bytes itself: a stale build must not guess.
_C_LAYOUT = {"FRAME_SEQ": FRAME_SEQ, "FRAME_LEN": FRAME_LEN, "FRAME_TOTAL_LEN": FRAME_TOTAL_LEN,
             "FRAME_FLAGS": FRAME_FLAGS, "FRAME_POSITION": FRAME_POSITION, "FRAME_TRACEPARENT": FRAME_TRACEPARENT,
             "TRACEPARENT_BYTES": TRACEPARENT_BYTES, "FRAME_HEADER_BYTES": FRAME_HEADER_BYTES,
             "FRAME_ALIGN": FRAME_ALIGN, "FRAME_FRAGMENT": FRAME_FRAGMENT, "FRAME_LAST": FRAME_LAST,
             "FRAME_FIRST": FRAME_FIRST, "FRAME_TRACED": FRAME_TRACED, "FRAME_PADDING": FRAME_PADDING,
             "MIN_FRAME_BYTES": MIN_FRAME_BYTES,
             "SEGMENT_ALIGN": SEGMENT_ALIGN, "PARKED_BIT": PARKED_BIT, "PARKED_CURSOR_MASK": PARKED_CURSOR_MASK,
             "N_RECORD_FIELDS": len(RECORD_FIELDS), "FLIGHT_ENTRY_BYTES": FLIGHT_ENTRY_BYTES,
             "FLIGHT_HEAD_BYTES": FLIGHT_HEAD_BYTES, **{f"FLIGHT_{op.name}": op.value for op in FlightOp}}
if _mismatch := {name: (value, getattr(_ring, name, None)) for name, value in _C_LAYOUT.items()
                 if getattr(_ring, name, None) != value}:
    raise ImportError(f"shmq/_ring.c and shmq/layout.py disagree on {_mismatch} (layout.py, C): rebuild shmq")
