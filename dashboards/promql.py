"""PromQL spelled through ``shmq.telemetry.names``: the one place queries are assembled.

Dashboards and alert rules both build their expressions here, so a metric
name or label is typed once (in ``shmq.telemetry.names``) and a query shape once
(here). Functions return plain strings; nothing here knows about Grafana.
"""

from __future__ import annotations

from shmq.layout import ParticipantState
from shmq.telemetry import names as N

# Prometheus job names the shipped scrape config (deploy/prometheus/prometheus.yml) uses.
JOB_EXPORTER = "shmq"
JOB_WATCHDOG = "shmq-watchdog"

PARTICIPANT = (N.LABEL_QUEUE, N.LABEL_ROLE, N.LABEL_READER)


def eq(label: str, value: str) -> str:
    return f'{label}="{value}"'


def matches(label: str, regex: str) -> str:
    return f'{label}=~"{regex}"'


def series(metric: str, *matchers: str) -> str:
    """``metric{m1, m2}``; counters must be passed through ``names.total`` first."""
    return f"{metric}{{{', '.join(matchers)}}}" if matchers else metric


def rate(counter: str, matchers: tuple[str, ...], window: str) -> str:
    """Per-second rate of a counter family (``names.MESSAGES``, not ``..._total``)."""
    return f"rate({series(N.total(counter), *matchers)}[{window}])"


def by(aggregation: str, labels: tuple[str, ...], expr: str) -> str:
    return f"{aggregation} by ({', '.join(labels)}) ({expr})"


def participant_rate(counter: str, matchers: tuple[str, ...], window: str) -> str:
    """Rate per participant, summed over scrape targets that see the same queue."""
    return by("sum", PARTICIPANT, rate(counter, matchers, window))


def wait_quantile(q: float, matchers: tuple[str, ...], window: str) -> str:
    """The q-quantile of wait time per participant, from the log2 histogram buckets."""
    buckets = f"rate({series(N.bucket(N.WAIT_SECONDS), *matchers)}[{window}])"
    return f"histogram_quantile({q}, {by('sum', PARTICIPANT + ('le',), buckets)})"


def progress_age(*matchers: str) -> str:
    """Seconds since the participant's cursor last moved."""
    return f"time() - {series(N.LAST_PROGRESS, *matchers)}"


def readers() -> str:
    """The matcher of every reader, local or remote."""
    return matches(N.LABEL_ROLE, f"{N.ROLE_READER}|{N.ROLE_REMOTE_READER}")


def reader_stuck_age(*matchers: str) -> str:
    """Seconds since a reader with messages pending last moved; a reader without lag (idle) has no series."""
    reader = readers()
    return (f"({progress_age(reader, *matchers)}) and on (instance, {N.LABEL_QUEUE}, {N.LABEL_READER}) "
            f"({series(N.READER_LAG, reader, *matchers)} > 0)")


def writer_stuck_age(*matchers: str) -> str:
    """Seconds since a writer waiting for room in the ring last moved; a writer with nothing to send has no series."""
    writer = eq(N.LABEL_ROLE, N.ROLE_WRITER)
    return (f"({progress_age(writer, *matchers)}) and on (instance, {N.LABEL_QUEUE}) "
            f"({in_state(ParticipantState.WAITING_WRITE, writer, *matchers)})")


def state_value(state: ParticipantState) -> str:
    """The ``state`` label value the collector exports for a participant state."""
    return state.name.lower()


def state_code(*matchers: str) -> str:
    """One number per participant: the ``ParticipantState`` value of its current state.

    The collector exports one 0/1 series per state; multiplying each by its
    enum value and taking the maximum gives one series a state-timeline panel can
    colour through value mappings.
    """
    terms = " or ".join(
        f"{series(N.PARTICIPANT_STATE, *matchers, eq(N.LABEL_STATE, state_value(s)))} * {int(s)}"
        for s in ParticipantState
    )
    return by("max", PARTICIPANT, terms)


def in_state(state: ParticipantState, *matchers: str) -> str:
    return f"{series(N.PARTICIPANT_STATE, *matchers, eq(N.LABEL_STATE, state_value(state)))} == 1"


def watchdog_alert(rule: str, *matchers: str) -> str:
    """Watchdog alert series that are raised (value 1) for one rule."""
    return f"{series(N.WATCHDOG_ALERT, *matchers, eq(N.LABEL_RULE, rule))} == 1"


def target_down(job: str) -> str:
    """The scrape target is down, or Prometheus has no such target at all."""
    up = series("up", eq("job", job))
    return f"{up} == 0 or absent({up})"
