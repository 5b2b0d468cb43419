"""The watchdog's rules and alert hysteresis, on made-up snapshots (the fault tests use real processes)."""

from __future__ import annotations

import dataclasses
import math

import pytest

import shmq
from shmq.layout import HIST_BUCKETS, ParticipantState as State, Role
from shmq.stats import ParticipantStats, QueueStats
from shmq.telemetry import names as N
from shmq.stats import QueueId
from shmq.telemetry.watchdog.alerts import AlertBook, event_fields
from shmq.telemetry.watchdog.rules import Cause, QueueMonitor, Thresholds

S = 1_000_000_000  # ns per second
FRAME = 256  # the ring bytes of each made-up message: a small frame
TICK = S // 10  # the default poll interval
QUEUE = QueueId("shmq-test", "engine")


def record(index: int, *, cursor: int = 0, state: State = State.WAITING_READ, pid: int | None = None,
           heartbeat_ns: int = 0, progress_ns: int = 0, state_since_ns: int = 0, spins: int = 0) -> ParticipantStats:
    counters = {f.name: 0 for f in dataclasses.fields(ParticipantStats) if f.type == "int"}
    counters.update(
        role=Role.WRITER if index < 0 else Role.READER, index=index, pid=1000 + index if pid is None else pid,
        start_time=1, state=state, state_since_ns=state_since_ns, heartbeat_ns=heartbeat_ns,
        progress_ns=progress_ns, cursor=cursor, position=cursor * FRAME, spins=spins, histogram=(0,) * HIST_BUCKETS)
    return ParticipantStats(**counters)


def snapshot(now_ns: int, writer_cursor: int, readers: list[ParticipantStats], *, n_chunks: int = 16,
             writer_state: State = State.BUSY, writer_since_ns: int = 0, writer_spins: int = 0,
             writer_waits_for: int = 0) -> QueueStats:
    writer = record(-1, cursor=writer_cursor, state=writer_state, heartbeat_ns=now_ns, state_since_ns=writer_since_ns,
                    spins=writer_spins)
    return QueueStats(shm_name=QUEUE.shm_name, name=QUEUE.label, creator_pid=999, created_ns=0, n_readers=len(readers),
                      n_remote_readers=0, ring_bytes=n_chunks * FRAME, frame_bytes=16, stats_enabled=True, endpoint="",
                      writer_cursor=writer_cursor, writer_position=writer_cursor * FRAME,
                      monotonic_ns=now_ns, time_ns=now_ns, writer=writer, readers=tuple(readers),
                      writer_waits_for=writer_waits_for)


class Harness:
    """A monitor and an alert book fed one snapshot per simulated 100 ms poll."""

    def __init__(self, thresholds: Thresholds = Thresholds(), dead: set[int] = frozenset(),
                 run_state: dict[int, str] | None = None) -> None:
        self.monitor = QueueMonitor(thresholds, is_alive=lambda pid, start: pid not in dead,
                                    run_state=lambda pid: (run_state or {}).get(pid, None if pid in dead else "S"))
        self.book = AlertBook(thresholds.clear_after_s, wall_clock=lambda: self.now / S)
        self.now = 10 * S
        self.raised: list = []
        self.cleared: list = []

    def poll(self, snap: QueueStats):
        findings = self.monitor.observe(snap, self.book.active_keys(QUEUE.shm_name))
        for t in self.book.update(QUEUE, findings, snap.monotonic_ns):
            (self.raised if t.kind == "raise" else self.cleared).append(t)
        return findings

    def rules_raised(self) -> list[tuple[str, str]]:
        return [(t.alert.raised.rule, str(t.alert.raised.cause)) for t in self.raised]


def run_stalled_reader(h: Harness, seconds: float, *, state: State, beating: bool = True):
    """Reader 0 keeps up, reader 1 stops at cursor 5 while the writer goes on at 10 messages a second."""
    findings = []
    for _ in range(int(seconds * 10)):
        h.now += TICK
        wc = 5 + (h.now - 10 * S) // TICK
        fresh = h.now if beating else 10 * S
        readers = [record(0, cursor=wc, heartbeat_ns=h.now, progress_ns=h.now),
                   record(1, cursor=5, state=state, heartbeat_ns=fresh, progress_ns=10 * S)]
        findings = h.poll(snapshot(h.now, wc, readers, n_chunks=64))
    return findings


