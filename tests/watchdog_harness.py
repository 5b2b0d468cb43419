"""Helpers of the watchdog tests: queues watched by a real `shmq watchdog` subprocess, and their workers."""

from __future__ import annotations

import contextlib
import os

import shmq
from shmq.telemetry.watchdog.sidecar import Sidecar

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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
        with Sidecar("--queue", queue_name, "--stack-dir", stack_dir, *watchdog_args) as watchdog:
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
