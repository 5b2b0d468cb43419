"""The shipped dashboards and alert rules against a real Prometheus and Alertmanager.

Each test starts, on loopback: a queue with a writer thread and two forked
readers, `shmq exporter` and `shmq watchdog` as subprocesses, Prometheus
(scraping and evaluating every second, with the shipped scrape config and the
shipped rules with their `for:` and thresholds shrunk to seconds), Alertmanager
(the shipped config, its receivers pointed at a webhook in this test) and kills
them all at the end. Skipped where Debian's prometheus / prometheus-alertmanager
binaries are absent; .ci/run installs them.
"""

from __future__ import annotations

import copy
import json
import multiprocessing
import os
import signal
import sys
import tempfile
import threading
import time
import urllib.error
from pathlib import Path

import pytest
import yaml

import shmq
from dashboards import alerts, generate, inspect
from dashboards import promql as Q
from shmq.telemetry import names as N

from .loopback import ALERTMANAGER, PROMETHEUS, PROMTOOL, Server, Webhook, get_json, start_alertmanager, \
    start_prometheus, wait_for

BINARIES = {"prometheus": PROMETHEUS, "promtool": PROMTOOL, "prometheus-alertmanager": ALERTMANAGER}
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not all(BINARIES.values()),
                       reason="needs Debian's prometheus and prometheus-alertmanager packages (missing: "
                              f"{', '.join(n for n, p in BINARIES.items() if not p)}); .ci/run installs them"),
]

STALLED_READER = 1
TEST_HOLD_S = 2  # every `for:` longer than this is shrunk to it
TEST_THRESHOLDS = alerts.Thresholds(
    hold_s={rule.name: min(rule.hold_s, TEST_HOLD_S) for rule in alerts.all_rules()},
    no_progress_s=3, target_down_s=TEST_HOLD_S)
FORK = multiprocessing.get_context("fork")


# -- the workload -------------------------------------------------------------------------------------------

def read_until_stopped(handle: str, index: int, stop) -> None:
    with shmq.attach(handle, reader=index) as reader:
        while not stop.is_set():
            try:
                reader.get_bytes(timeout=0.2)
            except shmq.QueueTimeout:
                pass
            except shmq.QueueClosed:
                return


def write_steadily(writer: shmq.Writer, stop: threading.Event, rate_hz: float) -> None:
    payload = b"x" * 256
    while not stop.is_set():
        try:
            writer.put_bytes(payload, timeout=0.2)
        except shmq.QueueTimeout:  # the ring is full while a reader is stopped
            continue
        time.sleep(1 / rate_hz)


class Workload:
    """One writer thread in this process and two forked readers, writing about 200 messages a second."""

    def __init__(self, name: str) -> None:
        self.writer = shmq.create(2, name=name, chunk_bytes=4096, n_chunks=32)
        self._stop_readers = FORK.Event()
        self._stop_writer = threading.Event()
        self._thread: threading.Thread | None = None
        self.readers = [FORK.Process(target=read_until_stopped, args=(str(self.writer.handle), i, self._stop_readers),
                                     daemon=True) for i in range(2)]
        try:
            for reader in self.readers:
                reader.start()
            self.writer.wait_for_readers(timeout=10)
            self._thread = threading.Thread(target=write_steadily, args=(self.writer, self._stop_writer, 200),
                                            daemon=True)
            self._thread.start()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        self._stop_writer.set()
        if self._thread:
            self._thread.join(5)
        self._stop_readers.set()
        for reader in (r for r in self.readers if r.pid is not None):
            if reader.is_alive():
                os.kill(reader.pid, signal.SIGCONT)  # a test that failed mid-stall leaves one stopped
            reader.join(5)
            if reader.is_alive():
                reader.kill()
                reader.join(5)
        self.writer.close()


# -- the stack ----------------------------------------------------------------------------------------------

