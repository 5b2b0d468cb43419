"""The watchdog's own Prometheus series (names from shmq.telemetry.names), updated by the poll loop."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from .. import names as N
from .alerts import Alert

#: Poll durations: from a fraction of a millisecond (one idle queue) to the poll interval and beyond.
POLL_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)


def alert_labels(alert: Alert) -> tuple[str, str, str, str]:
    f = alert.raised
    return alert.queue.label, f.role, "" if f.reader < 0 else str(f.reader), f.rule


class WatchdogMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.alert = Gauge(N.WATCHDOG_ALERT, "1 while the watchdog holds this alert raised, 0 after it cleared.",
                           (N.LABEL_QUEUE, N.LABEL_ROLE, N.LABEL_READER, N.LABEL_RULE), registry=registry)
        self.alerts = Counter(N.WATCHDOG_ALERTS, "Alerts the watchdog raised.", (N.LABEL_QUEUE, N.LABEL_RULE),
                              registry=registry)
        self.time_to_full: dict[str, float] = {}  #: by queue label; the poll loop stores, scrapes read
        registry.register(_TimeToFull(self.time_to_full))
        self.poll_seconds = Histogram(N.WATCHDOG_POLL_SECONDS, "Time one watchdog poll of every watched queue took.",
                                      buckets=POLL_BUCKETS, registry=registry)
        self._series: dict[str, set[tuple[str, str, str, str]]] = {}  # queue label -> alert label sets

    def raised(self, alert: Alert) -> None:
        labels = alert_labels(alert)
        self._series.setdefault(labels[0], set()).add(labels)
        self.alert.labels(*labels).set(1)
        self.alerts.labels(alert.queue.label, alert.raised.rule).inc()

    def cleared(self, alert: Alert) -> None:
        self.alert.labels(*alert_labels(alert)).set(0)

    def forget(self, queue: str) -> None:
        """Drop the series of a queue that is no longer watched."""
        for labels in self._series.pop(queue, ()):
            self.alert.remove(*labels)
        self.time_to_full.pop(queue, None)


class _TimeToFull(Collector):
    """The projection of every queue, read at scrape time: the poll loop only stores a float per queue."""

    def __init__(self, values: dict[str, float]) -> None:
        self._values = values

    def collect(self):
        family = GaugeMetricFamily(N.WATCHDOG_TIME_TO_FULL, "Projected seconds until the ring is full at the "
                                   "current fill rate; +Inf while it is not filling.", labels=(N.LABEL_QUEUE,))
        for queue, seconds in list(self._values.items()):
            family.add_metric([queue], seconds)
        yield family
