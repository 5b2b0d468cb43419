"""Prometheus alert rules for shmq, rendered to ``deploy/prometheus/rules/shmq.rules.yml``.

Three groups:

- the watchdog's verdicts (``shmq_watchdog_alert{rule=...} == 1``): exact, fast,
  and classified (the watchdog's event says why and holds the stack);
- fallbacks that need only the exporter: time since a participant's cursor
  last moved while it has work, for when the watchdog itself is down;
- scrape health: the watchdog or the exporter is not being scraped.

Alertmanager inhibits each fallback while the matching watchdog alert fires
(deploy/alertmanager/alertmanager.yml), so an operator gets one page per fault.
"""

from __future__ import annotations

import dataclasses
import re

import yaml

from shmq.telemetry import names as N

from . import promql as Q

OVERVIEW_PATH = "/d/shmq-overview"
STUCK_PATH = "/d/shmq-why-stuck"
WHERE = "queue {{ $labels.queue }}, {{ $labels.role }} {{ $labels.reader }}"
EVENTS = ("the watchdog's JSON-lines event for this queue (cause, pid, lag, seconds without progress, "
          "and the stuck process's Python stack)")


@dataclasses.dataclass(frozen=True)
class AlertRule:
    """One Prometheus alerting rule."""

    name: str  #: the alertname
    expr: str  #: PromQL; every returned series is one alert
    hold_s: int  #: the rule's ``for``: how long expr must hold before the alert fires
    severity: str  #: "critical" pages someone; "warning" opens a ticket
    summary: str  #: one line, templated with $labels
    runbook: str  #: what the operator should look at first

    def to_yaml(self) -> dict:
        return {
            "alert": self.name,
            "expr": self.expr,
            "for": f"{self.hold_s}s",
            "labels": {"severity": self.severity},
            "annotations": {"summary": self.summary, "runbook": self.runbook},
        }


@dataclasses.dataclass(frozen=True)
class Thresholds:
    """The knobs of the shipped rules; tests shrink them to seconds."""

    hold_s: dict[str, int] = dataclasses.field(default_factory=dict)  #: per-alert ``for`` overrides
    no_progress_s: int = 60  #: fallback rules: seconds without cursor progress while work is pending
    target_down_s: int = 60  #: ``for`` of the scrape-health rules

    def hold(self, alert: str, default_s: int) -> int:
        return self.hold_s.get(alert, default_s)


def _watchdog_rule(rule: str, hold_s: int, severity: str, what: str, runbook: str,
                   thresholds: Thresholds) -> AlertRule:
    """The alert on one watchdog rule; its name is the one the watchdog itself posts to Alertmanager."""
    name = N.ALERTNAMES[rule]
    return AlertRule(name, Q.watchdog_alert(rule), thresholds.hold(name, hold_s), severity,
                     f"shmq watchdog: {what} ({WHERE})", runbook)


def watchdog_rules(t: Thresholds) -> list[AlertRule]:
    return [
        _watchdog_rule(
            N.RULE_READER_STALLED, 15, "critical",
            "reader has data pending but its cursor does not move",
            f"Open {EVENTS}; its cause says which case: waiting_with_data = a lost wake-up or livelock inside "
            "get(); busy = slow application code in the reader (profile it); frozen = the process is stopped "
            "(SIGSTOP, GIL held by a C call, D state: check `ps -o stat,wchan -p PID`). The why-is-it-stuck "
            f"dashboard ({STUCK_PATH}) shows the reader's lag, state and spin rate; `shmq top --once` shows the same "
            "from the host.", t),
        _watchdog_rule(
            N.RULE_WRITER_BLOCKED, 15, "critical",
            "writer waits for room in the ring: the ring is full",
            f"The writer is the victim. Read {EVENTS}: it names the readers that hold the minimum position; "
            "look at those readers (their own ShmqReaderStalled alert, state and stack). If they are "
            "only slow, the ring is too small for the burst (raise ring_bytes) or a reader needs more workers.", t),
        _watchdog_rule(
            N.RULE_DEAD, 0, "critical",
            "participant process is gone (or its pid was reused)",
            "Find why the process died (OOM killer: `dmesg`, `journalctl -k`; a crash: the app's logs and exit "
            "code). A dead reader blocks the writer unless the queue was created with on_dead_reader='evict'. "
            "Restart the process; `shmq cleanup` unlinks segments whose creator died.", t),
        _watchdog_rule(
            N.RULE_FREEZE_RISK, 0, "warning",
            "ring is filling and will be full within the watchdog's horizon",
            "The writer is about to block. On the overview dashboard compare the writer's msgs/s with the slowest "
            "reader's and look at time-to-full; the reader with the largest lag is the one falling behind. "
            "Transient under a burst; sustained means the readers are too slow for the write rate.", t),
        _watchdog_rule(
            N.RULE_LIVELOCK, 15, "critical",
            "participants spin without any cursor moving",
            f"CPU is burning with no progress. Read {EVENTS}: it names the spinning participant and its "
            f"stack; the spins/s panel ({STUCK_PATH}) shows who spins. Suspect a wait strategy that never "
            "re-checks the cursor, or a reader that never consumes (for example one stuck in a retry loop).", t),
    ]


