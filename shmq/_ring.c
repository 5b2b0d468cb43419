/* shmq's hot path, and the memory ordering every publish relies on.
 *
 * A Ring is one participant's view of a queue: it writes and reads the frames of the byte ring,
 * keeps a reader's cursor and position and publishes them, and does the stores that begin and
 * end a wait. Python's own operations each cost tens of nanoseconds and give no ordering
 * guarantee a reader of the code can check, so the stores and loads that other processes race
 * on live here, written with C11 atomics.
 *
 * The ring is ring_bytes of frames (shmq/layout.py: FRAME_*): a header, the payload, padding to
 * FRAME_ALIGN. Two 64-bit counters only grow: a cursor counts frames, a position counts bytes,
 * and the frame at position p lives at ring + p % ring_bytes. Frames are named by cursor (lag, the
 * flight recorder, remote readers and park marks speak in frames); room is counted in positions.
 * A frame that would cross the end of the ring is preceded by a padding frame that fills it, so
 * every frame is contiguous and a lease can alias it.
 *
 *   writer: frame header and payload (plain stores) -> release store of the writer cursor
 *   reader: acquire load of the writer cursor -> frame header and payload (plain loads)
 *
 * A release store is never seen before the stores that precede it, and an acquire load is
 * never overtaken by the loads that follow it, so a reader that sees cursor s+1 sees frame s
 * complete, and the padding before it. That holds for the frames Python fills too (the pieces
 * of a message larger than one frame): their stores precede publish() in program order. The
 * other way, a reader's release store of its position comes after its loads of the frames
 * below it, and the writer's acquire load of that position before its stores into them: the
 * writer never writes bytes a gating reader may still read (claim). Sleeping peers make it a
 * Dekker handshake, which needs a full fence on both sides (see publish_writer_cursor and
 * publish_reader_cursor): x86-64 lets a load pass an earlier store, so without it the
 * writer could miss a reader that just parked, and the reader could sleep through the
 * message that woke nobody.
 *
 * A Ring holds a buffer export of the segment, so the mapping cannot be unmapped under it;
 * release() drops the export and every later call raises ValueError. Every method runs
 * with the GIL held (only futex_wait lets it go), so the heartbeat thread's publish never
 * interleaves with the calling thread's.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <limits.h>
#include <stdatomic.h>
#include <stdint.h>
#include <string.h>
#include <time.h>
#ifdef __linux__
#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif

/* What take_one returns when it leaves the message to the Python path (None is a message). */
static PyObject *Nothing;

/* Frame header words (shmq/layout.py: FRAME_SEQ, FRAME_LEN, FRAME_TOTAL_LEN, FRAME_FLAGS,
 * FRAME_POSITION); the payload starts at FRAME_HEADER_BYTES with its table (segment count, length of
 * segment 0), and a one-segment message's pickle stream follows. */
enum { SEQ, FRAME_LEN, TOTAL_LEN, FLAGS, POSITION };
#define FRAME_TRACEPARENT 64 /* the second line: a W3C traceparent, zero-padded */
#define TRACEPARENT_BYTES 64
#define FRAME_HEADER_BYTES 128
#define FRAME_ALIGN 128 /* the header's size: the end of the ring always has room for a padding header */
#define FRAME_FRAGMENT (1 << 1)
#define FRAME_LAST (1 << 2)
#define FRAME_TRACED (1 << 3)
#define FRAME_FIRST (1 << 4)
#define FRAME_PADDING (1 << 6)
#define MIN_FRAME_BYTES 16 /* the table of one empty segment */
/* A frame at least this large starts the next lap early when it can (reserve_frame): its copy costs
 * more in cache misses than the padding frame does. */
#define WARM_FRAME_BYTES (64 << 10)

/* A flight ring entry's words and operations (shmq/layout.py: FLIGHT_*, FlightOp). */
enum { E_STAMP, E_OP, E_SEQ, E_SIZE, E_BEGIN, E_END, E_SPINS_YIELDS, E_PARKS, E_WORDS };
enum { OP_PUT = 1, OP_PIECE, OP_GET, OP_PARK, OP_WAKE, OP_TIMEOUT, OP_DEAD_CHECK, OP_EVICT, OP_INTERRUPTED, OP_LEASE };

/* parked_mark in shmq/layout.py: bit 7 set, and the low 7 bits of the cursor a reader waits past. */
#define PARKED_BIT 0x80
#define PARKED_CURSOR_MASK 0x7F
#define PARKED_MARK(cursor) ((uint8_t)(PARKED_BIT | ((cursor) & PARKED_CURSOR_MASK)))

/* -- fences and futexes ----------------------------------------------------------------- */
static void
futex_wake_all(void *address, int count)
{
#ifdef __linux__
    syscall(SYS_futex, address, FUTEX_WAKE, count, NULL, NULL, 0);
#else
    (void)address;
    (void)count;
#endif
}

static PyObject *
full_fence(PyObject *module, PyObject *unused)
{
    atomic_thread_fence(memory_order_seq_cst);
    Py_RETURN_NONE;
}

/* Sleep while the 32-bit word at `address` holds `expected`, at most timeout_s, without the GIL.
 * Without futexes: sleep out the timeout, which callers keep short. */
static void
futex_sleep(void *address, uint32_t expected, double timeout_s)
{
    if (!(timeout_s > 0))
        timeout_s = 0;
    struct timespec timeout = {(time_t)timeout_s, (long)((timeout_s - (double)(time_t)timeout_s) * 1e9)};
    Py_BEGIN_ALLOW_THREADS
#ifdef __linux__
    syscall(SYS_futex, address, FUTEX_WAIT, expected, &timeout, NULL, 0);
#else
    (void)address;
    (void)expected;
    nanosleep(&timeout, NULL);
#endif
    Py_END_ALLOW_THREADS
}

/* flight_entries(buffer, offset, entries, last=entries, after=0) -> [(stamp, op, seq, size, begin, end,
 * spins_yields, parks)]: the complete entries of the flight ring at offset (the newest `last`, and of
 * those only the ones stamped above `after`), oldest first; one its owner was writing while we copied
 * it (its stamp 0 or changed) is left out. */
static PyObject *
flight_entries(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    Py_buffer view;
    Py_ssize_t offset;
    unsigned long long entries, last, after;
    if (nargs < 3 || nargs > 5) {
        PyErr_SetString(PyExc_TypeError, "flight_entries(buffer, offset, entries, last=entries, after=0)");
        return NULL;
    }
    offset = PyLong_AsSsize_t(args[1]);
    entries = PyLong_AsUnsignedLongLong(args[2]);
    last = nargs >= 4 ? PyLong_AsUnsignedLongLong(args[3]) : entries;
    after = nargs == 5 ? PyLong_AsUnsignedLongLong(args[4]) : 0;
    if (PyErr_Occurred() || PyObject_GetBuffer(args[0], &view, PyBUF_SIMPLE) < 0)
        return NULL;
    PyObject *found = NULL;
    if (offset < 0 || offset % 64 || (unsigned long long)offset + 64 + entries * 8 * E_WORDS >
                                         (unsigned long long)view.len) {
        PyErr_SetString(PyExc_ValueError, "the flight ring is outside the buffer");
        goto done;
    }
    _Atomic uint64_t *ring = (_Atomic uint64_t *)((char *)view.buf + offset) + 8;
    uint64_t head = atomic_load_explicit((_Atomic uint64_t *)((char *)view.buf + offset), memory_order_acquire);
    if (last > entries)
        last = entries;
    if (last > head)
        last = head;
    uint64_t first = head - last > after ? head - last : after; /* entry `index` is stamped index + 1 */
    found = PyList_New(0);
    for (uint64_t index = first; found != NULL && index < head; index++) {
        _Atomic uint64_t *e = ring + E_WORDS * (index % entries);
        uint64_t copy[E_WORDS];
        uint64_t stamp = atomic_load_explicit(&e[E_STAMP], memory_order_acquire);
        for (int w = 1; w < E_WORDS; w++)
            copy[w] = atomic_load_explicit(&e[w], memory_order_relaxed);
        atomic_thread_fence(memory_order_acquire); /* the copy before the second look at the stamp */
        if (stamp == 0 || atomic_load_explicit(&e[E_STAMP], memory_order_relaxed) != stamp)
            continue;
        copy[E_STAMP] = stamp;
        PyObject *entry = Py_BuildValue("(KKKKKKKK)", copy[0], copy[1], copy[2], copy[3], copy[4], copy[5], copy[6],
                                        copy[7]);
        if (entry == NULL || PyList_Append(found, entry) < 0)
            Py_CLEAR(found);
        Py_XDECREF(entry);
    }
    if (found != NULL && PyList_Sort(found) < 0)
        Py_CLEAR(found);
done:
    PyBuffer_Release(&view);
    return found;
}

/* futex_wait(address, expected, timeout_s) and futex_wake(address, count): the bare kernel calls,
 * for the benchmark's limit rows (shmq bench); the queue itself parks through Ring.park_*. */
static PyObject *
futex_wait(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "futex_wait(address, expected, timeout_s)");
        return NULL;
    }
    unsigned long long address = PyLong_AsUnsignedLongLong(args[0]);
    unsigned long expected = PyLong_AsUnsignedLongMask(args[1]);
    double timeout_s = PyFloat_AsDouble(args[2]);
    if (PyErr_Occurred())
        return NULL;
    futex_sleep((void *)(uintptr_t)address, (uint32_t)expected, timeout_s);
    Py_RETURN_NONE;
}

static PyObject *
futex_wake(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs < 1 || nargs > 2) {
        PyErr_SetString(PyExc_TypeError, "futex_wake(address, count=INT_MAX)");
        return NULL;
    }
    unsigned long long address = PyLong_AsUnsignedLongLong(args[0]);
    long count = nargs == 2 ? PyLong_AsLong(args[1]) : INT_MAX;
    if (PyErr_Occurred())
        return NULL;
    futex_wake_all((void *)(uintptr_t)address, count > INT_MAX ? INT_MAX : (int)count);
    Py_RETURN_NONE;
}

/* -- Ring --------------------------------------------------------------------------------- */
/* The words of a participant's record that the C paths store, in the order bind_record takes
 * their offsets (shmq/layout.py: RECORD_FIELDS); the histogram is the first of its buckets. */
enum Field {
    F_STATE, F_STATE_SINCE, F_CURSOR, F_POSITION, F_MESSAGES, F_BYTES, F_SPINS, F_YIELDS, F_BACKOFF_SLEEPS,
    F_BACKOFF_SLEEP_NS, F_PARKS, F_WAKEUPS, F_WAITS, F_WAIT_NS, F_PARKED_NS, F_BUSY_WAIT_NS, F_HISTOGRAM, N_FIELDS
};

typedef struct {
    PyObject_HEAD
    Py_buffer view; /* view.buf is NULL once released */
    char *ring;
    Py_ssize_t ring_offset;
    uint64_t ring_bytes, frame_bytes; /* the ring's size; the largest payload of one frame */
    _Atomic uint64_t *writer_cursor, *writer_position;
    _Atomic uint8_t *reader_parked;
    Py_ssize_t n_readers;
    _Atomic uint64_t *writer_parked;
    _Atomic uint32_t *writer_wake;
    uint64_t available; /* a reader's last load of the writer cursor: frames below it are readable */
    /* A writer's cursor and position, kept here rather than in Python: a message is written, published
     * and counted in one C call, so an interrupt (a signal handler raising) lands before it or after
     * it, never between the publish and the cursor's update. A frame reserve() began (its header
     * written, its payload Python's to fill) ends at `reserved_end`; publish() publishes it. */
    uint64_t written, position, reserved_end;
    /* The flags and total of the frame reserved; and the message in pieces whose first piece is
     * published and whose last is not (its first frame and total; open_pieces 0 if none). publish()
     * keeps these, so a put() an interrupt cuts short leaves them right whatever bytecode it stopped
     * at: the next put() publishes the message's abort piece (Writer._abort_unfinished). */
    uint64_t reserved_flags, reserved_total, open_first, open_total;
    int open_pieces;
    /* The thread inside a call's slow path (enter/leave), 0 if none. The one-call fast paths
     * (put_one, take_one) check it and take the whole message or nothing, atomically under the
     * GIL, so a second thread is refused without a lock on the fast path. */
    unsigned long guard;
    /* What a reader's call that has not returned left for the next one: a message it took out of
     * the ring, kept until the call returns it ((stream, buffers, flags, failures): an interrupt, or
     * the decoder raising, before the return leaves it for the next call), or a message in pieces it
     * is copying in (Reader's _Assembly). NULL or None if nothing. While it is set take_one leaves
     * the ring to the Python path, which finishes it first. The call that returns the message clears
     * it in its last store before its return: no signal handler can run between the two. */
    PyObject *unfinished;
    /* A reader's decoders, after bind_decoders: loads(stream) for a message without out-of-band
     * buffers, decode(stream, buffers) for one with them. */
    PyObject *loads, *decode;
    /* The state stored when the reader releases its first frame (its BUSY: from then on, time
     * outside the queue is the application's); 0 once stored, or for a ring that reads ahead. */
    uint64_t first_read_state;
    /* A writer's gate, after bind_gating: each reader record's state and position words. A reader
     * whose state is below gating_below holds the writer back at its position. `limit` caches the
     * slowest such position + ring_bytes, past which no frame may end yet: the Disruptor's gating
     * sequence, rescanned only when the writer reaches it. `wanted` is the reader position the last
     * refused claim needs (park_writer sleeps until a reader crosses it). */
    _Atomic uint64_t **gate_state, **gate_position;
    Py_ssize_t n_gates;
    uint64_t gating_below, limit, wanted;
    /* The participant's flight ring, after bind_flight (NULL without one): entries, head word, the
     * index mask (entries is a power of two) and the next entry's index. A wait's start and counts
     * are kept until the operation it led to is recorded. */
    _Atomic uint64_t *flight, *flight_head;
    uint64_t flight_mask, flight_next;
    uint64_t wait_start, wait_spins, wait_yields, wait_parks;
    /* Where the time of the wait in progress went since it was last accounted (account_wait), and when
     * that was: parked on the futex, asleep in Backoff; the rest was busy (spinning and yielding). */
    uint64_t wait_parked_ns, wait_slept_ns, wait_accounted;
    /* The participant's record, after bind_record: its words, in the order of enum Field. */
    _Atomic uint64_t *field[N_FIELDS]; /* all NULL until bind_record */
    int stats;                          /* counters and histogram kept (the segment's FLAG_STATS) */
    uint64_t hist_finite_buckets;
    /* A reader's own state, after bind_reader: its cursor and the position of the frame at it (past
     * a padding frame already skipped), and what it last published. It publishes once per batch of
     * publish_every frames while a backlog lasts, and at once when it catches up; its totals are
     * absolute values, stored with each publish. With publish_every 0 it never publishes by itself:
     * it reads ahead for a remote reader, whose acknowledgements publish (acknowledge). */
    int is_reader;
    uint32_t reader_index;
    uint64_t cursor, published, published_position, publish_every, messages, bytes;
} Ring;