def stalled(findings) -> list:
    return [f for f in findings if f.rule == N.RULE_READER_STALLED]


@pytest.mark.parametrize("state, beating, cause", [
    (State.BUSY, True, Cause.BUSY),
    (State.WAITING_READ, True, Cause.WAITING_WITH_DATA),
    (State.BUSY, False, Cause.FROZEN),
    (State.WAITING_READ, False, Cause.FROZEN),
])
def test_a_reader_with_data_pending_that_does_not_move_for_T_is_stalled_and_classified(state, beating, cause):
    h = Harness()
    assert not stalled(run_stalled_reader(h, 0.9, state=state, beating=beating)), "flagged before T"
    findings = stalled(run_stalled_reader(h, 0.3, state=state, beating=beating))
    assert [(f.reader, f.cause) for f in findings] == [(1, cause)]
    assert findings[0].stalled_s >= 1.0 and findings[0].lag > 0


def test_a_stopped_process_is_frozen_even_before_its_heartbeat_goes_stale():
    h = Harness(run_state={1001: "T"})
    findings = stalled(run_stalled_reader(h, 1.2, state=State.BUSY))
    assert [f.cause for f in findings] == [Cause.FROZEN]


def test_a_reader_with_nothing_to_read_is_never_stalled_however_long_it_waits():
    h = Harness()
    for tick in range(100):
        h.now += TICK
        snap = snapshot(h.now, 7, [record(0, cursor=7, heartbeat_ns=h.now, progress_ns=S)])
        assert not h.poll(snap)


def test_stall_time_counts_from_when_data_arrived_not_from_the_last_move():
    h = Harness()
    for _ in range(30):  # idle for 3 s: no data
        h.now += TICK
        h.poll(snapshot(h.now, 5, [record(0, cursor=5, state=State.BUSY, heartbeat_ns=h.now, progress_ns=S)]))
    for tick in range(12):  # then data arrives and the reader does not take it
        h.now += TICK
        findings = h.poll(snapshot(h.now, 6, [record(0, cursor=5, state=State.BUSY, heartbeat_ns=h.now,
                                                     progress_ns=S)]))
        assert bool(stalled(findings)) == (tick >= 10), tick


def test_a_dead_participant_is_flagged_at_the_first_poll_and_named():
    h = Harness(dead={1001})
    h.now += TICK
    findings = h.poll(snapshot(h.now, 3, [record(0, cursor=3, heartbeat_ns=h.now),
                                          record(1, cursor=1, state=State.BUSY, heartbeat_ns=h.now)]))
    dead = [f for f in findings if f.rule == N.RULE_DEAD]
    assert [(f.reader, f.pid, f.cause) for f in dead] == [(1, 1001, Cause.EXITED)]
    assert not stalled(findings), "a dead reader is reported dead, not stalled"


def test_a_reused_pid_is_dead_with_its_own_cause():
    h = Harness(dead={1000}, run_state={1000: "S"})  # the pid runs, but not the process that registered
    h.now += TICK
    findings = h.poll(snapshot(h.now, 0, [record(0, heartbeat_ns=h.now)]))
    assert [(f.rule, f.cause) for f in findings] == [(N.RULE_DEAD, Cause.PID_REUSED)]


def test_closed_and_evicted_records_are_not_dead_even_when_their_process_is_gone():
    h = Harness(dead={1000, 1001})
    h.now += TICK
    readers = [record(0, state=State.CLOSED), record(1, state=State.EVICTED)]
    assert not h.poll(snapshot(h.now, 9, readers))


def fill(h: Harness, occupancy_per_tick: list[int], n_chunks: int = 16):
    """The writer advances by the given steps while reader 0 stays at 0; returns findings per poll."""
    out = []
    wc = 0
    for step in occupancy_per_tick:
        h.now += TICK
        wc += step
        out.append(h.poll(snapshot(h.now, wc, [record(0, cursor=0, state=State.BUSY, heartbeat_ns=h.now,
                                                      progress_ns=h.now)], n_chunks=n_chunks)))
    return out


def freeze(findings) -> list:
    return [f for f in findings if f.rule == N.RULE_FREEZE_RISK]


