"""wait.Adaptive: learning the arrival rhythm (units, on a fake clock), then real processes at a steady cadence."""

from __future__ import annotations

import time

import pytest

import shmq
import shmq.stats
from shmq import sync, wait

MS = 1_000_000  # ns


class FakeClock:
    def __init__(self) -> None:
        self.ns = 10**12

    def __call__(self) -> int:
        return self.ns


class FakeParker:
    """Records each park's timeout and the thread's timer slack during it; a park lasts its whole
    timeout plus `lateness_ns` unless `woken_after_ns`."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.parks: list[float] = []
        self.slacks: list[int | None] = []
        self.lateness_ns = 0
        self.woken_after_ns: int | None = None

    def park(self, timeout_s: float) -> None:
        self.parks.append(timeout_s)
        self.slacks.append(sync.timer_slack_ns())
        if self.woken_after_ns is not None:
            self.clock.ns += self.woken_after_ns
        else:
            self.clock.ns += int(timeout_s * 1e9) + self.lateness_ns

    def idle_event(self, name: str, start_ns: int, duration_ns: int) -> None:
        pass


def adaptive(**options) -> tuple[wait.Adaptive, FakeClock, FakeParker, wait.WaitCounters]:
    clock = FakeClock()
    parker = FakeParker(clock)
    counters = wait.WaitCounters()
    template = wait.Adaptive(**options)
    template._now = clock
    return template.bound(parker, counters), clock, parker, counters


def arrive_every(strategy, clock: FakeClock, intervals_ns) -> None:
    """Waits that each end with an arrival `interval` after the previous one, after polling past the
    spins (a wait that ends while spinning is a burst, which Adaptive does not learn from)."""
    for interval in intervals_ns:
        at = clock.ns + interval
        strategy.reset()
        for _ in range(strategy.spins + 1):
            strategy.idle()
        clock.ns = max(clock.ns, at)
        strategy.arrived()


def test_a_steady_rhythm_parks_until_just_before_the_next_arrival_then_spins_to_a_hit():
    strategy, clock, parker, counters = adaptive(history=4, timer_slack_ns=2000)
    arrive_every(strategy, clock, [10 * MS] * 5)
    counters.clear()
    clock.ns += 1 * MS  # the application worked for 1 ms after the last arrival
    slack_before = sync.timer_slack_ns()
    strategy.reset()
    strategy.idle()

    # It parked once, until the margin before the predicted arrival (9 ms from now), with its own
    # timer slack (Linux), which it restored after.
    margin_ns = strategy._margin_ns
    assert parker.parks == [pytest.approx((9 * MS - margin_ns) / 1e9)]
    assert parker.slacks == [None if slack_before is None else 2000] and sync.timer_slack_ns() == slack_before
    assert counters.predicted_wakes == 1 and counters.parks == 1
    # Then it polls without parking, within its budget: a yield right after the park, then one per idle().
    for _ in range(5):
        strategy.idle()
    assert len(parker.parks) == 1 and counters.yields == 6
    clock.ns += margin_ns  # the message comes when predicted
    strategy.arrived()
    assert (counters.prediction_hits, counters.prediction_misses) == (1, 0)
    assert counters.spin_before_arrival_ns == margin_ns


def test_irregular_traffic_falls_back_to_spin_yield_park():
    strategy, clock, parker, counters = adaptive(history=4, spins=3, yields=2)
    arrive_every(strategy, clock, [ms * MS for ms in (2, 30, 5, 17, 40, 3, 25, 9, 33, 4, 12, 21)])
    assert parker.parks == []  # no window of 4 intervals agreed: nothing was predicted
    counters.clear()
    strategy.reset()
    for _ in range(6):
        strategy.idle()
    # Exactly SpinYieldPark's steps: 3 spins, 2 yields, then a park of park_timeout_s.
    assert (counters.spins, counters.yields, parker.parks) == (3, 2, [strategy.park_timeout_s])
    assert counters.predicted_wakes == 0


def test_a_wait_that_ends_while_spinning_is_a_burst_and_forgets_the_rhythm():
    strategy, clock, parker, counters = adaptive(history=4)
    arrive_every(strategy, clock, [5 * MS] * 5)
    clock.ns += 10_000
    strategy.reset()
    assert strategy._wake_at  # the rhythm is learned: this wait would park for a prediction...
    strategy._wake_at = 0  # ...but say the message was there at once (a burst): no prediction was made
    strategy.arrived()
    strategy.reset()
    assert strategy._wake_at == 0 and not strategy._regular
    arrive_every(strategy, clock, [5 * MS] * 4)
    strategy.reset()
    assert strategy._wake_at == 0  # one arrival starts the history again: 4 intervals need 5
    arrive_every(strategy, clock, [5 * MS])
    clock.ns += 10_000
    strategy.reset()
    assert strategy._wake_at


def test_intervals_too_short_to_park_in_never_park_for_a_prediction():
    strategy, clock, parker, counters = adaptive(history=4, min_park_s=100e-6)
    arrive_every(strategy, clock, [50_000] * 8)  # 50 µs apart, each after polling past the spins
    counters.clear()
    strategy.reset()
    strategy.idle()
    assert parker.parks == [] and counters.predicted_wakes == 0 and counters.spins == 1


def test_a_message_later_than_the_budget_is_a_miss_and_the_wait_parks_like_the_default():
    strategy, clock, parker, counters = adaptive(history=4)
    arrive_every(strategy, clock, [5 * MS] * 5)
    strategy.reset()
    strategy.idle()  # the predicted park
    budget_ns = strategy._budget_ns
    clock.ns += budget_ns + 1
    strategy.idle()  # the budget is spent: a miss, and no more spinning
    strategy.idle()
    assert counters.prediction_misses == 1 and counters.prediction_hits == 0
    assert parker.parks[-1] == strategy.park_timeout_s
    clock.ns += 20 * MS
    strategy.arrived()
    # The late interval is in the history now: the next wait predicts nothing.
    strategy.reset()
    strategy.idle()
    assert counters.predicted_wakes == 1 and strategy._wake_at == 0


def test_a_message_earlier_than_predicted_is_a_miss():
    strategy, clock, parker, counters = adaptive(history=4)
    arrive_every(strategy, clock, [5 * MS] * 5)
    parker.woken_after_ns = 1 * MS  # the writer wakes the parked reader with the message
    strategy.reset()
    strategy.idle()
    strategy.arrived()
    assert (counters.predicted_wakes, counters.prediction_hits, counters.prediction_misses) == (0, 0, 1)


def test_the_margin_learns_how_late_timed_wakes_are_and_stays_bounded():
    strategy, clock, parker, counters = adaptive(history=4, min_margin_s=20e-6, max_margin_s=400e-6)
    assert strategy._margin_ns == 20_000
    parker.lateness_ns = 100_000  # every timed wake is 100 µs late
    arrive_every(strategy, clock, [5 * MS] * 5)
    margins = []
    for _ in range(30):
        strategy.reset()
        strategy.idle()  # park, wake late, start the spin budget
        clock.ns = strategy._spin_from + 10_000
        strategy.arrived()
        clock.ns = strategy._last_arrival
        margins.append(strategy._margin_ns)
        clock.ns += 0  # the next wait starts at once
    assert margins[0] < margins[-1] <= 400_000
    assert margins[-1] == pytest.approx(2 * 100_000, rel=0.1)  # twice the mean lateness


def test_adaptive_checks_its_arguments():
    with pytest.raises(ValueError, match="history"):
        wait.Adaptive(history=1)
    with pytest.raises(ValueError, match="min_margin_s"):
        wait.Adaptive(min_margin_s=1e-3, max_margin_s=1e-4)


# -- real processes --------------------------------------------------------------------------------
def _read_at_cadence(handle: str, count: int, idle_s: float, conn) -> None:
    with shmq.attach(handle, reader=0, wait=wait.Adaptive()) as reader:
        for _ in range(count):
            reader.get(timeout=10)
        # Then the queue goes quiet: how much of a core does waiting on it cost?
        cpu0, wall0 = time.process_time(), time.perf_counter()
        with pytest.raises(shmq.QueueTimeout):
            reader.get(timeout=idle_s)
        conn.send(((time.process_time() - cpu0) / (time.perf_counter() - wall0)))


@pytest.mark.timeout(60)
def test_at_a_steady_cadence_the_reader_predicts_and_hits_and_on_an_idle_queue_it_parks(children):
    import multiprocessing

    count, period_s, idle_s = 80, 0.004, 1.0
    receive_end, send_end = multiprocessing.get_context("fork").Pipe(duplex=False)
    with shmq.create(1, name="adaptive-cadence") as writer:
        child = children(_read_at_cadence, str(writer.handle), count, idle_s, send_end)
        at = time.perf_counter()
        for seq in range(count):
            at += period_s
            time.sleep(max(0.0, at - time.perf_counter()))
            writer.put(seq, timeout=10)
        assert receive_end.poll(30), "the reader sent no idle figure"
        idle_cpu_share = receive_end.recv()
        record = shmq.stats.open(str(writer.handle)).snapshot().readers[0]
        child.join(10)
    assert child.exitcode == 0
    assert record.predicted_wakes > 0 and record.prediction_hits > 0, record
    assert record.prediction_hits + record.prediction_misses <= record.waits
    assert record.spin_before_arrival_ns > 0
    # Idle: parked, not spinning (SpinYieldPark's bound: a small fraction of a core).
    assert idle_cpu_share < 0.05, idle_cpu_share
    assert record.parks > record.predicted_wakes  # the idle wait parked beyond the predicted parks


@pytest.mark.timeout(60)
def test_a_writer_on_a_full_ring_learns_the_readers_rhythm(children):
    def slow_reader(handle: str, count: int) -> None:
        with shmq.attach(handle, reader=0) as reader:
            at = time.perf_counter()
            for _ in range(count):
                at += 0.004
                time.sleep(max(0.0, at - time.perf_counter()))
                reader.get(timeout=10)

    count = 80
    with shmq.create(1, name="adaptive-writer", n_chunks=2, chunk_bytes=256, wait=wait.Adaptive()) as writer:
        child = children(slow_reader, str(writer.handle), count)
        for seq in range(count):
            writer.put(seq, timeout=10)
        child.join(20)
        record = shmq.stats.open(str(writer.handle)).snapshot().writer
    assert child.exitcode == 0
    assert record.predicted_wakes > 0 and record.prediction_hits > 0, record
