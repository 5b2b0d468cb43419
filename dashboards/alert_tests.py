"""promtool unit tests for every shipped alert: a case where it fires and cases where it must not.

Rendered to ``deploy/prometheus/rules/tests/shmq.rules.test.yml`` and run with
``promtool test rules``. The cases are data written here by hand; only metric
names (from ``shmq.telemetry.names``) and the rules' own labels and annotations are
filled in by code. The file uses nothing newer than Prometheus 2.42's format.
"""

from __future__ import annotations

import dataclasses

import yaml

from shmq.telemetry import names as N

from . import alerts
from . import promql as Q

INTERVAL = "15s"
EVAL_AT = "3m"  # past every default `for` and the fallback's 60 s threshold
QUEUE = "engine"
EXPORTER = {"job": Q.JOB_EXPORTER, "instance": "app:9464"}
WATCHDOG = {"job": Q.JOB_WATCHDOG, "instance": "app:9465"}


@dataclasses.dataclass(frozen=True)
class Series:
    metric: str
    labels: dict[str, str]
    values: str  #: promtool's expanding notation: "0 1x12" = 0, then 1 for 12 more steps

    def to_yaml(self) -> dict:
        matchers = [Q.eq(k, v) for k, v in self.labels.items() if v]
        return {"series": Q.series(self.metric, *matchers), "values": self.values}


@dataclasses.dataclass(frozen=True)
class Case:
    alert: str
    name: str  #: what the case shows, as a sentence
    series: tuple[Series, ...]
    fires: tuple[dict[str, str], ...] = ()  #: label sets of the expected alerts; empty = must not fire
    eval_at: str = EVAL_AT


def participant(role: str, reader: str = "") -> dict[str, str]:
    return {N.LABEL_QUEUE: QUEUE, N.LABEL_ROLE: role, N.LABEL_READER: reader}


def raised(rule: str, who: dict[str, str], values: str) -> Series:
    return Series(N.WATCHDOG_ALERT, {**who, N.LABEL_RULE: rule, **WATCHDOG}, values)


def watchdog_cases(rule: str, who: dict[str, str], other_rule: str, hold_s: dict[str, int]) -> list[Case]:
    alert = N.ALERTNAMES[rule]
    cases = [
        Case(alert, f"fires while the watchdog holds {rule} raised", (raised(rule, who, "0 1x12"),),
             fires=({**who, N.LABEL_RULE: rule, **WATCHDOG},)),
        Case(alert, f"stays silent when {rule} is clear and only {other_rule} is raised",
             (raised(rule, who, "0x12"), raised(other_rule, who, "1x12"))),
    ]
    if hold_s[alert]:  # a single raised sample is shorter than the rule's `for`
        cases.append(Case(alert, f"stays silent on a {rule} raise shorter than its `for`",
                          (raised(rule, who, "0 1 0x10"),), eval_at=INTERVAL))
    return cases


def progress(who: dict[str, str], values: str) -> Series:
    return Series(N.LAST_PROGRESS, {**who, **EXPORTER}, values)


def lag(who: dict[str, str], values: str) -> Series:
    return Series(N.READER_LAG, {**who, **EXPORTER}, values)


def state(who: dict[str, str], name: str, values: str) -> Series:
    return Series(N.PARTICIPANT_STATE, {**who, N.LABEL_STATE: name, **EXPORTER}, values)


def up(target: dict[str, str], values: str) -> Series:
    return Series("up", target, values)


def cases() -> list[Case]:
    hold = {rule.name: rule.hold_s for rule in alerts.all_rules()}
    reader1, reader2, writer = participant("reader", "1"), participant("reader", "2"), participant("writer")
    watchdog_driven = [  # (rule, who it is about, another rule raised meanwhile)
        (N.RULE_READER_STALLED, reader1, N.RULE_FREEZE_RISK),
        (N.RULE_WRITER_BLOCKED, writer, N.RULE_FREEZE_RISK),
        (N.RULE_DEAD, reader2, N.RULE_READER_STALLED),
        (N.RULE_FREEZE_RISK, writer, N.RULE_WRITER_BLOCKED),
        (N.RULE_LIVELOCK, reader1, N.RULE_READER_STALLED),
    ]
    result = [case for rule, who, other in watchdog_driven for case in watchdog_cases(rule, who, other, hold)]
    # Progress timestamps are Unix seconds; "0x20" never moves, "0+15x20" moves every scrape.
    result += [
        Case("ShmqReaderNoProgress", "fires for a reader with lag whose cursor has not moved for minutes",
             (progress(reader1, "0x20"), lag(reader1, "5x20")), fires=({**reader1, **EXPORTER},)),
        Case("ShmqReaderNoProgress", "stays silent for an idle reader: no progress, but no lag either",
             (progress(reader1, "0x20"), lag(reader1, "0x20"))),
        Case("ShmqReaderNoProgress", "stays silent for a reader with lag that keeps making progress",
             (progress(reader1, "0+15x20"), lag(reader1, "5x20"))),
        Case("ShmqWriterNoProgress", "fires for a writer stuck in waiting_write",
             (progress(writer, "0x20"), state(writer, "waiting_write", "1x20")), fires=({**writer, **EXPORTER},)),
        Case("ShmqWriterNoProgress", "stays silent for a writer that is idle because it has nothing to send",
             (progress(writer, "0x20"), state(writer, "waiting_write", "0x20"), state(writer, "idle", "1x20"))),
    ]
    for alert, target, other in (("ShmqWatchdogDown", WATCHDOG, EXPORTER), ("ShmqExporterDown", EXPORTER, WATCHDOG)):
        result += [
            Case(alert, "fires when the target's scrapes fail", (up(target, "0x12"), up(other, "1x12")),
                 fires=(target,)),
            Case(alert, "fires when Prometheus has no such target at all", (up(other, "1x12"),),
                 fires=({"job": target["job"]},)),
            Case(alert, "stays silent while the target is scraped", (up(target, "1x12"), up(other, "1x12"))),
        ]
    return result


def render(rules_file: str) -> str:
    """The promtool test file; ``rules_file`` is relative to the test file's directory."""
    by_name = {rule.name: rule for rule in alerts.all_rules()}
    tests = []
    for case in cases():
        rule = by_name[case.alert]
        expected = []
        for labels in case.fires:
            labels = {k: v for k, v in labels.items() if v}  # Prometheus drops empty labels
            expected.append({
                "exp_labels": {**labels, "severity": rule.severity},
                "exp_annotations": {"summary": alerts.expand(rule.summary, labels),
                                    "runbook": alerts.expand(rule.runbook, labels)},
            })
        tests.append({
            "name": f"{case.alert} {case.name}",
            "interval": INTERVAL,
            "input_series": [s.to_yaml() for s in case.series],
            "alert_rule_test": [{"eval_time": case.eval_at, "alertname": case.alert, "exp_alerts": expected}],
        })
    doc = {"rule_files": [rules_file], "evaluation_interval": INTERVAL, "tests": tests}
    header = "# GENERATED by `python -m dashboards` from dashboards/alert_tests.py; do not edit.\n"
    return header + yaml.safe_dump(doc, sort_keys=False, width=1_000, allow_unicode=True)
