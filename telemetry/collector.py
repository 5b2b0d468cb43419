"""Prometheus metrics for shmq queues, read from shared memory at scrape time.

``ShmqCollector`` is a custom collector in the manner of client_python's
``MultiProcessCollector``: queues only store numbers in their participant
records, and the collector maps the segments read-only and turns a
``shmq.stats`` snapshot into metric families when Prometheus scrapes. Nothing on
the hot path touches prometheus_client, and its multiprocess mode (which cannot
run custom collectors and needs a directory wiped between runs) is not used.

It watches either the queues it is given, or every shmq segment in the shm
directory: each scrape lists the directory, maps segments that appeared and
drops segments that were unlinked, so one sidecar exports every process's
queues. A segment it cannot read (corrupt, foreign, another layout version) is
skipped and counted in ``shmq_exporter_errors_total``; the scrape goes on.
"""

from __future__ import annotations

import collections
import logging
import socket
import threading
import time
from typing import Callable, Iterable, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, InfoMetricFamily
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from shmq import layout as L
from shmq.errors import ShmqError
from shmq.handle import Handle
from shmq.segment import SHM_DIR
from shmq.stats import ParticipantStats, QueueStats, QueueView, Segments

from . import names as N

log = logging.getLogger("shmq.exporter")

_PARTICIPANT = (N.LABEL_QUEUE, N.LABEL_ROLE, N.LABEL_READER)
_QUEUE = (N.LABEL_QUEUE,)
_ROLE = {L.Role.WRITER: N.ROLE_WRITER, L.Role.READER: N.ROLE_READER, L.Role.REMOTE_READER: N.ROLE_REMOTE_READER}
_STATES = tuple((state, state.name.lower()) for state in L.ParticipantState)
_BUCKET_BOUNDS = tuple(floatToGoString(bound) for bound in L.HISTOGRAM_UPPER_BOUNDS_S) + ("+Inf",)

# Counter family, the ParticipantStats field it reads, the scale to base units, and its help text.
_COUNTERS = (
    (N.MESSAGES, "messages", 1, "Messages sent (writer) or received (reader)."),
    (N.BYTES, "bytes", 1, "Payload bytes sent or received, framing included."),
    (N.OVERFLOW_MESSAGES, "overflow_messages", 1, "Messages larger than a frame (a quarter of the ring and a page), streamed through it in pieces."),
    (N.SPINS, "spins", 1, "Busy-poll iterations while waiting."),
    (N.YIELDS, "yields", 1, "sched_yield calls while waiting."),
    (N.BACKOFF_SLEEPS, "backoff_sleeps", 1, "Sleeps taken by the Backoff wait strategy."),
    (N.BACKOFF_SLEEP_SECONDS, "backoff_sleep_ns", 1e-9, "Time spent in Backoff sleeps."),
    (N.PARKS, "parks", 1, "Futex parks (or fallback sleeps) while waiting."),
    (N.PARKED_SECONDS, "parked_ns", 1e-9, "Time spent parked on the futex while waiting (no CPU)."),
    (N.BUSY_WAIT_SECONDS, "busy_wait_ns", 1e-9,
     "Time spent spinning and yielding while waiting: CPU burnt, unless other processes want the core "
     "(a yield then hands it over)."),
    (N.WAKEUPS, "wakeups", 1, "Futex wake calls issued to parked peers."),
    (N.TIMEOUTS, "timeouts", 1, "put() or get() calls that timed out."),
    (N.PREDICTED_WAKES, "predicted_wakes", 1, "Adaptive waits: timed wake-ups just before a predicted arrival."),
    (N.PREDICTION_HITS, "prediction_hits", 1, "Adaptive waits: arrivals within the spin budget after such a wake-up."),
    (N.PREDICTION_MISSES, "prediction_misses", 1, "Adaptive waits: arrivals earlier, or later than the budget."),
    (N.SPIN_BEFORE_ARRIVAL_SECONDS, "spin_before_arrival_ns", 1e-9,
     "Adaptive waits: time spun from predicted wake-ups to the arrivals they hit."),
)
_UNITS = {N.BYTES: "bytes", N.BACKOFF_SLEEP_SECONDS: "seconds", N.SPIN_BEFORE_ARRIVAL_SECONDS: "seconds",
          N.PARKED_SECONDS: "seconds", N.BUSY_WAIT_SECONDS: "seconds"}


