"""The demo is the main job: it must run end to end on a fresh machine and lose nothing."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.timeout(120)
def test_demo_runs_end_to_end_and_loses_nothing():
    done = subprocess.run([sys.executable, "-m", "shmq", "demo", "--batches", "30", "--workers", "3"],
                          capture_output=True, text=True, timeout=100)
    assert done.returncode == 0, done.stderr
    assert "30 batches x 12 items to 3 workers" in done.stdout
    assert ", 0 lost" in done.stdout
    assert "30/30 batches" in done.stdout