static int
ring_init(Ring *self, PyObject *args, PyObject *kwds)
{
    static char *keywords[] = {"buffer", "ring_offset", "ring_bytes", "frame_bytes", "writer_cursor_offset",
                               "writer_position_offset", "reader_parked_offset", "n_readers",
                               "writer_parked_offset", "writer_wake_offset", NULL};
    PyObject *buffer;
    Py_ssize_t cursor_offset, position_offset, parked_offset, writer_parked_offset, wake_offset;
    unsigned long long ring_bytes, frame_bytes;
    if (self->view.buf != NULL) {
        PyErr_SetString(PyExc_RuntimeError, "Ring is already initialised");
        return -1;
    }
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OnKKnnnnnn", keywords, &buffer, &self->ring_offset, &ring_bytes,
                                     &frame_bytes, &cursor_offset, &position_offset, &parked_offset,
                                     &self->n_readers, &writer_parked_offset, &wake_offset))
        return -1;
    if (PyObject_GetBuffer(buffer, &self->view, PyBUF_WRITABLE | PyBUF_SIMPLE) < 0)
        return -1;
    char *base = self->view.buf;
    uint64_t len = (uint64_t)self->view.len;
    /* A frame of frame_bytes fits after the padding the end of the ring may cost it (claim). */
    if (self->ring_offset < 0 || cursor_offset < 0 || position_offset < 0 || parked_offset < 0 ||
        writer_parked_offset < 0 || wake_offset < 0 || self->n_readers < 0 || ring_bytes < 2 * FRAME_ALIGN ||
        ring_bytes % FRAME_ALIGN || frame_bytes < MIN_FRAME_BYTES ||
        FRAME_HEADER_BYTES + frame_bytes > ring_bytes / 2 || (uint64_t)self->ring_offset + ring_bytes > len ||
        self->ring_offset % FRAME_ALIGN || cursor_offset % 8 || (uint64_t)cursor_offset + 8 > len ||
        position_offset % 8 || (uint64_t)position_offset + 8 > len ||
        (uint64_t)parked_offset + (uint64_t)self->n_readers > len || writer_parked_offset % 8 ||
        (uint64_t)writer_parked_offset + 8 > len || wake_offset % 4 || (uint64_t)wake_offset + 4 > len) {
        PyBuffer_Release(&self->view);
        self->view.buf = NULL;
        PyErr_SetString(PyExc_ValueError, "Ring geometry does not fit the buffer");
        return -1;
    }
    self->ring = base + self->ring_offset;
    self->ring_bytes = ring_bytes;
    self->frame_bytes = frame_bytes;
    self->writer_cursor = (_Atomic uint64_t *)(base + cursor_offset);
    self->writer_position = (_Atomic uint64_t *)(base + position_offset);
    self->reader_parked = (_Atomic uint8_t *)(base + parked_offset);
    self->writer_parked = (_Atomic uint64_t *)(base + writer_parked_offset);
    self->writer_wake = (_Atomic uint32_t *)(base + wake_offset);
    self->available = self->written = self->position = self->reserved_end = 0;
    self->guard = 0;
    self->limit = self->wanted = 0;
    return 0;
}

static void
ring_dealloc(Ring *self)
{
    PyMem_Free(self->gate_state);
    PyMem_Free(self->gate_position);
    Py_CLEAR(self->unfinished);
    Py_CLEAR(self->loads);
    Py_CLEAR(self->decode);
    if (self->view.buf != NULL)
        PyBuffer_Release(&self->view);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int
check_open(Ring *self)
{
    if (self->view.buf == NULL) {
        PyErr_SetString(PyExc_ValueError, "the ring's segment was released");
        return -1;
    }
    return 0;
}

/* An argument as a uint64; -1 with a Python error set if it is not a non-negative int. */
static int
as_u64(PyObject *arg, uint64_t *out)
{
    *out = PyLong_AsUnsignedLongLong(arg);
    return *out == (uint64_t)-1 && PyErr_Occurred() ? -1 : 0;
}

/* The first n arguments as uint64s; -1 with a Python error set at the first that is not one. */
static int
as_u64s(PyObject *const *args, int n, uint64_t *out)
{
    for (int i = 0; i < n; i++) {
        if (as_u64(args[i], &out[i]) < 0)
            return -1;
    }
    return 0;
}

/* -1 with a TypeError showing `usage` unless a METH_FASTCALL function got exactly `wanted` arguments. */
static int
check_nargs(Py_ssize_t nargs, Py_ssize_t wanted, const char *usage)
{
    if (nargs == wanted)
        return 0;
    PyErr_SetString(PyExc_TypeError, usage);
    return -1;
}

/* compare_exchange(buffer, offset, expected, new) -> the word's value before: stores `new` at the
 * 8-byte word at buffer[offset] only if it holds `expected` (seq_cst). It claims a participant
 * record: of two processes attaching at once, exactly one sees its `expected` come back. */
static PyObject *
compare_exchange(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    Py_ssize_t offset;
    uint64_t words[2]; /* expected, new */
    if (check_nargs(nargs, 4, "compare_exchange(buffer, offset, expected, new)") < 0 ||
        (offset = PyLong_AsSsize_t(args[1])) == -1 || as_u64s(args + 2, 2, words) < 0) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_ValueError, "offset must be >= 0");
        return NULL;
    }
    Py_buffer view;
    if (PyObject_GetBuffer(args[0], &view, PyBUF_WRITABLE | PyBUF_SIMPLE) < 0)
        return NULL;
    if (offset < 0 || offset % 8 || offset + 8 > view.len) {
        PyBuffer_Release(&view);
        PyErr_SetString(PyExc_ValueError, "offset must be an aligned word inside the buffer");
        return NULL;
    }
    uint64_t expected = words[0];
    atomic_compare_exchange_strong((_Atomic uint64_t *)((char *)view.buf + offset), &expected, words[1]);
    PyBuffer_Release(&view);
    return PyLong_FromUnsignedLongLong(expected);
}

/* uninitialized_bytearray(n) -> a bytearray of n bytes, not zero-filled: a message sent in pieces is
 * assembled into it, and zero-filling first would cost as much as the copy. */
static PyObject *
uninitialized_bytearray(PyObject *module, PyObject *arg)
{
    Py_ssize_t n = PyLong_AsSsize_t(arg);
    if (n < 0) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_ValueError, "n must be >= 0");
        return NULL;
    }
    return PyByteArray_FromStringAndSize(NULL, n);
}

/* The header words of the frame at `position`. */
static inline _Atomic uint64_t *
frame_words(Ring *self, uint64_t position)
{
    return (_Atomic uint64_t *)(self->ring + position % self->ring_bytes);
}

/* The ring bytes a frame of `payload` bytes takes: header, payload, padding to FRAME_ALIGN. */
static inline uint64_t
frame_stride(uint64_t payload)
{
    return (FRAME_HEADER_BYTES + payload + FRAME_ALIGN - 1) & ~(uint64_t)(FRAME_ALIGN - 1);
}

/* The position the next lap of the ring begins at, after `position`. */
static inline uint64_t
next_lap(Ring *self, uint64_t position)
{
    return position - position % self->ring_bytes + self->ring_bytes;
}

/* 1 if a frame of `frame` bytes whose header is at `head` ends within its lap, as every frame a
 * writer writes does (a padding frame fills the end instead): a length edited in shared memory must
 * not send a copy past the end of the ring. */
static inline int
within_lap(Ring *self, _Atomic uint64_t *head, uint64_t frame)
{
    return frame <= self->frame_bytes &&
           (uint64_t)((char *)head - self->ring) + frame_stride(frame) <= self->ring_bytes;
}

/* 1 if the header `head` names frame `seq` at its own `position`: a header this lap's writer wrote. */
static inline int
names_frame(_Atomic uint64_t *head, uint64_t seq, uint64_t position)
{
    return atomic_load_explicit(&head[SEQ], memory_order_relaxed) == seq &&
           atomic_load_explicit(&head[POSITION], memory_order_relaxed) == position;
}

static inline uint64_t
monotonic_ns(void)
{
    struct timespec now; /* the clock of time.monotonic_ns() */
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (uint64_t)now.tv_sec * 1000000000u + (uint64_t)now.tv_nsec;
}

/* -- the flight recorder ---------------------------------------------------------------------- */
/* Each participant's last operations, in its own flight ring (shmq/layout.py: FLIGHT_*). The ring's
 * owner is its only writer, so plain stores suffice: an outside reader (flight_entries) tells a torn
 * entry by its stamp, stored 0 (then a release fence) before the entry's words and index + 1 (a
 * release store) after them, and loaded before and after the copy. */

/* Write one entry; its stamp is returned (flight_finish completes a park). An operation a wait led
 * to (ends_wait) begins when the wait began and carries its counts. */
static uint64_t
flight_record(Ring *self, uint64_t op, uint64_t seq, uint64_t size, uint64_t now, uint64_t end, int ends_wait)
{
    uint64_t index = self->flight_next++;
    _Atomic uint64_t *e = self->flight + E_WORDS * (index & self->flight_mask);
    uint64_t begin = now, spins_yields = 0, parks = 0;
    if (ends_wait && self->wait_start) {
        begin = self->wait_start;
        spins_yields = self->wait_spins << 32 | (self->wait_yields & 0xFFFFFFFF);
        parks = self->wait_parks;
        self->wait_start = self->wait_spins = self->wait_yields = self->wait_parks = 0;
    }
    atomic_store_explicit(&e[E_STAMP], 0, memory_order_relaxed);
    atomic_thread_fence(memory_order_release); /* the zero stamp before the words */
    atomic_store_explicit(&e[E_OP], op, memory_order_relaxed);
    atomic_store_explicit(&e[E_SEQ], seq, memory_order_relaxed);
    atomic_store_explicit(&e[E_SIZE], size, memory_order_relaxed);
    atomic_store_explicit(&e[E_BEGIN], begin, memory_order_relaxed);
    atomic_store_explicit(&e[E_END], end, memory_order_relaxed);
    atomic_store_explicit(&e[E_SPINS_YIELDS], spins_yields, memory_order_relaxed);
    atomic_store_explicit(&e[E_PARKS], parks, memory_order_relaxed);
    atomic_store_explicit(&e[E_STAMP], index + 1, memory_order_release); /* the words before the stamp */
    atomic_store_explicit(self->flight_head, index + 1, memory_order_relaxed);
    return index + 1;
}

/* Record an operation, if this ring has a recorder; begin and end are now (or the wait's start). */
static inline void
flight(Ring *self, uint64_t op, uint64_t seq, uint64_t size, int ends_wait)
{
    if (self->flight != NULL) {
        uint64_t now = monotonic_ns();
        flight_record(self, op, seq, size, now, now, ends_wait);
    }
}

/* The time a writer's operation is recorded at: read before it publishes, so that no reader can
 * have taken the message at an earlier time than the writer says it put it. 0 without a recorder. */
static inline uint64_t
flight_clock(Ring *self)
{
    return self->flight != NULL ? monotonic_ns() : 0;
}

static inline void
flight_at(Ring *self, uint64_t op, uint64_t seq, uint64_t size, uint64_t at, int ends_wait)
{
    if (self->flight != NULL)
        flight_record(self, op, seq, size, at, at, ends_wait);
}

/* The end of an entry written with end 0 (a park), if the ring has not reused it since. */
static void
flight_finish(Ring *self, uint64_t stamp, uint64_t end)
{
    _Atomic uint64_t *e = self->flight + E_WORDS * ((stamp - 1) & self->flight_mask);
    if (atomic_load_explicit(&e[E_STAMP], memory_order_relaxed) != stamp)
        return;
    atomic_store_explicit(&e[E_STAMP], 0, memory_order_relaxed);
    atomic_thread_fence(memory_order_release);
    atomic_store_explicit(&e[E_END], end, memory_order_relaxed);
    atomic_store_explicit(&e[E_STAMP], stamp, memory_order_release);
}

