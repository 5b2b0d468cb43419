"""What both dashboards have: the frame (data source, queue variable, cross-links) and two panels."""

from __future__ import annotations

from grafana_foundation_sdk.builders import dashboard as db
from grafana_foundation_sdk.models import dashboard as dm

from shmq.telemetry import names as N

from . import panels as P
from . import promql as Q
from .states import ALERT_CODES

TAG = "shmq"  # dashboards link to each other through this tag


def frame(uid: str, title: str, description: str, *, refresh: str, since: str, many_queues: bool,
          link: str) -> db.Dashboard:
    """A dashboard with the $datasource and $queue variables and a link to the other shmq dashboards."""
    return (
        db.Dashboard(title).uid(uid).tags([TAG]).editable().refresh(refresh).time(since, "now")
        .timezone("browser").tooltip(dm.DashboardCursorSync.CROSSHAIR).description(description)
        .with_variable(P.datasource_variable())
        .with_variable(P.label_variable("queue", "Queue", f"label_values({N.RING_CAPACITY}, {N.LABEL_QUEUE})",
                                        multi=many_queues))
        .link(db.DashboardLink(link).type(dm.DashboardLinkType.DASHBOARDS).tags([TAG])
              .include_vars(True).keep_time(True).as_dropdown(False))
    )


def ring_panel(queue: str, description: str, *, width: int = 12) -> P.timeseries.Panel:
    """Occupancy of each selected queue against its capacity, drawn dashed."""
    per_queue = (N.LABEL_QUEUE,)
    return P.timeseries_panel(
        "Ring occupancy against capacity", description, "bytes",
        [P.query(Q.by("max", per_queue, Q.series(N.RING_OCCUPANCY, queue)), "{{queue}} occupancy"),
         P.query(Q.by("max", per_queue, Q.series(N.RING_CAPACITY, queue)), "{{queue}} capacity")],
        width=width).override_by_regexp(".* capacity", P.DASHED_LIMIT)


def watchdog_alerts_panel(queue: str, description: str, who: str) -> P.statetimeline.Panel:
    """One row per participant and watchdog rule: clear or ALERT."""
    return P.state_timeline_panel(
        "Watchdog alerts", description,
        [P.query(Q.by("max", Q.PARTICIPANT + (N.LABEL_RULE,), Q.series(N.WATCHDOG_ALERT, queue)),
                 f"{who} {{{{rule}}}}")], ALERT_CODES)
