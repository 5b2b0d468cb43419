"""What this machine and interpreter allow at best, measured in the same run as the table.

* numpy memcpy of 1 MiB: the ceiling for a safe copy (each reader copies every byte once);
* a two-process ping-pong over one shared-memory word, in pure Python: the floor
  of one-way latency for any Python queue, and its message rate;
* the small rows' pickling, copying and unpickling alone, through a ring of
  shared counters, to 1 and 4 readers, run through the same harness as the
  transports and beside the small rows: what a bare pure-Python queue reaches;
* a futex wake through shmq's C calls (shmq/_ring.c), bare and carrying the pickled small message: the
  floor of waking a parked reader, after the same pause as the wake-up phase;
* 1 MiB arrays through a 4-slot ring between two processes, numpy copies and a
  spin on two shared counters only: the ceiling of a 1 MiB row, with the reader
  copying each array out (safe copy) or not (what a lease costs at best); and the
  same with the large rows' message pickled and unpickled beside the copies.
"""

from __future__ import annotations

import ctypes
import dataclasses
import functools
import mmap
import multiprocessing
import os
import pickle
import time
from typing import Callable

import numpy as np

from shmq import sync
from shmq.serialization import PickleSerializer

from .peers import SEND_TIMEOUT_S, Link, Peer, Receiver, Sender, fields
from .table import Row
from .trial import reap, run_row
from .workloads import MiB, Workload, plan_for

_fork = multiprocessing.get_context("fork")


def memcpy_row(seconds: float = 0.5) -> Row:
    src = np.arange(MiB, dtype=np.uint8)
    dst = np.empty_like(src)
    np.copyto(dst, src)
    copies = 0
    start = time.perf_counter_ns()
    deadline = start + int(seconds * 1e9)
    while (now := time.perf_counter_ns()) < deadline:
        for _ in range(64):
            np.copyto(dst, src)
        copies += 64
    elapsed = now - start
    return Row("limit", 0, "numpy memcpy 1 MiB", gb_per_s=copies * MiB / elapsed,
               msgs_per_s=copies / elapsed * 1e9, note="one process, one core")


def _ping_pong_child(words: memoryview, rounds: int, deadline: float) -> None:
    seen = 0
    polls = 0
    while seen < rounds:
        value = words[0]
        if value != seen:
            seen = value
            words[1] = value  # pong
            continue
        polls += 1
        if not polls % 1024:
            os.sched_yield()  # a third process must not starve the peer we wait for
        if polls % 65536 == 0 and time.monotonic() > deadline:
            return


