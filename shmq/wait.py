"""Wait strategies: what a participant does between two polls that found nothing.

The protocol never sleeps by itself; its wait loop reads::

    strategy.reset()                 # a wait begins
    while not poll():
        strategy.idle()              # nothing yet: back off one step
    if strategy.learns:
        strategy.arrived()           # the wait ended with an arrival

A strategy passed to ``shmq.create`` or ``shmq.attach`` is a template: each
participant gets its own bound copy, with a parker (how to sleep until the peer
signals) and the counters it reports through the stats record.
"""

from __future__ import annotations

import copy
import os
import time
from typing import Protocol

from . import sync


class Parker(Protocol):
    def park(self, timeout_s: float) -> None:
        """Sleep until a peer signals progress or `timeout_s` passes."""

    def idle_event(self, name: str, start_ns: int, duration_ns: int) -> None:
        """Note a sleep, for the trace of the operation in progress."""


class WaitCounters:
    """What the strategy did during the current wait; flushed to the stats record at its end.

    The prediction counters (Adaptive only) are flushed and cleared apart from the
    others: they change once per wait, not once per poll.
    """

    __slots__ = ("spins", "yields", "backoff_sleeps", "backoff_sleep_ns", "parks",
                 "predicted_wakes", "prediction_hits", "prediction_misses", "spin_before_arrival_ns")

    def __init__(self) -> None:
        self.clear()
        self.clear_predictions()

    def clear(self) -> None:
        self.spins = self.yields = self.backoff_sleeps = self.backoff_sleep_ns = self.parks = 0

    def clear_predictions(self) -> None:
        self.predicted_wakes = self.prediction_hits = self.prediction_misses = self.spin_before_arrival_ns = 0


class WaitStrategy:
    """Base class: `reset()` starts a wait, `idle()` backs off one step, `arrived()` ends a wait with an arrival.

    The wait loop calls `arrived()` only on strategies that set `learns`: the others need not know.
    """

    _parker: Parker
    counters: WaitCounters
    learns = False

    def bound(self, parker: Parker, counters: WaitCounters) -> WaitStrategy:
        """A fresh copy of this template for one participant."""
        strategy = copy.copy(self)
        strategy._parker = parker
        strategy.counters = counters
        strategy.reset()
        return strategy

    def reset(self) -> None:
        pass

    def idle(self) -> None:
        raise NotImplementedError

    def arrived(self) -> None:
        """The wait ended with an arrival (called only when `learns`)."""

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_") and k != "counters")
        return f"{type(self).__name__}({fields})"


class BusySpin(WaitStrategy):
    """Poll again at once. Lowest latency; burns a core while idle."""

    def idle(self) -> None:
        self.counters.spins += 1


class Yield(WaitStrategy):
    """Give the core to another runnable thread, then poll again."""

    def idle(self) -> None:
        self.counters.yields += 1
        os.sched_yield()


class Backoff(WaitStrategy):
    """The vLLM proposal: spin, and sleep `sleep_s` every `spins_per_sleep` spins. Kept for comparison."""

    def __init__(self, spins_per_sleep: int = 1000, sleep_s: float = 0.001) -> None:
        self.spins_per_sleep = spins_per_sleep
        self.sleep_s = sleep_s

    def reset(self) -> None:
        self._spun = 0

    def idle(self) -> None:
        self._spun += 1
        if self._spun < self.spins_per_sleep:
            self.counters.spins += 1
            return
        self._spun = 0
        start = time.monotonic_ns()
        time.sleep(self.sleep_s)
        slept = time.monotonic_ns() - start
        self.counters.backoff_sleeps += 1
        self.counters.backoff_sleep_ns += slept
        self._parker.idle_event("backoff_sleep", start, slept)


