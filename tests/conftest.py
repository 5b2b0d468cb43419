"""Shared fixtures: isolated queue names, child processes that cannot outlive a test, leak checks."""

from __future__ import annotations

import multiprocessing
import os
import signal

import pytest

import shmq
from shmq.testing import shm_segments, unique_name

FORK = multiprocessing.get_context("fork")


@pytest.fixture
def queue_name(request) -> str:
    return unique_name(request.node.name[:40])


@pytest.fixture
def children():
    """Start functions in forked processes; every one still running at teardown is killed."""
    started: list[multiprocessing.Process] = []

    def start(target, *args) -> multiprocessing.Process:
        process = FORK.Process(target=target, args=args, daemon=True)
        process.start()
        started.append(process)
        return process

    yield start
    for process in started:
        if process.is_alive():
            os.kill(process.pid, signal.SIGCONT)
            process.kill()
        process.join(5)


@pytest.fixture(autouse=True)
def no_leftover_segments():
    """A test must not leave behind segments this process created (others may run tests beside us)."""
    before = shm_segments()
    yield
    leaked = [s.shm_name for s in shmq.list_segments()
              if s.shm_name not in before and s.creator_pid == os.getpid()]
    for name in leaked:
        os.unlink(os.path.join("/dev/shm", name))
    assert not leaked, f"test left segments in /dev/shm: {sorted(leaked)}"


@pytest.fixture
def writer(queue_name):
    """A two-reader queue with small chunks, closed after the test."""
    with shmq.create(2, name=queue_name, chunk_bytes=4096, n_chunks=8) as w:
        yield w
