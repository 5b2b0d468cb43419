"""Fault injection with real processes: the watchdog flags each fault, names the culprit, and recovers.

Every test starts ``shmq watchdog`` as a subprocess watching one queue of its
own, with forked readers and the writer in the test process.
"""

from __future__ import annotations

import json
import os
import random
import signal
import tempfile
import threading
import time

import pytest

import shmq
from shmq import wait
from shmq.testing import blind
from shmq.telemetry import names as N

from .watchdog_harness import about, consume_in_order, drain, watched_queue


@pytest.fixture
def stack_dir():
    with tempfile.TemporaryDirectory(prefix="watchdog-stacks-") as path:
        yield path


def put_noting_first_block(writer, i, first_block: list, on_first_block) -> None:
    """put(i), noting the time of the first put that found the ring full (and calling on_first_block then)."""
    try:
        writer.put_nowait(i)
    except shmq.WouldBlock:
        if not first_block:
            first_block.append(time.time())
            on_first_block()
        writer.put(i, timeout=20)


@pytest.mark.timeout(40)
def test_a_stopped_reader_is_flagged_before_the_writer_blocks_and_clears_after_it_resumes(
        queue_name, children, stack_dir):
    rate_hz, total = 20, 120
    with watched_queue(queue_name, children, stack_dir, consume_in_order, 2, total, n_chunks=32,
                       chunk_bytes=256) as (writer, readers, watchdog):
        first_block: list[float] = []
        resume = threading.Timer(0.5, os.kill, (readers[1].pid, signal.SIGCONT))
        stopped_at = None
        for i in range(total):
            if i == rate_hz:  # one healthy second, then reader 1 freezes
                os.kill(readers[1].pid, signal.SIGSTOP)
                stopped_at = time.time()
            put_noting_first_block(writer, i, first_block, resume.start)
            if not first_block:
                time.sleep(1 / rate_hz)
        resume.join()
        assert first_block, "the ring never filled: the test did not stall the writer"
        stall = watchdog.wait_for("reader_stalled", about(N.RULE_READER_STALLED, reader=1), 5)
        warning = watchdog.wait_for("freeze_risk", about(N.RULE_FREEZE_RISK), 5)
        # The point of the watchdog: it speaks before the writer is stuck, and names the culprit.
        assert stopped_at < min(stall["time"], warning["time"]) < first_block[0], (
            stopped_at, stall["time"], warning["time"], first_block[0])
        assert (stall["cause"], stall["pid"]) == ("frozen", readers[1].pid)
        assert [b["reader"] for b in warning["blocking_readers"]] == [1]
        assert "in state T" in stall["stack_note"]
        # The flight record names the reader missing the first message, and what it is doing.
        culprit = stall["flight"]["missing"][0]
        assert (culprit["who"], culprit["pid"], culprit["doing"]) == ("reader 1", readers[1].pid, "stopped")
        assert stall["flight"]["first_missing"] == culprit["cursor"] and "missing at reader 1" in stall["flight_summary"]
        with open(stall["flight_file"]) as recorded:
            assert json.load(recorded)["analysis"]["first_missing"] == culprit["cursor"]
        cleared = watchdog.wait_for("reader_stalled cleared", about(N.RULE_READER_STALLED, reader=1, kind="clear"), 8)
        watchdog.wait_for("freeze_risk cleared", about(N.RULE_FREEZE_RISK, kind="clear"), 8)
        # A stopped process takes the stack signal when it resumes: the clear carries where it was frozen.
        assert "consume_in_order" in cleared["stack"], cleared
        assert {e["rule"] for e in watchdog.events} <= {N.RULE_READER_STALLED, N.RULE_FREEZE_RISK,
                                                       N.RULE_WRITER_BLOCKED}, watchdog.brief()
    for reader in readers:
        reader.join(10)
        assert reader.exitcode == 0, "a reader lost or reordered messages"


def read_forever(handle: str, index: int, stack_dir: str) -> None:
    with shmq.attach(handle, reader=index, stack_dumps=stack_dir) as reader:
        drain(reader)


@pytest.mark.timeout(30)
def test_a_killed_reader_is_flagged_dead_within_half_a_second_and_with_eviction_the_writer_keeps_flowing(
        queue_name, children, stack_dir):
    with watched_queue(queue_name, children, stack_dir, read_forever, 2, n_chunks=8, chunk_bytes=256,
                       on_dead_reader="evict") as (writer, readers, watchdog):
        for i in range(20):
            writer.put(i, timeout=5)
        killed_at = time.time()
        os.kill(readers[1].pid, signal.SIGKILL)
        dead = watchdog.wait_for("dead", about(N.RULE_DEAD), 3)
        assert (dead["reader"], dead["pid"], dead["cause"]) == (1, readers[1].pid, "exited")
        assert dead["time"] - killed_at < 0.5, f"flagged {dead['time'] - killed_at:.3f} s after the kill"
        started = time.monotonic()
        for i in range(200):  # 25 rings' worth: only eviction lets these through
            writer.put(i, timeout=5)
        assert time.monotonic() - started < 5
        cleared = watchdog.wait_for("dead cleared by eviction", about(N.RULE_DEAD, kind="clear"), 3)
        assert cleared["reader"] == 1
        assert watchdog.healthz()[0] == 200