class ShmqCollector(Collector):
    """Exports shmq queues to Prometheus, reading their shared-memory stats at scrape time.

    `queues` selects what to export; None means every shmq segment in `shm_dir`,
    including those created later. Otherwise it is an iterable of:

    - a ``shmq.Handle``, a handle string or a ``shmq-...`` shm name: that segment;
    - a logical queue name: every segment holding a queue of that name;
    - a ``shmq.stats.QueueView`` the caller opened (and closes).

    Handles and names are resolved at each scrape, so a queue may appear after
    the collector starts, and an unlinked segment stops being exported.
    """

    def __init__(self, queues: Iterable[Handle | str | QueueView] | None = None, *, shm_dir: str = SHM_DIR,
                 host: str | None = None, clock: Callable[[], float] = time.time) -> None:
        self._host = socket.gethostname() if host is None else host
        queues = None if queues is None else list(queues)
        self._given_views = [q for q in queues or () if isinstance(q, QueueView)]
        selection = None if queues is None else [q for q in queues if not isinstance(q, QueueView)]
        self._segments = Segments(selection, shm_dir=shm_dir, clock=clock, log=log) if selection != [] else None
        self._lock = threading.Lock()  # scrapes may run in several HTTP threads at once
        self._unreadable_snapshots: set[str] = set()  # logged once each
        self._snapshot_errors = 0

    # -- the Collector protocol ------------------------------------------------------
    def describe(self) -> Iterator:
        """The family names, without touching shared memory (registration calls this)."""
        return iter([*_Families(self._host).all(), _errors_family(0)])

    def collect(self) -> Iterator:
        with self._lock:
            snapshots = self._snapshots()
            errors = self._snapshot_errors + (self._segments.skipped if self._segments is not None else 0)
        families = _Families(self._host)
        for queue_label, snapshot in _queue_labels(snapshots):
            families.add_queue(queue_label, snapshot)
        yield from families.all()
        yield _errors_family(errors)

    def close(self) -> None:
        """Unmap the segments this collector mapped (not the views it was given)."""
        with self._lock:
            if self._segments is not None:
                self._segments.close()

    def _snapshots(self) -> list[QueueStats]:
        views = list(self._given_views)
        if self._segments is not None:
            self._segments.refresh()  # follows segments created and unlinked since the last scrape
            views += self._segments.views.values()
        snapshots = []
        for view in views:
            try:
                snapshots.append(view.snapshot())
            except (ShmqError, ValueError, OSError) as e:  # a record with impossible values, or a closed view
                self._snapshot_errors += 1
                if view.shm_name not in self._unreadable_snapshots:
                    self._unreadable_snapshots.add(view.shm_name)
                    log.warning("shmq exporter: skipping snapshots of %s: %s", view.shm_name, e)
        return snapshots


def _errors_family(errors: int) -> CounterMetricFamily:
    return CounterMetricFamily(N.EXPORTER_ERRORS, "Segments or snapshots the exporter skipped because it could not "
                               "read them (corrupt, foreign or another layout version).", value=errors)


def _queue_labels(snapshots: list[QueueStats]) -> Iterator[tuple[str, QueueStats]]:
    """The `queue` label of each snapshot: its logical name, plus the shm name when two segments share it."""
    counts = collections.Counter(s.name for s in snapshots)
    for snapshot in snapshots:
        yield (snapshot.name if counts[snapshot.name] == 1 else f"{snapshot.name}/{snapshot.shm_name}"), snapshot