def ping_pong_row(rounds: int, timeout_s: float = 30.0) -> Row:
    """One-way latency = half a round trip through two shared 8-byte words, both sides spinning."""
    mm = mmap.mmap(-1, mmap.PAGESIZE)  # anonymous and MAP_SHARED: the forked child sees our stores
    words = memoryview(mm).cast("q")
    deadline = time.monotonic() + timeout_s
    child = _fork.Process(target=_ping_pong_child, args=(words, rounds, deadline), daemon=True)
    child.start()
    one_way = []
    try:
        start = time.perf_counter_ns()
        for k in range(1, rounds + 1):
            sent = time.perf_counter_ns()
            words[0] = k
            polls = 0
            while words[1] != k:
                polls += 1
                if not polls % 1024:
                    os.sched_yield()  # a third process must not starve the peer we wait for
                if polls % 65536 == 0 and time.monotonic() > deadline:
                    return Row("limit", 0, "shm ping-pong, 2 processes", note="timeout: the child stopped answering")
            one_way.append((time.perf_counter_ns() - sent) / 2)
        elapsed = time.perf_counter_ns() - start
    finally:
        reap(child, 5)
        words.release()
        mm.close()
    one_way.sort()
    return Row("limit", 0, "shm ping-pong, 2 processes", msgs_per_s=2 * rounds / elapsed * 1e9,
               p50_us=one_way[len(one_way) // 2] / 1e3, p99_us=one_way[int(len(one_way) * 0.99)] / 1e3,
               note="pure-Python spin on one shared word; p50/p99 are half a round trip")


_SMALL_SLOT_BYTES, _SMALL_SLOTS = 1024, 1024  # the pickle-only ring: 1,024 slots of 1 KiB
PICKLE_RING_READERS = (1, 4)  #: the small rows that get a pickle-only ring beside them
_PICKLE_RING_NOTE = "the small message pickled, copied, unpickled; counters only: no checks, stats, parking"


class PickleRingPeer(Peer):
    """The small rows' work and nothing else: pickle, copy into a shared ring, unpickle.

    One writer and N readers, 1,024 slots of 1 KiB and a shared counter per process; no
    checks, counters, liveness or parking (a poll that finds nothing yields the core). It
    runs through the same harness as the transports (trial.run_row), so it pays the same
    bookkeeping per message that they pay: what a bare pure-Python broadcast queue reaches
    on this machine (its readers' yielding loops cost it more than shmq's waiting does at 4 readers).
    """

    def __init__(self, n_readers: int) -> None:
        self.label = f"pickle-only ring, {n_readers} reader{'s' if n_readers > 1 else ''}"

    def open(self, workload: Workload, workdir: str) -> Link:
        return _PickleRingLink(workload.n_readers)


class _PickleRingLink(Link):
    def __init__(self, n_readers: int) -> None:
        # Word 0: messages published; word 8 * (1 + i): reader i's count (a cache line each). The
        # slots follow the first page, each starting with its message's length.
        self._mm = mmap.mmap(-1, mmap.PAGESIZE + _SMALL_SLOTS * _SMALL_SLOT_BYTES)
        self._n_readers = n_readers

    def sender(self) -> Sender:
        return _PickleRingEnd(self._mm, [8 * (1 + i) for i in range(self._n_readers)])

    def receiver(self, index: int) -> Receiver:
        return _PickleRingEnd(self._mm, [8 * (1 + index)])

    def close(self) -> None:
        self._mm.close()


class _PickleRingEnd(Sender, Receiver):
    """The writer (gated by the `counts` of every reader) or one reader (its own count) of the ring."""

    def __init__(self, mm: mmap.mmap, counts: list[int]) -> None:
        self._words = memoryview(mm).cast("q")
        self._ring = memoryview(mm)[mmap.PAGESIZE:]
        self._lengths = self._ring.cast("q")
        self._counts = counts
        self._next = 0  # the next message to write or read
        self._lowest = 0  # the writer's cached minimum of the readers' counts, rescanned when the ring looks full

    def send(self, message) -> None:
        k, words = self._next, self._words
        if k - self._lowest >= _SMALL_SLOTS:
            deadline = time.monotonic() + SEND_TIMEOUT_S
            while k - (lowest := min(words[c] for c in self._counts)) >= _SMALL_SLOTS:
                os.sched_yield()
                if time.monotonic() > deadline:
                    raise TimeoutError(f"the pickle-only ring stayed full for {SEND_TIMEOUT_S} s")
            self._lowest = lowest
        data = pickle.dumps(message, protocol=5)
        at = (k % _SMALL_SLOTS) * _SMALL_SLOT_BYTES
        self._ring[at + 8 : at + 8 + len(data)] = data  # a message over a slot raises here
        self._lengths[at // 8] = len(data)
        words[0] = self._next = k + 1

    def take(self, timeout: float):
        k, words = self._next, self._words
        if words[0] <= k:
            deadline = time.monotonic() + timeout
            while words[0] <= k:
                os.sched_yield()  # with more processes than cores, a poll that finds nothing gives the core away
                if time.monotonic() > deadline:
                    return None
        at = (k % _SMALL_SLOTS) * _SMALL_SLOT_BYTES
        message = pickle.loads(self._ring[at + 8 : at + 8 + self._lengths[at // 8]])
        words[self._counts[0]] = self._next = k + 1
        return fields(message)

    def close(self) -> None:
        self._lengths.release()
        self._ring.release()
        self._words.release()


def as_limit(row: Row) -> Row:
    """A pickle-only ring's row, shown among the limits."""
    return dataclasses.replace(row, workload="limit", n_readers=0, note=row.note or _PICKLE_RING_NOTE)


def pickle_ring_row(n_readers: int, quick: bool) -> Row:
    """The pickle-only ring on its own, when no small row of `n_readers` ran beside it."""
    workload = Workload("small", n_readers)
    return as_limit(run_row(PickleRingPeer(n_readers), workload, plan_for(workload, quick=quick, idle_s=0.0),
                            timeout_s=60.0))


_MESSAGE_AT = 64  # where the pickled message sits in the shared page, after the control words


def _futex_child(mm: mmap.mmap, address: int, rounds: int, carry: bool, conn) -> None:
    words = memoryview(mm).cast("q")
    message = memoryview(mm)[_MESSAGE_AT:]
    wakes = []
    for k in range(1, rounds + 1):
        words[2] = k  # "about to wait for k"
        while words[0] < k:
            sync.futex_wait(address, words[0], 1.0)
        sent_ns = pickle.loads(message[: words[3]])["t"] if carry else words[1]
        wakes.append(time.perf_counter_ns() - sent_ns)
    del message, words
    conn.send(wakes)


def futex_row(rounds: int, gap_s: float, carry: bool) -> Row:
    """A parked process woken by a futex wake after `gap_s` of quiet.

    Without `carry` the waker stamps the time just before the syscall; with it, the
    waker builds the small benchmark message (which stamps it), pickles it into the
    shared page and wakes, and the woken process unpickles it: the least any Python
    queue that pickles does for a wake-up, on CPUs that the pause let go cold.
    """
    label = "futex wake + pickled small message" if carry else "futex wake"
    if not sync.HAVE_FUTEX:
        return Row("limit", 0, label, note="skipped: no futex on this platform")
    mm = mmap.mmap(-1, mmap.PAGESIZE)
    words = memoryview(mm).cast("q")
    message = memoryview(mm)[_MESSAGE_AT:]
    anchor = ctypes.c_char.from_buffer(mm)
    address = ctypes.addressof(anchor)  # word 0 is the futex word (its low 32 bits)
    make = Workload("small", 1).maker()
    receive_end, send_end = _fork.Pipe(duplex=False)
    child = _fork.Process(target=_futex_child, args=(mm, address, rounds, carry, send_end), daemon=True)
    child.start()
    send_end.close()
    wakes = None
    try:
        for k in range(1, rounds + 1):
            deadline = time.monotonic() + 5
            while words[2] < k and time.monotonic() < deadline:
                time.sleep(0.0005)
            time.sleep(gap_s)  # long enough for the child to be asleep in the kernel
            if carry:
                data = pickle.dumps(make(k), protocol=5)
                message[: len(data)] = data
                words[3] = len(data)
            else:
                words[1] = time.perf_counter_ns()
            words[0] = k
            sync.futex_wake(address)
        if receive_end.poll(10):
            wakes = sorted(receive_end.recv())
    finally:
        reap(child, 5)
        receive_end.close()
        del anchor
        message.release()
        words.release()
        mm.close()
    if not wakes:
        return Row("limit", 0, label, note="failed: the child sent no samples")
    note = ("pickle, copy into shared memory, FUTEX_WAKE; unpickle" if carry
            else "parked process, FUTEX_WAKE") + f"; shmq's C futex calls; {gap_s * 1e3:g} ms pauses"
    return Row("limit", 0, label, wake_p50_us=wakes[len(wakes) // 2] / 1e3, note=note)


_RING_SLOTS = 4


def _copy_out_child(mm: mmap.mmap, count: int, copy_out: bool, pickling: bool, deadline: float) -> None:
    words = memoryview(mm).cast("q")  # word 0: arrays published, word 8 (its own line): arrays consumed
    ring = np.frombuffer(mm, dtype=np.uint8, offset=mmap.PAGESIZE).reshape(_RING_SLOTS, MiB)
    out = np.empty(MiB, dtype=np.uint8)
    stream = PickleSerializer().encode(Workload("large", 1).maker()(0))[0] if pickling else b""
    for k in range(count):
        polls = 0
        while words[0] <= k:
            polls += 1
            if not polls % 1024:
                os.sched_yield()  # a third process must not starve the peer we wait for
            if polls % 65536 == 0 and time.monotonic() > deadline:
                return
        if copy_out:
            np.copyto(out, ring[k % _RING_SLOTS])
        if pickling:
            pickle.loads(stream, buffers=[out])
        words[8] = k + 1


def ring_copy_row(count: int, copy_out: bool, pickling: bool = False, timeout_s: float = 30.0) -> Row:
    """The writer copies a 1 MiB array into the next free slot; the reader copies it out, or just releases it.

    `pickling`: the writer also pickles the large rows' message with shmq's serializer, and the
    reader unpickles one (the stream's bytes are not sent): the least a queue that pickles adds.
    """
    label = (f"1 MiB ring, 2 processes, {'copy in + copy out' if copy_out else 'copy in only'}"
             f"{' + pickling' if pickling else ''}")
    mm = mmap.mmap(-1, mmap.PAGESIZE + _RING_SLOTS * MiB)
    words = memoryview(mm).cast("q")
    ring = np.frombuffer(mm, dtype=np.uint8, offset=mmap.PAGESIZE).reshape(_RING_SLOTS, MiB)
    src = np.arange(MiB, dtype=np.uint8)
    make, encode = Workload("large", 1).maker(), PickleSerializer().encode
    deadline = time.monotonic() + timeout_s
    child = _fork.Process(target=_copy_out_child, args=(mm, count, copy_out, pickling, deadline), daemon=True)
    child.start()
    try:
        start = time.perf_counter_ns()
        for k in range(count):
            polls = 0
            while k - words[8] >= _RING_SLOTS:
                polls += 1
                if not polls % 1024:
                    os.sched_yield()  # a third process must not starve the peer we wait for
                if polls % 65536 == 0 and time.monotonic() > deadline:
                    return Row("limit", 0, label, note="timeout: the child stopped copying")
            if pickling:
                encode(make(k))
            np.copyto(ring[k % _RING_SLOTS], src)
            words[0] = k + 1
        while words[8] < count and time.monotonic() < deadline:
            pass
        elapsed = time.perf_counter_ns() - start
    finally:
        reap(child, 5)
        del ring
        words.release()
        mm.close()
    note = "numpy copies, spinning on two shared counters; " + (
        "the message pickled and unpickled beside them" if pickling else "no pickle, no Python per byte")
    return Row("limit", 0, label, msgs_per_s=count / elapsed * 1e9, gb_per_s=count * MiB / elapsed, note=note)


def ring_ceilings(*, quick: bool) -> list[Callable[[], Row]]:
    """The 1 MiB ring rows, to run interleaved with the large rows they are the ceiling of."""
    arrays = 100 if quick else 3000
    return [functools.partial(ring_copy_row, arrays, copy_out=copy_out, pickling=pickling)
            for pickling in (False, True) for copy_out in (True, False)]


def limit_rows(*, quick: bool, ring_rows: list[Row] | None = None,
               pickle_rows: dict[int, Row] | None = None) -> list[Row]:
    """Every limit row; `ring_rows` are the 1 MiB ring rows if they were measured beside a large workload,
    `pickle_rows` the pickle-only rings measured beside the small workloads (by reader count)."""
    # The wake-up floors pause as long as the benchmark's wake-up phase does: a longer pause
    # lets the CPUs go colder, and everything after it runs slower.
    wake_plan = plan_for(Workload("small", 1), quick=quick, idle_s=0.0)
    wake_rounds, wake_gap_s = max(10, wake_plan.wake), wake_plan.wake_gap_s
    pickle_rows = pickle_rows or {}
    return [
        memcpy_row(0.2 if quick else 1.0),
        *(ring_rows if ring_rows is not None else [measure() for measure in ring_ceilings(quick=quick)]),
        ping_pong_row(2000 if quick else 50_000),
        *(pickle_rows.get(n) or pickle_ring_row(n, quick) for n in PICKLE_RING_READERS),
        futex_row(wake_rounds, wake_gap_s, carry=False),
        futex_row(wake_rounds, wake_gap_s, carry=True),
    ]
