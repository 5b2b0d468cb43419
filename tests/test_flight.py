"""The flight recorder read from outside (shmq.flight, shmq flight): real processes, real faults."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

import shmq
from shmq import flight
from shmq import layout as L
from shmq.testing import blind

from .conftest import FORK

Op = L.FlightOp


def worker(handle: str, index: int, take: int, then: str, fault) -> None:
    """Reader `index`: take `take` messages, say so, then `then`: 'sleep' (busy in the application),
    'lease' (hold the next message in a lease() block), 'read' (wait in get() for ever) or 'blind' (in
    get(), spinning without taking what is there)."""
    with shmq.attach(handle, reader=index, stack_dumps=False) as reader:
        for _ in range(take):
            reader.get(timeout=30)
        fault.set()
        if then == "sleep":
            time.sleep(60)
        if then == "lease":
            with reader.lease(timeout=30):
                time.sleep(60)
        if then == "blind":
            blind(reader, while_=fault)
        while True:
            reader.get(timeout=60)


def wait_for(condition, what: str, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"not within {timeout_s} s: {what}"
        time.sleep(0.01)


def analysed(writer) -> tuple[flight.Flight, flight.Analysis]:
    with shmq.stats.open(writer.handle) as view:
        record = flight.read(view)
    return record, record.analyse()


def stalled_queue(queue_name, children, then: str):
    """Reader 0 keeps up; reader 1 takes 3 messages, then does `then`; the writer fills the ring behind it."""
    writer = shmq.create(2, name=queue_name, ring_bytes=8 * 256, stack_dumps=False)  # 8 frames of a small int
    ready = [FORK.Event(), FORK.Event()]
    culprit = children(worker, str(writer.handle), 1, 3, then, ready[1])
    children(worker, str(writer.handle), 0, 0, "read", ready[0])
    writer.wait_for_readers(timeout=10)
    for n in range(3):
        writer.put(n)
    assert ready[1].wait(10)
    return writer, culprit


def culprit_doing(writer, doing: str, what: str) -> flight.Analysis:
    """Message 3 put and taken by reader 0: the analysis, once it says reader 1 is `doing`."""
    writer.put(3)
    wait_for(lambda: analysed(writer)[1].reader_seqs.get(0) == 4, "reader 0 took message 3")
    wait_for(lambda: analysed(writer)[1].missing[0].doing == doing, what)
    return analysed(writer)[1]


@pytest.mark.timeout(40)
def test_a_stopped_reader_is_named_with_the_message_it_is_missing_and_what_it_last_did(queue_name, children):
    writer, culprit = stalled_queue(queue_name, children, "read")
    with writer:
        try:
            wait_for(lambda: analysed(writer)[1].reader_seqs.get(1) == 3, "reader 1 at message 3")
            os.kill(culprit.pid, signal.SIGSTOP)
            for n in range(3, 12):  # the ring holds 8 from reader 1's message 3: message 11 waits, times out
                writer.put(n, timeout=0.3 if n == 11 else None)
        except shmq.QueueTimeout:
            pass
        else:
            pytest.fail("the writer should have found the ring full")
        wait_for(lambda: analysed(writer)[1].reader_seqs[0] == 11, "reader 0 at message 11")
        record, analysis = analysed(writer)
        assert analysis.writer_seq == 11 and analysis.reader_seqs == {0: 11, 1: 3}
        assert analysis.first_missing == 3
        [verdict] = analysis.missing
        assert (verdict.who, verdict.pid, verdict.cursor, verdict.doing) == ("reader 1", culprit.pid, 3, "stopped")
        assert verdict.last.op in (Op.PARK, Op.GET)  # it was waiting in get() for message 3 when stopped
        assert verdict.last.seq in (2, 3)
        writer_ops = next(p for p in record.participants if p.who == "writer").operations
        assert writer_ops[-1].op is Op.TIMEOUT and writer_ops[-1].seq == 11
        assert writer_ops[-1].end_ns - writer_ops[-1].begin_ns >= 250_000_000  # the timeout carries its wait
        assert [op.seq for op in writer_ops if op.op is Op.PUT] == list(range(11))
        assert "message 3 is missing at reader 1" in analysis.summary()
        os.kill(culprit.pid, signal.SIGCONT)


@pytest.mark.timeout(40)
def test_a_killed_reader_is_dead_and_its_last_operation_is_the_last_message_it_took(queue_name, children):
    writer, culprit = stalled_queue(queue_name, children, "sleep")
    with writer:
        os.kill(culprit.pid, signal.SIGKILL)
        culprit.join(10)
        writer.put(3)
        wait_for(lambda: analysed(writer)[1].reader_seqs.get(0) == 4, "reader 0 took message 3")
        _, analysis = analysed(writer)
        [verdict] = analysis.missing
        assert (verdict.who, verdict.doing, verdict.cursor) == ("reader 1", "dead", 3)
        assert (verdict.last.op, verdict.last.seq) == (Op.GET, 2)
        assert f"pid {culprit.pid}) is gone" in verdict.detail


@pytest.mark.timeout(40)
def test_a_reader_busy_in_its_application_is_busy_since_the_message_it_took(queue_name, children):
    writer, culprit = stalled_queue(queue_name, children, "sleep")
    with writer:
        [verdict] = culprit_doing(writer, "busy", "reader 1 busy since message 2").missing
        assert verdict.who == "reader 1"
        assert "since it took message 2" in verdict.detail and verdict.last.op is Op.GET


@pytest.mark.timeout(40)
def test_a_reader_holding_a_lease_is_named_with_the_message_it_holds(queue_name, children):
    writer, culprit = stalled_queue(queue_name, children, "lease")
    with writer:
        [verdict] = culprit_doing(writer, "leasing", "reader 1 holds message 3 in a lease").missing
        assert (verdict.who, verdict.cursor) == ("reader 1", 3) and "holding message 3 in a lease() block" in verdict.detail
        assert (verdict.last.op, verdict.last.seq, verdict.last.ongoing) == (Op.LEASE, 3, True)


def test_a_lease_is_recorded_open_while_the_block_holds_it_and_counted_when_it_exits(queue_name):
    with shmq.create(1, name=queue_name, stack_dumps=False) as writer, \
            shmq.attach(writer.handle, 0, stack_dumps=False) as reader:
        writer.put(b"x" * 1000)

        def reader_ops() -> list:
            with shmq.stats.open(writer.handle) as view:
                record = flight.read(view)
            return [op for p in record.participants if p.who == "reader 0" for op in p.operations]

        with reader.lease(timeout=5):
            held = reader_ops()[-1]
            assert (held.op, held.seq, held.ongoing) == (Op.LEASE, 0, True)
        done = reader_ops()[-1]
        assert (done.op, done.seq, done.size) == (Op.LEASE, 0, held.size) and done.end_ns >= done.begin_ns > 0
        with shmq.stats.open(writer.handle) as view:
            assert view.snapshot().readers[0].messages == 1


@pytest.mark.timeout(40)
def test_a_livelocked_reader_waits_with_the_message_there_to_take(queue_name, children):
    writer, culprit = stalled_queue(queue_name, children, "blind")
    with writer:
        analysis = culprit_doing(writer, "waiting_with_data", "reader 1 in get(), message 3 there")
        assert analysis.first_missing == 3 and analysis.missing[0].who == "reader 1"
        assert "message 3 there to take" in analysis.missing[0].detail


@pytest.mark.timeout(40)
def test_shmq_flight_prints_the_merged_timeline_and_the_analysis_as_text_and_json(queue_name, children):
    writer, culprit = stalled_queue(queue_name, children, "sleep")
    with writer:
        command = [sys.executable, "-m", "shmq", "flight", queue_name]
        shown = subprocess.run([*command, "--json"], capture_output=True, text=True, timeout=60)
        assert shown.returncode == 0, shown.stderr
        report = json.loads(shown.stdout)
        assert report["queue"] == queue_name and report["analysis"]["first_missing"] is None  # all 3 taken by both
        begins = [op["begin_ns"] for op in report["operations"]]
        assert begins == sorted(begins) and {op["who"] for op in report["operations"]} == {"writer", "reader 0",
                                                                                            "reader 1"}
        assert [op["seq"] for op in report["operations"] if op["who"] == "writer" and op["op"] == "put"] == [0, 1, 2]
        text = subprocess.run(command, capture_output=True, text=True, timeout=60)
        assert "reader 1   took message 2" in text.stdout and "every reader has taken every message" in text.stdout


def test_shmq_flight_says_so_for_a_queue_without_a_recorder(queue_name):
    with shmq.create(1, name=queue_name, flight_entries=0, stack_dumps=False):
        shown = subprocess.run([sys.executable, "-m", "shmq", "flight", queue_name], capture_output=True, text=True,
                               timeout=60)
    assert shown.returncode == 1 and "flight_entries=0: it records nothing" in shown.stderr


# -- the analysis of a lost wake-up, on recorded operations (a unit: the fault cannot be made on demand) --
def operation(who: str, op: L.FlightOp, seq: int, begin_ns: int, end_ns: int | None = None) -> flight.Operation:
    return flight.Operation(who, op, seq, 0, begin_ns, begin_ns if end_ns is None else end_ns, 0, 0, 0)


def test_a_reader_parked_for_a_published_message_with_no_wake_recorded_is_flagged(queue_name):
    with shmq.create(1, name=queue_name, stack_dumps=False) as writer, shmq.attach(writer.handle, 0) as reader:
        writer.put("a")
        reader.get()
        writer.put("b")
        with shmq.stats.open(writer.handle) as view:
            record = flight.read(view)
    writer_ops = (operation("writer", Op.PUT, 0, 100), operation("writer", Op.PUT, 1, 300))
    reader_ops = (operation("reader 0", Op.GET, 0, 150), operation("reader 0", Op.PARK, 1, 200, end_ns=0))
    participants = (flight.Participant("writer", record.participants[0].record, writer_ops),
                    flight.Participant("reader 0", record.participants[1].record, reader_ops))
    lost = flight.Flight(record.queue, record.entries, record.snapshot, participants, 10_000).analyse()
    assert lost.missing[0].doing == "parked_unwoken" and "never woken" in lost.missing[0].detail
    assert lost.unwoken == ("reader 0 parked for message 1; the writer published it and recorded no wake-up "
                            "after that park",)
    woken = participants[0].operations + (operation("writer", Op.WAKE, 1, 300),)
    fine = flight.Flight(record.queue, record.entries, record.snapshot,
                         (flight.Participant("writer", record.participants[0].record, woken), participants[1]),
                         10_000).analyse()
    assert fine.unwoken == ()