class _Families:
    """The metric families of one scrape; queues add their samples to them."""

    def __init__(self, host: str) -> None:
        self._host = host
        self.counters = [(CounterMetricFamily(name, help_, labels=_PARTICIPANT, unit=_UNITS.get(name, "")),
                          field, scale) for name, field, scale, help_ in _COUNTERS]
        self.wait = HistogramMetricFamily(
            N.WAIT_SECONDS, "Time put() waited for room in the ring (writer) or get() for a message (reader), per wait; "
            "buckets double from 1 us.", labels=_PARTICIPANT, unit="seconds")
        self.capacity = GaugeMetricFamily(N.RING_CAPACITY, "The ring's size in bytes.", labels=_QUEUE, unit="bytes")
        self.occupancy = GaugeMetricFamily(
            N.RING_OCCUPANCY, "Ring bytes published that the slowest gating reader has not consumed; the writer "
            "blocks when the next message does not fit in the rest.", labels=_QUEUE, unit="bytes")
        self.occupancy_messages = GaugeMetricFamily(
            N.RING_OCCUPANCY_MESSAGES, "Frames (messages, and the pieces of messages larger than a frame) published "
            "that the slowest gating reader has not consumed.", labels=_QUEUE)
        self.lag = GaugeMetricFamily(N.READER_LAG, "Messages published that this reader has not consumed.",
                                     labels=_PARTICIPANT)
        self.progress = GaugeMetricFamily(
            N.LAST_PROGRESS, "Unix time the participant's cursor last moved (heartbeat resolution, 0.1 s).",
            labels=_PARTICIPANT, unit="seconds")
        self.state = GaugeMetricFamily(N.PARTICIPANT_STATE, "1 for the state the participant is in, 0 for the others.",
                                       labels=(*_PARTICIPANT, N.LABEL_STATE))
        self.info = InfoMetricFamily(N.PARTICIPANT_INFO, "The process behind a participant.", labels=_PARTICIPANT)

    def all(self) -> list:
        return [*(family for family, _, _ in self.counters), self.wait, self.capacity, self.occupancy,
                self.occupancy_messages, self.lag,
                self.progress, self.state, self.info]

    def add_queue(self, queue: str, snapshot: QueueStats) -> None:
        self.capacity.add_metric([queue], snapshot.ring_bytes)
        self.occupancy.add_metric([queue], snapshot.occupancy_bytes)
        self.occupancy_messages.add_metric([queue], snapshot.occupancy)
        gating = {r.index for r in snapshot.gating_readers}
        for participant in (snapshot.writer, *snapshot.readers):
            labels = [queue, _ROLE[participant.role], "" if participant.role == L.Role.WRITER else str(participant.index)]
            self._add_participant(labels, participant, snapshot)
            if participant.role != L.Role.WRITER and participant.index in gating:
                self.lag.add_metric(labels, snapshot.lag(participant))

    def _add_participant(self, labels: list[str], p: ParticipantStats, snapshot: QueueStats) -> None:
        for state, state_label in _STATES:
            self.state.add_metric([*labels, state_label], 1 if p.state == state else 0)
        if p.pid:  # a reader index nobody has attached to yet has no process and no progress time
            self.info.add_metric(labels, {N.LABEL_PID: str(p.pid), N.LABEL_HOST: p.host or self._host})
            self.progress.add_metric(labels, snapshot.wall_time_s(p.progress_ns))
        if not snapshot.stats_enabled:
            return  # counters are not kept: exporting zeros would claim the queue is idle
        for family, field, scale in self.counters:
            family.add_metric(labels, getattr(p, field) * scale)
        # The record's buckets are per-bucket counts, the last one +Inf; Prometheus wants them cumulative,
        # and _count (the +Inf bucket) is their sum, so the histogram is consistent even if a wait
        # finished while the record was being copied.
        cumulative, buckets = 0, []
        for bound, count in zip(_BUCKET_BOUNDS, p.histogram):
            cumulative += count
            buckets.append((bound, cumulative))
        self.wait.add_metric(labels, buckets, sum_value=p.wait_ns / 1e9)
