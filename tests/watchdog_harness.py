"""Helpers of the watchdog tests: `shmq watchdog` as a real subprocess, and the workers it watches."""

from __future__ import annotations

import contextlib
import json
import os
import re
import select
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import shmq

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class WatchdogProcess:
    """``shmq watchdog --port 0 ARGS``; collects the JSON-lines events it prints, as they come."""

    def __init__(self, *args: str, start_timeout_s: float = 20.0) -> None:
        argv = [sys.executable, "-m", "shmq", "watchdog", "--port", "0", *args]
        self.process = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.events: list[dict] = []
        self.log: list[str] = []
        self._changed = threading.Condition()
        ready, _, _ = select.select([self.process.stderr], [], [], start_timeout_s)
        first = self.process.stderr.readline() if ready else ""
        found = re.search(r"(http://\S+)/metrics", first)
        if not found:
            self.stop()
            raise AssertionError(f"the watchdog did not start: {first!r}")
        self.url = found.group(1)
        self._threads = [threading.Thread(target=self._read_events, daemon=True),
                         threading.Thread(target=self._read_log, daemon=True)]
        for thread in self._threads:
            thread.start()

    def _read_events(self) -> None:
        for line in self.process.stdout:
            with self._changed:
                self.events.append(json.loads(line))
                self._changed.notify_all()

    def _read_log(self) -> None:
        for line in self.process.stderr:
            self.log.append(line)

    def wait_for(self, what: str, predicate, timeout_s: float) -> dict:
        """The first event that satisfies `predicate`, waiting up to `timeout_s` for it."""
        deadline = time.monotonic() + timeout_s
        with self._changed:
            while True:
                found = next((e for e in self.events if predicate(e)), None)
                if found is not None:
                    return found
                left = deadline - time.monotonic()
                if left <= 0 or self.process.poll() is not None:
                    raise AssertionError(f"no event {what} within {timeout_s} s; events: {self.brief()}; "
                                         f"log: {''.join(self.log)[-2000:]}")
                self._changed.wait(left)

    def brief(self) -> list[tuple]:
        return [(e["event"], e["rule"], e["cause"], e["reader"]) for e in self.events]

    def healthz(self) -> tuple[int, dict]:
        try:
            with urllib.request.urlopen(f"{self.url}/healthz", timeout=5) as response:
                return response.status, json.load(response)
        except urllib.error.HTTPError as e:
            return e.code, json.load(e)

    def wait_until_watching(self, queues: int = 1, timeout_s: float = 10.0) -> None:
        deadline = time.monotonic() + timeout_s
        while self.healthz()[1]["queues"] < queues:
            assert time.monotonic() < deadline, f"the watchdog never saw {queues} queues: {self.healthz()}"
            time.sleep(0.05)

    def metrics(self) -> str:
        with urllib.request.urlopen(f"{self.url}/metrics", timeout=5) as response:
            return response.read().decode()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        for thread in getattr(self, "_threads", ()):
            thread.join(5)
        self.process.stdout.close()
        self.process.stderr.close()

    def __enter__(self) -> WatchdogProcess:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def about(rule: str, *, reader: int | None = None, kind: str = "raise"):
    """A predicate on events: this kind of event of this rule (for this reader, if given)."""
    return lambda e: e["event"] == kind and e["rule"] == rule and (reader is None or e["reader"] == reader)


@contextlib.contextmanager
def watched_queue(queue_name: str, children, stack_dir: str, worker, n_readers: int, *worker_args,
                  watchdog_args: tuple[str, ...] = (), **create_kwargs):
    """A queue with `n_readers` forked `worker`s and a watchdog that has seen it: (writer, readers, watchdog)."""
    with shmq.create(n_readers, name=queue_name, stack_dumps=stack_dir, **create_kwargs) as writer:
        readers = [children(worker, str(writer.handle), i, stack_dir, *worker_args) for i in range(n_readers)]
        writer.wait_for_readers(timeout=10)
        with WatchdogProcess("--queue", queue_name, "--stack-dir", stack_dir, *watchdog_args) as watchdog:
            watchdog.wait_until_watching()
            yield writer, readers, watchdog


# -- workers (run in forked children) ---------------------------------------------------------------------

def drain(reader: shmq.Reader, each=lambda message: None) -> int:
    """Read until the writer closes the queue, calling each(message); returns how many arrived."""
    received = 0
    try:
        while True:
            each(reader.get(timeout=30))
            received += 1
    except shmq.QueueClosed:
        return received


def consume_in_order(handle: str, index: int, stack_dir: str, expected: int) -> None:
    """Read until the writer closes; fail (exit code 1) unless messages 0..expected-1 arrived in order."""
    with shmq.attach(handle, reader=index, stack_dumps=stack_dir) as reader:
        received = []
        drain(reader, received.append)
    assert received == list(range(expected)), f"reader {index} got {len(received)} of {expected}, or out of order"
