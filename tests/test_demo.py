"""``shmq demo``: the watchdog flags a stalled worker before the engine freezes, and nothing is lost.

Short runs of the real demo (a subprocess without a terminal, so its output is
the line-per-event log): the default stall, and a healthy run.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import sysconfig

import pytest

from shmq.cli import demo as demo_module

from .watchdog_harness import ROOT

VICTIM = 2  # the last of three workers
STAMP = r"^\[\s*(\d+\.\d+) s\] "


def demo(*args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "shmq", "demo", "--workers", "3", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=45)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "\r" not in done.stdout, "no progress bar: one line per event"
    return done.stdout


def stamped(out: str, pattern: str) -> float:
    """The time stamp of the first log line matching `pattern`."""
    found = re.search(STAMP + pattern, out, re.M)
    assert found, f"no line {pattern!r} in:\n{out}"
    return float(found.group(1))


@pytest.mark.timeout(60)
def test_the_default_stall_is_flagged_with_worker_cause_and_stack_before_the_engine_blocks():
    out = demo("--seconds", "9", "--fault-at", "1.5", "--fault-for", "4", "--ring", "128")  # clears before the end
    log, _, summary = out.partition("\nsummary: ")
    assert all(re.match(STAMP, line) or line.startswith("      ") for line in log.splitlines()), log

    injected = stamped(out, rf"inject: stall worker {VICTIM} \(pid \d+\) for 4 s$")
    flagged = stamped(out, rf"watchdog RAISED  reader_stalled/frozen: queue 'demo-requests': reader {VICTIM} ")
    blocked = stamped(out, r"engine: a put found the ring full")
    assert injected < flagged < blocked, out
    # The stopped worker dumps its stacks when it resumes: the clear shows where it was.
    assert re.search(rf"cleared reader_stalled/frozen: .*reader {VICTIM} .*\n      main thread: .* <- \.\.\. <- "
                     r"worker \(demo\.py:\d+\)$", out, re.M), out
    assert "watchdog: all clear (/healthz 200)" in out

    assert re.match(r"450 batches x 12 items to 3 workers in [\d.]+ s: .* msgs/s delivered .*, 0 lost$",
                    summary, re.M), summary
    assert re.search(r"^the engine's writer blocked at \+[\d.]+ s \(a put found the ring full\)", summary, re.M)
    counts = re.search(r"^watchdog: (\d+) alerts raised, (\d+) cleared$", summary, re.M)
    assert counts and int(counts.group(1)) >= 2 and counts.group(1) == counts.group(2), summary
    lead = re.search(rf"^  reader_stalled/frozen about worker {VICTIM}: raised \+[\d.]+ s, ([\d.]+) s before the "
                     r"writer blocked; cleared \+[\d.]+ s$", summary, re.M)
    assert lead and float(lead.group(1)) > 0, summary
    assert re.search(rf"^  freeze_risk/frozen about the engine's writer, held back by worker {VICTIM}: raised "
                     r"\+[\d.]+ s, [\d.]+ s (before|after) the writer blocked; cleared", summary, re.M), summary
    assert re.search(rf"^verdict: the watchdog named worker {VICTIM} \(stall\) first by reader_stalled/frozen, "
                     r"[\d.]+ s before the writer blocked; 0 lost$", summary, re.M), summary


@pytest.mark.timeout(60)
def test_a_healthy_run_raises_no_alert_never_blocks_and_loses_nothing():
    out = demo("--healthy", "--seconds", "4")
    assert "inject:" not in out and "RAISED" not in out, out
    assert re.search(r"^200 batches x 12 items to 3 workers in [\d.]+ s: .*, 0 lost$",
                     out.partition("\nsummary: ")[2], re.M), out
    assert "\nthe engine's writer never blocked: no put found the ring full\n" in out
    assert "\nwatchdog: 0 alerts raised, 0 cleared\n" in out
    assert out.endswith("\nverdict: healthy run, 0 alerts; 0 lost\n"), out


def test_an_alerts_main_thread_shows_its_innermost_frame_and_the_function_of_the_application_it_is_in():
    numpy_methods = os.path.join(sysconfig.get_paths()["purelib"], "numpy", "core", "_methods.py")
    stack = "\n".join([
        "Current thread 0x00007f0000000001 (most recent call first):",
        f'  File "{numpy_methods}", line 49 in _sum',
        f'  File "{demo_module.__file__}", line 95 in <listcomp>',
        f'  File "{demo_module.__file__}", line 95 in worker',
        f'  File "{os.path.join(sysconfig.get_paths()["stdlib"], "multiprocessing", "process.py")}", line 108 in run',
    ])
    assert demo_module.main_thread_frames(stack) == ["_sum (_methods.py:49)", "worker (demo.py:95)"]
