"""Helpers of the telemetry tests: private shm directories, unreadable segments, a real exporter process, scrapes."""

from __future__ import annotations

import contextlib
import mmap
import os
import re
import secrets
import select
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request
from typing import Iterable, Iterator

from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families as parse_text

from shmq.segment import PREFIX
from shmq.telemetry import names as N

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OPENMETRICS = "application/openmetrics-text; version=1.0.0; charset=utf-8"


@contextlib.contextmanager
def isolated_shm_dir() -> Iterator[str]:
    """A directory on tmpfs that only this test puts segments in, so counts of errors are exact.

    Its name does not start with the segment prefix, so exporters watching /dev/shm ignore it.
    """
    path = tempfile.mkdtemp(prefix="telemetry-test-", dir="/dev/shm")
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def garbage_segment(shm_dir: str, *, size: int = 4096, age_s: float = 60.0) -> str:
    """A file named like a segment that holds random bytes, last modified `age_s` ago."""
    path = os.path.join(shm_dir, PREFIX + secrets.token_hex(12))
    with open(path, "wb") as f:
        f.write(os.urandom(size))
    age(path, age_s)
    return path


def age(path: str, seconds: float) -> None:
    then = time.time() - seconds
    os.utime(path, (then, then))


def corrupt_word(path: str, offset: int, value: int) -> None:
    """Overwrite one 8-byte word of a segment file, as a stray write from another process would."""
    with open(path, "r+b") as f, mmap.mmap(f.fileno(), 0) as mm:
        mm[offset : offset + 8] = struct.pack("<Q", value)


def sample_values(families: Iterable) -> dict:
    """{(sample name, frozenset of label items): value} of parsed metric families."""
    return {(s.name, frozenset(s.labels.items())): s.value for family in families for s in family.samples}


def who(queue: str, reader: int | None = None) -> dict:
    """The participant labels of the writer (reader None) or of a reader."""
    if reader is None:
        return {N.LABEL_QUEUE: queue, N.LABEL_ROLE: "writer", N.LABEL_READER: ""}
    return {N.LABEL_QUEUE: queue, N.LABEL_ROLE: "reader", N.LABEL_READER: str(reader)}


def value(samples: dict, name: str, **labels) -> float:
    return samples[name, frozenset(labels.items())]


@contextlib.contextmanager
def exporter_process(*args: str, start_timeout_s: float = 15.0) -> Iterator[str]:
    """Run ``shmq exporter --port 0 ARGS`` as a subprocess; yields its metrics URL; stops it afterwards.

    It must exit with status 0 on SIGTERM; it is killed if it takes more than 5 s.
    """
    process = subprocess.Popen([sys.executable, "-m", "shmq", "exporter", "--port", "0", *args], cwd=ROOT,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        ready, _, _ = select.select([process.stdout], [], [], start_timeout_s)
        line = process.stdout.readline() if ready else ""
        found = re.search(r"http://\S+/metrics", line)
        if not found:
            process.kill()
            raise AssertionError(f"the exporter did not start: {line!r} {process.stderr.read()!r}")
        yield found.group(0)
        assert process.poll() is None, f"the exporter died: {process.stderr.read()!r}"
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        process.stdout.close()
        process.stderr.close()
    assert process.returncode == 0, f"the exporter exited with {process.returncode} when asked to stop (SIGTERM)"


def scrape(url: str, *, openmetrics: bool = False) -> dict:
    """GET the metrics page and parse it with prometheus_client's text or OpenMetrics parser."""
    request = urllib.request.Request(url, headers={"Accept": OPENMETRICS} if openmetrics else {})
    with urllib.request.urlopen(request, timeout=10) as response:
        text = response.read().decode()
        content_type = response.headers["Content-Type"]
    if openmetrics:
        assert content_type.startswith("application/openmetrics-text"), content_type
        return sample_values(parse_openmetrics(text))
    return sample_values(parse_text(text))


def scrape_until(url: str, condition, timeout_s: float = 10.0) -> dict:
    """Scrape until condition(samples) holds; the last samples if it never does."""
    deadline = time.monotonic() + timeout_s
    while True:
        samples = scrape(url)
        if condition(samples) or time.monotonic() > deadline:
            return samples
        time.sleep(0.05)
