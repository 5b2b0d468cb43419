"""``shmq top --once``: one plain table of every participant, for scripts."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

import shmq

from .conftest import FORK
from .watchdog_harness import ROOT, drain


def top_once(*args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "shmq", "top", "--once", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    return done.stdout


def read_after(handle: str, index: int, go) -> None:
    with shmq.attach(handle, reader=index, stack_dumps=False) as reader:
        go.wait(30)
        drain(reader)


@pytest.mark.timeout(40)
def test_top_once_prints_a_row_per_participant_with_its_lag_and_alerts(queue_name, children):
    go = FORK.Event()
    with shmq.create(2, name=queue_name, ring_bytes=8 * 256, stack_dumps=False) as writer:  # 8 frames of an int
        readers = [children(read_after, str(writer.handle), i, go) for i in range(2)]
        writer.wait_for_readers(timeout=10)
        for i in range(5):
            writer.put(i)
        out = top_once("--queue", queue_name, "--window", "1.5")
        go.set()
    lines = out.splitlines()
    assert lines[0] == f"queue {queue_name} ({writer.handle.shm_name}): ring 1,280 B/2,048 B (5 messages)"
    assert lines[1].split() == ["role", "pid", "state", "cursor", "lag", "msgs/s", "spins/s", "parks/s", "p50",
                                "wait", "p99", "wait", "last", "op", "alerts"]
    rows = {}
    for line in lines[2:]:
        fields = line.split()
        role_words = 2 if fields[0] == "reader" else 1
        rows[" ".join(fields[:role_words])] = fields[role_words:]
    assert rows.keys() == {"writer", "reader 0", "reader 1"}
    outside_the_queue = ("idle", "busy")  # which of the two depends on whether the call had to wait
    writer_row = rows["writer"]
    assert (writer_row[0], writer_row[1] in outside_the_queue, writer_row[2:4]) == (str(os.getpid()), True, ["5", "-"])
    assert writer_row[-3:-1] == ["put", "4"], "its last recorded operation: message 4 written"
    for i, reader in enumerate(readers):
        row = rows[f"reader {i}"]
        assert (row[0], row[1] in outside_the_queue, row[2:4]) == (str(reader.pid), True, ["0", "5"])
        assert row[-1] == "reader_stalled:busy", "5 messages pending, none read for over a second"
        assert row[-2] == "-", "it has taken nothing: no operation recorded"


@pytest.mark.timeout(30)
def test_top_once_with_no_queue_says_so():
    assert top_once("--queue", "no-such-queue-anywhere", "--window", "0.2") == "no shmq queues\n"


def test_wait_quantiles_are_the_upper_bound_of_the_bucket_that_holds_them():
    from shmq.layout import HIST_BUCKETS, HISTOGRAM_UPPER_BOUNDS_S as BOUNDS
    from shmq.stats import histogram_quantile

    counts = [0] * HIST_BUCKETS
    assert histogram_quantile(counts, 0.5) is None  # no wait: no quantile (top shows "-")
    counts[0], counts[3], counts[-1] = 50, 49, 1
    assert [histogram_quantile(counts, q) for q in (0.5, 0.51, 0.99, 1.0)] == [BOUNDS[0], BOUNDS[3], BOUNDS[3],
                                                                                  float("inf")]
