"""Real servers on loopback for tests: subprocesses with log files, Prometheus, Alertmanager, a webhook.

Every server binds 127.0.0.1 on a free port and is stopped by its ``stop()``
(terminate, then kill), which callers put in a ``finally``.
"""

from __future__ import annotations

import http.server
import json
import re
import shutil
import socket
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml

from shmq.telemetry.watchdog.sidecar import terminate

ROOT = Path(__file__).resolve().parent.parent
PROMETHEUS = shutil.which("prometheus")
PROMTOOL = shutil.which("promtool")
ALERTMANAGER = shutil.which("prometheus-alertmanager")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_json(url: str, **params) -> dict | list:
    query = urllib.parse.urlencode(params, doseq=True)
    with urllib.request.urlopen(f"{url}?{query}" if query else url, timeout=10) as response:
        return json.load(response)


def wait_for(what: str, check, timeout_s: float, interval_s: float = 0.25):
    """Poll `check` until it returns something truthy, and return that; fail with `what` after the timeout."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(interval_s)


def is_ready(url: str) -> bool:
    """Whether a Prometheus or Alertmanager answers its /-/ready."""
    try:
        with urllib.request.urlopen(f"{url}/-/ready", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


class Server:
    """A subprocess whose output goes to a log file (``log_tail()`` for failure messages)."""

    def __init__(self, name: str, argv: list[str], workdir: Path, url: str = "") -> None:
        self.name = name
        self.url = url
        self.log_path = workdir / f"{name}.log"
        self._log = self.log_path.open("w")
        # From the repository root, so `python -m shmq` finds the package even when it is not installed.
        self.process = subprocess.Popen(argv, stdout=self._log, stderr=subprocess.STDOUT, cwd=ROOT)

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def wait_for_line(self, pattern: str, timeout_s: float) -> re.Match:
        def find():
            if self.process.poll() is not None:
                pytest.fail(f"{self.name} exited with {self.process.returncode}:\n{self.log_tail()}")
            return re.search(pattern, self.log_path.read_text(errors="replace"))
        return wait_for(f"{self.name} to print {pattern!r}", find, timeout_s, 0.05)

    def wait_ready(self, timeout_s: float = 30) -> None:
        def ready():
            if self.process.poll() is not None:
                pytest.fail(f"{self.name} exited with {self.process.returncode}:\n{self.log_tail()}")
            return is_ready(self.url)
        wait_for(f"{self.name} at {self.url} to be ready", ready, timeout_s, 0.1)

    def stop(self) -> None:
        terminate(self.process)
        self._log.close()


def start_alertmanager(config: dict, workdir: Path) -> Server:
    """A real Alertmanager (Debian's binary) with clustering off; wait on ``wait_ready()``."""
    port = free_port()
    (workdir / "alertmanager.yml").write_text(yaml.safe_dump(config))
    return Server("alertmanager", [
        ALERTMANAGER, f"--config.file={workdir / 'alertmanager.yml'}", f"--storage.path={workdir / 'am-data'}",
        f"--web.listen-address=127.0.0.1:{port}", "--cluster.listen-address="], workdir, f"http://127.0.0.1:{port}")


def start_prometheus(config: dict, workdir: Path) -> Server:
    """A real Prometheus with its data in `workdir`; the config must pass ``promtool check config`` first."""
    port = free_port()
    path = workdir / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    check = subprocess.run([PROMTOOL, "check", "config", str(path)], capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
    return Server("prometheus", [
        PROMETHEUS, f"--config.file={path}", f"--storage.tsdb.path={workdir / 'prom-data'}",
        f"--web.listen-address=127.0.0.1:{port}"], workdir, f"http://127.0.0.1:{port}")


class Webhook:
    """An Alertmanager webhook receiver: records (status, alertname, labels) of every notified alert."""

    def __init__(self) -> None:
        received = self.received = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                received.extend((a["status"], a["labels"]["alertname"], a["labels"]) for a in body["alerts"])
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args):
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
