"""The watchdog's poll loop: snapshot every watched queue, apply the rules, publish what changed.

Everything it reads comes from read-only mappings (``shmq.stats``) and /proc,
so a watchdog crash or restart has no effect on the queues. A snapshot that
fails (a corrupt record) skips that queue for one poll; a segment that is
unlinked is forgotten and its alerts cleared.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from typing import Callable

from shmq import flight, procs
from shmq.errors import ShmqError
from shmq.stats import QueueId, QueueStats, Segments

from .alerts import Alert, AlertBook, Transition
from .events import EventWriter
from .liveness import PidWatch
from .metrics import WatchdogMetrics
from .rules import QueueMonitor, Thresholds

log = logging.getLogger("shmq.watchdog")

DEFAULT_INTERVAL_S = 0.1
#: /healthz reports the watchdog itself unhealthy when it has not polled for this many intervals.
STALE_POLLS = 20


class Watchdog:
    """Polls `segments` every `interval_s`; raises and clears alerts; feeds events, metrics and health."""

    def __init__(self, segments: Segments, *, thresholds: Thresholds = Thresholds(),
                 interval_s: float = DEFAULT_INTERVAL_S, events: EventWriter | None = None,
                 metrics: WatchdogMetrics | None = None, run_state: Callable[[int], str | None] = procs.run_state,
                 clock: Callable[[], int] = time.monotonic_ns) -> None:
        self.segments = segments
        self.thresholds = thresholds
        self.interval_s = interval_s
        self._events = events
        self._metrics = metrics
        self._run_state = run_state
        self._clock = clock
        self._pids = PidWatch()
        self._book = AlertBook(thresholds.clear_after_s)
        self._monitors: dict[str, QueueMonitor] = {}
        self._unreadable: set[str] = set()
        self._active: tuple[Alert, ...] = ()  # published after each poll, for other threads
        self._last_poll_ns: int | None = None
        self.polls = 0
        self.latest: dict[str, QueueStats] = {}  #: each watched queue's snapshot from the last poll, by shm name

    # -- one poll -------------------------------------------------------------------------
    def poll(self) -> list[Transition]:
        started = time.perf_counter()
        transitions: list[Transition] = []
        _, removed = self.segments.refresh()
        for queue in removed:
            transitions += self._forget(queue)
        self._pids.begin()
        for shm_name, view in self.segments.views.items():
            queue = self.segments.ids[shm_name]
            try:
                snap = view.snapshot()
            except (ShmqError, ValueError, OSError) as e:  # a record with impossible values
                if shm_name not in self._unreadable:
                    self._unreadable.add(shm_name)
                    log.warning("shmq watchdog: cannot read %s: %s", shm_name, e)
                continue
            self._unreadable.discard(shm_name)
            self.latest[shm_name] = snap
            monitor = self._monitors.get(shm_name)
            if monitor is None:
                monitor = self._monitors[shm_name] = QueueMonitor(self.thresholds, is_alive=self._pids.alive,
                                                                  run_state=self._run_state)
            findings = monitor.observe(snap, self._book.active_keys(shm_name))
            transitions += self._with_flight(view, self._book.update(queue, findings, snap.monotonic_ns))
            if self._metrics is not None:
                self._metrics.time_to_full[queue.label] = monitor.time_to_full_s
        self._pids.end()
        self._publish(transitions)
        self._active = tuple(self._book.active())
        self._last_poll_ns = self._clock()
        self.polls += 1
        if self._metrics is not None:
            self._metrics.poll_seconds.observe(time.perf_counter() - started)
        return transitions

    @staticmethod
    def _with_flight(view, transitions: list[Transition]) -> list[Transition]:
        """Raises carry the queue's flight record: what every participant did before it (read once a poll)."""
        if not any(t.kind == "raise" for t in transitions) or not view.flight_entries:
            return transitions
        try:
            record = flight.read(view)
        except (ShmqError, ValueError, OSError) as e:
            log.warning("shmq watchdog: cannot read the flight record of %s: %s", view.shm_name, e)
            return transitions
        return [dataclasses.replace(t, flight=record) if t.kind == "raise" else t for t in transitions]

    def _forget(self, queue: QueueId) -> list[Transition]:
        self._monitors.pop(queue.shm_name, None)
        self.latest.pop(queue.shm_name, None)
        self._unreadable.discard(queue.shm_name)
        if self._metrics is not None:
            self._metrics.forget(queue.label)
        return self._book.forget(queue.shm_name, "the queue's segment was unlinked")

    def _publish(self, transitions: list[Transition]) -> None:
        for transition in transitions:
            if self._metrics is not None:
                if transition.kind == "raise":
                    self._metrics.raised(transition.alert)
                elif not transition.reason:  # a forgotten queue's series are gone already
                    self._metrics.cleared(transition.alert)
            if self._events is not None:
                self._events.submit(transition)

    # -- running ----------------------------------------------------------------------------
    def run(self, stop: threading.Event) -> None:
        """Poll every `interval_s` until `stop` is set; a slow poll delays the next, it never piles up."""
        next_at = time.monotonic()
        while not stop.is_set():
            try:
                self.poll()
            except Exception:  # keep watching: a bug in one poll must not end the sidecar
                log.exception("shmq watchdog: poll failed")
            next_at = max(next_at + self.interval_s, time.monotonic())
            stop.wait(next_at - time.monotonic())

    @property
    def active(self) -> tuple[Alert, ...]:
        """The alerts raised and not cleared, as of the last poll."""
        return self._active

    def time_to_full(self) -> dict[str, float]:
        """Each watched queue's projected seconds until its ring is full (inf: not filling), by shm name."""
        return {shm_name: monitor.time_to_full_s for shm_name, monitor in self._monitors.items()}

    def health(self) -> tuple[bool, dict]:
        """For /healthz: healthy when the loop polls and no alert is active."""
        alerts = self._active
        last = self._last_poll_ns
        polling = last is not None and self._clock() - last < STALE_POLLS * self.interval_s * 1e9
        status = "ok" if polling and not alerts else ("alerting" if polling else "not polling")
        body = {
            "status": status,
            "queues": len(self.segments.views),
            "alerts": [{
                "queue": a.queue.label, "rule": a.raised.rule, "cause": str(a.raised.cause), "role": a.raised.role,
                "reader": None if a.raised.reader < 0 else a.raised.reader, "pid": a.raised.pid,
                "since": a.raised_at_s,
            } for a in alerts],
        }
        return status == "ok", body

    def close(self) -> None:
        self._pids.close()
        self.segments.close()
