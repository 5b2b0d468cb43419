"""`shmq bench` runs end to end: every row is in the table, nothing is lost, a hung row is killed."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import time

import pytest

import shmq
from shmq import procs, wait
from shmq.cli.bench import configs, peers, trial, vllm_peers, workloads

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PEER_LABELS = [p.label for p in peers.peer_rows(mpq=True, zmq=True, faster_fifo=True, iceoryx2=True, zenoh=True)
               + vllm_peers.peer_rows(vllm=True)]
#: vLLM is not in the bench extra: its row may say "skipped" on a machine without it, never in CI (.ci/run).
VLLM_MAY_BE_MISSING = os.environ.get("SHMQ_REQUIRE_VLLM") != "1"
STRATEGY_LABELS = [c.label for c in configs.strategy_rows()]
LIMIT_LABELS = ["numpy memcpy 1 MiB", "1 MiB ring, 2 processes, copy in + copy out",
                "1 MiB ring, 2 processes, copy in only", "1 MiB ring, 2 processes, copy in + copy out + pickling",
                "1 MiB ring, 2 processes, copy in only + pickling", "shm ping-pong, 2 processes", "futex wake",
                "futex wake + pickled small message", "pickle-only ring, 1 reader", "pickle-only ring, 4 readers"]


def run_bench(*args: str, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def dead_bench_segments() -> list[str]:
    """Segments of benchmark queues whose creator is gone: what a run left behind."""
    return [s.shm_name for s in shmq.list_segments()
            if s.name.startswith(("bench-", "soak-")) and not procs.is_alive(s.creator_pid, 0)]


@pytest.mark.timeout(150)
def test_quick_benchmark_has_every_row_and_loses_nothing(tmp_path):
    report = tmp_path / "bench.json"
    leftovers_before = set(dead_bench_segments())
    done = run_bench("shmq", "bench", "--quick", "--idle-seconds", "0.1", "--json", str(report), timeout=140)
    assert done.returncode == 0, done.stdout + done.stderr
    rows = json.loads(report.read_text())["rows"]

    expected = set()
    for w in workloads.parse_workloads(workloads.DEFAULT_WORKLOADS):
        labels = STRATEGY_LABELS + ([configs.LEASE.label] if w.kind == "large" else []) + PEER_LABELS
        expected |= {(w.kind, w.n_readers, label) for label in labels}
    expected |= {("limit", 0, label) for label in LIMIT_LABELS}
    assert {(r["workload"], r["n_readers"], r["transport"]) for r in rows} == expected
    assert len(rows) == len(expected)

    # zenoh is in the bench extra, which CI installs: its rows run rather than skip; so does vLLM in CI.
    assert all(not r["note"].startswith("skipped") for r in rows if r["transport"] == peers.ZenohPeer.label)
    assert all(not r["note"].startswith("skipped") for r in rows
               if r["transport"] == vllm_peers.VllmPeer.label and not VLLM_MAY_BE_MISSING)
    for r in rows:
        if r["note"].startswith("skipped"):
            continue  # an optional peer that is not installed here
        assert not r["note"].startswith(("failed", "timeout", "stalled")), r
        if r["workload"] == "limit":
            assert r["lost"] in (None, 0), r
            continue
        assert r["lost"] == 0, r
        assert r["msgs_per_s"] > 0 and r["p50_us"] > 0 and r["p99_us"] >= r["p50_us"], r
        if r["workload"] == "small":
            assert r["idle_cpu_pct"] is not None and r["wake_p50_us"] > 0, r
    # The markdown table on stdout carries the same rows.
    table_lines = [line for line in done.stdout.splitlines() if line.startswith("| ")]
    assert len(table_lines) == 1 + len(expected)
    assert set(dead_bench_segments()) <= leftovers_before


@pytest.mark.timeout(60)
def test_compare_runs_each_configuration_side_by_side(tmp_path):
    report = tmp_path / "compare.json"
    done = run_bench("shmq.cli.bench", "--quick", "--workloads", "small-1", "--idle-seconds", "0.1", "--repeat", "2",
                     "--compare", "stats=on,stats=off+wait=Yield", "--json", str(report), timeout=50)
    assert done.returncode == 0, done.stdout + done.stderr
    rows = json.loads(report.read_text())["rows"]
    assert [r["transport"] for r in rows] == ["shmq stats=on", "shmq stats=off+wait=Yield"]
    assert all(r["lost"] == 0 and r["msgs_per_s"] > 0 for r in rows)
    assert "median of 2 interleaved runs" in done.stdout


@pytest.mark.timeout(90)
def test_a_tracing_sidecar_row_reports_the_sidecars_cpu_and_what_it_traced(tmp_path):
    report = tmp_path / "sidecar.json"
    done = run_bench("shmq.cli.bench", "--quick", "--workloads", "small-1", "--idle-seconds", "0.1",
                     "--compare", "stats=on,sidecar=traces", "--json", str(report), timeout=80)
    assert done.returncode == 0, done.stdout + done.stderr
    plain, traced = json.loads(report.read_text())["rows"]
    assert plain["sidecar_cpu_pct"] is None and plain["lost"] == 0
    assert traced["lost"] == 0 and traced["msgs_per_s"] > 0, traced
    # The sidecar's tracing takes only idle CPU: on a machine left none it may trace nothing (None).
    share = traced["sidecar_traced_pct"]
    assert traced["sidecar_cpu_pct"] >= 0 and (share is None or 0 <= share <= 100), traced
    assert "| shmq sidecar=traces |" in done.stdout and "sidecar " in done.stdout


@pytest.mark.timeout(90)
def test_quick_remote_benchmark_has_every_row_its_memory_and_loses_nothing(tmp_path):
    report = tmp_path / "remote.json"
    done = run_bench("shmq", "bench", "--remote", "--quick", "--workloads", "small-1,small-4", "--idle-seconds", "0.1",
                     "--json", str(report), timeout=80)
    assert done.returncode == 0, done.stdout + done.stderr
    rows = json.loads(report.read_text())["rows"]
    labels = [p.label for p in peers.remote_rows(zmq=True)]
    assert [(r["workload"], r["n_readers"], r["transport"]) for r in rows] == \
        [("small", n, label) for n in (1, 4) for label in labels]
    for r in rows:
        assert r["lost"] == 0 and r["msgs_per_s"] > 0 and r["p99_us"] >= r["p50_us"] > 0, r
        assert r["writer_rss_mb"] is not None and r["reader_rss_mb"] is not None, r


def test_compare_specs_parse_into_configurations():
    on, off = configs.parse_specs("stats=on, wait=BusySpin+stats=off+n_chunks=64")
    assert (on.stats, on.wait) == (True, "SpinYieldPark")
    assert (off.stats, off.wait, off.n_chunks) == (False, "BusySpin", 64)
    assert configs.parse_spec("hooks=off").hooks == ""
    tuned = configs.parse_spec("wait=SpinYieldPark:spins=50:park_timeout_s=0.02").strategy()
    assert (tuned.spins, tuned.yields, tuned.park_timeout_s) == (50, wait.SpinYieldPark().yields, 0.02)
    preset = configs.parse_specs("tracing")
    assert [c.label for c in preset[:2]] == ["shmq stats=off", "shmq stats=on"] and len(preset) == 6
    for config in preset[2:]:  # every tracing row names a factory that exists
        module_name, _, factory = config.hooks.partition(":")
        assert callable(getattr(importlib.import_module(module_name), factory)), config.hooks
    for bad in ("stats=maybe", "wait=Sleepy", "colour=red", "stats", "n_chunks=many", "hooks=nocolon",
                "wait=SpinYieldPark:colour=1", "wait=Backoff:sleep_s=soon", "sidecar=logs"):
        with pytest.raises(ValueError, match="--compare"):
            configs.parse_spec(bad)


class _HangingPeer(peers.Peer):
    """A transport whose readers never receive: the row must be cut off, not wait forever."""

    label = "hangs"

    def __init__(self, pid_dir) -> None:
        self.pid_dir = pid_dir

    def open(self, workload, workdir):
        return _HangingLink(self.pid_dir)


class _HangingLink(peers.Link):
    def __init__(self, pid_dir) -> None:
        self.pid_dir = pid_dir

    def sender(self):
        return _SilentSender()

    def receiver(self, index):
        (self.pid_dir / str(os.getpid())).touch()
        time.sleep(3600)


class _SilentSender(peers.Sender):
    def send(self, message):
        pass


@pytest.mark.timeout(30)
def test_a_hung_row_is_killed_with_its_readers(tmp_path):
    plan = workloads.Plan(throughput=10, latency=1, wake=0, wake_gap_s=0, idle_s=0, stall_s=60)
    start = time.monotonic()
    row = trial.run_row(_HangingPeer(tmp_path), workloads.Workload("small", 2), plan, timeout_s=2)
    assert row.note.startswith("timeout"), row
    assert time.monotonic() - start < 15
    reader_pids = [int(p.name) for p in tmp_path.iterdir()]
    assert len(reader_pids) == 2
    time.sleep(0.2)  # SIGKILL is delivered asynchronously
    assert [pid for pid in reader_pids if procs.run_state(pid) not in (None, "Z")] == []


@pytest.mark.timeout(60)
def test_soak_reports_memory_of_every_process_and_no_loss():
    done = run_bench("shmq.cli.bench", "--soak", "--soak-messages", "3000", "--soak-readers", "2", timeout=50)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "lost: 0;" in done.stdout
    process_rows = [line for line in done.stdout.splitlines() if line.startswith(("| writer", "| reader"))]
    assert len(process_rows) == 3
    assert all("| 3,000 | 0 |" in line for line in process_rows), done.stdout


@pytest.mark.timeout(90)
def test_quick_cadence_has_every_row_and_loses_nothing(tmp_path):
    from shmq.cli.bench import cadence

    report = tmp_path / "cadence.json"
    done = run_bench("shmq", "bench", "--cadence", "--quick", "--json", str(report), timeout=80)
    assert done.returncode == 0, done.stdout + done.stderr
    rows = json.loads(report.read_text())["rows"]
    labels = [p.label for p in cadence.transports()]
    assert "shmq Adaptive" in labels and peers.ZenohPeer.label in labels
    cells = [c.name for c in cadence.cells(quick=True, periods_ms=(1.0, 10.0), readers=(1,), sizes=("small",))]
    assert [(r["cell"], r["transport"]) for r in rows] == [(c, label) for c in cells for label in labels]
    for r in rows:
        if VLLM_MAY_BE_MISSING and r["transport"] == vllm_peers.VllmPeer.label and r["note"].startswith("skipped"):
            continue
        assert not r["note"], r  # every peer of the bench extra is installed, so none is skipped
        assert r["lost"] == 0 and r["samples"] > 0, r
        assert 0 < r["p50_us"] <= r["p99_us"] <= r["p999_us"], r
        assert r["reader_cpu_pct"] > 0 and r["writer_cpu_pct"] > 0, r
    # The machine's timing facts follow the table.
    assert "Timer slack of a thread" in done.stdout and "Scheduler wake latency" in done.stdout
    assert "| 1000 µs, slack 1 ns |" in done.stdout