class SpinYieldPark(WaitStrategy):
    """The default: spin, then yield, then park until the peer signals.

    Few spins and many yields: with more processes than cores (8 readers on 2 cores)
    a spinning poll holds a core the writer or another reader needs, while a yield
    hands it over, and on an idle core returns at once (measured: 4 readers on 2
    cores, p99 929 -> 229 us at the same msgs/s and idle CPU as spins=200, yields=20).

    A yield that returns after more than `handed_over_s` gave the core to another
    process for a time slice (one that computes rather than waits): yielding again
    would wait for its next slice each time, and notice a message milliseconds late,
    so the wait parks at once, and the peer's wake-up runs it when the message comes.
    Measured beside two CPU-bound processes, one message every 10 ms: p50 360-681 us
    and p99 4.1-4.4 ms yielding on, 88-98 us and 0.21 ms parking. The other readers
    and the writer of a busy queue hold the core for far less than 1 ms, so the
    throughput rows do not move (small, 1/4/8 readers on 2 cores: within noise).

    Parking sleeps on a futex in the segment, woken by the peer only when it sees
    the parked flag (so a busy queue makes no syscall per message). Each park is
    bounded by `park_timeout_s` (at most 50 ms), so a lost wake-up heals itself.
    Without futexes, parks are sleeps that double from `first_sleep_s` up to
    `park_timeout_s`.
    """

    def __init__(self, spins: int = 20, yields: int = 200, park_timeout_s: float = 0.05,
                 first_sleep_s: float = 20e-6, handed_over_s: float = 1e-3) -> None:
        if not 0 < park_timeout_s <= 0.05:
            raise ValueError(f"park_timeout_s must be in (0, 0.05], got {park_timeout_s}")
        self.spins = spins
        self.yields = yields
        self.park_timeout_s = park_timeout_s
        self.first_sleep_s = first_sleep_s
        self.handed_over_s = handed_over_s
        self._handed_over_ns = int(handed_over_s * 1e9)

    _now = staticmethod(time.monotonic_ns)  #: the clock (a unit test may give an instance its own)

    def reset(self) -> None:
        self._step = 0
        self._sleep_s = self.first_sleep_s

    def idle(self) -> None:
        self._step += 1
        if self._step <= self.spins:
            self.counters.spins += 1
        elif self._step <= self.spins + self.yields:
            self.counters.yields += 1
            before = self._now()
            os.sched_yield()
            if self._now() - before > self._handed_over_ns:
                self._step = self.spins + self.yields  # the core is contended: park at the next step
        else:
            self.counters.parks += 1
            if sync.HAVE_FUTEX:
                self._parker.park(self.park_timeout_s)
            else:
                self._parker.park(self._sleep_s)
                self._sleep_s = min(self._sleep_s * 2, self.park_timeout_s)


