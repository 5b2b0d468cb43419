"""Cleanup on every exit path, the stats record, and the framing across sizes."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import shmq
from shmq import layout as L

from .conftest import FORK

CREATE_AND_REPORT = """
import shmq, sys
writer = shmq.create(1, name="exit-test", chunk_bytes=4096, n_chunks=2)
print(writer.handle.shm_name, flush=True)
{then}
"""


def run_child(then: str) -> tuple[subprocess.Popen, str]:
    child = subprocess.Popen([sys.executable, "-c", CREATE_AND_REPORT.format(then=then)],
                             stdout=subprocess.PIPE, text=True, cwd=os.getcwd())
    shm_name = child.stdout.readline().strip()
    assert shm_name.startswith("shmq-"), shm_name
    return child, shm_name


@pytest.mark.timeout(30)
def test_interpreter_exit_leaves_nothing_in_dev_shm():
    child, shm_name = run_child("pass")
    assert child.wait(20) == 0
    assert not os.path.exists(os.path.join("/dev/shm", shm_name))


@pytest.mark.timeout(30)
def test_ctrl_c_in_a_blocked_put_leaves_nothing_in_dev_shm():
    # No reader ever attaches, so the third put blocks until Ctrl-C.
    child, shm_name = run_child("from shmq.testing import fill_ring; fill_ring(writer); print('blocking', flush=True); "
                                "writer.put(3)")
    assert child.stdout.readline().strip() == "blocking"
    time.sleep(0.3)
    child.send_signal(signal.SIGINT)
    assert child.wait(20) != 0
    assert not os.path.exists(os.path.join("/dev/shm", shm_name))


def create_send_and_return(conn) -> None:
    """Child: a writer that sends one message once its reader attached, and returns without closing it."""
    writer = shmq.create(1, name="forked-exit-test")
    conn.send(writer.handle)
    writer.put("last words", timeout=10)


@pytest.mark.timeout(30)
def test_a_forked_multiprocessing_child_that_returns_unlinks_its_queue_and_its_readers_see_it_closed(children):
    # multiprocessing ends a forked child with os._exit, which skips atexit.
    parent_end, child_end = FORK.Pipe()
    child = children(create_send_and_return, child_end)
    handle = parent_end.recv()
    with shmq.attach(handle, 0) as reader:
        assert reader.get(timeout=10) == "last words"
        child.join(10)
        assert child.exitcode == 0
        assert not os.path.exists(os.path.join("/dev/shm", handle.shm_name))
        with pytest.raises(shmq.QueueClosed):
            reader.get(timeout=10)


@pytest.mark.timeout(30)
def test_cleanup_unlinks_segments_of_dead_creators_only(writer):
    child, shm_name = run_child("import time; time.sleep(60)")
    child.kill()
    child.wait(10)
    listed = {s.shm_name: s for s in shmq.list_segments()}
    assert listed[shm_name].name == "exit-test" and not listed[shm_name].creator_alive
    assert listed[writer.handle.shm_name].creator_alive
    assert shm_name in shmq.cleanup()
    assert not os.path.exists(os.path.join("/dev/shm", shm_name))
    assert os.path.exists(os.path.join("/dev/shm", writer.handle.shm_name))


MAP_AND_WAIT = "import mmap, sys, time; f = open(sys.argv[1], 'r+b'); m = mmap.mmap(f.fileno(), 0); f.close(); " \
               "print('mapped', flush=True); time.sleep(60)"


@pytest.mark.timeout(30)
def test_cleanup_unlinks_unreadable_shmq_segments_that_no_process_maps_and_nothing_else(writer, tmp_path):
    def segment_file(name: str, version: int) -> str:
        path = str(tmp_path / f"shmq-{name}")
        shutil.copyfile(os.path.join("/dev/shm", writer.handle.shm_name), path)
        with open(path, "r+b") as f:
            f.seek(L.OFF_VERSION)
            f.write(version.to_bytes(8, "little"))
        return path

    orphaned_old_layout = segment_file("old", 4)
    never_ready = segment_file("never-ready", 0)
    mapped_old_layout = segment_file("mapped", 4)
    not_ours = str(tmp_path / "shmq-not-ours")
    with open(not_ours, "wb") as f:
        f.write(b"another program's file" * 100)
    holder = subprocess.Popen([sys.executable, "-c", MAP_AND_WAIT, mapped_old_layout], stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "mapped"
        assert sorted(shmq.cleanup(str(tmp_path))) == ["shmq-never-ready", "shmq-old"]
        assert not os.path.exists(orphaned_old_layout) and not os.path.exists(never_ready)
        assert os.path.exists(mapped_old_layout) and os.path.exists(not_ours)
    finally:
        holder.kill()
        holder.wait(10)
    assert shmq.cleanup(str(tmp_path)) == ["shmq-mapped"]


def test_stats_record_counts_exactly_what_happened(queue_name):
    with shmq.create(2, name=queue_name, chunk_bytes=256, n_chunks=8) as writer:
        with shmq.attach(writer.handle, 0) as reader, shmq.attach(writer.handle, 1) as idle:
            for i in range(3):
                writer.put_bytes(b"x" * 100)
                reader.get_bytes()
            writer.put_bytes(b"y" * 600)  # in three pieces of 256 bytes
            reader.get_bytes()
            with pytest.raises(shmq.QueueTimeout):
                reader.get(timeout=0.05)
            snap = shmq.stats.open(writer.handle).snapshot()
    frame = L.ONE_SEGMENT.size
    assert snap.writer.messages == 4 and snap.readers[0].messages == 4 and snap.readers[1].messages == 0
    assert snap.writer.bytes == snap.readers[0].bytes == 3 * (100 + frame) + 600 + frame
    assert snap.writer.overflow_messages == snap.readers[0].overflow_messages == 1
    assert snap.writer_cursor == 6 and snap.readers[0].cursor == 6 and snap.readers[1].cursor == 0
    assert snap.occupancy == 6 and snap.lag(snap.readers[1]) == 6
    assert snap.readers[0].timeouts == 1
    assert snap.readers[0].waits == sum(snap.readers[0].histogram) == 1  # the timed-out get waited once
    assert snap.readers[0].histogram[L.wait_bucket(snap.readers[0].wait_ns)] == 1
    assert snap.readers[0].pid == os.getpid() and snap.readers[0].alive
    assert snap.readers[1].state == shmq.ParticipantState.IDLE


def test_histogram_buckets_are_log2_microseconds():
    assert [L.wait_bucket(ns) for ns in (0, 1000, 1001, 2000, 2001, 1_000_000)] == [0, 0, 1, 1, 2, 10]
    assert L.wait_bucket(10**12) == L.HIST_FINITE_BUCKETS  # +Inf
    assert L.HISTOGRAM_UPPER_BOUNDS_S[0] == 1e-6 and 60 < L.HISTOGRAM_UPPER_BOUNDS_S[-1] < 70


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(chunk_bytes=st.integers(64, 700), n_chunks=st.integers(2, 6), data=st.data())
def test_any_bytes_come_back_identical_whatever_the_chunk_size(chunk_bytes, n_chunks, data):
    # A single thread cannot wait on itself: the whole message is in the ring at once, its pieces of
    # chunk_bytes and the padding before one of them.
    capacity = chunk_bytes * (n_chunks - 1) - L.ONE_SEGMENT.size
    bodies = data.draw(st.lists(st.binary(max_size=capacity), min_size=1, max_size=6))
    with shmq.create(1, name="hypothesis", chunk_bytes=chunk_bytes, n_chunks=n_chunks) as writer:
        with shmq.attach(writer.handle, 0) as reader:
            for body in bodies:
                writer.put_bytes(body, timeout=5)  # a sizing mistake fails fast instead of hanging
                assert reader.get_bytes() == body


@settings(max_examples=40, deadline=None)
@given(shape=st.lists(st.integers(0, 12), min_size=1, max_size=3),
       dtype=st.sampled_from(["u1", "<i4", "<f8", "<c16"]), extra=st.binary(max_size=100))
def test_arrays_with_out_of_band_buffers_round_trip_in_pieces(shape, dtype, extra):
    array = np.arange(int(np.prod(shape)), dtype=dtype).reshape(shape)
    # Up to 2 x 28 kB of arrays through 512-byte frames, always within the 64 kB ring.
    with shmq.create(1, name="hypothesis", chunk_bytes=512, n_chunks=128) as writer:
        with shmq.attach(writer.handle, 0) as reader:
            writer.put((extra, array, array[::-1].copy()), timeout=5)
            got_extra, got, reversed_ = reader.get()
            assert got_extra == extra
            np.testing.assert_array_equal(got, array)
            np.testing.assert_array_equal(reversed_, array[::-1])
            assert got.dtype == array.dtype