/* The owner is the only writer of its record's words: a relaxed load and store is an add. */
static inline void
add(_Atomic uint64_t *word, uint64_t n)
{
    if (n)
        atomic_store_explicit(word, atomic_load_explicit(word, memory_order_relaxed) + n, memory_order_relaxed);
}

/* Histogram bucket of a wait: log2 buckets of whole microseconds, 1 us, 2 us, 4 us ..., then +Inf. */
static uint64_t
bucket_of(uint64_t wait_ns, uint64_t finite_buckets)
{
    uint64_t micros = (wait_ns + 999) / 1000;
    uint64_t bucket = micros > 1 ? (uint64_t)(64 - __builtin_clzll(micros - 1)) : 0;
    return bucket < finite_buckets ? bucket : finite_buckets;
}

/* Publish frames below `cursor`, which end at `position`: store the writer cursor and position,
 * then wake the readers parked for frame cursor - 1. */
static int
publish_writer_cursor(Ring *self, uint64_t cursor, uint64_t position)
{
    self->written = cursor;
    self->position = position;
    atomic_store_explicit(self->writer_cursor, cursor, memory_order_release);
    /* After the cursor: a reader that loads the cursor around the position holds a pair it can
     * check (writer_head). */
    atomic_store_explicit(self->writer_position, position, memory_order_release);
    /* Dekker handshake with park_reader (parked byte, fence, cursor load): with a full fence on
     * both sides at least one of us sees the other's store, so no wake-up is lost. The same fence
     * orders the position before the writer's next scan of the readers' states (claim), against
     * a reader joining at the head (Reader.__init__ in shmq/reader.py). */
    atomic_thread_fence(memory_order_seq_cst);
    /* Only readers asleep for this very message: one woken earlier may wait milliseconds for a
     * core, and waking it again on every message meanwhile would be a syscall per message. */
    uint8_t mark = PARKED_MARK(cursor - 1);
    for (Py_ssize_t i = 0; i < self->n_readers; i++) {
        if (atomic_load_explicit(&self->reader_parked[i], memory_order_relaxed) == mark) {
            futex_wake_all((void *)self->writer_cursor, INT_MAX);
            if (self->stats)
                add(self->field[F_WAKEUPS], 1);
            return 1;
        }
    }
    return 0;
}

/* Publish the frame reserve_frame began, whose payload is in: frame `written`, ending at reserved_end. */
static int
publish_reserved(Ring *self)
{
    uint64_t end = self->reserved_end, flags = self->reserved_flags;
    self->reserved_end = 0;
    if (flags & FRAME_LAST) /* a message's last piece, or its abort piece */
        self->open_pieces = 0;
    else if (flags & FRAME_FIRST && flags & FRAME_FRAGMENT) {
        self->open_pieces = 1;
        self->open_first = self->written;
        self->open_total = self->reserved_total;
    }
    return publish_writer_cursor(self, self->written + 1, end);
}

/* publish() -> woke: publish the frame reserve() began, once Python has filled its payload. */
static PyObject *
ring_publish(Ring *self, PyObject *unused)
{
    if (check_open(self) < 0)
        return NULL;
    if (self->reserved_end == 0) {
        PyErr_SetString(PyExc_RuntimeError, "publish() without a frame from reserve()");
        return NULL;
    }
    uint64_t seq = self->written, at = flight_clock(self);
    int woke = publish_reserved(self);
    flight_at(self, OP_PIECE, seq, 0, at, 1);
    if (woke)
        flight_at(self, OP_WAKE, seq, 0, at, 0);
    return PyBool_FromLong(woke);
}

/* -- frames -------------------------------------------------------------------------------- */
/* A frame is a table of words (segment count, then each segment's length), segment 0 right after
 * it, and every later segment SEGMENT_ALIGN-aligned from the frame start, so a leased array is
 * aligned (shmq/layout.py: segment_layout). Small frames keep their segments' views on the stack. */
#define SEGMENT_ALIGN 64
#define LOCAL_SEGMENTS 8

typedef struct {
    Py_buffer local[LOCAL_SEGMENTS];
    Py_buffer *views;
    Py_ssize_t count, got;
} Segments;

static void
segments_release(Segments *segments)
{
    for (Py_ssize_t i = 0; i < segments->got; i++)
        PyBuffer_Release(&segments->views[i]);
    if (segments->views != segments->local)
        PyMem_Free(segments->views);
}

/* The buffers of a non-empty list (what a serializer's encode() returns); -1 with an error set. */
static int
segments_get(Segments *segments, PyObject *list)
{
    segments->got = 0;
    segments->views = segments->local;
    if (!PyList_Check(list) || PyList_GET_SIZE(list) < 1) {
        PyErr_SetString(PyExc_TypeError, "segments must be a non-empty list of buffers");
        return -1;
    }
    segments->count = PyList_GET_SIZE(list);
    if (segments->count > LOCAL_SEGMENTS) {
        segments->views = PyMem_Malloc((size_t)segments->count * sizeof(Py_buffer));
        if (segments->views == NULL) {
            PyErr_NoMemory();
            return -1;
        }
    }
    for (; segments->got < segments->count; segments->got++) {
        if (PyObject_GetBuffer(PyList_GET_ITEM(list, segments->got), &segments->views[segments->got],
                               PyBUF_C_CONTIGUOUS) < 0) {
            segments_release(segments);
            return -1;
        }
    }
    return 0;
}

static inline uint64_t
align_segment(uint64_t position)
{
    return (position + SEGMENT_ALIGN - 1) & ~(uint64_t)(SEGMENT_ALIGN - 1);
}

/* Where segment i starts, given where segment i - 1 ended (`position`). */
static inline uint64_t
segment_start(uint64_t position, Py_ssize_t i)
{
    return i == 0 ? position : align_segment(position);
}

static uint64_t
segments_length(const Segments *segments)
{
    uint64_t position = 8 * (1 + (uint64_t)segments->count);
    for (Py_ssize_t i = 0; i < segments->count; i++)
        position = segment_start(position, i) + (uint64_t)segments->views[i].len;
    return position;
}

/* frame_length(segments) -> the bytes of the frame the segments make. */
static PyObject *
frame_length(PyObject *module, PyObject *list)
{
    Segments segments;
    if (segments_get(&segments, list) < 0)
        return NULL;
    uint64_t length = segments_length(&segments);
    segments_release(&segments);
    return PyLong_FromUnsignedLongLong(length);
}

/* -- writing a frame ----------------------------------------------------------------------- */
static int
check_traceparent(PyObject *traceparent)
{
    if (traceparent != Py_None && (!PyBytes_Check(traceparent) || PyBytes_GET_SIZE(traceparent) > TRACEPARENT_BYTES)) {
        PyErr_Format(PyExc_ValueError, "traceparent must be None or at most %d bytes", TRACEPARENT_BYTES);
        return -1;
    }
    return 0;
}

/* Store the header of frame seq at `position` (traceparent: checked bytes, or None); returns where
 * its payload starts. */
static char *
write_frame_head(Ring *self, uint64_t position, uint64_t seq, uint64_t frame, uint64_t total, uint64_t flags,
                 PyObject *traceparent)
{
    _Atomic uint64_t *head = frame_words(self, position);
    /* Relaxed: the release store of the cursor in publish_writer_cursor orders all of these. */
    atomic_store_explicit(&head[SEQ], seq, memory_order_relaxed);
    atomic_store_explicit(&head[FRAME_LEN], frame, memory_order_relaxed);
    atomic_store_explicit(&head[TOTAL_LEN], total, memory_order_relaxed);
    atomic_store_explicit(&head[FLAGS], flags, memory_order_relaxed);
    atomic_store_explicit(&head[POSITION], position, memory_order_relaxed);
    if (traceparent != NULL && traceparent != Py_None) { /* read only when flags say FRAME_TRACED */
        char *field = (char *)head + FRAME_TRACEPARENT;
        Py_ssize_t n = PyBytes_GET_SIZE(traceparent);
        memcpy(field, PyBytes_AS_STRING(traceparent), (size_t)n);
        memset(field + n, 0, (size_t)(TRACEPARENT_BYTES - n));
    }
    /* A reader re-checks the header after its copy (header_intact): the header before the payload. */
    atomic_thread_fence(memory_order_release);
    return (char *)head + FRAME_HEADER_BYTES;
}

/* -- the writer's gate and the park/wake handshake ------------------------------------------ */
/* Where the next frame of `stride` bytes starts: at the writer's position, or at the next lap if it
 * would cross the end of the ring (a padding frame then fills the rest of this lap). */
static inline uint64_t
frame_start(Ring *self, uint64_t stride)
{
    uint64_t at = self->position;
    return at % self->ring_bytes + stride > self->ring_bytes ? next_lap(self, at) : at;
}

/* 1 if a frame ending at `end` may be written: below the cached limit, or below it once the readers'
 * positions are loaded again; else 0, and `wanted` is the reader position that makes room. A reader
 * (re)attaching stores its position before its state, so an acquire load of a gating state is
 * followed by a position load that sees it; the position's acquire pairs with the reader's release
 * (publish_reader_cursor): its copies of the frames below it come before our stores into them.
 * Nothing ends more than ring_bytes past the slowest position, so no gating reader is overwritten;
 * and since a frame is at most half the ring, one always fits once every reader has caught up. */
static int
claim(Ring *self, uint64_t end)
{
    if (end <= self->limit)
        return 1;
    uint64_t lowest = self->position;
    for (Py_ssize_t i = 0; i < self->n_gates; i++) {
        if (atomic_load_explicit(self->gate_state[i], memory_order_acquire) < self->gating_below) {
            uint64_t position = atomic_load_explicit(self->gate_position[i], memory_order_acquire);
            if (position < lowest)
                lowest = position;
        }
    }
    self->limit = lowest + self->ring_bytes;
    if (end <= self->limit)
        return 1;
    self->wanted = end - self->ring_bytes;
    return 0;
}

/* 0 if a frame of `payload` bytes fits the ring's frames; -1 with a ValueError if not. */
static int
check_frame_fits(Ring *self, uint64_t payload)
{
    if (payload <= self->frame_bytes)
        return 0;
    PyErr_Format(PyExc_ValueError, "a %llu-byte frame is larger than the ring's frames (%llu bytes)",
                 (unsigned long long)payload, (unsigned long long)self->frame_bytes);
    return -1;
}

/* Claim room for a frame of `payload` bytes and write its header (and the padding frame before it,
 * if it starts the next lap); returns where its payload starts, or NULL if the readers hold the room
 * (`wanted` says how far they must go). The frame ends at reserved_end. */
static char *
reserve_frame(Ring *self, uint64_t payload, uint64_t total, uint64_t flags, PyObject *traceparent)
{
    uint64_t stride = frame_stride(payload), at = frame_start(self, stride);
    /* A large frame past the first quarter of the lap starts the next lap at once if the readers have
     * left its start: while they keep up, large frames then cycle through the first part of the ring,
     * which stays in the cache, and the rest of it is there for the bursts they do not keep up with. */
    if (stride >= WARM_FRAME_BYTES && at == self->position && at % self->ring_bytes >= self->ring_bytes / 4 &&
        claim(self, next_lap(self, at) + stride))
        at = next_lap(self, at);
    else if (!claim(self, at + stride))
        return NULL;
    uint64_t seq = self->written;
    if (at != self->position) /* the padding frame names the frame after it, which readers look for */
        write_frame_head(self, self->position, seq, at - self->position - FRAME_HEADER_BYTES, 0, FRAME_PADDING,
                         NULL);
    self->reserved_end = at + stride;
    self->reserved_flags = flags;
    self->reserved_total = total;
    return write_frame_head(self, at, seq, payload, total, flags, traceparent);
}

/* reserve(frame, total, flags, traceparent) -> payload offset | None: begin the next frame, of `frame`
 * payload bytes (a piece of a message of `total`), if the readers leave room for it; the caller
 * fills its payload at the returned offset in the segment, then calls publish(). */
static PyObject *
ring_reserve(Ring *self, PyObject *const *args, Py_ssize_t nargs)
{
    uint64_t words[3];
    if (check_nargs(nargs, 4, "reserve(frame, total, flags, traceparent)") < 0 ||
        as_u64s(args, 3, words) < 0 || check_open(self) < 0 || check_traceparent(args[3]) < 0 ||
        check_frame_fits(self, words[0]) < 0)
        return NULL;
    char *payload = reserve_frame(self, words[0], words[1], words[2], args[3]);
    if (payload == NULL)
        Py_RETURN_NONE;
    return PyLong_FromSsize_t(payload - (char *)self->view.buf);
}

/* bind_gating(reader_records, state_offset, position_offset, gating_below): the writer's readers,
 * as the byte offsets of their records and of the state and position words within a record. */
