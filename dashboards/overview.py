"""The shmq overview dashboard: every queue's traffic, ring, waiting and faults on one page."""

from __future__ import annotations

from grafana_foundation_sdk.builders import dashboard as db

from shmq.telemetry import names as N

from . import panels as P
from . import promql as Q
from . import shared as S
from .states import STATE_CODES

UID = "shmq-overview"
TITLE = "shmq / overview"

QUEUES = Q.matches(N.LABEL_QUEUE, "$queue")
READERS = (QUEUES, Q.readers(), Q.matches(N.LABEL_READER, "$reader"))
# The writer carries an empty reader label, so "$reader|" keeps it whatever readers are selected.
PARTICIPANTS = (QUEUES, Q.matches(N.LABEL_READER, "$reader|"))
WHO = "{{queue}} {{role}} {{reader}}"
RATE = "$__rate_interval"


def _rate_panel(title: str, description: str, unit: str, counters: dict[str, str]) -> P.timeseries.Panel:
    """Per-participant rates of one or more counters: {legend suffix: counter family}."""
    return P.timeseries_panel(title, description, unit, [
        P.query(Q.participant_rate(counter, PARTICIPANTS, RATE), f"{WHO} {suffix}".strip())
        for suffix, counter in counters.items()
    ], width=8)


def throughput_panels() -> list:
    return [
        P.timeseries_panel(
            "Messages per second", "Messages sent (writer) and received (each reader). Every reader receives "
            "every message, so a reader below the writer is falling behind.", "ops",
            [P.query(Q.participant_rate(N.MESSAGES, PARTICIPANTS, RATE), WHO)]),
        P.timeseries_panel(
            "Bytes per second", "Payload bytes sent and received per participant.", "Bps",
            [P.query(Q.participant_rate(N.BYTES, PARTICIPANTS, RATE), WHO)]),
    ]


def ring_panels() -> list:
    occupancy = S.ring_panel(QUEUES, "Ring bytes published that the slowest gating reader has not consumed. When "
                             "the next message no longer fits in the rest, the writer blocks.", width=8)
    lag = P.timeseries_panel(
        "Reader lag", "Messages published that each reader has not consumed yet. A lag that grows while the "
        "reader's msgs/s is flat names the slow or stuck reader.", "short",
        [P.query(Q.by("max", Q.PARTICIPANT, Q.series(N.READER_LAG, *READERS)), WHO)], width=8)
    time_to_full = P.timeseries_panel(
        "Time to full", "The watchdog's projection of when the ring fills at the current write rate against the "
        "slowest reader. Under its horizon (default 5 s) with the ring 75% full it raises freeze_risk, before the "
        "writer blocks.", "s",
        [P.query(Q.by("min", (N.LABEL_QUEUE,), Q.series(N.WATCHDOG_TIME_TO_FULL, QUEUES)), "{{queue}}")],
        width=8)
    return [occupancy, lag, time_to_full]


def waiting_panels() -> list:
    buckets = f"rate({Q.series(N.bucket(N.WAIT_SECONDS), *PARTICIPANTS)}[{RATE}])"
    return [
        P.wait_heatmap(
            "Wait time", "How long put() and get() waited, from the shmq_wait_seconds log2 buckets of every "
            "selected participant. Readers wait for messages (normal when the writer is idle); the writer waits "
            "for room in the ring (back-pressure).", Q.by("sum", ("le",), buckets)),
        P.timeseries_panel(
            "Wait time p50 / p99", "Quantiles of the wait per participant, from the same buckets; the log2 bucket "
            "bounds limit the precision to a factor of two.", "s",
            [P.query(Q.wait_quantile(0.5, PARTICIPANTS, RATE), f"{WHO} p50"),
             P.query(Q.wait_quantile(0.99, PARTICIPANTS, RATE), f"{WHO} p99")]),
        _rate_panel("Busy-waiting and parked time", "Seconds per second each participant spent waiting while "
                    "spinning or yielding (busy: that share of a core burnt, unless other processes wanted it, as a "
                    "yield hands it over) and parked on the futex (free). "
                    "Set against the wait time above, this is the CPU that the wait strategy spends for the "
                    "latency it buys.", "percentunit",
                    {"busy": N.BUSY_WAIT_SECONDS, "parked": N.PARKED_SECONDS}),
        _rate_panel("Spins and yields per second", "Busy-poll iterations and sched_yield calls while waiting. "
                    "High spin rates with no messages moving point to a livelock.", "ops",
                    {"spins": N.SPINS, "yields": N.YIELDS}),
        _rate_panel("Backoff sleeps", "Sleeps taken by the Backoff wait strategy (per second) and the seconds "
                    "per second spent in them (1.0 = asleep all the time).", "short",
                    {"sleeps/s": N.BACKOFF_SLEEPS, "sleep s/s": N.BACKOFF_SLEEP_SECONDS}),
        _rate_panel("Parks and wake-ups per second", "Futex parks (SpinYieldPark's last stage) and the wake calls "
                    "peers issued to parked participants.", "ops",
                    {"parks": N.PARKS, "wake-ups": N.WAKEUPS}),
    ]