def scrape_config_for(exporter: str, watchdog: str, alertmanager: str, rules: Path) -> dict:
    """The shipped prometheus.yml, pointed at this test's servers, scraping and evaluating every second."""
    config = copy.deepcopy(yaml.safe_load((generate.ROOT / "deploy/prometheus/prometheus.yml").read_text()))
    config["global"].update(scrape_interval="1s", evaluation_interval="1s")
    config["rule_files"] = [str(rules)]
    config["alerting"]["alertmanagers"][0]["static_configs"] = [{"targets": [alertmanager]}]
    targets = {Q.JOB_EXPORTER: exporter, Q.JOB_WATCHDOG: watchdog}
    for job in config["scrape_configs"]:
        job.update(scrape_interval="1s", static_configs=[{"targets": [targets[job["job_name"]]]}])
    return config


def alertmanager_config_for(webhook: str) -> dict:
    """The shipped alertmanager.yml with its receivers pointed at the test's webhook, and no batching delay."""
    config = yaml.safe_load((generate.ROOT / "deploy/alertmanager/alertmanager.yml").read_text())
    config["route"].update(group_wait="0s", group_interval="1s")
    for receiver in config["receivers"]:
        for hook in receiver["webhook_configs"]:
            hook["url"] = webhook
    return config


class Stack:
    """The workload, its sidecars, Prometheus and Alertmanager, all on loopback.

    ``start()`` may fail half-way; ``stop()`` then still stops whatever did start.
    """

    def __init__(self, queue: str, workdir: Path) -> None:
        self.queue = queue
        self.workdir = workdir
        self.servers: list[Server] = []
        self.webhook: Webhook | None = None
        self.workload: Workload | None = None
        self.watchdog: Server | None = None
        self.prometheus = self.alertmanager = ""

    def start(self) -> None:
        workdir = self.workdir
        self.webhook = Webhook()
        self.workload = Workload(self.queue)
        exporter = self._start("exporter", [sys.executable, "-m", "shmq", "exporter", "--queue", self.queue,
                                            "--port", "0"])
        self.watchdog = self._start("watchdog", watchdog_argv(self.queue))
        exporter_url = exporter.wait_for_line(r"http://(127\.0\.0\.1:\d+)/metrics", 20).group(1)
        watchdog_url = self.watchdog.wait_for_line(r"http://(127\.0\.0\.1:\d+)/", 20).group(1)

        alertmanager = start_alertmanager(alertmanager_config_for(self.webhook.url), workdir)
        self.servers.append(alertmanager)
        rules = workdir / "shmq.rules.yml"
        rules.write_text(alerts.render(TEST_THRESHOLDS, interval_s=1))
        prometheus = start_prometheus(
            scrape_config_for(exporter_url, watchdog_url, alertmanager.url.removeprefix("http://"), rules), workdir)
        self.servers.append(prometheus)
        self.prometheus, self.alertmanager = prometheus.url, alertmanager.url
        prometheus.wait_ready()
        alertmanager.wait_ready()

    def _start(self, name: str, argv: list[str]) -> Server:
        server = Server(name, argv, self.workdir)
        self.servers.append(server)
        return server

    def query(self, expr: str) -> list[dict]:
        """Evaluate PromQL now; an error fails the test with Prometheus's message."""
        try:
            answer = get_json(f"{self.prometheus}/api/v1/query", query=expr)
        except urllib.error.HTTPError as e:
            pytest.fail(f"Prometheus rejected {expr!r}: {e.read().decode()}")
        assert answer["status"] == "success", answer
        return answer["data"]["result"]

    def prometheus_alerts(self, alertname: str) -> list[dict]:
        return [a for a in get_json(f"{self.prometheus}/api/v1/alerts")["data"]["alerts"]
                if a["labels"]["alertname"] == alertname and a["labels"].get(N.LABEL_QUEUE) == self.queue]

    def alertmanager_alerts(self, alertname: str) -> list[dict]:
        return [a for a in get_json(f"{self.alertmanager}/api/v2/alerts", filter=f'alertname="{alertname}"')
                if a["labels"].get(N.LABEL_QUEUE) == self.queue]

    def logs(self) -> str:
        return "\n".join(f"--- {s.name}\n{s.log_tail()}" for s in self.servers)

    def stop(self) -> None:
        for server in self.servers:
            server.stop()
        if self.webhook:
            self.webhook.stop()
        if self.workload:
            self.workload.stop()


