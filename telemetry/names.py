"""Every metric name and label shmq exports, in one place.

The collector, the watchdog, the Grafana dashboards and the Prometheus alert
rules all import these constants; no other file spells a metric name.
Names follow Prometheus conventions: base units, ``_total`` for counters,
``_seconds`` for durations. Histogram and counter names here are the family
names; exposition adds ``_bucket``/``_count``/``_sum`` and ``_total``.
"""

PREFIX = "shmq"

# Labels
LABEL_QUEUE = "queue"
LABEL_ROLE = "role"  # one of the ROLE_ values below
ROLE_WRITER, ROLE_READER, ROLE_REMOTE_READER = "writer", "reader", "remote_reader"
LABEL_READER = "reader"  # the reader index; "" for the writer
LABEL_STATE = "state"
LABEL_RULE = "rule"
LABEL_PID = "pid"
LABEL_HOST = "host"

# Counters (family names; the exposed sample adds _total)
MESSAGES = "shmq_messages"
BYTES = "shmq_bytes"
OVERFLOW_MESSAGES = "shmq_overflow_messages"
SPINS = "shmq_spins"
YIELDS = "shmq_yields"
BACKOFF_SLEEPS = "shmq_backoff_sleeps"
BACKOFF_SLEEP_SECONDS = "shmq_backoff_sleep_seconds"
PARKS = "shmq_parks"
WAKEUPS = "shmq_wakeups"
TIMEOUTS = "shmq_timeouts"
PREDICTED_WAKES = "shmq_predicted_wakes"
PREDICTION_HITS = "shmq_prediction_hits"
PREDICTION_MISSES = "shmq_prediction_misses"
SPIN_BEFORE_ARRIVAL_SECONDS = "shmq_spin_before_arrival_seconds"
PARKED_SECONDS = "shmq_parked_seconds"
BUSY_WAIT_SECONDS = "shmq_busy_wait_seconds"
EXPORTER_ERRORS = "shmq_exporter_errors"

# Histogram
WAIT_SECONDS = "shmq_wait_seconds"

# Gauges
RING_CAPACITY = "shmq_ring_capacity_bytes"
RING_OCCUPANCY = "shmq_ring_occupancy_bytes"
RING_OCCUPANCY_MESSAGES = "shmq_ring_occupancy_messages"
READER_LAG = "shmq_reader_lag_messages"
LAST_PROGRESS = "shmq_last_progress_timestamp_seconds"
PARTICIPANT_STATE = "shmq_participant_state"
PARTICIPANT_INFO = "shmq_participant"  # an Info family: exposed as shmq_participant_info

# Watchdog
WATCHDOG_ALERT = "shmq_watchdog_alert"
WATCHDOG_ALERTS = "shmq_watchdog_alerts"  # counter: shmq_watchdog_alerts_total
WATCHDOG_TIME_TO_FULL = "shmq_watchdog_time_to_full_seconds"
WATCHDOG_POLL_SECONDS = "shmq_watchdog_poll_seconds"

# Watchdog rules (values of the `rule` label)
RULE_DEAD = "dead"
RULE_READER_STALLED = "reader_stalled"
RULE_WRITER_BLOCKED = "writer_blocked"
RULE_LIVELOCK = "livelock"
RULE_FREEZE_RISK = "freeze_risk"
RULES = (RULE_DEAD, RULE_READER_STALLED, RULE_WRITER_BLOCKED, RULE_LIVELOCK, RULE_FREEZE_RISK)

# Alertmanager alertname of each watchdog rule: the watchdog's --alertmanager posts and the
# Prometheus rules over shmq_watchdog_alert share them, so one set of inhibitions covers both.
ALERTNAMES = {
    RULE_DEAD: "ShmqParticipantDead",
    RULE_READER_STALLED: "ShmqReaderStalled",
    RULE_WRITER_BLOCKED: "ShmqWriterBlocked",
    RULE_LIVELOCK: "ShmqLivelock",
    RULE_FREEZE_RISK: "ShmqFreezeRisk",
}


def total(counter: str) -> str:
    """The exposed sample name of a counter family."""
    return counter + "_total"


def bucket(histogram: str) -> str:
    return histogram + "_bucket"