static PyObject *
ring_bind_gating(Ring *self, PyObject *args)
{
    PyObject *records;
    Py_ssize_t state_at, position_at;
    unsigned long long below;
    if (!PyArg_ParseTuple(args, "O!nnK", &PyTuple_Type, &records, &state_at, &position_at, &below) ||
        check_open(self) < 0)
        return NULL;
    Py_ssize_t n = PyTuple_GET_SIZE(records);
    _Atomic uint64_t **states = PyMem_Calloc(n ? n : 1, sizeof *states);
    _Atomic uint64_t **positions = PyMem_Calloc(n ? n : 1, sizeof *positions);
    if (states == NULL || positions == NULL)
        goto fail_memory;
    for (Py_ssize_t i = 0; i < n; i++) {
        Py_ssize_t record = PyLong_AsSsize_t(PyTuple_GET_ITEM(records, i));
        if (PyErr_Occurred())
            goto fail;
        Py_ssize_t last = state_at > position_at ? state_at : position_at;
        if (record < 0 || state_at < 0 || position_at < 0 || (record + state_at) % 8 || (record + position_at) % 8 ||
            record + last + 8 > self->view.len) {
            PyErr_SetString(PyExc_ValueError, "a reader record is outside the segment");
            goto fail;
        }
        states[i] = (_Atomic uint64_t *)((char *)self->view.buf + record + state_at);
        positions[i] = (_Atomic uint64_t *)((char *)self->view.buf + record + position_at);
    }
    PyMem_Free(self->gate_state);
    PyMem_Free(self->gate_position);
    self->gate_state = states;
    self->gate_position = positions;
    self->n_gates = n;
    self->gating_below = below;
    self->limit = 0;
    Py_RETURN_NONE;
fail_memory:
    PyErr_NoMemory();
fail:
    PyMem_Free(states);
    PyMem_Free(positions);
    return NULL;
}

/* room(frame) -> whether the writer may write a frame of `frame` payload bytes now (rescanning the
 * readers if needed). */
static PyObject *
ring_room(Ring *self, PyObject *arg)
{
    uint64_t payload;
    if (as_u64(arg, &payload) < 0 || check_open(self) < 0)
        return NULL;
    uint64_t stride = frame_stride(payload);
    return PyBool_FromLong(claim(self, frame_start(self, stride) + stride));
}

/* A park that began at `begin` has ended: its flight entry (`stamp`, 0 without one) gets its end, and
 * the record its time (unless another thread closed the ring meanwhile). */
static void
park_ended(Ring *self, uint64_t stamp, uint64_t begin)
{
    if (self->view.buf == NULL)
        return;
    uint64_t end = monotonic_ns();
    if (stamp)
        flight_finish(self, stamp, end);
    self->wait_parked_ns += end - begin;
    if (self->stats)
        add(self->field[F_PARKED_NS], end - begin);
}

/* park_writer(timeout_s) -> slept: the writer's side of the Dekker handshake with
 * publish_reader_cursor, after a claim the readers refused. Our parked word, a full fence, then
 * the readers' positions: with a full fence on both sides at least one of us sees the other's
 * store, so no wake-up is lost. The parked word is not just "parked" but the reader position that
 * makes room (`wanted`, >= 1 as the ring is full), so only the reader crossing it wakes us, not
 * every reader on every message. */
static PyObject *
ring_park_writer(Ring *self, PyObject *arg)
{
    double timeout_s = PyFloat_AsDouble(arg);
    if ((timeout_s == -1.0 && PyErr_Occurred()) || check_open(self) < 0)
        return NULL;
    uint64_t wanted = self->wanted;
    atomic_store_explicit(self->writer_parked, wanted, memory_order_relaxed);
    atomic_thread_fence(memory_order_seq_cst);
    uint32_t expected = atomic_load_explicit(self->writer_wake, memory_order_relaxed);
    int sleep = wanted && !claim(self, wanted + self->ring_bytes);
    if (sleep) {
        uint64_t begin = monotonic_ns();
        uint64_t stamp = self->flight ? flight_record(self, OP_PARK, self->written, 0, begin, 0, 0) : 0;
        futex_sleep((void *)self->writer_wake, expected, timeout_s);
        park_ended(self, stamp, begin);
    }
    if (self->view.buf != NULL) /* another thread may have closed the ring while we slept */
        atomic_store_explicit(self->writer_parked, 0, memory_order_relaxed);
    return PyBool_FromLong(sleep);
}

static int check_reader(Ring *self);

/* park_reader(timeout_s) -> slept: the reader's side of the handshake with publish_writer_cursor:
 * our parked byte (PARKED_MARK of the cursor we wait past), a full fence, the writer cursor. */
static PyObject *
ring_park_reader(Ring *self, PyObject *arg)
{
    double timeout_s = PyFloat_AsDouble(arg);
    if ((timeout_s == -1.0 && PyErr_Occurred()) || check_reader(self) < 0)
        return NULL;
    uint64_t c = self->cursor;
    _Atomic uint8_t *parked = &self->reader_parked[self->reader_index];
    atomic_store_explicit(parked, PARKED_MARK(c), memory_order_relaxed);
    atomic_thread_fence(memory_order_seq_cst);
    uint64_t available = atomic_load_explicit(self->writer_cursor, memory_order_relaxed);
    int sleep = available <= c;
    if (sleep) { /* the futex word is the cursor's low half (little-endian) */
        uint64_t begin = monotonic_ns();
        uint64_t stamp = self->flight ? flight_record(self, OP_PARK, c, 0, begin, 0, 0) : 0;
        futex_sleep((void *)self->writer_cursor, (uint32_t)available, timeout_s);
        park_ended(self, stamp, begin);
    }
    if (self->view.buf != NULL)
        atomic_store_explicit(parked, 0, memory_order_relaxed);
    return PyBool_FromLong(sleep);
}

/* bind_flight(offset, entries): this participant's flight ring (its head line, then `entries`
 * entries, a power of two); the indices carry on from the head, so a new owner continues them. */
static PyObject *
ring_bind_flight(Ring *self, PyObject *args)
{
    Py_ssize_t offset;
    unsigned long long entries;
    if (!PyArg_ParseTuple(args, "nK", &offset, &entries) || check_open(self) < 0)
        return NULL;
    if (entries == 0 || (entries & (entries - 1)) || offset < 0 || offset % 64 ||
        (unsigned long long)offset + 64 + entries * 8 * E_WORDS > (unsigned long long)self->view.len) {
        PyErr_SetString(PyExc_ValueError, "the flight ring is outside the segment or not a power of two");
        return NULL;
    }
    self->flight_head = (_Atomic uint64_t *)((char *)self->view.buf + offset);
    self->flight = self->flight_head + 8;
    self->flight_mask = entries - 1;
    self->flight_next = atomic_load_explicit(self->flight_head, memory_order_relaxed);
    Py_RETURN_NONE;
}

/* record(op, seq, size): an operation the Python paths see: a wait that ended without a message (it
 * carries the wait, as end_wait left it), or an eviction. */
static PyObject *
ring_record(Ring *self, PyObject *const *args, Py_ssize_t nargs)
{
    uint64_t words[3];
    if (check_nargs(nargs, 3, "record(op, seq, size)") < 0 || as_u64s(args, 3, words) < 0 || check_open(self) < 0)
        return NULL;
    flight(self, words[0], words[1], words[2], words[0] != OP_EVICT);
    Py_RETURN_NONE;
}

/* wake_readers(): wake every reader parked on the writer cursor (a close, a cancel). */
static PyObject *
ring_wake_readers(Ring *self, PyObject *unused)
{
    if (check_open(self) < 0)
        return NULL;
    futex_wake_all((void *)self->writer_cursor, INT_MAX);
    Py_RETURN_NONE;
}

/* put_one(flags, segments, traceparent) -> woke | None: write a message that fits one frame as
 * frame `written` if the readers leave room for it (claim) and no other thread is in a slow path;
 * publish it, and count it in the writer's record (bind_record). `segments` is a serializer's list
 * of buffers; traceparent is bytes or None. */
static PyObject *
ring_put_one(Ring *self, PyObject *const *args, Py_ssize_t nargs)
{
    uint64_t flags;
    if (check_nargs(nargs, 3, "put_one(flags, segments, traceparent)") < 0 || as_u64(args[0], &flags) < 0 ||
        check_open(self) < 0 || check_traceparent(args[2]) < 0)
        return NULL;
    if (self->guard && self->guard != PyThread_get_thread_ident())
        Py_RETURN_NONE; /* another thread is in a slow path */
    uint64_t seq = self->written;
    Segments segments;
    if (segments_get(&segments, args[1]) < 0)
        return NULL;
    uint64_t frame = segments_length(&segments);
    if (check_frame_fits(self, frame) < 0) {
        segments_release(&segments);
        return NULL;
    }
    char *frame_start = reserve_frame(self, frame, frame, flags, args[2]);
    if (frame_start == NULL) {
        segments_release(&segments);
        Py_RETURN_NONE; /* the readers hold the room */
    }
    uint64_t word = (uint64_t)segments.count;
    memcpy(frame_start, &word, 8);
    uint64_t position = 8 * (1 + word);
    for (Py_ssize_t i = 0; i < segments.count; i++) { /* alignment padding keeps old bytes */
        Py_buffer *view = &segments.views[i];
        word = (uint64_t)view->len;
        memcpy(frame_start + 8 * (1 + i), &word, 8);
        position = segment_start(position, i);
        memcpy(frame_start + position, view->buf, (size_t)view->len);
        position += (uint64_t)view->len;
    }
    segments_release(&segments);
    uint64_t at = flight_clock(self);
    int woke = publish_reserved(self);
    if (self->stats) {
        add(self->field[F_MESSAGES], 1);
        add(self->field[F_BYTES], frame);
    }
    flight_at(self, OP_PUT, seq, frame, at, 1);
    if (woke)
        flight_at(self, OP_WAKE, seq, 0, at, 0);
    return PyBool_FromLong(woke);
}

/* load_available() -> the writer cursor, loaded now (acquire: frame reads stay after it). */
static PyObject *
ring_load_available(Ring *self, PyObject *unused)
{
    if (check_open(self) < 0)
        return NULL;
    self->available = atomic_load_explicit(self->writer_cursor, memory_order_acquire);
    return PyLong_FromUnsignedLongLong(self->available);
}

/* -- the participant's record -------------------------------------------------------------- */
/* bind_record(record_offset, stats, fields, hist_finite_buckets): `fields` are the byte offsets
 * inside the record of the words of enum Field, in its order. */
static PyObject *
ring_bind_record(Ring *self, PyObject *args)
{
    Py_ssize_t record;
    int stats;
    PyObject *fields;
    unsigned long long finite;
    if (!PyArg_ParseTuple(args, "npO!K", &record, &stats, &PyTuple_Type, &fields, &finite) || check_open(self) < 0)
        return NULL;
    if (PyTuple_GET_SIZE(fields) != N_FIELDS) {
        PyErr_Format(PyExc_ValueError, "bind_record needs %d field offsets", N_FIELDS);
        return NULL;
    }
    if (finite < 1 || finite > 63) { /* log2 buckets of a 64-bit count of microseconds */
        PyErr_SetString(PyExc_ValueError, "hist_finite_buckets must be in 1..63");
        return NULL;
    }
    for (int i = 0; i < N_FIELDS; i++) {
        Py_ssize_t at = record + PyLong_AsSsize_t(PyTuple_GET_ITEM(fields, i));
        Py_ssize_t words = i == F_HISTOGRAM ? (Py_ssize_t)finite + 1 : 1;
        if (PyErr_Occurred())
            return NULL;
        if (record < 0 || at < record || at % 8 || at + 8 * words > self->view.len) {
            PyErr_SetString(PyExc_ValueError, "a record field is outside the segment");
            return NULL;
        }
        self->field[i] = (_Atomic uint64_t *)((char *)self->view.buf + at);
    }
    self->stats = stats;
    self->hist_finite_buckets = finite;
    Py_RETURN_NONE;
}

static int
check_record(Ring *self)
{
    if (check_open(self) < 0)
        return -1;
    if (self->field[F_STATE] == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "bind_record() was not called on this ring");
        return -1;
    }
    return 0;
}

static void
store_state(Ring *self, uint64_t state, uint64_t now)
{
    atomic_store_explicit(self->field[F_STATE_SINCE], now, memory_order_relaxed);
    atomic_store_explicit(self->field[F_STATE], state, memory_order_relaxed);
}

/* set_state(state) -> now: the participant's state, and since when (time.monotonic_ns()). */
static PyObject *
ring_set_state(Ring *self, PyObject *arg)
{
    uint64_t state;
    if (as_u64(arg, &state) < 0 || check_record(self) < 0)
        return NULL;
    uint64_t now = monotonic_ns();
    store_state(self, state, now);
    return PyLong_FromUnsignedLongLong(now);
}

static void
add_counters(Ring *self, const uint64_t counters[5])
{
    self->wait_spins += counters[0];
    self->wait_yields += counters[1];
    self->wait_parks += counters[4];
    self->wait_slept_ns += counters[3];
    if (!self->stats)
        return;
    add(self->field[F_SPINS], counters[0]);
    add(self->field[F_YIELDS], counters[1]);
    add(self->field[F_BACKOFF_SLEEPS], counters[2]);
    add(self->field[F_BACKOFF_SLEEP_NS], counters[3]);
    add(self->field[F_PARKS], counters[4]);
}

/* The wait that began at `start` has run until `now`: what it did not spend parked or asleep since it
 * was last accounted counts as busy waiting (spinning and yielding burn the CPU; parks do not). */
