"""``shmq watchdog`` as a child process: for the demo, the benchmark and the tests.

It runs the real command (its own interpreter, as in deployment), reads the URL
it prints, and collects the JSON-lines events it writes, as they come.
"""

from __future__ import annotations

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
from typing import Callable

import shmq

#: Where ``python -m shmq`` resolves, installed or not.
_IMPORT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(shmq.__file__)))


class Sidecar:
    """``shmq watchdog ARGS`` in a subprocess; ``stop()`` ends it (also as a context manager).

    Without ``--no-http`` among `args` it listens on a free port and ``url`` is
    its base URL. Each event is appended to ``events`` and passed to `on_event`.
    """

    def __init__(self, *args: str, on_event: Callable[[dict], None] | None = None,
                 start_timeout_s: float = 20.0) -> None:
        argv = [sys.executable, "-m", "shmq", "watchdog", *args]
        if "--no-http" not in args and "--port" not in args:
            argv += ["--port", "0"]
        self.process = subprocess.Popen(argv, cwd=_IMPORT_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                        text=True)
        self.events: list[dict] = []
        self.log: list[str] = []
        self._on_event = on_event
        self._changed = threading.Condition()
        ready, _, _ = select.select([self.process.stderr], [], [], start_timeout_s)
        first = self.process.stderr.readline() if ready else ""
        if not first.startswith("shmq watchdog: watching"):
            self.stop()
            raise RuntimeError(f"shmq watchdog did not start: {first!r}")
        found = re.search(r"(http://\S+)/metrics", first)
        self.url = found.group(1) if found else ""
        self._threads = [threading.Thread(target=self._read_events, daemon=True),
                         threading.Thread(target=self._read_log, daemon=True)]
        for thread in self._threads:
            thread.start()

    @property
    def pid(self) -> int:
        return self.process.pid

    def _read_events(self) -> None:
        for line in self.process.stdout:
            event = json.loads(line)
            with self._changed:
                self.events.append(event)
                self._changed.notify_all()
            if self._on_event is not None:
                self._on_event(event)

    def _read_log(self) -> None:
        for line in self.process.stderr:
            self.log.append(line)

    def wait_for(self, what: str, predicate: Callable[[dict], bool], timeout_s: float) -> dict:
        """The first event that satisfies `predicate`; TimeoutError after `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        with self._changed:
            while True:
                found = next((e for e in self.events if predicate(e)), None)
                if found is not None:
                    return found
                left = deadline - time.monotonic()
                if left <= 0 or self.process.poll() is not None:
                    raise TimeoutError(f"no event {what} within {timeout_s} s; events: {self.brief()}; "
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
        """Until /healthz says it watches at least `queues` queues."""
        deadline = time.monotonic() + timeout_s
        while self.healthz()[1]["queues"] < queues:
            if time.monotonic() > deadline:
                raise TimeoutError(f"the watchdog saw no {queues} queues within {timeout_s} s: {self.healthz()}")
            time.sleep(0.05)

    def metrics(self) -> str:
        with urllib.request.urlopen(f"{self.url}/metrics", timeout=5) as response:
            return response.read().decode()

    def stop(self) -> None:
        terminate(self.process)
        for thread in getattr(self, "_threads", ()):
            thread.join(5)
        self.process.stdout.close()
        self.process.stderr.close()

    def __enter__(self) -> Sidecar:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def terminate(process: subprocess.Popen, grace_s: float = 5) -> None:
    """SIGTERM, then SIGKILL if the process has not exited within `grace_s`."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(grace_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(grace_s)