def test_freeze_risk_is_raised_on_the_second_poll_above_three_quarters_while_filling():
    h = Harness()
    polls = fill(h, [1] * 14)  # one more slot every 100 ms: 10 per second, 16 slots
    raised_at = next(i for i, findings in enumerate(polls) if freeze(findings))
    assert raised_at + 1 == 13, "occupancy 12 (75%) holds first at poll 12, twice at poll 13"
    finding = freeze(polls[raised_at])[0]
    assert (finding.role, finding.reader, finding.occupancy) == ("writer", -1, 13 * FRAME)
    assert finding.time_to_full_s == pytest.approx(0.3, abs=0.05)
    assert [b.reader for b in finding.blockers] == [0]


def run_ring(h: Harness, steps: list[tuple[int, int]], n_chunks: int = 16) -> list:
    """Each poll the writer and reader 0 advance by the given steps; returns the freeze_risk findings per poll."""
    wc = rc = 0
    out = []
    for write, read in steps:
        h.now += TICK
        wc, rc = wc + write, rc + read
        reader = record(0, cursor=rc, state=State.BUSY, heartbeat_ns=h.now, progress_ns=h.now)
        out.append(freeze(h.poll(snapshot(h.now, wc, [reader], n_chunks=n_chunks))))
    return out


def test_bursts_that_fill_the_ring_while_the_reader_keeps_reading_are_no_freeze_risk():
    # Caught high on two polls in a row, but the slowest reader moved and the ring drained in between.
    cycle = [(13, 0), (3, 4), (12, 12), (0, 8), (0, 4)]  # occupancy 13, 12, 12, 4, 0
    polls = run_ring(Harness(), cycle * 6)
    assert not any(polls)


def test_a_reader_slower_than_the_writer_raises_freeze_risk_after_three_rising_polls():
    polls = run_ring(Harness(), [(3, 1)] * 16, n_chunks=32)  # occupancy 2, 4, ... 24 (75 %) at poll 12, 26, 28
    assert [bool(p) for p in polls] == [False] * 13 + [True] * 3
    assert polls[13][0].cause == Cause.BUSY and polls[13][0].occupancy == 28 * FRAME


def test_a_ring_that_is_high_but_no_longer_filling_has_no_freeze_risk():
    h = Harness()
    polls = fill(h, [2] * 6 + [0] * 30)  # jumps to 12 of 16 and stays there
    assert math.isinf(h.monitor.time_to_full_s)
    assert not any(freeze(f) for f in polls[-15:])


def test_freeze_risk_holds_while_the_ring_is_full_and_clears_once_after_it_drains():
    h = Harness(Thresholds(clear_after_s=1.0))
    fill(h, [1] * 16 + [0] * 20)  # fills, then the writer is blocked at 16 of 16
    assert h.monitor.time_to_full_s == 0
    assert h.rules_raised() == [(N.RULE_FREEZE_RISK, "busy")] and not h.cleared
    for _ in range(20):  # the reader catches up
        h.now += TICK
        h.poll(snapshot(h.now, 16, [record(0, cursor=16, state=State.BUSY, heartbeat_ns=h.now, progress_ns=h.now)]))
    assert [t.alert.raised.rule for t in h.cleared] == [N.RULE_FREEZE_RISK]


def test_a_condition_flickering_around_its_threshold_raises_once_and_clears_once():
    h = Harness(Thresholds(clear_after_s=2.0))
    wc = 0
    for _ in range(8):  # a reader that moves once every 1.4 s with data always pending: stalled 1.0-1.4 s each time
        for tick in range(14):
            h.now += TICK
            wc += 1
            readers = [record(0, cursor=wc - 5 - tick, state=State.BUSY, heartbeat_ns=h.now)]  # moves at tick 0
            h.poll(snapshot(h.now, wc, readers, n_chunks=64))
    assert [t.alert.raised.rule for t in h.raised] == [N.RULE_READER_STALLED]
    assert not h.cleared
    for _ in range(25):  # healthy for 2.5 s
        h.now += TICK
        h.poll(snapshot(h.now, wc, [record(0, cursor=wc, state=State.BUSY, heartbeat_ns=h.now)], n_chunks=64))
    assert len(h.cleared) == 1