static void
account_wait(Ring *self, uint64_t start, uint64_t now)
{
    uint64_t from = self->wait_accounted > start ? self->wait_accounted : start;
    uint64_t idle = self->wait_parked_ns + self->wait_slept_ns;
    if (self->stats && now > from + idle)
        add(self->field[F_BUSY_WAIT_NS], now - from - idle);
    self->wait_accounted = now;
    self->wait_parked_ns = self->wait_slept_ns = 0;
}

/* flush_counters(start_ns, spins, yields, backoff_sleeps, backoff_sleep_ns, parks): add the counters of
 * the wait that began at start_ns so far, and account its time. */
static PyObject *
ring_flush_counters(Ring *self, PyObject *const *args, Py_ssize_t nargs)
{
    uint64_t start, counters[5];
    if (check_nargs(nargs, 6, "flush_counters(start_ns, spins, yields, backoff_sleeps, backoff_sleep_ns, parks)") < 0
        || as_u64(args[0], &start) < 0 || as_u64s(args + 1, 5, counters) < 0 || check_record(self) < 0)
        return NULL;
    add_counters(self, counters);
    account_wait(self, start, monotonic_ns());
    Py_RETURN_NONE;
}

/* end_wait(start_ns, state_after, spins, yields, backoff_sleeps, backoff_sleep_ns, parks) -> waited_ns:
 * the rest of the wait's counters, the wait in the histogram, and the state after it (none if < 0). */
static PyObject *
ring_end_wait(Ring *self, PyObject *const *args, Py_ssize_t nargs)
{
    uint64_t start, counters[5];
    if (check_nargs(nargs, 7, "end_wait(start_ns, state_after, spins, yields, backoff_sleeps, backoff_sleep_ns, "
                              "parks)") < 0 || as_u64(args[0], &start) < 0)
        return NULL;
    long long state_after = PyLong_AsLongLong(args[1]);
    if (PyErr_Occurred() || as_u64s(args + 2, 5, counters) < 0 || check_record(self) < 0)
        return NULL;
    uint64_t now = monotonic_ns();
    uint64_t waited = now > start ? now - start : 0;
    add_counters(self, counters);
    account_wait(self, start, now);
    self->wait_start = start; /* the operation the wait led to begins here (flight_record) */
    if (self->stats) {
        add(self->field[F_HISTOGRAM] + bucket_of(waited, self->hist_finite_buckets), 1);
        add(self->field[F_WAITS], 1);
        add(self->field[F_WAIT_NS], waited);
    }
    if (state_after >= 0)
        store_state(self, (uint64_t)state_after, now);
    return PyLong_FromUnsignedLongLong(waited);
}

/* wait_bucket(wait_ns, finite_buckets) -> the histogram bucket end_wait counts the wait in. */
static PyObject *
wait_bucket(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    uint64_t words[2]; /* wait_ns, finite_buckets */
    if (check_nargs(nargs, 2, "wait_bucket(wait_ns, finite_buckets)") < 0 || as_u64s(args, 2, words) < 0)
        return NULL;
    return PyLong_FromUnsignedLongLong(bucket_of(words[0], words[1]));
}

/* -- a reader's cursor ------------------------------------------------------------------ */
static int
check_reader(Ring *self)
{
    if (check_record(self) < 0)
        return -1;
    if (!self->is_reader) {
        PyErr_SetString(PyExc_RuntimeError, "bind_reader() was not called on this ring");
        return -1;
    }
    return 0;
}

/* The position of frame `cursor`, found from `position`, a frame boundary at or before it: the
 * published frames below `cursor` and the padding are skipped. It stops at the first header that is
 * not a published frame of this lap: the frame there is not written yet (it goes there), or the
 * header is corrupt (reading it says so). A reader taking over a dead one's record may find its
 * cursor published ahead of its position (publish_reader_cursor stores them in that order), and a
 * reader joining at the head may find the writer's position one frame behind its cursor. */
static uint64_t
seek(Ring *self, uint64_t cursor, uint64_t position)
{
    for (uint64_t step = 0; step <= self->ring_bytes / FRAME_ALIGN; step++) {
        uint64_t published = atomic_load_explicit(self->writer_cursor, memory_order_acquire);
        _Atomic uint64_t *head = frame_words(self, position);
        uint64_t seq = atomic_load_explicit(&head[SEQ], memory_order_relaxed);
        uint64_t flags = atomic_load_explicit(&head[FLAGS], memory_order_relaxed);
        uint64_t frame = atomic_load_explicit(&head[FRAME_LEN], memory_order_relaxed);
        if (atomic_load_explicit(&head[POSITION], memory_order_relaxed) != position || seq >= published ||
            seq > cursor || (!(flags & FRAME_PADDING) && (seq == cursor || frame > self->frame_bytes)))
            break;
        position = flags & FRAME_PADDING ? next_lap(self, position) : position + frame_stride(frame);
    }
    return position;
}

/* The writer's cursor, and in *position the position it publishes with it. The writer stores its
 * position after its cursor, so with the cursor unchanged around the position's load, the position is
 * that cursor's, or the one before it, which seek steps over. */
static uint64_t
writer_head(Ring *self, uint64_t *position)
{
    uint64_t cursor;
    do {
        cursor = atomic_load_explicit(self->writer_cursor, memory_order_acquire);
        *position = atomic_load_explicit(self->writer_position, memory_order_acquire);
    } while (atomic_load_explicit(self->writer_cursor, memory_order_acquire) != cursor);
    return cursor;
}

/* join_head() -> (cursor, position): the writer's head, where a reader joining now begins. */
static PyObject *
ring_join_head(Ring *self, PyObject *unused)
{
    if (check_open(self) < 0)
        return NULL;
    uint64_t position, cursor = writer_head(self, &position);
    return Py_BuildValue("(KK)", (unsigned long long)cursor, (unsigned long long)seek(self, cursor, position));
}

/* bind_reader(index, cursor, position, publish_every): make this ring reader `index`'s, starting at
 * frame `cursor`, found from `position` (seek); its totals carry on from what the record holds.
 * publish_every 0: only acknowledge() publishes. Returns the position it starts at. */
static PyObject *
ring_bind_reader(Ring *self, PyObject *args)
{
    unsigned int index;
    unsigned long long cursor, position, publish_every;
    if (!PyArg_ParseTuple(args, "IKKK", &index, &cursor, &position, &publish_every) || check_record(self) < 0)
        return NULL;
    self->is_reader = 1;
    self->reader_index = index;
    self->cursor = self->published = self->available = cursor;
    self->position = self->published_position = seek(self, cursor, position);
    self->publish_every = publish_every;
    self->messages = atomic_load_explicit(self->field[F_MESSAGES], memory_order_relaxed);
    self->bytes = atomic_load_explicit(self->field[F_BYTES], memory_order_relaxed);
    return PyLong_FromUnsignedLongLong(self->position);
}

/* Store the totals, the cursor and the position, then wake the writer if it sleeps for a position we
 * just crossed. Runs with the GIL held, so the heartbeat thread's publish_behind never interleaves
 * with it. */
static void
publish_reader(Ring *self, uint64_t cursor, uint64_t position)
{
    uint64_t previous = self->published_position;
    if (self->stats) { /* before the cursor: whoever sees the cursor sees them */
        atomic_store_explicit(self->field[F_MESSAGES], self->messages, memory_order_relaxed);
        atomic_store_explicit(self->field[F_BYTES], self->bytes, memory_order_relaxed);
    }
    self->published = cursor;
    self->published_position = position;
    atomic_store_explicit(self->field[F_CURSOR], cursor, memory_order_relaxed);
    /* Release: our loads of the frames below it come before it, so the writer cannot overwrite one
     * we still copy. After the cursor: a record read between the two stores has a position behind
     * its cursor, which seek steps over, never ahead of it. */
    atomic_store_explicit(self->field[F_POSITION], position, memory_order_release);
    /* Dekker handshake with park_writer: position, full fence, then the writer's parked word, which
     * holds the position that makes room for its frame: only the reader crossing it wakes it. */
    atomic_thread_fence(memory_order_seq_cst);
    uint64_t parked = atomic_load_explicit(self->writer_parked, memory_order_relaxed);
    if (parked && previous < parked && parked <= position) {
        /* Any new value makes a writer that is about to sleep return at once. */
        atomic_store_explicit(self->writer_wake,
                              (uint32_t)(((cursor & 0xFFFFFF) << 8) | (self->reader_index & 0xFF)),
                              memory_order_relaxed);
        futex_wake_all((void *)self->writer_wake, 1);
        if (self->stats)
            add(self->field[F_WAKEUPS], 1);
        flight(self, OP_WAKE, cursor, 0, 0);
    }
}

static void
publish_reader_cursor(Ring *self)
{
    publish_reader(self, self->cursor, self->position);
}

/* Done with the frame at the cursor, which ends at `end`: publish at once if `now`, if caught up, or
 * if a batch is full: publish_every frames, or a sixteenth of the ring, so that a batch of large
 * frames never holds the writer back for long. */
static void
release_read(Ring *self, uint64_t end, int now)
{
    self->cursor += 1;
    self->position = end;
    if (self->first_read_state) {
        store_state(self, self->first_read_state, monotonic_ns());
        self->first_read_state = 0;
    }
    if (now || (self->publish_every && (self->cursor >= self->available ||
                                        self->cursor - self->published >= self->publish_every ||
                                        end - self->published_position >= self->ring_bytes / 16)))
        publish_reader_cursor(self);
}

/* The header of the frame at the reader's cursor, once published, past a padding frame before it
 * (which moves the reader's position to the next lap); NULL if the cursor is not published. */
static _Atomic uint64_t *
reader_head(Ring *self)
{
    uint64_t c = self->cursor;
    if (c >= self->available) {
        self->available = atomic_load_explicit(self->writer_cursor, memory_order_acquire);
        if (c >= self->available)
            return NULL;
    }
    _Atomic uint64_t *head = frame_words(self, self->position);
    if (atomic_load_explicit(&head[FLAGS], memory_order_relaxed) == FRAME_PADDING &&
        names_frame(head, c, self->position)) {
        self->position = next_lap(self, self->position);
        head = frame_words(self, self->position);
    }
    return head;
}

/* -- reading a frame ------------------------------------------------------------------------- */
/* Where each segment of a frame lies: starts (from the frame start) and lengths, read from its
 * table once and checked against its `frame` bytes, so a table changed under us cannot send a
 * copy outside the frame. */
typedef struct {
    uint64_t local[2 * LOCAL_SEGMENTS];
    uint64_t *spans; /* start, length of segment i at 2i, 2i + 1 */
    uint64_t count;
} FrameSpans;

static void
frame_spans_free(FrameSpans *spans)
{
    if (spans->spans != spans->local)
        PyMem_Free(spans->spans);
}

/* 1 if the table at frame_start describes exactly `frame` bytes, 0 if not (corrupt), -1 on
 * MemoryError; call frame_spans_free after 1. */
static int
frame_spans_read(FrameSpans *spans, const char *frame_start, uint64_t frame)
{
    uint64_t count, length;
    spans->spans = spans->local;
    if (frame < MIN_FRAME_BYTES)
        return 0;
    memcpy(&count, frame_start, 8);
    if (count < 1 || count > (frame - 8) / 8)
        return 0;
    if (count > LOCAL_SEGMENTS) {
        spans->spans = PyMem_Malloc((size_t)count * 2 * sizeof(uint64_t));
        if (spans->spans == NULL) {
            PyErr_NoMemory();
            return -1;
        }
    }
    spans->count = count;
    uint64_t position = 8 * (1 + count);
    for (uint64_t i = 0; i < count; i++) {
        memcpy(&length, frame_start + 8 * (1 + i), 8);
        position = segment_start(position, (Py_ssize_t)i);
        if (position > frame || length > frame - position) {
            frame_spans_free(spans);
            return 0;
        }
        spans->spans[2 * i] = position;
        spans->spans[2 * i + 1] = length;
        position += length;
    }
    if (position != frame) {
        frame_spans_free(spans);
        return 0;
    }
    return 1;
}

/* frame_spans(buffer, offset, length) -> [(start, stop) of each segment] | None: the segments of
 * the frame at buffer[offset:offset + length], or None if its table does not describe it. */
static PyObject *
frame_spans(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    Py_ssize_t offset, length;
    if (check_nargs(nargs, 3, "frame_spans(buffer, offset, length)") < 0)
        return NULL;
    if ((offset = PyLong_AsSsize_t(args[1])) < 0 || (length = PyLong_AsSsize_t(args[2])) < 0) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_ValueError, "offset and length must be >= 0");
        return NULL;
    }
    Py_buffer view;
    if (PyObject_GetBuffer(args[0], &view, PyBUF_SIMPLE) < 0)
        return NULL;
    PyObject *result = NULL;
    FrameSpans spans;
    int found = 0;
    if (offset > view.len || length > view.len - offset)
        PyErr_SetString(PyExc_ValueError, "the frame does not fit the buffer");
    else
        found = frame_spans_read(&spans, (const char *)view.buf + offset, (uint64_t)length);
    if (found == 0 && !PyErr_Occurred())
        result = Py_NewRef(Py_None);
    if (found == 1) {
        result = PyList_New((Py_ssize_t)spans.count);
        for (uint64_t i = 0; result != NULL && i < spans.count; i++) {
            uint64_t start = (uint64_t)offset + spans.spans[2 * i];
            PyObject *span = Py_BuildValue("(KK)", (unsigned long long)start,
                                           (unsigned long long)(start + spans.spans[2 * i + 1]));
            if (span == NULL)
                Py_CLEAR(result);
            else
                PyList_SET_ITEM(result, (Py_ssize_t)i, span);
        }
        frame_spans_free(&spans);
    }
    PyBuffer_Release(&view);
    return result;
}