def read_blind(handle: str, index: int, stack_dir: str) -> None:
    """A reader that never sees new messages, as if its loads of the writer cursor were stale (a missing fence)."""
    with shmq.attach(handle, reader=index, stack_dumps=stack_dir, wait=wait.BusySpin()) as reader:
        blind(reader)
        try:
            reader.get(timeout=8)
        except shmq.QueueTimeout:
            pass


@pytest.mark.timeout(30)
def test_a_reader_that_spins_without_consuming_is_flagged_waiting_with_data_or_livelock(
        queue_name, children, stack_dir):
    with watched_queue(queue_name, children, stack_dir, read_blind, 1, n_chunks=8,
                       chunk_bytes=256) as (writer, (reader,), watchdog):
        for i in range(8):
            writer.put(i, timeout=1)
        event = watchdog.wait_for(
            "waiting_with_data or livelock",
            lambda e: e["event"] == "raise" and e["reader"] == 0 and (
                e["cause"] == "waiting_with_data" or e["rule"] == N.RULE_LIVELOCK), 5)
        assert event["pid"] == reader.pid
        assert event["spin_rate"] > 1000, event
        assert "read_blind" in event["stack"], event
        assert (event["flight"]["missing"][0]["who"], event["flight"]["missing"][0]["doing"]) == (
            "reader 0", "waiting_with_data"), event["flight"]
        livelock = watchdog.wait_for("livelock", about(N.RULE_LIVELOCK, reader=0), 5)
        assert livelock["cause"] == "spinning_with_data"
    reader.join(10)


def crunch_numbers_forever(seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        sum(range(1000))


def read_then_work_hard(handle: str, index: int, stack_dir: str) -> None:
    with shmq.attach(handle, reader=index, stack_dumps=stack_dir) as reader:
        reader.get(timeout=10)
        crunch_numbers_forever(4.0)
        drain(reader)


@pytest.mark.timeout(30)
def test_a_reader_busy_in_application_code_is_flagged_busy_not_frozen_with_the_function_it_is_stuck_in(
        queue_name, children, stack_dir):
    with watched_queue(queue_name, children, stack_dir, read_then_work_hard, 1, n_chunks=16,
                       chunk_bytes=256) as (writer, (reader,), watchdog):
        for i in range(4):
            writer.put(i, timeout=1)
        event = watchdog.wait_for("reader_stalled", about(N.RULE_READER_STALLED, reader=0), 5)
        assert (event["cause"], event["state"], event["pid"]) == ("busy", "busy", reader.pid)
        assert "crunch_numbers_forever" in event["stack"], event
        assert event["flight"]["missing"][0]["doing"] == "busy", event["flight"]
        assert event["stack_file"].startswith(stack_dir)
        watchdog.wait_for("its clear", about(N.RULE_READER_STALLED, reader=0, kind="clear"), 8)
        assert all(e["cause"] != "frozen" for e in watchdog.events), watchdog.brief()
    reader.join(10)


def consume_with_jitter(handle: str, index: int, stack_dir: str, expected: int) -> None:
    rng = random.Random(index)
    with shmq.attach(handle, reader=index, stack_dumps=stack_dir) as reader:
        received = drain(reader, lambda message: time.sleep(rng.uniform(0, 0.001)))  # a little work per item
    assert received == expected


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_a_healthy_bursty_workload_for_twenty_seconds_raises_no_alert(queue_name, children, stack_dir):
    capacity = 32
    rng = random.Random(7)
    bursts = []
    while sum(pause for _, pause in bursts) < 20:
        bursts.append((rng.randint(1, capacity + capacity // 2), rng.uniform(0.0, 0.3)))
    total = sum(size for size, _ in bursts)
    with watched_queue(queue_name, children, stack_dir, consume_with_jitter, 3, total, n_chunks=capacity,
                       chunk_bytes=1024) as (writer, readers, watchdog):
        started = time.monotonic()
        for size, pause in bursts:  # bursts up to 1.5 rings at full speed: the writer waits now and then
            for _ in range(size):
                writer.put(b"x" * 512, timeout=5)
            time.sleep(pause)
        assert time.monotonic() - started >= 20
        time.sleep(0.5)  # one more look after the last burst
        assert watchdog.healthz()[0] == 200
        assert watchdog.events == [], watchdog.brief()
        with shmq.stats.open(writer.handle) as view:
            assert view.snapshot().writer.waits > 0, "the bursts never filled the ring: not a real test"
    for reader in readers:
        reader.join(10)
        assert reader.exitcode == 0
