"""docs/metrics.md is generated from telemetry/names.py and what the exporter and watchdog expose."""

from __future__ import annotations

import pytest

from dashboards import generate, metrics_doc
from shmq.telemetry import names as N


def test_committed_metrics_doc_is_what_the_generator_writes():
    committed = (generate.ROOT / metrics_doc.PATH).read_text()
    assert committed == metrics_doc.render(), "docs/metrics.md is stale: run `python -m dashboards` and commit it"


def test_every_series_in_names_has_a_row_with_its_type_and_help():
    text = metrics_doc.render()
    for name in (N.total(N.MESSAGES), N.WAIT_SECONDS, N.READER_LAG, N.PARTICIPANT_INFO + "_info",
                 N.total(N.EXPORTER_ERRORS), N.WATCHDOG_ALERT, N.total(N.WATCHDOG_ALERTS), N.WATCHDOG_POLL_SECONDS):
        assert f"| `{name}`" in text, name
    assert "| `shmq_reader_lag_messages` | gauge | queue, role, reader | Messages published that" in text
    for rule, alertname in N.ALERTNAMES.items():
        assert f"`{rule}` ({alertname})" in text


def test_a_name_that_no_scrape_exposes_stops_the_generator(monkeypatch):
    monkeypatch.setattr(N, "FORGOTTEN", "shmq_forgotten_total", raising=False)
    with pytest.raises(RuntimeError, match="shmq_forgotten_total"):
        metrics_doc.render()