/* A frame's payload copied out: its stream as bytes, and for several segments a tuple
 * (stream, [bytearray of each out-of-band buffer]). NULL without an error if the table does not
 * describe a frame of exactly `frame` bytes (corrupt: the Python path names it). */
static PyObject *
copy_frame(const char *frame_start, uint64_t frame)
{
    FrameSpans spans;
    if (frame_spans_read(&spans, frame_start, frame) != 1)
        return NULL;
    const uint64_t *span = spans.spans;
    PyObject *stream = PyBytes_FromStringAndSize(frame_start + span[0], (Py_ssize_t)span[1]);
    PyObject *result = stream;
    if (stream != NULL && spans.count > 1) {
        PyObject *buffers = PyList_New((Py_ssize_t)spans.count - 1);
        result = buffers == NULL ? NULL : PyTuple_Pack(2, stream, buffers);
        Py_DECREF(stream);
        Py_XDECREF(buffers);
        for (uint64_t i = 1; result != NULL && i < spans.count; i++) {
            /* Not zero-filled first: a bytearray of n bytes is malloc and one memcpy. */
            PyObject *buffer = PyByteArray_FromStringAndSize(frame_start + span[2 * i], (Py_ssize_t)span[2 * i + 1]);
            if (buffer == NULL)
                Py_CLEAR(result);
            else
                PyList_SET_ITEM(buffers, (Py_ssize_t)i - 1, buffer);
        }
    }
    frame_spans_free(&spans);
    return result;
}

/* -- a remote reader's frames on the wire ---------------------------------------------------- */
/* The wire format of shmq/remote.py (FRAME, BATCH, _FRAME; it checks these at import): a frame is its
 * kind byte, then its seq, frame bytes, message bytes and flags as little-endian words, then its
 * traceparent if it is traced, then its payload; a batch is its kind byte, then frames. */
#define WIRE_FRAME 'F'
#define WIRE_BATCH 'M'
enum { WIRE_SEQ = 1, WIRE_LEN = WIRE_SEQ + 8, WIRE_TOTAL_LEN = WIRE_LEN + 8, WIRE_FLAGS = WIRE_TOTAL_LEN + 8,
       WIRE_HEADER_BYTES = WIRE_FLAGS + 8 };

static uint64_t
wire_word(const unsigned char *at)
{
    uint64_t word = 0;
    for (int i = 7; i >= 0; i--)
        word = word << 8 | at[i];
    return word;
}

static void
put_wire_word(unsigned char *at, uint64_t word)
{
    for (int i = 0; i < 8; i++, word >>= 8)
        at[i] = (unsigned char)word;
}

/* batch_frame(batch, at, expected, frame_bytes) -> (next_at, frame bytes, message) | None: the
 * frame at batch[at:] of a remote reader's BATCH (its kind byte, then seq, frame bytes, message
 * bytes and flags, then the payload), copied out as copy_frame does, when it is frame `expected`,
 * a whole message with no flags, at most frame_bytes, inside the batch, and its table describes
 * it. None otherwise: the Python path (RemoteReader._next) takes it and names what is wrong. */
static PyObject *
batch_frame(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (check_nargs(nargs, 4, "batch_frame(batch, at, expected, frame_bytes)") < 0)
        return NULL;
    Py_ssize_t at = PyLong_AsSsize_t(args[1]);
    unsigned long long expected = PyLong_AsUnsignedLongLong(args[2]);
    unsigned long long frame_bytes = PyLong_AsUnsignedLongLong(args[3]);
    if (PyErr_Occurred())
        return NULL;
    Py_buffer view;
    if (PyObject_GetBuffer(args[0], &view, PyBUF_SIMPLE) < 0)
        return NULL;
    Py_ssize_t body = at + WIRE_HEADER_BYTES;
    uint64_t frame = 0;
    PyObject *message = NULL;
    if (at >= 0 && at <= view.len && view.len - at >= WIRE_HEADER_BYTES) {
        const unsigned char *header = (const unsigned char *)view.buf + at;
        frame = wire_word(header + WIRE_LEN);
        if (header[0] == WIRE_FRAME && wire_word(header + WIRE_SEQ) == expected &&
            wire_word(header + WIRE_FLAGS) == 0 && wire_word(header + WIRE_TOTAL_LEN) == frame &&
            frame <= frame_bytes && frame <= (uint64_t)(view.len - body))
            message = copy_frame((const char *)view.buf + body, frame);
    }
    PyBuffer_Release(&view);
    if (message == NULL)
        return PyErr_Occurred() ? NULL : Py_NewRef(Py_None);
    return Py_BuildValue("(nKN)", body + (Py_ssize_t)frame, (unsigned long long)frame, message);
}

/* One more message received: the reader's totals. */
static inline void
add_received(Ring *self, uint64_t nbytes)
{
    self->messages += 1;
    self->bytes += nbytes;
}

/* One more message received: the reader's totals and its flight record. */
static void
count_message(Ring *self, uint64_t nbytes)
{
    add_received(self, nbytes);
    flight(self, OP_GET, self->cursor, nbytes, 1);
}

static int
has_unfinished(Ring *self)
{
    return self->unfinished != NULL && self->unfinished != Py_None;
}

/* Keep a message taken out of the ring as unfinished: (stream, buffers, flags, failures), with
 * `failures` decodes of it that raised an ordinary exception. The exception being raised, if any,
 * stays the one raised; -1 (with MemoryError) if nothing was being raised and it could not keep it. */
static int
keep_taken(Ring *self, PyObject *stream, PyObject *buffers, uint64_t flags, uint64_t failures)
{
    PyObject *type, *value, *traceback;
    PyErr_Fetch(&type, &value, &traceback);
    PyObject *kept = buffers != NULL ? Py_BuildValue("(OOKK)", stream, buffers, (unsigned long long)flags,
                                                     (unsigned long long)failures)
                                     : Py_BuildValue("(O[]KK)", stream, (unsigned long long)flags,
                                                     (unsigned long long)failures);
    if (kept != NULL)
        Py_XSETREF(self->unfinished, kept);
    else if (type != NULL)
        PyErr_Clear(); /* the message's own exception is the one to report */
    if (type != NULL)
        PyErr_Restore(type, value, traceback);
    return kept == NULL && type == NULL ? -1 : 0;
}

/* A message's stream decoded, with its out-of-band buffers (a list; NULL: none). */
static PyObject *
decode_stream(Ring *self, PyObject *stream, PyObject *buffers)
{
    if (self->loads == NULL) {
        PyErr_SetString(PyExc_ValueError, "the ring has no decoders: bind_decoders() first");
        return NULL;
    }
    if (buffers == NULL || PyList_GET_SIZE(buffers) == 0)
        return PyObject_CallOneArg(self->loads, stream);
    return PyObject_CallFunctionObjArgs(self->decode, stream, buffers, NULL);
}

/* take_one(keep=False) -> the message | NOTHING: the reader's next message, if it is published, is
 * one frame and has no flags: copied out (copy_frame), counted, released and decoded, all in this
 * one call, so that an interrupt lands before it or after it. NOTHING otherwise (not published yet,
 * flags, in pieces, a header that is not this frame's, a corrupt table, something unfinished), for
 * the Python path. A message whose decode raises is kept as unfinished for the next call; so is
 * every message with `keep`, for a call that returns it through more Python code (Reader._receive). */
static PyObject *
ring_take_one(Ring *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs > 1) {
        PyErr_SetString(PyExc_TypeError, "take_one(keep=False)");
        return NULL;
    }
    int keep = nargs == 1 ? PyObject_IsTrue(args[0]) : 0;
    if (keep < 0 || check_reader(self) < 0)
        return NULL;
    if (has_unfinished(self) || (self->guard && self->guard != PyThread_get_thread_ident()))
        return Py_NewRef(Nothing); /* a message to finish first, or another thread in a slow path (enter() refuses it) */
    _Atomic uint64_t *head = reader_head(self);
    if (head == NULL)
        return Py_NewRef(Nothing);
    uint64_t c = self->cursor, position = self->position;
    uint64_t frame = atomic_load_explicit(&head[FRAME_LEN], memory_order_relaxed);
    if (!names_frame(head, c, position) || atomic_load_explicit(&head[FLAGS], memory_order_relaxed) != 0 ||
        atomic_load_explicit(&head[TOTAL_LEN], memory_order_relaxed) != frame || !within_lap(self, head, frame) ||
        frame < MIN_FRAME_BYTES)
        return Py_NewRef(Nothing);
    PyObject *message = copy_frame((char *)head + FRAME_HEADER_BYTES, frame);
    if (message == NULL)
        return PyErr_Occurred() ? NULL : Py_NewRef(Nothing);
    /* The copy, then the header again: a writer that started a frame here meanwhile (it stores the
     * header before the payload) changed it. Gating keeps a reader from being overwritten at all;
     * this catches what gating cannot, a hostile edit or a reader evicted while alive. */
    atomic_thread_fence(memory_order_acquire);
    if (!names_frame(head, c, position)) {
        Py_DECREF(message);
        return Py_NewRef(Nothing);
    }
    count_message(self, frame);
    release_read(self, position + frame_stride(frame), 0);
    int with_buffers = PyTuple_Check(message);
    PyObject *stream = with_buffers ? PyTuple_GET_ITEM(message, 0) : message;
    PyObject *buffers = with_buffers ? PyTuple_GET_ITEM(message, 1) : NULL;
    PyObject *decoded = decode_stream(self, stream, buffers);
    if ((decoded == NULL || keep) &&
        keep_taken(self, stream, buffers, 0, decoded == NULL && PyErr_ExceptionMatches(PyExc_Exception)) < 0)
        Py_CLEAR(decoded); /* taken and not kept: a value returned now would have an error beside it */
    Py_DECREF(message);
    return decoded;
}

/* bind_decoders(loads, decode): a reader's decoders (see Ring). */
static PyObject *
ring_bind_decoders(Ring *self, PyObject *args)
{
    PyObject *loads, *decode;
    if (!PyArg_ParseTuple(args, "OO:bind_decoders", &loads, &decode))
        return NULL;
    if (!PyCallable_Check(loads) || !PyCallable_Check(decode)) {
        PyErr_SetString(PyExc_TypeError, "bind_decoders(loads, decode) takes two callables");
        return NULL;
    }
    Py_XSETREF(self->loads, Py_NewRef(loads));
    Py_XSETREF(self->decode, Py_NewRef(decode));
    Py_RETURN_NONE;
}

/* decode_unfinished() -> the message kept as unfinished, decoded (it stays kept until the call
 * returns it). A decode that raises an ordinary exception a second time drops it: that exception
 * is the message's, not an interrupt's. */
static PyObject *
ring_decode_unfinished(Ring *self, PyObject *unused)
{
    if (check_reader(self) < 0)
        return NULL;
    PyObject *kept = self->unfinished;
    if (kept == NULL || !PyTuple_Check(kept) || PyTuple_GET_SIZE(kept) != 4 ||
        !PyList_Check(PyTuple_GET_ITEM(kept, 1))) {
        PyErr_SetString(PyExc_ValueError, "no message is kept: decode_unfinished() needs (stream, buffers, flags, failures)");
        return NULL;
    }
    Py_INCREF(kept);
    PyObject *decoded = decode_stream(self, PyTuple_GET_ITEM(kept, 0), PyTuple_GET_ITEM(kept, 1));
    if (decoded == NULL && PyErr_ExceptionMatches(PyExc_Exception) && self->unfinished == kept) {
        if (PyObject_IsTrue(PyTuple_GET_ITEM(kept, 3)))
            Py_CLEAR(self->unfinished);
        else
            keep_taken(self, PyTuple_GET_ITEM(kept, 0), PyTuple_GET_ITEM(kept, 1),
                       PyLong_AsUnsignedLongLong(PyTuple_GET_ITEM(kept, 2)), 1);
    }
    Py_DECREF(kept);
    return decoded;
}

/* head() -> header offset | None: where the header of the frame at the reader's cursor is in the
 * segment, once it is published (past a padding frame before it), for the Python path, which
 * checks it (its sequence and position) and its lengths. */
static PyObject *
ring_head(Ring *self, PyObject *unused)
{
    if (check_reader(self) < 0)
        return NULL;
    _Atomic uint64_t *head = reader_head(self);
    if (head == NULL)
        Py_RETURN_NONE;
    return PyLong_FromSsize_t((char *)head - (char *)self->view.buf);
}

/* header_intact(seq) -> whether the frame at the reader's position still has its header (sequence
 * `seq`, its position), loaded after every load before this call: the Python path's check after a copy. */
static PyObject *
ring_header_intact(Ring *self, PyObject *arg)
{
    uint64_t seq;
    if (as_u64(arg, &seq) < 0 || check_reader(self) < 0)
        return NULL;
    atomic_thread_fence(memory_order_acquire);
    return PyBool_FromLong(names_frame(frame_words(self, self->position), seq, self->position));
}

/* count(nbytes): one more message received, through the Python path. */
static PyObject *
ring_count(Ring *self, PyObject *arg)
{
    uint64_t nbytes;
    if (as_u64(arg, &nbytes) < 0 || check_reader(self) < 0)
        return NULL;
    count_message(self, nbytes);
    Py_RETURN_NONE;
}