def watchdog_argv(queue: str) -> list[str]:
    return [sys.executable, "-m", "shmq", "watchdog", "--queue", queue, "--port", "0", "--stall", "1"]


@pytest.fixture
def stack(queue_name):
    with tempfile.TemporaryDirectory(prefix="shmq-prometheus-") as workdir:
        stack = Stack(queue_name, Path(workdir))
        try:
            stack.start()
            yield stack
        finally:
            print(stack.logs())  # pytest shows it only when the test failed
            stack.stop()


# -- the tests ----------------------------------------------------------------------------------------------

def dashboard_expressions(values: dict[str, str]) -> list[tuple[str, str]]:
    found = []
    for path in generate.DASHBOARDS:
        dashboard = json.loads((generate.ROOT / path).read_text())
        found += [(f"{path.name}: {e.where}", inspect.fill(e.expr, values)) for e in inspect.expressions(dashboard)]
    return found


def evaluate_dashboards(stack: Stack, values: dict[str, str]) -> list[tuple[str, str]]:
    """Evaluate every dashboard query (errors fail the test); returns those without data, with their queries."""
    return [(where, expr) for where, expr in dashboard_expressions(values) if not stack.query(expr)]


def template_values(stack: Stack, window: str) -> dict[str, str]:
    """Grafana's variables as it would fill them for this queue and both readers selected."""
    return {"queue": stack.queue, "reader": "(0|1)", "datasource": "prometheus",
            "__rate_interval": "4s", "__interval": window, "__range": window}


def empty_while_healthy(expr: str) -> bool:
    """The watchdog's alert series appear with its first alert; "stuck for" (`... and on (...) lag > 0`) needs a stall."""
    return N.WATCHDOG_ALERT in expr or " and on (" in expr


def wait_for_scrapes(stack: Stack) -> None:
    """Rates need two scrapes inside their window: wait for a message rate and a watchdog poll rate."""
    queue = Q.eq(N.LABEL_QUEUE, stack.queue)
    wait_for("a message rate", lambda: len(stack.query(f"rate({Q.series(N.total(N.MESSAGES), queue)}[4s]) > 0")) == 3,
             20)
    wait_for("a watchdog poll rate",
             lambda: stack.query(f"rate({Q.series(N.WATCHDOG_POLL_SECONDS + '_count')}[4s]) > 0"), 20)


@pytest.mark.timeout(60)
def test_every_dashboard_and_rule_expression_evaluates_and_core_series_have_data(stack):
    wait_for_scrapes(stack)
    values = template_values(stack, "2s")
    for rule in alerts.all_rules(TEST_THRESHOLDS):
        stack.query(rule.expr)  # alert expressions are mostly empty while healthy; they must still evaluate
    without_data = evaluate_dashboards(stack, values)
    assert not [where for where, expr in without_data if not empty_while_healthy(expr)], \
        f"dashboard queries without data: {without_data}"

    for path in generate.DASHBOARDS:
        for variable in inspect.label_values_queries(json.loads((generate.ROOT / path).read_text())):
            selector = inspect.fill(variable.selector, values)
            labels = get_json(f"{stack.prometheus}/api/v1/label/{variable.label}/values", **{"match[]": selector})
            assert labels["data"], f"{path.name} variable {variable.variable}: no values for {selector}"
    rule_health = [(r["name"], r["health"], r.get("lastError")) for g in
                   get_json(f"{stack.prometheus}/api/v1/rules")["data"]["groups"] for r in g["rules"]]
    assert len(rule_health) == len(alerts.all_rules()) and all(h == "ok" for _, h, _ in rule_health), rule_health


def alert_states(stack: Stack, alertname: str, reader: str) -> list[str]:
    return [a["state"] for a in stack.prometheus_alerts(alertname) if a["labels"].get(N.LABEL_READER) == reader]


def watch_until_firing(stack: Stack, alertname: str, reader: str, timeout_s: float) -> list[str]:
    """Every distinct state Prometheus showed for the alert, in order, until it fires."""
    seen: list[str] = []

    def firing():
        for state in alert_states(stack, alertname, reader):
            if not seen or seen[-1] != state:
                seen.append(state)
        return "firing" in seen
    wait_for(f"{alertname} for reader {reader} to fire (seen: {seen})", firing, timeout_s, 0.2)
    return seen