def fault_panels() -> list:
    return [
        _rate_panel("Overflow messages per second", "Messages larger than a frame (a quarter of the ring and a page), "
                    "streamed through it in pieces. Many of them mean ring_bytes is too small.", "ops",
                    {"": N.OVERFLOW_MESSAGES}),
        _rate_panel("Timeouts per second", "put() and get() calls that gave up after their timeout.", "ops",
                    {"": N.TIMEOUTS}),
        P.timeseries_panel(
            "Exporter errors per second", "Segments the exporter or watchdog could not read (corrupt or "
            "foreign); they are skipped, not exported.", "ops",
            [P.query(f"sum(rate({Q.series(N.total(N.EXPORTER_ERRORS))}[{RATE}]))", "errors")], width=8),
    ]


def participant_panels() -> list:
    return [
        P.state_timeline_panel(
            "Participant states", "Where each participant is: busy in application code, waiting to read, waiting "
            "for room in the ring (writer), closed or evicted. A reader stuck in busy or waiting_read while its lag "
            "grows is the culprit.", [P.query(Q.state_code(*PARTICIPANTS), WHO)], STATE_CODES),
        S.watchdog_alerts_panel(QUEUES, "Alerts the watchdog holds per participant and rule.", WHO),
    ]


def watchdog_panels() -> list:
    return [
        P.stat_panel(
            "Alerts raised", "Watchdog alerts raised in the selected time range, per rule.", "short",
            [P.query(Q.by("sum", (N.LABEL_RULE,),
                          f"increase({Q.series(N.total(N.WATCHDOG_ALERTS), QUEUES)}[$__range])"), "{{rule}}")],
            P.thresholds((None, "green"), (1, "red")), width=12, height=6),
        P.stat_panel(
            "Scrape targets up", "1 when Prometheus reaches the exporter and the watchdog. A watchdog that is down "
            "cannot raise alerts; the fallback rules on progress age still can.", "short",
            [P.query(Q.series("up", Q.eq("job", job)), job) for job in (Q.JOB_EXPORTER, Q.JOB_WATCHDOG)],
            P.thresholds((None, "red"), (1, "green")), width=6, height=6),
        P.timeseries_panel(
            "Watchdog poll time p99", "How long one watchdog poll of every segment takes; at 10 Hz it must stay "
            "well under 100 ms.", "s",
            [P.query(f"histogram_quantile(0.99, sum by (le) (rate({Q.series(N.bucket(N.WATCHDOG_POLL_SECONDS))}"
                     f"[{RATE}])))", "p99")], width=6, height=6),
    ]


def alert_annotation() -> db.AnnotationQuery:
    """Each watchdog alert as a region on every time-series panel, from its raise to its clear.

    (A ``changes()`` query would miss the first raise: the series is born at 1.)
    """
    return (db.AnnotationQuery().name("Watchdog alerts, raise to clear").datasource(P.DATASOURCE)
            .enable(True).icon_color("red").expr(Q.series(N.WATCHDOG_ALERT, QUEUES) + " == 1"))


def build() -> db.Dashboard:
    dashboard = (
        S.frame(UID, TITLE, "Traffic, ring, waiting and faults of shmq queues, from shmq exporter and shmq watchdog.",
                refresh="10s", since="now-30m", many_queues=True, link="Why is it stuck?")
        .with_variable(P.label_variable(
            "reader", "Reader", f"label_values({Q.series(N.READER_LAG, QUEUES)}, {N.LABEL_READER})", multi=True))
        .annotation(alert_annotation())
    )
    sections = [("Throughput", throughput_panels()), ("Ring", ring_panels()), ("Waiting", waiting_panels()),
                ("Faults", fault_panels()), ("Participants and watchdog", participant_panels() + watchdog_panels())]
    for title, section in sections:
        dashboard = dashboard.with_row(db.Row(title))
        for panel in section:
            dashboard = dashboard.with_panel(panel)
    return dashboard


def render() -> str:
    return P.render(build())