/* lease_begins(seq, size) -> stamp: message `seq` is taken into a lease() block; its flight entry
 * (begun when the wait before it began) stays open, end 0, until lease_ends. 0 without a recorder. */
static PyObject *
ring_lease_begins(Ring *self, PyObject *const *args, Py_ssize_t nargs)
{
    uint64_t words[2];
    if (check_nargs(nargs, 2, "lease_begins(seq, size)") < 0 || as_u64s(args, 2, words) < 0 || check_reader(self) < 0)
        return NULL;
    uint64_t stamp = self->flight ? flight_record(self, OP_LEASE, words[0], words[1], monotonic_ns(), 0, 1) : 0;
    return PyLong_FromUnsignedLongLong(stamp);
}

/* lease_ends(stamp, nbytes): the block that leased a message exits: the message is counted, and the
 * flight entry lease_begins returned (if the ring has not reused it) ends now. */
static PyObject *
ring_lease_ends(Ring *self, PyObject *const *args, Py_ssize_t nargs)
{
    uint64_t words[2];
    if (check_nargs(nargs, 2, "lease_ends(stamp, nbytes)") < 0 || as_u64s(args, 2, words) < 0 || check_reader(self) < 0)
        return NULL;
    add_received(self, words[1]);
    if (self->flight && words[0])
        flight_finish(self, words[0], monotonic_ns());
    Py_RETURN_NONE;
}

/* The end of the frame at the reader's position, from a header the Python path checked; -1 with an
 * error set if its length is not a frame's. */
static int
checked_end(Ring *self, uint64_t *end)
{
    uint64_t frame = atomic_load_explicit(&frame_words(self, self->position)[FRAME_LEN], memory_order_relaxed);
    if (frame > self->frame_bytes) {
        PyErr_SetString(PyExc_ValueError, "the frame at the cursor has no valid length: skip() it");
        return -1;
    }
    *end = self->position + frame_stride(frame);
    return 0;
}

static PyObject *
consume_method(Ring *self, int now)
{
    uint64_t end;
    if (check_reader(self) < 0 || checked_end(self, &end) < 0)
        return NULL;
    release_read(self, end, now);
    Py_RETURN_NONE;
}

/* release_read(): done with the frame at the cursor; publish if caught up or a batch is full. */
static PyObject *
ring_release_read(Ring *self, PyObject *unused)
{
    return consume_method(self, 0);
}

/* advance(): done with the frame at the cursor; publish now. */
static PyObject *
ring_advance(Ring *self, PyObject *unused)
{
    return consume_method(self, 1);
}

/* skip() -> cursor: step over the frame at the cursor, whose header is corrupt, to the next frame:
 * the first header after it, on a FRAME_ALIGN boundary below the writer's position, that names the
 * next frame at its own position (the writer's position itself, if that frame is not written yet).
 * If none does, the reader goes to the writer's head. Publishes at once; returns the new cursor. */
static PyObject *
ring_skip(Ring *self, PyObject *unused)
{
    if (check_reader(self) < 0)
        return NULL;
    uint64_t next = self->cursor + 1, end, cursor = writer_head(self, &end), found = 0;
    for (uint64_t q = self->position + FRAME_ALIGN; !found && q < end && q < self->position + self->ring_bytes;
         q += FRAME_ALIGN) {
        if (names_frame(frame_words(self, q), next, q))
            found = q;
    }
    if (found) {
        self->cursor = next;
        self->position = found;
    } else { /* the writer's head: the next frame itself when it is not written yet */
        self->cursor = cursor;
        self->position = seek(self, cursor, end);
    }
    publish_reader_cursor(self);
    return PyLong_FromUnsignedLongLong(self->cursor);
}

/* gather_batch(room, limit, overhead) -> (batch, cursor, position, cost) | None: a remote slot's
 * read-ahead (RemoteServer._send_slot): the published frames from the cursor on as one BATCH of the
 * wire format, each released as it is copied (the slot's record moves only on acknowledge), with the
 * cursor and position after its last frame and what it costs the window. It takes frames while their
 * headers name them, their payload is under `limit`, their cost (ring bytes, and `overhead` on the
 * first: what ZeroMQ keeps beside a message) fits in `room`, and the batch is under `limit`. None if
 * it takes none: the Python path sends that frame alone, or steps over it. One summary per batch, not
 * one per frame: the server holds a batch until an acknowledgement covers all of it. */
static PyObject *
ring_gather_batch(Ring *self, PyObject *const *args, Py_ssize_t nargs)
{
    uint64_t words[3];
    if (check_nargs(nargs, 3, "gather_batch(room, limit, overhead)") < 0 || as_u64s(args, 3, words) < 0 ||
        check_reader(self) < 0)
        return NULL;
    uint64_t room = words[0], limit = words[1], overhead = words[2];
    unsigned char *wire = NULL;
    uint64_t used = 1, capacity = 0, spent = 0; /* used: the batch's kind byte, then its frames */
    while (used < limit) {
        _Atomic uint64_t *head = reader_head(self);
        if (head == NULL)
            break;
        uint64_t position = self->position;
        uint64_t frame = atomic_load_explicit(&head[FRAME_LEN], memory_order_relaxed);
        uint64_t flags = atomic_load_explicit(&head[FLAGS], memory_order_relaxed);
        uint64_t stride = frame_stride(frame), cost = stride + (spent ? 0 : overhead);
        if (!names_frame(head, self->cursor, position) || !within_lap(self, head, frame) || frame >= limit ||
            cost > room - spent)
            break;
        uint64_t traceparent = flags & FRAME_TRACED ? TRACEPARENT_BYTES : 0;
        uint64_t need = WIRE_HEADER_BYTES + traceparent + frame;
        if (used + need > capacity) {
            capacity = used + need > 2 * capacity ? used + need + limit : 2 * capacity;
            unsigned char *grown = PyMem_Realloc(wire, (size_t)capacity);
            if (grown == NULL) {
                PyMem_Free(wire);
                return PyErr_NoMemory();
            }
            wire = grown;
        }
        unsigned char *at = wire + used;
        at[0] = WIRE_FRAME;
        put_wire_word(at + WIRE_SEQ, self->cursor);
        put_wire_word(at + WIRE_LEN, frame);
        put_wire_word(at + WIRE_TOTAL_LEN, atomic_load_explicit(&head[TOTAL_LEN], memory_order_relaxed));
        put_wire_word(at + WIRE_FLAGS, flags);
        memcpy(at + WIRE_HEADER_BYTES, (char *)head + FRAME_TRACEPARENT, (size_t)traceparent);
        memcpy(at + WIRE_HEADER_BYTES + traceparent, (char *)head + FRAME_HEADER_BYTES, (size_t)frame);
        used += need;
        spent += cost;
        release_read(self, position + stride, 0);
    }
    if (!spent)
        Py_RETURN_NONE; /* nothing was taken, so nothing was allocated */
    wire[0] = WIRE_BATCH;
    PyObject *result = Py_BuildValue("(y#KKK)", (const char *)wire, (Py_ssize_t)used,
                                     (unsigned long long)self->cursor, (unsigned long long)self->position,
                                     (unsigned long long)spent);
    PyMem_Free(wire);
    return result;
}

/* publish_behind(): publish what was read or counted but not published yet (the heartbeat, a wait,
 * close, a message in pieces counted after its frames were released). */
static void
publish_behind(Ring *self)
{
    if (self->published != self->cursor || self->published_position != self->position ||
        (self->stats && atomic_load_explicit(self->field[F_MESSAGES], memory_order_relaxed) != self->messages))
        publish_reader_cursor(self);
}

static PyObject *
ring_publish_behind(Ring *self, PyObject *unused)
{
    if (check_reader(self) < 0)
        return NULL;
    publish_behind(self);
    Py_RETURN_NONE;
}

/* deliver(total, kept, one_frame): one more message of `total` bytes received through the Python
 * path, kept as unfinished (see Ring) until the call returns it, and its room given back: the
 * frame at the cursor if `one_frame`, else what its pieces released as they were copied is
 * published. One call, so an interrupt lands before all of it or after it. */
static PyObject *
ring_deliver(Ring *self, PyObject *const *args, Py_ssize_t nargs)
{
    uint64_t total, end = 0;
    int one_frame;
    if (check_nargs(nargs, 3, "deliver(total, kept, one_frame)") < 0 || as_u64(args[0], &total) < 0 ||
        check_reader(self) < 0 || (one_frame = PyObject_IsTrue(args[2])) < 0 ||
        (one_frame && checked_end(self, &end) < 0))
        return NULL;
    count_message(self, total);
    Py_XSETREF(self->unfinished, Py_NewRef(args[1]));
    if (one_frame)
        release_read(self, end, 0);
    else
        publish_behind(self);
    Py_RETURN_NONE;
}

/* acknowledge(cursor, position, messages, bytes): a reader that reads ahead (publish_every 0)
 * publishes how far its remote reader has consumed: frames below `cursor`, ending at `position`,
 * and the totals they make. Never behind what it published, never past what it read. */
static PyObject *
ring_acknowledge(Ring *self, PyObject *const *args, Py_ssize_t nargs)
{
    uint64_t a[4]; /* cursor, position, messages, bytes */
    if (check_nargs(nargs, 4, "acknowledge(cursor, position, messages, bytes)") < 0 || as_u64s(args, 4, a) < 0 ||
        check_reader(self) < 0)
        return NULL;
    uint64_t cursor = a[0], position = a[1];
    if (cursor < self->published || cursor > self->cursor || position < self->published_position ||
        position > self->position) {
        PyErr_Format(PyExc_ValueError, "acknowledged frame %llu at byte %llu is outside what was read (frames %llu..%llu)",
                     (unsigned long long)cursor, (unsigned long long)position, (unsigned long long)self->published,
                     (unsigned long long)self->cursor);
        return NULL;
    }
    self->messages = a[2];
    self->bytes = a[3];
    publish_reader(self, cursor, position);
    Py_RETURN_NONE;
}

/* rewind(): read again from what was last published (a remote reader that lost frames in flight). */
static PyObject *
ring_rewind(Ring *self, PyObject *unused)
{
    if (check_reader(self) < 0)
        return NULL;
    self->cursor = self->published;
    self->position = self->published_position;
    Py_RETURN_NONE;
}

static PyObject *
ring_release(Ring *self, PyObject *unused)
{
    if (self->view.buf != NULL) {
        PyBuffer_Release(&self->view);
        self->view.buf = NULL;
    }
    /* The ring is not tracked by the garbage collector: a decoder that refers back to its reader
     * would otherwise keep both alive. */
    Py_CLEAR(self->unfinished);
    Py_CLEAR(self->loads);
    Py_CLEAR(self->decode);
    Py_RETURN_NONE;
}

static PyObject *
ring_get_available(Ring *self, void *closure)
{
    return PyLong_FromUnsignedLongLong(self->available);
}

/* enter() -> True if this thread now holds the ring's slow path, False if a call holds it. */
static PyObject *
ring_enter(Ring *self, PyObject *unused)
{
    if (self->guard)
        Py_RETURN_FALSE;
    self->guard = PyThread_get_thread_ident();
    Py_RETURN_TRUE;
}

/* leave(): release the slow path if this thread holds it. Callers put it in a `finally` that also
 * covers their enter(): an interrupt right after enter() then cannot leave the ring held. */
static PyObject *
ring_leave(Ring *self, PyObject *unused)
{
    if (self->guard == PyThread_get_thread_ident())
        self->guard = 0;
    Py_RETURN_NONE;
}

static PyObject *
ring_get_written(Ring *self, void *closure)
{
    return PyLong_FromUnsignedLongLong(self->written);
}

/* open_pieces -> (first frame, total) | None: a writer's message in pieces begun and not ended. */
static PyObject *
ring_get_open_pieces(Ring *self, void *closure)
{
    if (!self->open_pieces)
        Py_RETURN_NONE;
    return Py_BuildValue("(KK)", (unsigned long long)self->open_first, (unsigned long long)self->open_total);
}

static PyObject *
ring_get_cursor(Ring *self, void *closure)
{
    return PyLong_FromUnsignedLongLong(self->cursor);
}

static PyObject *
ring_get_position(Ring *self, void *closure)
{
    return PyLong_FromUnsignedLongLong(self->position);
}

static PyObject *
ring_get_wanted(Ring *self, void *closure)
{
    return PyLong_FromUnsignedLongLong(self->wanted);
}

static PyObject *
ring_get_published(Ring *self, void *closure)
{
    return PyLong_FromUnsignedLongLong(self->published);
}

