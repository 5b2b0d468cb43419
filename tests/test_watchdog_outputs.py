"""The watchdog's outputs around one stall: /healthz, /metrics, and a real Alertmanager (alert, then resolution)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

import shmq
from shmq.telemetry import names as N

from .conftest import FORK
from .loopback import ALERTMANAGER, Webhook, get_json, start_alertmanager, wait_for
from .watchdog_harness import about, drain, watched_queue


@pytest.fixture
def alertmanager():
    """A real Alertmanager on loopback, notifying a webhook in this test at once, resolutions included."""
    if ALERTMANAGER is None:
        pytest.skip("needs Debian's prometheus-alertmanager package (/usr/bin/prometheus-alertmanager); "
                    ".ci/run installs it")
    webhook = Webhook()
    config = {"route": {"receiver": "test", "group_by": ["alertname", "queue"], "group_wait": "0s",
                        "group_interval": "1s", "repeat_interval": "1h"},
              "receivers": [{"name": "test", "webhook_configs": [{"url": webhook.url, "send_resolved": True}]}]}
    with tempfile.TemporaryDirectory(prefix="watchdog-am-") as workdir:
        server = start_alertmanager(config, Path(workdir))
        try:
            server.wait_ready()
            yield server.url, webhook
        finally:
            server.stop()
            webhook.stop()


def alertmanager_alerts(url: str, queue: str) -> list[dict]:
    return [a for a in get_json(f"{url}/api/v2/alerts") if a["labels"].get(N.LABEL_QUEUE) == queue]


def samples(text: str) -> dict:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def hold_then_read(handle: str, index: int, stack_dir: str, go) -> None:
    """Attach, then read nothing until `go` is set: a reader stuck in application code."""
    with shmq.attach(handle, reader=index, stack_dumps=stack_dir) as reader:
        go.wait(30)
        drain(reader)


@pytest.mark.timeout(60)
def test_healthz_flips_to_503_and_back_and_alertmanager_gets_the_alert_and_its_resolution(
        queue_name, children, alertmanager):
    am_url, webhook = alertmanager
    go = FORK.Event()
    with tempfile.TemporaryDirectory(prefix="watchdog-stacks-") as stack_dir, \
            watched_queue(queue_name, children, stack_dir, hold_then_read, 1, go, n_chunks=8, chunk_bytes=256,
                          watchdog_args=("--clear-after", "1", "--alertmanager", am_url)) as (writer, _, watchdog):
        assert watchdog.healthz() == (200, {"status": "ok", "queues": 1, "alerts": []})
        for i in range(4):
            writer.put(i, timeout=1)
        raised = watchdog.wait_for("reader_stalled", about(N.RULE_READER_STALLED, reader=0), 5)
        status, body = watchdog.healthz()
        assert status == 503 and body["status"] == "alerting"
        assert [(a["rule"], a["reader"], a["cause"]) for a in body["alerts"]] == [
            (N.RULE_READER_STALLED, 0, "busy")]
        metrics = samples(watchdog.metrics())
        labels = ((N.LABEL_QUEUE, queue_name), (N.LABEL_READER, "0"), (N.LABEL_ROLE, "reader"),
                  (N.LABEL_RULE, N.RULE_READER_STALLED))
        assert metrics[N.WATCHDOG_ALERT, labels] == 1
        assert metrics[N.total(N.WATCHDOG_ALERTS), ((N.LABEL_QUEUE, queue_name),
                                                    (N.LABEL_RULE, N.RULE_READER_STALLED))] == 1
        assert metrics[N.WATCHDOG_POLL_SECONDS + "_count", ()] > 0
        assert metrics[N.WATCHDOG_TIME_TO_FULL, ((N.LABEL_QUEUE, queue_name),)] == float("inf"), "4 of 8, not filling"
        assert metrics[N.READER_LAG, ((N.LABEL_QUEUE, queue_name), (N.LABEL_READER, "0"),
                                      (N.LABEL_ROLE, "reader"))] == 4, "the collector's series are there too"

        posted = wait_for("the alert in Alertmanager", lambda: alertmanager_alerts(am_url, queue_name), 10)
        assert [(a["labels"]["alertname"], a["labels"]["reader"], a["labels"]["cause"], a["status"]["state"])
                for a in posted] == [("ShmqReaderStalled", "0", "busy", "active")]
        assert "hold_then_read" in posted[0]["annotations"]["stack"]
        assert str(raised["pid"]) == posted[0]["annotations"]["pid"]
        assert posted[0]["annotations"]["flight"] == raised["flight_summary"]
        assert raised["flight_summary"].startswith("message 0 is missing at reader 0")

        go.set()
        watchdog.wait_for("the clear", about(N.RULE_READER_STALLED, reader=0, kind="clear"), 5)
        assert watchdog.healthz()[0] == 200
        assert samples(watchdog.metrics())[N.WATCHDOG_ALERT, labels] == 0
        wait_for("the alert to leave Alertmanager", lambda: not alertmanager_alerts(am_url, queue_name), 10)
        wait_for("the resolved notification",
                   lambda: ("resolved", "ShmqReaderStalled") in [(s, n) for s, n, _ in webhook.received], 10)
        assert ("firing", "ShmqReaderStalled") in [(s, n) for s, n, _ in webhook.received]