def fallback_rules(t: Thresholds) -> list[AlertRule]:
    """The same measure as the why-is-it-stuck table's "Stuck for" column, with a threshold."""
    return [
        AlertRule(
            "ShmqReaderNoProgress", f"({Q.reader_stuck_age()}) > {t.no_progress_s}",
            t.hold("ShmqReaderNoProgress", 60), "critical",
            f"shmq reader has had data pending and no progress for over {t.no_progress_s}s ({WHERE})",
            "Fallback rule from the exporter's series alone; it fires late and cannot say why. Check first "
            "whether the watchdog runs (ShmqWatchdogDown). Then on the host: `shmq top --once` for the reader's "
            "pid and state, `ps -o stat,wchan -p PID` (T = stopped, D = uninterruptible I/O), and "
            "`py-spy dump --pid PID` for its Python stack."),
        AlertRule(
            "ShmqWriterNoProgress", f"({Q.writer_stuck_age()}) > {t.no_progress_s}",
            t.hold("ShmqWriterNoProgress", 60), "critical",
            f"shmq writer has waited for room in the ring with no progress for over {t.no_progress_s}s ({WHERE})",
            "Fallback rule from the exporter's series alone. The ring is full: the reader with the largest lag "
            f"and the oldest progress holds it (why-is-it-stuck dashboard, {STUCK_PATH}). Check whether the "
            "watchdog runs (ShmqWatchdogDown), then inspect that reader with `shmq top --once` and py-spy."),
    ]


def scrape_rules(t: Thresholds) -> list[AlertRule]:
    return [
        AlertRule(
            "ShmqWatchdogDown", Q.target_down(Q.JOB_WATCHDOG), t.hold("ShmqWatchdogDown", t.target_down_s),
            "warning", "shmq watchdog is not being scraped ({{ $labels.instance }})",
            "Stalls are now only caught late, by the fallback rules. Check the watchdog sidecar: `systemctl "
            "status shmq-watchdog`, `kubectl logs POD -c watchdog`, or `docker compose logs watchdog`; check "
            f"that Prometheus reaches it (Status > Targets, job {Q.JOB_WATCHDOG}). A watchdog restart never "
            "affects the queue."),
        AlertRule(
            "ShmqExporterDown", Q.target_down(Q.JOB_EXPORTER), t.hold("ShmqExporterDown", t.target_down_s),
            "warning", "shmq exporter is not being scraped ({{ $labels.instance }})",
            "Dashboards and the fallback rules are blind. Check the exporter sidecar's logs and that Prometheus "
            f"reaches it (Status > Targets, job {Q.JOB_EXPORTER}); `shmq exporter` must see /dev/shm of the app "
            "(same host, or a shared IPC namespace)."),
    ]


def groups(t: Thresholds = Thresholds()) -> list[tuple[str, list[AlertRule]]]:
    return [("shmq-watchdog", watchdog_rules(t)), ("shmq-fallback", fallback_rules(t)),
            ("shmq-scrape", scrape_rules(t))]


def all_rules(t: Thresholds = Thresholds()) -> list[AlertRule]:
    return [rule for _, rules in groups(t) for rule in rules]


HEADER = "# GENERATED by `python -m dashboards` from dashboards/alerts.py; do not edit.\n"


def _groups_yaml(t: Thresholds, interval_s: int | None) -> list[dict]:
    return [{"name": name, **({"interval": f"{interval_s}s"} if interval_s else {}),
             "rules": [rule.to_yaml() for rule in rules]} for name, rules in groups(t)]


def _dump(doc: dict) -> str:
    return HEADER + yaml.safe_dump(doc, sort_keys=False, width=1_000, allow_unicode=True)


def render(t: Thresholds = Thresholds(), *, interval_s: int | None = None) -> str:
    """The rules file; ``interval_s`` sets the groups' evaluation interval (default: Prometheus's global)."""
    return _dump({"groups": _groups_yaml(t, interval_s)})


def render_prometheus_rule() -> str:
    """The same rules as a Prometheus Operator ``PrometheusRule`` for Kubernetes."""
    return _dump({
        "apiVersion": "monitoring.coreos.com/v1", "kind": "PrometheusRule",
        "metadata": {"name": "shmq", "labels": {"app.kubernetes.io/name": "shmq-app"}},
        "spec": {"groups": _groups_yaml(Thresholds(), None)},
    })


_LABEL = re.compile(r"\{\{ \$labels\.(\w+) \}\}")


def expand(template: str, labels: dict[str, str]) -> str:
    """Prometheus's expansion of ``{{ $labels.x }}`` (the only template these rules use)."""
    return _LABEL.sub(lambda m: labels.get(m.group(1), ""), template)
