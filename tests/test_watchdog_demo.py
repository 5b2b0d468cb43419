"""``shmq demo --inject``: each fault is flagged by the watchdog in real time, the worker named, then cleared.

The default fault (stall) is tested in test_demo.py.
"""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from .watchdog_harness import ROOT

VICTIM = 2  # the last of three workers


@pytest.mark.timeout(60)
@pytest.mark.parametrize("inject, rule, raised", [pytest.param(inject, rule, raised, id=inject) for inject, rule, raised in (
    ("kill", "dead/exited", rf"dead/exited: queue 'demo-requests': reader {VICTIM} "),
    ("slow", "freeze_risk/busy", rf"freeze_risk/busy: queue 'demo-requests': .* slowest: reader {VICTIM} "),
    ("livelock", "livelock/spinning_with_data", rf"livelock/spinning_with_data: queue 'demo-requests': reader {VICTIM} "),
)])
def test_the_demo_shows_the_watchdog_flag_the_injected_fault_name_the_worker_and_recover(inject, rule, raised):
    done = subprocess.run(
        [sys.executable, "-m", "shmq", "demo", "--workers", "3", "--seconds", "8", "--ring", "128", "--inject", inject,
         "--fault-at", "1.5", "--fault-for", "5"], cwd=ROOT, capture_output=True, text=True, timeout=45)
    out = done.stdout
    assert done.returncode == 0, out + done.stderr
    assert "\r" not in out
    assert re.search(r"^\[\s*[\d.]+ s\] exporter: http://127\.0\.0\.1:\d+/metrics$", out, re.M), out
    assert re.search(r"^\[\s*[\d.]+ s\] watchdog: http://127\.0\.0\.1:\d+/metrics and "
                     r"http://127\.0\.0\.1:\d+/healthz", out, re.M), out
    flagged = re.search(r"watchdog RAISED  " + raised, out)
    assert flagged, out
    assert out.index(f"inject: {inject} worker {VICTIM}") < flagged.start()
    assert "watchdog: all clear (/healthz 200)" in out, out
    summary = out.partition("\nsummary: ")[2]
    assert re.match(r"400 batches x 12 items to 3 workers in .*, 0 lost$", summary, re.M), out
    counts = re.search(r"^watchdog: (\d+) alerts raised, (\d+) cleared$", summary, re.M)
    assert counts and counts.group(1) == counts.group(2), summary
    subject = f"worker {VICTIM}" if rule != "freeze_risk/busy" else f"the engine's writer, held back by worker {VICTIM}"
    assert re.search(rf"^  {rule} about {subject}: raised \+[\d.]+ s, ([\d.]+ s (before|after) the writer blocked|"
                     r"the writer never blocked); cleared \+[\d.]+ s$", summary, re.M), summary
    assert re.search(rf"^verdict: the watchdog named worker {VICTIM} \({inject}\) first by ", summary, re.M), summary
    if inject == "kill":
        assert "killed workers [2]" in summary