def test_the_writer_blocked_for_T_names_the_readers_that_hold_the_minimum_cursor():
    h = Harness()
    findings = []
    for _ in range(12):
        h.now += TICK
        readers = [record(0, cursor=16, heartbeat_ns=h.now), record(1, cursor=0, state=State.BUSY, heartbeat_ns=h.now),
                   record(2, cursor=0, state=State.BUSY, heartbeat_ns=10 * S)]
        findings = h.poll(snapshot(h.now, 16, readers, writer_state=State.WAITING_WRITE, writer_since_ns=10 * S))
    blocked = [f for f in findings if f.rule == N.RULE_WRITER_BLOCKED]
    assert len(blocked) == 1 and blocked[0].stalled_s >= 1.0
    assert [(b.reader, b.cause) for b in blocked[0].blockers] == [(1, Cause.BUSY), (2, Cause.FROZEN)]
    message = next(event_fields(t)["message"] for t in h.raised if t.alert.raised.rule == N.RULE_WRITER_BLOCKED)
    assert "reader 1 (pid 1001, busy), reader 2 (pid 1002, frozen)" in message


@pytest.mark.parametrize("waits_for_cursor, cause", [(3, Cause.BUSY), (2, Cause.WAITING_WITH_SPACE)])
def test_a_parked_writer_is_blocked_by_readers_short_of_the_position_it_waits_for_and_by_none_past_it(
        waits_for_cursor, cause):
    # By the bytes free alone (one frame of 4 unread) the next frame would fit: the position the parked
    # writer waits for says whether the reader holds it back.
    h = Harness()
    findings = []
    for _ in range(12):
        h.now += TICK
        readers = [record(0, cursor=2, state=State.BUSY, heartbeat_ns=h.now)]
        findings = h.poll(snapshot(h.now, 3, readers, n_chunks=4, writer_state=State.WAITING_WRITE,
                                   writer_since_ns=10 * S, writer_waits_for=waits_for_cursor * FRAME))
    assert [f.cause for f in findings if f.rule == N.RULE_WRITER_BLOCKED] == [cause]


def spin(h: Harness, seconds: float, *, pending: int, rate_per_tick: int):
    findings = []
    spins = 0
    for _ in range(int(seconds * 10)):
        h.now += TICK
        spins += rate_per_tick
        readers = [record(0, cursor=5, state=State.WAITING_READ, heartbeat_ns=h.now, progress_ns=10 * S, spins=spins)]
        findings = h.poll(snapshot(h.now, 5 + pending, readers, n_chunks=64))
    return [f for f in findings if f.rule == N.RULE_LIVELOCK]


def test_a_reader_spinning_while_messages_wait_for_it_and_nothing_moves_is_a_livelock():
    findings = spin(Harness(), 1.5, pending=3, rate_per_tick=50_000)
    assert [(f.reader, f.cause) for f in findings] == [(0, Cause.SPINNING_WITH_DATA)]
    assert findings[0].spin_rate == pytest.approx(500_000, rel=0.05)


def test_a_busy_spinning_reader_on_an_idle_queue_is_not_a_livelock():
    assert not spin(Harness(), 3.0, pending=0, rate_per_tick=50_000)


def test_a_parked_reader_that_barely_spins_is_not_a_livelock():
    assert not spin(Harness(), 3.0, pending=3, rate_per_tick=10)


def test_clear_events_say_how_long_the_alert_lasted():
    h = Harness(Thresholds(clear_after_s=0.5))
    run_stalled_reader(h, 1.2, state=State.BUSY)
    for _ in range(10):
        h.now += TICK
        h.poll(snapshot(h.now, 20, [record(0, cursor=20, heartbeat_ns=h.now), record(1, cursor=20, heartbeat_ns=h.now)],
                        n_chunks=64))
    event = event_fields(h.cleared[0])
    assert event["event"] == "clear" and event["rule"] == N.RULE_READER_STALLED and event["reader"] == 1
    assert event["duration_s"] > 0.5 and event["message"].startswith("resolved after")


def test_a_snapshot_record_is_exactly_the_dataclass_its_fields_describe(writer):
    # shmq.stats builds records without calling __init__ (the watchdog snapshots every queue ten times a second)
    with shmq.attach(writer.handle, 0) as reader, shmq.stats.open(writer.handle) as view:
        writer.put("one")
        reader.get()
        snap = view.snapshot()
    for record in (snap.writer, *snap.readers):
        assert vars(record).keys() == {f.name for f in dataclasses.fields(ParticipantStats)}
        assert record == ParticipantStats(**vars(record))
    assert (snap.writer.index, snap.writer.cursor, snap.readers[0].cursor, snap.readers[0].messages) == (-1, 1, 1, 1)