def notified(stack: Stack, status: str, alertname: str) -> bool:
    return any(s == status and name == alertname and labels.get(N.LABEL_QUEUE) == stack.queue
               for s, name, labels in stack.webhook.received)


def stop_reader(stack: Stack) -> int:
    """SIGSTOP one reader once Prometheus has its series; returns its pid."""
    lag = Q.series(N.READER_LAG, Q.eq(N.LABEL_QUEUE, stack.queue), Q.eq(N.LABEL_READER, str(STALLED_READER)))
    wait_for("the reader's lag to be scraped", lambda: stack.query(lag), 20)
    pid = stack.workload.readers[STALLED_READER].pid
    os.kill(pid, signal.SIGSTOP)
    return pid


@pytest.mark.timeout(90)
def test_a_stopped_reader_fires_alerts_that_reach_alertmanager_and_resolve_when_it_resumes(stack):
    reader = str(STALLED_READER)
    pid = stop_reader(stack)
    try:
        states = watch_until_firing(stack, "ShmqReaderStalled", reader, 30)
        assert states[:2] == ["pending", "firing"], f"expected pending, then firing; saw {states}"
        [in_alertmanager] = wait_for("ShmqReaderStalled in Alertmanager",
                                     lambda: stack.alertmanager_alerts("ShmqReaderStalled"), 15)
        assert in_alertmanager["labels"][N.LABEL_READER] == reader
        assert in_alertmanager["status"]["state"] == "active"
        assert "runbook" in in_alertmanager["annotations"]
        # With a reader stuck and an alert raised, every dashboard query has data.
        assert not evaluate_dashboards(stack, template_values(stack, "1m"))
        wait_for("the firing notification at the webhook", lambda: notified(stack, "firing", "ShmqReaderStalled"), 15)
        # The fallback rule fires too, and Alertmanager inhibits it while the watchdog's alert is active.
        watch_until_firing(stack, "ShmqReaderNoProgress", reader, 30)
        [fallback] = wait_for("ShmqReaderNoProgress in Alertmanager",
                              lambda: stack.alertmanager_alerts("ShmqReaderNoProgress"), 15)
        assert fallback["status"]["state"] == "suppressed" and fallback["status"]["inhibitedBy"], fallback
    finally:
        os.kill(pid, signal.SIGCONT)
    for alertname in ("ShmqReaderStalled", "ShmqReaderNoProgress"):
        wait_for(f"{alertname} to resolve in Prometheus", lambda a=alertname: not alert_states(stack, a, reader), 30)
        wait_for(f"{alertname} to leave Alertmanager", lambda a=alertname: not stack.alertmanager_alerts(a), 15)
    wait_for("the resolved notification at the webhook", lambda: notified(stack, "resolved", "ShmqReaderStalled"), 15)


@pytest.mark.timeout(90)
def test_with_the_watchdog_down_its_alert_fires_and_the_fallback_still_catches_a_stall(stack):
    stack.watchdog.stop()
    wait_for("ShmqWatchdogDown to fire", lambda: any(
        a["state"] == "firing" and a["labels"].get("job") == Q.JOB_WATCHDOG
        for a in get_json(f"{stack.prometheus}/api/v1/alerts")["data"]["alerts"]
        if a["labels"]["alertname"] == "ShmqWatchdogDown"), 20)
    pid = stop_reader(stack)
    try:
        watch_until_firing(stack, "ShmqReaderNoProgress", str(STALLED_READER), 30)
        [fallback] = wait_for("ShmqReaderNoProgress in Alertmanager",
                              lambda: stack.alertmanager_alerts("ShmqReaderNoProgress"), 15)
        assert fallback["status"]["state"] == "active", "nothing may inhibit the fallback while the watchdog is down"
        assert not stack.prometheus_alerts("ShmqReaderStalled")
    finally:
        os.kill(pid, signal.SIGCONT)
