"""The "why is it stuck" drill-down: one queue, every participant side by side.

The table answers the question at a glance: the culprit is the participant
with the largest time without progress *and* a non-zero lag (a reader with no
lag is simply idle). The graphs below show how it got there.
"""

from __future__ import annotations

from grafana_foundation_sdk.builders import dashboard as db
from grafana_foundation_sdk.models import dashboard as dm
from grafana_foundation_sdk.models import prometheus as pm

from shmq.telemetry import names as N

from . import panels as P
from . import promql as Q
from . import shared as S
from .states import STATE_CODES

UID = "shmq-why-stuck"
TITLE = "shmq / why is it stuck"

QUEUE = Q.eq(N.LABEL_QUEUE, "$queue")
WHO = "{{role}} {{reader}}"
SPIN_WINDOW = "1m"

# Table columns: (header, instant query); every query is aggregated by participant so rows merge.
_COLUMNS = (
    ("Stuck for", Q.by("max", Q.PARTICIPANT, f"{Q.reader_stuck_age(QUEUE)} or {Q.writer_stuck_age(QUEUE)}")),
    ("No progress for", Q.by("max", Q.PARTICIPANT, Q.progress_age(QUEUE))),
    ("Lag", Q.by("max", Q.PARTICIPANT, Q.series(N.READER_LAG, QUEUE))),
    ("State", Q.state_code(QUEUE)),
    ("Spins/s", Q.participant_rate(N.SPINS, (QUEUE,), SPIN_WINDOW)),
    ("Watchdog alerts", Q.by("sum", Q.PARTICIPANT, Q.series(N.WATCHDOG_ALERT, QUEUE))),
)


def _column_overrides() -> list[tuple[str, list[dm.DynamicConfigValue]]]:
    background = dm.DynamicConfigValue(id_val="custom.cellOptions", value={"type": "color-background"})

    def levels(*steps: tuple[float | None, str]) -> dm.DynamicConfigValue:
        return dm.DynamicConfigValue(id_val="thresholds", value={
            "mode": "absolute", "steps": [{"value": v, "color": c} for v, c in steps]})

    return [
        ("Stuck for", [dm.DynamicConfigValue(id_val="unit", value="s"), background,
                       levels((None, "green"), (1, "orange"), (10, "red"))]),
        ("No progress for", [dm.DynamicConfigValue(id_val="unit", value="s")]),
        ("Lag", [background, levels((None, "green"), (1, "orange"))]),
        ("State", [dm.DynamicConfigValue(id_val="mappings", value=P.value_mappings(STATE_CODES)),
                   dm.DynamicConfigValue(id_val="custom.cellOptions", value={"type": "color-text"})]),
        ("Spins/s", [background, levels((None, "green"), (100_000, "orange"))]),
        ("Watchdog alerts", [background, levels((None, "green"), (1, "red"))]),
    ]


def culprit_table() -> P.table.Panel:
    targets = [P.query(expr, instant=True, fmt=pm.PromQueryFormat.TABLE) for _, expr in _COLUMNS]
    rename = {f"Value #{chr(ord('A') + i)}": header for i, (header, _) in enumerate(_COLUMNS)}
    return P.table_panel(
        "Who is holding the queue?",
        "One row per participant, now. Stuck for = seconds without progress while it has work (a reader with "
        "lag, a writer waiting for room); an idle participant has none there. The culprit is the largest. "
        "Its state says why: busy = slow application code, waiting_read "
        "with lag = lost wake-up or livelock, no state change and a stale heartbeat = frozen process (SIGSTOP, "
        "GIL held, D state). The writer in waiting_write is the victim, not the cause.",
        targets,
        transformations=[
            dm.DataTransformerConfig(id_val="merge", options={}),
            dm.DataTransformerConfig(id_val="organize", options={
                "excludeByName": {"Time": True, N.LABEL_QUEUE: True}, "renameByName": rename,
                "indexByName": {N.LABEL_ROLE: 0, N.LABEL_READER: 1, **{h: 2 + i for i, h in enumerate(rename.values())}},
            }),
        ],
        overrides=_column_overrides(), sort_by="Stuck for", height=9)


def history_panels() -> list:
    return [
        P.timeseries_panel(
            "Time without progress", "Seconds since each participant's cursor last moved. It grows for an idle "
            "reader too: read it together with the lag beside it.", "s",
            [P.query(Q.by("max", Q.PARTICIPANT, Q.progress_age(QUEUE)), WHO)]),
        P.timeseries_panel(
            "Reader lag", "Messages each reader has not consumed yet.", "short",
            [P.query(Q.by("max", Q.PARTICIPANT, Q.series(N.READER_LAG, QUEUE)), WHO)]),
        P.state_timeline_panel(
            "State", "Participant states over time.", [P.query(Q.state_code(QUEUE), WHO)], STATE_CODES),
        P.timeseries_panel(
            "Spins per second", "Busy-poll iterations while waiting. Spinning with no progress is a livelock.",
            "ops", [P.query(Q.participant_rate(N.SPINS, (QUEUE,), "$__rate_interval"), WHO)]),
        S.ring_panel(QUEUE, "When the next message no longer fits in capacity less occupancy, the writer blocks."),
        S.watchdog_alerts_panel(QUEUE, "The watchdog's verdict per participant and rule.", WHO),
    ]


def build() -> db.Dashboard:
    dashboard = (
        S.frame(UID, TITLE, "Drill-down for one shmq queue: which participant holds it up, and why.",
                refresh="5s", since="now-15m", many_queues=False, link="Overview")
        .with_row(db.Row("Now")).with_panel(culprit_table())
        .with_row(db.Row("How it got there"))
    )
    for panel in history_panels():
        dashboard = dashboard.with_panel(panel)
    return dashboard


def render() -> str:
    return P.render(build())
