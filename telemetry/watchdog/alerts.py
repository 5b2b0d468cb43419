"""Alerts: findings that persist become alerts, raised once and cleared once.

A finding raises its alert at once (the rules already waited their threshold);
an alert clears only after its finding has been absent for ``clear_after_s``,
so a condition that flickers around its threshold does not flap. ``dead`` is
exact and clears as soon as the record no longer belongs to a dead process.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Callable

from shmq.flight import Flight
from shmq.stats import QueueId

from .. import names as N
from .rules import Finding

#: Rules whose clear waits for nothing: their findings are facts, not estimates.
EXACT_RULES = (N.RULE_DEAD,)


@dataclasses.dataclass
class Alert:
    """One active (or just cleared) alert."""

    queue: QueueId
    raised: Finding  #: the finding that raised it
    latest: Finding  #: the last finding while it held
    raised_at_s: float  #: Unix time of the raise
    absent_since_ns: int | None = None  #: monotonic time its finding was first missing
    cleared_at_s: float | None = None

    @property
    def key(self) -> tuple[str, str, str, int]:
        return (self.queue.shm_name, *self.raised.key)


@dataclasses.dataclass(frozen=True)
class Transition:
    """An alert raised or cleared at one poll."""

    kind: str  #: "raise" or "clear"
    alert: Alert
    reason: str = ""  #: why a clear happened, when it was not the condition going away (queue removed)
    flight: Flight | None = None  #: a raise: the queue's flight record, read at that poll


class AlertBook:
    """The set of active alerts, with the hysteresis that keeps them from flapping."""

    def __init__(self, clear_after_s: float, *, wall_clock: Callable[[], float] = time.time) -> None:
        self._clear_after_ns = int(clear_after_s * 1e9)
        self._wall_clock = wall_clock
        self._active: dict[tuple[str, str, str, int], Alert] = {}

    def active(self, shm_name: str | None = None) -> list[Alert]:
        return [a for a in self._active.values() if shm_name is None or a.queue.shm_name == shm_name]

    def active_keys(self, shm_name: str) -> set[tuple[str, str, int]]:
        return {a.raised.key for a in self._active.values() if a.queue.shm_name == shm_name}

    def update(self, queue: QueueId, findings: list[Finding], now_ns: int) -> list[Transition]:
        """Apply one poll's findings for `queue`: raise new ones, clear those absent long enough."""
        transitions = []
        present = set()
        for finding in findings:
            key = (queue.shm_name, *finding.key)
            present.add(key)
            alert = self._active.get(key)
            if alert is None:
                alert = self._active[key] = Alert(queue, finding, finding, self._wall_clock())
                transitions.append(Transition("raise", alert))
            else:
                alert.latest = finding
                alert.absent_since_ns = None
        for key, alert in list(self._active.items()):
            if alert.queue.shm_name != queue.shm_name or key in present:
                continue
            if alert.absent_since_ns is None:
                alert.absent_since_ns = now_ns
            wait_ns = 0 if alert.raised.rule in EXACT_RULES else self._clear_after_ns
            if now_ns - alert.absent_since_ns >= wait_ns:
                transitions.append(self._clear(key))
        return transitions

    def forget(self, shm_name: str, reason: str) -> list[Transition]:
        """Clear every alert of a queue that is no longer watched (its segment was unlinked)."""
        return [self._clear(key, reason) for key, a in list(self._active.items()) if a.queue.shm_name == shm_name]

    def _clear(self, key: tuple[str, str, str, int], reason: str = "") -> Transition:
        alert = self._active.pop(key)
        alert.cleared_at_s = self._wall_clock()
        return Transition("clear", alert, reason)


def event_fields(transition: Transition) -> dict:
    """The JSON-lines event of a raise or clear, without stacks (the event worker adds those)."""
    alert, kind = transition.alert, transition.kind
    f = alert.raised if kind == "raise" else alert.latest
    at = alert.raised_at_s if kind == "raise" else alert.cleared_at_s
    fields = {
        "event": kind,
        "time": round(at, 6),
        "time_iso": iso_time(at),
        "started_iso": iso_time(alert.raised_at_s),
        "queue": alert.queue.label,
        "shm_name": alert.queue.shm_name,
        "rule": f.rule,
        "cause": str(alert.raised.cause),
        "role": f.role,
        "reader": None if f.reader < 0 else f.reader,
        "pid": f.pid,
        "state": f.state,
        "lag": f.lag,
        "occupancy": f.occupancy,
        "capacity": f.capacity,
        "seconds_without_progress": f.stalled_s,
        "spin_rate": f.spin_rate,
        "time_to_full_s": None if math.isinf(f.time_to_full_s) else round(f.time_to_full_s, 3),
        "blocking_readers": [dataclasses.asdict(b) | {"cause": str(b.cause)} for b in f.blockers],
        "message": describe(alert.queue, alert.raised),
    }
    if kind == "clear":
        fields["duration_s"] = round(alert.cleared_at_s - alert.raised_at_s, 3)
        fields["message"] = f"resolved after {fields['duration_s']:.1f} s: {fields['message']}"
        if transition.reason:
            fields["reason"] = transition.reason
    return fields


def iso_time(unix_s: float) -> str:
    """RFC 3339 in UTC with milliseconds, as Alertmanager wants it."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(unix_s)) + f".{int(unix_s % 1 * 1000):03d}Z"


def describe(queue: QueueId, f: Finding) -> str:
    """One line an operator can act on."""
    who = f"{f.label} (pid {f.pid})" if f.pid else f.label
    where = f"queue {queue.label!r}"
    blockers = ", ".join(f"reader {b.reader} (pid {b.pid}, {b.cause})" for b in f.blockers)
    if f.rule == N.RULE_DEAD:
        behind = f"{f.lag} messages in the ring" if f.reader < 0 else f"{f.lag} messages behind"
        return f"{where}: {who} is dead ({f.cause}) while attached, {behind}"
    if f.rule == N.RULE_READER_STALLED:
        return (f"{where}: {who} has {f.lag} messages pending and has not moved for {f.stalled_s:.1f} s: "
                f"{f.cause} (state {f.state})")
    if f.rule == N.RULE_WRITER_BLOCKED:
        return f"{where}: {who} has waited {f.stalled_s:.1f} s for room in the ring; held by {blockers or 'nobody'}"
    if f.rule == N.RULE_LIVELOCK:
        return (f"{where}: {who} spins at {f.spin_rate:.0f}/s ({f.cause}) while no cursor has moved for "
                f"{f.stalled_s:.1f} s")
    ttf = "full" if f.time_to_full_s == 0 else f"full in {f.time_to_full_s:.1f} s"
    return f"{where}: ring {f.occupancy:,}/{f.capacity:,} bytes and {ttf}; slowest: {blockers}"
