"""``shmq exporter`` as a real subprocess, scraped over HTTP while real processes use real queues."""

from __future__ import annotations

import os
import socket
import time

import pytest

import shmq
from shmq import layout as L
from shmq.telemetry import names as N

from .conftest import FORK
from .telemetry_helpers import (
    age, exporter_process, garbage_segment, isolated_shm_dir, scrape, scrape_until, value, who,
)

MESSAGES = 1000
HELD_BACK = 40  # the slow reader stops this many messages short of the end
RING = 64  # > HELD_BACK, so the writer can still finish
PAYLOAD = b"m" * 100
FRAME = L.ONE_SEGMENT.size + len(PAYLOAD)


def read_then_hold(handle, index, count, delay_s, conn):
    """Child: read `count` messages (sleeping `delay_s` after each), report, then stay attached until told."""
    with shmq.attach(handle, reader=index) as reader:
        for _ in range(count):
            reader.get_bytes(timeout=30)
            time.sleep(delay_s)
        conn.send(os.getpid())
        conn.recv()


@pytest.mark.timeout(60)
def test_a_known_workload_is_exported_exactly_per_participant(queue_name, children):
    started = time.time()
    readers = {0: (MESSAGES, 0.0), 1: (MESSAGES, 0.0), 2: (MESSAGES - HELD_BACK, 0.0005)}  # reader 2 is slow
    with exporter_process("--queue", queue_name) as url, \
            shmq.create(3, name=queue_name, n_chunks=RING, chunk_bytes=256) as writer:
        pipes, pids = {}, {}
        for index, (count, delay) in readers.items():
            pipes[index], child_end = FORK.Pipe()
            children(read_then_hold, writer.handle, index, count, delay, child_end)
        writer.wait_for_readers(timeout=10)
        for _ in range(MESSAGES):
            writer.put_bytes(PAYLOAD, timeout=30)
        for index, pipe in pipes.items():
            assert pipe.poll(30), f"reader {index} did not finish"
            pids[index] = pipe.recv()
        with shmq.stats.open(writer.handle) as view:
            # A reader that stops mid-batch has the rest published by its heartbeat (100 ms);
            # after that nothing moves: every reader is holding.
            deadline = time.monotonic() + 5
            while [r.cursor for r in view.snapshot().readers] != [count for count, _ in readers.values()] \
                    and time.monotonic() < deadline:
                time.sleep(0.02)
            records = view.snapshot()
        for openmetrics in (False, True):
            samples = scrape(url, openmetrics=openmetrics)
            participants = [(None, os.getpid(), records.writer)] + [(i, pids[i], records.readers[i]) for i in readers]
            for index, pid, record in participants:
                labels = who(queue_name, index)
                count = MESSAGES if index is None else readers[index][0]
                assert value(samples, N.total(N.MESSAGES), **labels) == count
                assert value(samples, N.total(N.BYTES), **labels) == count * FRAME
                assert value(samples, N.WAIT_SECONDS + "_count", **labels) == record.waits
                assert value(samples, N.bucket(N.WAIT_SECONDS), **labels, le="+Inf") == record.waits
                assert value(samples, N.WAIT_SECONDS + "_sum", **labels) == pytest.approx(record.wait_ns / 1e9)
                assert value(samples, N.total(N.SPINS), **labels) == record.spins
                assert value(samples, N.total(N.PARKS), **labels) == record.parks
                assert value(samples, N.PARTICIPANT_INFO + "_info", **labels, pid=str(pid),
                             host=socket.gethostname()) == 1
                assert value(samples, N.PARTICIPANT_STATE, **labels, state=record.state.name.lower()) == 1
                assert started - 1 <= value(samples, N.LAST_PROGRESS, **labels) <= time.time() + 1
            assert records.writer.waits > 0, "the slow reader should have made the writer wait"
            assert value(samples, N.RING_CAPACITY, queue=queue_name) == RING * L.frame_stride(256)
            assert value(samples, N.RING_OCCUPANCY_MESSAGES, queue=queue_name) == HELD_BACK
            assert value(samples, N.RING_OCCUPANCY, queue=queue_name) == HELD_BACK * L.frame_stride(FRAME)
            for index, (count, _) in readers.items():
                assert value(samples, N.READER_LAG, **who(queue_name, index)) == MESSAGES - count
        for pipe in pipes.values():
            pipe.send("close")


@pytest.mark.timeout(40)
def test_the_exporter_discovers_a_new_segment_and_forgets_an_unlinked_one():
    with isolated_shm_dir() as shm_dir, exporter_process("--all", "--shm-dir", shm_dir) as url:
        assert not [k for k in scrape(url) if k[0] == N.RING_CAPACITY]
        writer = shmq.create(1, name="late", n_chunks=4, chunk_bytes=256, shm_dir=shm_dir)
        try:
            samples = scrape_until(url, lambda s: (N.RING_CAPACITY, frozenset({(N.LABEL_QUEUE, "late")})) in s)
            assert value(samples, N.RING_CAPACITY, queue="late") == 4 * L.frame_stride(256)
        finally:
            writer.close()
        samples = scrape_until(url, lambda s: not [k for k in s if k[0] == N.RING_CAPACITY])
        assert not [k for k in samples if dict(k[1]).get(N.LABEL_QUEUE) == "late"]


@pytest.mark.timeout(40)
def test_the_exporter_skips_corrupt_and_foreign_segments_counts_them_and_stays_up():
    with isolated_shm_dir() as shm_dir, \
            shmq.create(1, name="good", n_chunks=4, chunk_bytes=256, shm_dir=shm_dir) as writer:
        unreadable = [garbage_segment(shm_dir), garbage_segment(shm_dir, size=16)]  # random bytes; too short
        if os.getuid() == 0:  # a well-formed segment that belongs to another user
            foreign = shmq.create(1, name="foreign", n_chunks=4, chunk_bytes=256, shm_dir=shm_dir)
            foreign_path = os.path.join(shm_dir, foreign.handle.shm_name)
            os.link(foreign_path, foreign_path + "0")
            foreign.close()
            os.chown(foreign_path + "0", 65534, 65534)
            age(foreign_path + "0", 60)
            unreadable.append(foreign_path + "0")
        with exporter_process("--all", "--shm-dir", shm_dir) as url:
            for _ in range(2):  # counted once each, not at every scrape
                for openmetrics in (False, True):
                    samples = scrape(url, openmetrics=openmetrics)
                    assert value(samples, N.total(N.EXPORTER_ERRORS)) == len(unreadable)
                    assert value(samples, N.RING_CAPACITY, queue="good") == writer.handle.ring_bytes
            for path in unreadable:
                os.unlink(path)
            samples = scrape(url)
            assert value(samples, N.RING_CAPACITY, queue="good") == writer.handle.ring_bytes
