"""``--compare sidecar=traces``: a ``shmq exporter --traces`` process beside a row, tracing every
message from the flight records, so the row shows what tracing from outside costs the traced
processes, and the sidecar's own CPU and coverage beside it.

The exporter sends its spans over OTLP/HTTP to otlp_sink.py, which stands in for a collector.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

from shmq import procs

#: The exporter's last line: how many spans it made, and how many operations a ring overwrote first.
_SUMMARY = re.compile(r"(\d+) spans exported, (\d+) operations overwritten")


class TracingSidecar:
    """The sink and the exporter, started for queue `queue_name`; ``stop()`` ends both and measures."""

    def __init__(self, queue_name: str) -> None:
        self._sink = subprocess.Popen([sys.executable, "-m", "shmq.cli.bench.otlp_sink"], stdout=subprocess.PIPE,
                                      text=True)
        self._exporter = None
        try:
            endpoint = f"http://127.0.0.1:{int(_first_line(self._sink))}/v1/traces"
            env = {**os.environ, "OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf",
                   "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": endpoint, "OTEL_SERVICE_NAME": "shmq-bench-sidecar"}
            self._exporter = subprocess.Popen(
                [sys.executable, "-m", "shmq", "exporter", "--port", "0", "--queue", queue_name, "--traces"],
                stdout=subprocess.PIPE, text=True, env=env)
            while "tracing" not in _first_line(self._exporter):  # spans are made from here on
                pass
        except BaseException:
            self._end_all()
            raise
        self._started, self._startup_cpu_s = time.monotonic(), procs.cpu_seconds(self._exporter.pid)

    def stop(self) -> tuple[float, float | None]:
        """End the exporter (its last poll and flush included) and the sink. Returns the exporter's CPU
        since it was ready (its start-up is not the row's) as a % of one core, and the share of recorded
        operations it made spans of."""
        self._exporter.send_signal(signal.SIGTERM)
        _, status, usage = os.wait4(self._exporter.pid, 0)
        self._exporter.returncode = os.waitstatus_to_exitcode(status)
        elapsed = time.monotonic() - self._started
        summary = _SUMMARY.search(self._exporter.stdout.read())
        self._end_all()
        traced = None
        if summary:
            spans, missed = map(int, summary.groups())
            traced = 100 * spans / (spans + missed) if spans + missed else None
        return 100 * (usage.ru_utime + usage.ru_stime - self._startup_cpu_s) / elapsed, traced

    def _end_all(self) -> None:
        for process in (self._exporter, self._sink):
            if process is None:
                continue
            if process.returncode is None:
                process.kill()
                process.wait()
            process.stdout.close()


def _first_line(process: subprocess.Popen) -> str:
    """The next line `process` prints; RuntimeError if it ends first. (A process that hangs instead
    is the row's: the supervisor ends the trial's process group, these two included, at its timeout.)"""
    line = process.stdout.readline()
    if not line:
        raise RuntimeError(f"sidecar {process.args!r} ended before it was ready (exit {process.wait()})")
    return line
