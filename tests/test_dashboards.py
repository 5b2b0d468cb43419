"""The Grafana dashboards: generated from code, committed as JSON, built only from shared metric names."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest
import yaml

from dashboards import generate, inspect, overview, stuck
from dashboards.states import STATE_CODES
from shmq.layout import ParticipantState
from shmq.telemetry import names as N

COUNTERS = {N.MESSAGES, N.BYTES, N.OVERFLOW_MESSAGES, N.SPINS, N.YIELDS, N.BACKOFF_SLEEPS, N.BACKOFF_SLEEP_SECONDS,
            N.PARKS, N.PARKED_SECONDS, N.BUSY_WAIT_SECONDS, N.WAKEUPS, N.TIMEOUTS, N.EXPORTER_ERRORS,
            N.WATCHDOG_ALERTS}
HISTOGRAMS = {N.WAIT_SECONDS, N.WATCHDOG_POLL_SECONDS}
GAUGES = {N.RING_CAPACITY, N.RING_OCCUPANCY, N.READER_LAG, N.LAST_PROGRESS, N.PARTICIPANT_STATE, N.WATCHDOG_ALERT,
          N.WATCHDOG_TIME_TO_FULL}
EXPOSED = ({N.total(c) for c in COUNTERS} | GAUGES
           | {h + suffix for h in HISTOGRAMS for suffix in ("_bucket", "_count", "_sum")})
SAMPLE_VALUES = {"queue": "engine", "reader": "(0|1)", "datasource": "prometheus",
                 "__rate_interval": "1m", "__interval": "15s", "__range": "1h"}


def committed(module) -> dict:
    path = next(p for p, m in generate.DASHBOARDS.items() if m is module)
    return json.loads((generate.ROOT / path).read_text())


def all_expressions(dashboard: dict) -> list[str]:
    return [e.expr for e in inspect.expressions(dashboard)]


def test_committed_files_are_what_the_code_generates():
    assert generate.stale() == [], "run `python -m dashboards` and commit the result"


def test_check_mode_reports_a_stale_file(tmp_path):
    for path, text in generate.outputs().items():
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text(text)
    assert generate.stale(tmp_path) == []
    edited = next(iter(generate.DASHBOARDS))
    (tmp_path / edited).write_text((tmp_path / edited).read_text().replace("shmq", "shmk", 1))
    assert generate.stale(tmp_path) == [edited]


@pytest.mark.parametrize("module", [overview, stuck], ids=["overview", "stuck"])
def test_queries_use_only_metric_names_the_collector_exposes(module):
    used = {name for expr in all_expressions(committed(module)) for name in re.findall(r"\bshmq_\w+", expr)}
    assert used, "the dashboard queries no shmq metric"
    assert used <= EXPOSED, f"unknown metric names: {used - EXPOSED}"


@pytest.mark.parametrize("module", [overview, stuck], ids=["overview", "stuck"])
def test_panels_have_unique_ids_query_the_datasource_variable_and_do_not_overlap(module):
    dashboard = committed(module)
    panels = dashboard["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    cells = set()
    for panel in panels:
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24, panel["title"]
        mine = {(x, y) for x in range(pos["x"], pos["x"] + pos["w"]) for y in range(pos["y"], pos["y"] + pos["h"])}
        assert not cells & mine, f"{panel['title']} overlaps another panel"
        cells |= mine
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
            assert panel["targets"] and panel["description"], panel["title"]


def test_overview_has_queue_and_reader_variables_and_every_required_panel():
    dashboard = committed(overview)
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert {"datasource", "queue", "reader"} <= set(variables)
    assert variables["queue"]["multi"] and variables["reader"]["multi"]
    exprs = "\n".join(all_expressions(dashboard))
    for metric in [N.total(N.MESSAGES), N.total(N.BYTES), N.RING_OCCUPANCY, N.RING_CAPACITY, N.READER_LAG,
                   N.total(N.SPINS), N.total(N.YIELDS), N.total(N.BACKOFF_SLEEPS), N.total(N.BACKOFF_SLEEP_SECONDS),
                   N.total(N.PARKS), N.total(N.WAKEUPS), N.total(N.OVERFLOW_MESSAGES), N.total(N.TIMEOUTS),
                   N.PARTICIPANT_STATE, N.WATCHDOG_ALERT, N.WATCHDOG_TIME_TO_FULL]:
        assert metric in exprs, f"no overview panel shows {metric}"
    for q in ("0.5", "0.99"):
        assert f"histogram_quantile({q}, sum by (queue, role, reader, le) (rate({N.bucket(N.WAIT_SECONDS)}" in exprs
    heatmaps = [p for p in dashboard["panels"] if p["type"] == "heatmap"]
    assert [t["format"] for p in heatmaps for t in p["targets"]] == ["heatmap"]
    assert N.bucket(N.WAIT_SECONDS) in heatmaps[0]["targets"][0]["expr"]
    [annotation] = dashboard["annotations"]["list"]
    assert annotation["expr"] == f'{N.WATCHDOG_ALERT}{{queue=~"$queue"}} == 1'


def test_why_stuck_puts_progress_age_lag_state_and_spin_rate_side_by_side():
    dashboard = committed(stuck)
    [table] = [p for p in dashboard["panels"] if p["type"] == "table"]
    exprs = [t["expr"] for t in table["targets"]]
    assert all(t.get("instant") and t["format"] == "table" for t in table["targets"])
    assert any(f"time() - {N.LAST_PROGRESS}" in e for e in exprs)
    assert any(N.READER_LAG in e for e in exprs)
    assert any(N.PARTICIPANT_STATE in e for e in exprs)
    assert any(f"rate({N.total(N.SPINS)}" in e for e in exprs)
    organize = next(t for t in table["transformations"] if t["id"] == "organize")
    assert set(organize["options"]["renameByName"].values()) == {
        "Stuck for", "No progress for", "Lag", "State", "Spins/s", "Watchdog alerts"}
    stuck_for = exprs[0]
    assert f"{N.READER_LAG}" in stuck_for and "waiting_write" in stuck_for, "work pending: lag, or a waiting writer"
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert not variables["queue"]["multi"], "the drill-down is for one queue"


def test_every_participant_state_is_mapped_to_its_name():
    assert {code: text for code, (text, _) in STATE_CODES.items()} == {
        int(s): s.name.lower() for s in ParticipantState}


def test_variables_are_label_values_queries_on_exposed_metrics():
    for module in (overview, stuck):
        for query in inspect.label_values_queries(committed(module)):
            assert re.match(r"shmq_\w+", query.selector).group(0) in EXPOSED
            assert query.label in (N.LABEL_QUEUE, N.LABEL_READER)


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed (Debian package prometheus)")
def test_every_dashboard_expression_parses_as_promql(tmp_path):
    """promtool parses each query (variables filled in as Grafana would) as a recording rule."""
    exprs = [inspect.fill(e, SAMPLE_VALUES) for m in (overview, stuck) for e in all_expressions(committed(m))]
    rules = {"groups": [{"name": "dashboard-queries",
                         "rules": [{"record": f"dashboard:query_{i}", "expr": e} for i, e in enumerate(exprs)]}]}
    (tmp_path / "queries.yml").write_text(yaml.safe_dump(rules))
    result = subprocess.run(["promtool", "check", "rules", str(tmp_path / "queries.yml")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{len(exprs)} rules found" in result.stdout
