"""``shmq demo --inject``: each fault is flagged by the watchdog in real time, the culprit named, then cleared."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from .watchdog_harness import ROOT

VICTIM = 2  # the last of three workers


@pytest.mark.timeout(60)
@pytest.mark.parametrize("inject, raised", [pytest.param(inject, raised, id=inject) for inject, raised in (
    ("stall", rf"RAISED  reader_stalled/frozen: queue 'demo-requests': reader {VICTIM} "),
    ("kill", rf"RAISED  dead/exited: queue 'demo-requests': reader {VICTIM} "),
    ("slow", rf"RAISED  freeze_risk/busy: queue 'demo-requests': .* slowest: reader {VICTIM} "),
    ("livelock", rf"RAISED  livelock/spinning_with_data: queue 'demo-requests': reader {VICTIM} "),
)])
def test_the_demo_shows_the_watchdog_flag_the_injected_fault_name_the_worker_and_recover(inject, raised):
    done = subprocess.run(
        [sys.executable, "-m", "shmq", "demo", "--workers", "3", "--batches", "70", "--inject", inject,
         "--fault-at", "1.5", "--fault-for", "3"], cwd=ROOT, capture_output=True, text=True, timeout=50)
    out = done.stdout.replace("\r", "\n")
    assert done.returncode == 0, out + done.stderr
    assert re.search(r"^exporter: http://127\.0\.0\.1:\d+/metrics$", out, re.M), out
    assert re.search(r"^watchdog: http://127\.0\.0\.1:\d+/metrics and http://127\.0\.0\.1:\d+/healthz", out, re.M), out
    assert re.search(raised, out), out
    assert out.index(f"inject: {inject} worker {VICTIM}") < re.search(raised, out).start()
    assert "watchdog: all clear (/healthz 200)" in out, out
    assert re.search(r"70 batches x 12 items to 3 workers in .*, 0 lost$", out, re.M), out
    summary = re.search(r"^watchdog: (\d+) alerts raised, (\d+) cleared; worker 2 named by: (.*)$", out, re.M)
    assert summary and summary.group(1) == summary.group(2), out
    if inject == "kill":
        assert "killed workers [2]" in out