static PyMethodDef ring_methods[] = {
    {"publish", (PyCFunction)ring_publish, METH_NOARGS,
     "publish() -> woke: publish the frame reserve() began; wake the readers parked for it."},
    {"put_one", (PyCFunction)(void (*)(void))ring_put_one, METH_FASTCALL,
     "put_one(flags, segments, traceparent) -> woke | None: write and publish a one-frame message if there is room."},
    {"reserve", (PyCFunction)(void (*)(void))ring_reserve, METH_FASTCALL,
     "reserve(frame, total, flags, traceparent) -> payload offset | None: begin the next frame if there is room."},
    {"bind_gating", (PyCFunction)ring_bind_gating, METH_VARARGS,
     "bind_gating(reader_records, state_offset, position_offset, gating_below): the readers that hold a writer back."},
    {"room", (PyCFunction)ring_room, METH_O, "room(frame) -> whether the writer may write a frame of that payload now."},
    {"park_writer", (PyCFunction)ring_park_writer, METH_O,
     "park_writer(timeout_s) -> slept: sleep until a reader makes room (the park/wake handshake)."},
    {"park_reader", (PyCFunction)ring_park_reader, METH_O,
     "park_reader(timeout_s) -> slept: sleep until the writer publishes past our cursor."},
    {"wake_readers", (PyCFunction)ring_wake_readers, METH_NOARGS, "wake_readers(): wake every parked reader."},
    {"gather_batch", (PyCFunction)(void (*)(void))ring_gather_batch, METH_FASTCALL,
     "gather_batch(room, limit, overhead) -> (batch, cursor, position, cost) | None: a remote slot's next "
     "frames, batched."},
    {"bind_flight", (PyCFunction)ring_bind_flight, METH_VARARGS,
     "bind_flight(offset, entries): record this participant's operations in its flight ring."},
    {"lease_begins", (PyCFunction)(void (*)(void))ring_lease_begins, METH_FASTCALL,
     "lease_begins(seq, size) -> stamp: a message is held in a lease; its flight entry stays open."},
    {"lease_ends", (PyCFunction)(void (*)(void))ring_lease_ends, METH_FASTCALL,
     "lease_ends(stamp, nbytes): the leased message is counted and its flight entry ends."},
    {"record", (PyCFunction)(void (*)(void))ring_record, METH_FASTCALL,
     "record(op, seq, size): note an operation of the Python paths in the flight ring."},
    {"enter", (PyCFunction)ring_enter, METH_NOARGS, "enter() -> False if another call is in a slow path."},
    {"leave", (PyCFunction)ring_leave, METH_NOARGS, "leave(): release the slow path if this thread holds it."},
    {"load_available", (PyCFunction)ring_load_available, METH_NOARGS, "load_available() -> the writer cursor now."},
    {"bind_record", (PyCFunction)ring_bind_record, METH_VARARGS,
     "bind_record(record_offset, stats, fields, hist_finite_buckets): the participant record this ring stores to."},
    {"bind_reader", (PyCFunction)ring_bind_reader, METH_VARARGS,
     "bind_reader(index, cursor, position, publish_every) -> position: make this ring reader index's."},
    {"join_head", (PyCFunction)ring_join_head, METH_NOARGS,
     "join_head() -> (cursor, position): the writer's head, where a reader joining now begins."},
    {"set_state", (PyCFunction)ring_set_state, METH_O, "set_state(state) -> now_ns: store the state and since when."},
    {"flush_counters", (PyCFunction)(void (*)(void))ring_flush_counters, METH_FASTCALL,
     "flush_counters(spins, yields, backoff_sleeps, backoff_sleep_ns, parks): add a wait's counters."},
    {"end_wait", (PyCFunction)(void (*)(void))ring_end_wait, METH_FASTCALL,
     "end_wait(start_ns, state_after, spins, yields, backoff_sleeps, backoff_sleep_ns, parks) -> waited_ns."},
    {"take_one", (PyCFunction)(void (*)(void))ring_take_one, METH_FASTCALL,
     "take_one(keep=False) -> the next message, decoded, if published and plain; else NOTHING."},
    {"decode_unfinished", (PyCFunction)ring_decode_unfinished, METH_NOARGS,
     "decode_unfinished() -> the message kept as unfinished, decoded."},
    {"bind_decoders", (PyCFunction)ring_bind_decoders, METH_VARARGS,
     "bind_decoders(loads, decode): how take_one and decode_unfinished decode a message."},
    {"head", (PyCFunction)ring_head, METH_NOARGS,
     "head() -> header offset | None: the frame at the cursor, once published."},
    {"header_intact", (PyCFunction)ring_header_intact, METH_O,
     "header_intact(seq) -> whether the frame at the cursor still has its header, after the copy before this call."},
    {"count", (PyCFunction)ring_count, METH_O, "count(nbytes): one more message received by the Python path."},
    {"deliver", (PyCFunction)(void (*)(void))ring_deliver, METH_FASTCALL,
     "deliver(total, kept, one_frame): count, keep and release a message the Python path read."},
    {"release_read", (PyCFunction)ring_release_read, METH_NOARGS,
     "release_read(): done with the frame at the cursor; publish if caught up or a batch is full."},
    {"advance", (PyCFunction)ring_advance, METH_NOARGS, "advance(): done with the frame at the cursor; publish now."},
    {"skip", (PyCFunction)ring_skip, METH_NOARGS,
     "skip() -> cursor: step over a frame whose header is corrupt, to the next one found; publish now."},
    {"publish_behind", (PyCFunction)ring_publish_behind, METH_NOARGS,
     "publish_behind(): publish the cursor and totals if the last publish is behind them."},
    {"acknowledge", (PyCFunction)(void (*)(void))ring_acknowledge, METH_FASTCALL,
     "acknowledge(cursor, position, messages, bytes): publish what a remote reader consumed (publish_every 0)."},
    {"rewind", (PyCFunction)ring_rewind, METH_NOARGS, "rewind(): read again from the last published frame."},
    {"release", (PyCFunction)ring_release, METH_NOARGS, "release(): drop the segment; later calls raise ValueError."},
    {NULL},
};

static PyMemberDef ring_members[] = {
    {"unfinished", T_OBJECT, offsetof(Ring, unfinished), 0,
     "a reader's message taken and not returned yet, or in pieces: take_one() leaves it to the Python path"},
    {"first_read_state", T_ULONGLONG, offsetof(Ring, first_read_state), 0,
     "the state stored when the reader releases its first frame; 0 once stored"},
    {NULL},
};

static PyGetSetDef ring_getset[] = {
    {"available", (getter)ring_get_available, NULL, "the writer cursor as last loaded by this ring", NULL},
    {"written", (getter)ring_get_written, NULL, "a writer's cursor: it has published every frame below it", NULL},
    {"open_pieces", (getter)ring_get_open_pieces, NULL,
     "a writer's message in pieces whose first piece is published and last is not: (first frame, total) | None", NULL},
    {"cursor", (getter)ring_get_cursor, NULL, "a reader's cursor: it has read every frame below it", NULL},
    {"position", (getter)ring_get_position, NULL, "a writer's or reader's position in the ring, in bytes", NULL},
    {"wanted", (getter)ring_get_wanted, NULL, "the reader position a writer's refused claim waits for", NULL},
    {"published", (getter)ring_get_published, NULL, "a reader's cursor as last published", NULL},
    {NULL},
};

static PyTypeObject RingType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "shmq._ring.Ring",
    .tp_doc = PyDoc_STR("One process's view of a queue's ring: the one-frame fast path and every cursor publish."),
    .tp_basicsize = sizeof(Ring),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)ring_init,
    .tp_dealloc = (destructor)ring_dealloc,
    .tp_methods = ring_methods,
    .tp_getset = ring_getset,
    .tp_members = ring_members,
};

static PyMethodDef module_methods[] = {
    {"full_fence", full_fence, METH_NOARGS, "A full memory barrier (C11 seq_cst fence)."},
    {"flight_entries", (PyCFunction)(void (*)(void))flight_entries, METH_FASTCALL,
     "flight_entries(buffer, offset, entries) -> the complete entries of a flight ring, oldest first."},
    {"futex_wait", (PyCFunction)(void (*)(void))futex_wait, METH_FASTCALL,
     "futex_wait(address, expected, timeout_s): sleep while the 32-bit word at address equals expected."},
    {"futex_wake", (PyCFunction)(void (*)(void))futex_wake, METH_FASTCALL,
     "futex_wake(address, count=INT_MAX): wake sleepers on the word at address."},
    {"compare_exchange", (PyCFunction)(void (*)(void))compare_exchange, METH_FASTCALL,
     "compare_exchange(buffer, offset, expected, new) -> the word before; stores new only if it held expected."},
    {"uninitialized_bytearray", uninitialized_bytearray, METH_O, "uninitialized_bytearray(n) -> n bytes, not zeroed."},
    {"frame_length", frame_length, METH_O, "frame_length(segments) -> the bytes of the frame they make."},
    {"batch_frame", (PyCFunction)(void (*)(void))batch_frame, METH_FASTCALL,
     "batch_frame(batch, at, expected, frame_bytes) -> (next_at, frame, message) | None: a remote batch's next whole frame."},
    {"frame_spans", (PyCFunction)(void (*)(void))frame_spans, METH_FASTCALL,
     "frame_spans(buffer, offset, length) -> [(start, stop) of each segment] | None if the table is corrupt."},
    {"wait_bucket", (PyCFunction)(void (*)(void))wait_bucket, METH_FASTCALL,
     "wait_bucket(wait_ns, finite_buckets) -> the histogram bucket a wait is counted in."},
    {NULL},
};

static struct PyModuleDef ring_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "shmq._ring",
    .m_doc = "shmq's hot path and memory ordering, in C11 atomics.",
    .m_size = -1,
    .m_methods = module_methods,
};

PyMODINIT_FUNC
PyInit__ring(void)
{
    if (PyType_Ready(&RingType) < 0)
        return NULL;
    PyObject *module = PyModule_Create(&ring_module);
    if (module == NULL)
        return NULL;
    Py_INCREF(&RingType);
    if (PyModule_AddObject(module, "Ring", (PyObject *)&RingType) < 0) {
        Py_DECREF(&RingType);
        Py_DECREF(module);
        return NULL;
    }
    Nothing = PyObject_CallNoArgs((PyObject *)&PyBaseObject_Type);
    if (Nothing == NULL || PyModule_AddObjectRef(module, "NOTHING", Nothing) < 0) {
        Py_DECREF(module);
        return NULL;
    }
    /* The layout this build reads and writes, checked by shmq/layout.py at import. */
    PyModule_AddIntConstant(module, "FRAME_SEQ", 8 * SEQ);
    PyModule_AddIntConstant(module, "FRAME_LEN", 8 * FRAME_LEN);
    PyModule_AddIntConstant(module, "FRAME_TOTAL_LEN", 8 * TOTAL_LEN);
    PyModule_AddIntConstant(module, "FRAME_FLAGS", 8 * FLAGS);
    PyModule_AddIntConstant(module, "FRAME_POSITION", 8 * POSITION);
    PyModule_AddIntConstant(module, "FRAME_TRACEPARENT", FRAME_TRACEPARENT);
    PyModule_AddIntConstant(module, "FRAME_HEADER_BYTES", FRAME_HEADER_BYTES);
    PyModule_AddIntConstant(module, "FRAME_ALIGN", FRAME_ALIGN);
    PyModule_AddIntConstant(module, "FRAME_FRAGMENT", FRAME_FRAGMENT);
    PyModule_AddIntConstant(module, "FRAME_LAST", FRAME_LAST);
    PyModule_AddIntConstant(module, "FRAME_FIRST", FRAME_FIRST);
    PyModule_AddIntConstant(module, "FRAME_PADDING", FRAME_PADDING);
    PyModule_AddIntConstant(module, "FRAME_TRACED", FRAME_TRACED);
    /* The remote wire format, checked by shmq/remote.py at import. */
    PyModule_AddIntConstant(module, "WIRE_FRAME", WIRE_FRAME);
    PyModule_AddIntConstant(module, "WIRE_BATCH", WIRE_BATCH);
    PyModule_AddIntConstant(module, "WIRE_HEADER_BYTES", WIRE_HEADER_BYTES);
    PyModule_AddIntConstant(module, "MIN_FRAME_BYTES", MIN_FRAME_BYTES);
    PyModule_AddIntConstant(module, "TRACEPARENT_BYTES", TRACEPARENT_BYTES);
    PyModule_AddIntConstant(module, "SEGMENT_ALIGN", SEGMENT_ALIGN);
    PyModule_AddIntConstant(module, "PARKED_BIT", PARKED_BIT);
    PyModule_AddIntConstant(module, "PARKED_CURSOR_MASK", PARKED_CURSOR_MASK);
    PyModule_AddIntConstant(module, "N_RECORD_FIELDS", N_FIELDS);
    PyModule_AddIntConstant(module, "FLIGHT_ENTRY_BYTES", 8 * E_WORDS);
    PyModule_AddIntConstant(module, "FLIGHT_HEAD_BYTES", 64);
    PyModule_AddIntConstant(module, "FLIGHT_PUT", OP_PUT);
    PyModule_AddIntConstant(module, "FLIGHT_PIECE", OP_PIECE);
    PyModule_AddIntConstant(module, "FLIGHT_GET", OP_GET);
    PyModule_AddIntConstant(module, "FLIGHT_PARK", OP_PARK);
    PyModule_AddIntConstant(module, "FLIGHT_WAKE", OP_WAKE);
    PyModule_AddIntConstant(module, "FLIGHT_TIMEOUT", OP_TIMEOUT);
    PyModule_AddIntConstant(module, "FLIGHT_DEAD_CHECK", OP_DEAD_CHECK);
    PyModule_AddIntConstant(module, "FLIGHT_EVICT", OP_EVICT);
    PyModule_AddIntConstant(module, "FLIGHT_INTERRUPTED", OP_INTERRUPTED);
    PyModule_AddIntConstant(module, "FLIGHT_LEASE", OP_LEASE);
    PyModule_AddIntConstant(module, "HAVE_FUTEX",
#ifdef __linux__
                            1
#else
                            0
#endif
    );
    return module;
}