class Adaptive(SpinYieldPark):
    """Learns the arrival rhythm; parks until just before the next arrival, then polls for a bounded budget.

    An engine sends one message per step, every 1-50 ms with steady timing. Parking
    costs a wake-up (tens of µs) per message; spinning costs the core. This strategy
    keeps the last `history` intervals between arrivals (the ends of its waits). When
    they agree (spread within `regularity` of their median) it predicts the next
    arrival at `last + shortest interval`, parks on the futex until `margin` before
    it (the peer still wakes it if the message comes earlier), and from there polls,
    yielding between polls, until the message comes or `spread + 2 * margin` runs out.

    `margin` covers how late a timed futex wakes (timer slack and scheduling, measured
    by `shmq bench --cadence`): it is learned, twice the mean lateness of its own
    timed wakes, kept within [min_margin_s, max_margin_s]. During those parks the
    thread's timer slack is `timer_slack_ns` (prctl PR_SET_TIMERSLACK; restored after).
    No predicted park is shorter than `min_park_s`: a timed wake is tens of µs late.
    Irregular traffic, a gap longer than predicted, or intervals too short to park in, fall back to
    SpinYieldPark, so an idle queue parks (about 0 CPU) and a burst never sleeps.
    The writer waiting on a full ring learns the rhythm of freed room the same way.
    Other keyword arguments are SpinYieldPark's, for the waits it does not predict.
    """

    def __init__(self, *, history: int = 8, regularity: float = 0.25, min_margin_s: float = 30e-6,
                 max_margin_s: float = 1e-3, min_park_s: float = 100e-6, timer_slack_ns: int = 1000,
                 **spin_yield_park) -> None:
        super().__init__(**spin_yield_park)
        if history < 2:
            raise ValueError(f"history must be at least 2 intervals, got {history}")
        if not 0 < min_margin_s <= max_margin_s:
            raise ValueError(f"need 0 < min_margin_s <= max_margin_s, got {min_margin_s} and {max_margin_s}")
        self.history = history
        self.regularity = regularity
        self.min_margin_s = min_margin_s
        self.max_margin_s = max_margin_s
        self.min_park_s = min_park_s
        self.timer_slack_ns = timer_slack_ns

    learns = True
    _replan = False  #: the history changed since the last plan
    _regular = False  #: until `history` intervals agree, waits are SpinYieldPark's
    _last_arrival = 0  #: _now() when the last wait ended with an arrival
    _lateness_ns = 0.0  #: how late timed wakes are, on average (exponential, 1/8 weight)
    _intervals: list | tuple = ()  #: the last `history` intervals between arrivals, ns, oldest first

    def bound(self, parker: Parker, counters: WaitCounters) -> WaitStrategy:
        strategy = super().bound(parker, counters)
        strategy._intervals = []
        strategy._plan()
        return strategy

    # -- learning ------------------------------------------------------------------------
    def _plan(self) -> None:
        """From the history: is the traffic regular, and if so the earliest arrival and the spin budget."""
        self._margin_ns = int(min(max(2 * self._lateness_ns, self.min_margin_s * 1e9), self.max_margin_s * 1e9))
        self._regular = False
        if len(self._intervals) < self.history:
            return
        ordered = sorted(self._intervals)
        shortest, longest, median = ordered[0], ordered[-1], ordered[len(ordered) // 2]
        self._regular = (longest - shortest <= self.regularity * median
                         and shortest - self._margin_ns >= self.min_park_s * 1e9)
        self._shortest_ns = shortest
        self._budget_ns = longest - shortest + 2 * self._margin_ns

    def _arrived(self, now: int) -> None:
        # Only the record: the planning waits for reset(), off the path from arrival to get() returning.
        if self._last_arrival:
            interval = now - self._last_arrival
            self._intervals.append(interval)
            if len(self._intervals) > self.history:
                del self._intervals[0]
            if interval < self._margin_ns + self.min_park_s * 1e9:
                self._regular = False  # too short to park in, so no plan can predict: skip planning
            else:
                self._replan = True
        self._last_arrival = now

    # -- one wait ------------------------------------------------------------------------
    def reset(self) -> None:
        super().reset()
        self._wake_at = self._spin_until = 0  # 0: no prediction for this wait (SpinYieldPark)
        self._woken_early = False
        if self._replan:
            self._replan = False
            self._plan()
        if self._regular:
            wake_at = self._last_arrival + self._shortest_ns - self._margin_ns
            if self._now() < wake_at:
                self._wake_at = wake_at

    def arrived(self) -> None:
        if not self._wake_at and self._step <= self.spins:
            # A wait that ended while spinning: a burst, no rhythm to learn. No clock read,
            # so back-to-back messages cost what they cost under SpinYieldPark.
            if self._last_arrival:
                self._intervals.clear()
                self._last_arrival = 0
                self._regular = False
            return
        now = self._now()
        c = self.counters
        if self._spin_until:  # arrived while spinning after a predicted wake-up
            c.prediction_hits += 1
            c.spin_before_arrival_ns += now - self._spin_from
        elif self._woken_early:  # arrived while parked for a prediction: earlier than learned
            c.prediction_misses += 1
        self._arrived(now)

    def idle(self) -> None:
        if self._spin_until:
            self._spin(self._now())
        elif self._wake_at:
            self._park_until_predicted()
        else:
            super().idle()

    def _park_until_predicted(self) -> None:
        now = self._now()
        if now < self._wake_at:
            self.counters.parks += 1
            with sync.timer_slack(self.timer_slack_ns):
                self._parker.park((self._wake_at - now) / 1e9)  # the peer wakes us if the message comes first
            now = self._now()
            if now < self._wake_at:
                self._woken_early = True  # by the message, or spuriously: poll, then park again
                return
            lateness = now - self._wake_at
            self._lateness_ns += (lateness - self._lateness_ns) / 8
        self.counters.predicted_wakes += 1
        self._spin_from, self._spin_until = now, now + self._budget_ns
        self._spin(now)

    def _spin(self, now: int) -> None:
        if now < self._spin_until:
            # Yield rather than spin: on a loaded machine the writer may need this core.
            self.counters.yields += 1
            os.sched_yield()
            return
        # The budget ran out: a miss. Park as SpinYieldPark does until the message comes.
        self.counters.prediction_misses += 1
        self._spin_until = self._wake_at = 0
        self._step = self.spins + self.yields  # the late interval joins the history: no prediction until it ages out


def default() -> WaitStrategy:
    return SpinYieldPark()


ALL = {cls.__name__: cls for cls in (BusySpin, Yield, Backoff, SpinYieldPark, Adaptive)}
