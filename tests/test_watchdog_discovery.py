"""``shmq watchdog --all``: follows new segments, forgets unlinked ones, survives what it cannot read."""

from __future__ import annotations

import os
import shutil
import time

import pytest

import shmq
from shmq import layout as L
from shmq.telemetry import names as N
from shmq.telemetry.watchdog.sidecar import Sidecar

from .telemetry_helpers import corrupt_word, garbage_segment, isolated_shm_dir
from .watchdog_harness import about


def create_then_die(shm_dir: str) -> None:
    """A writer whose process is killed without closing: its segment stays behind with a dead writer."""
    writer = shmq.create(1, name="orphan", chunk_bytes=256, n_chunks=4, shm_dir=shm_dir, stack_dumps=False)
    writer.put("unread")
    os.kill(os.getpid(), 9)


def foreign_copy(shm_dir: str, source: str) -> None:
    """A valid segment owned by another user (root can make one)."""
    target = os.path.join(shm_dir, "shmq-" + "f" * 24)
    shutil.copyfile(source, target)
    os.chown(target, 65534, 65534)


@pytest.mark.timeout(40)
def test_watching_everything_follows_new_queues_forgets_unlinked_ones_and_survives_bad_segments(children):
    with isolated_shm_dir() as shm_dir:
        garbage_segment(shm_dir)
        first = shmq.create(1, name="first", chunk_bytes=256, n_chunks=4, shm_dir=shm_dir, stack_dumps=False)
        if os.getuid() == 0:
            foreign_copy(shm_dir, os.path.join(shm_dir, first.handle.shm_name))
        with Sidecar("--all", "--shm-dir", shm_dir, "--no-stacks") as watchdog:
            watchdog.wait_until_watching(1)
            second = shmq.create(1, name="second", chunk_bytes=256, n_chunks=4, shm_dir=shm_dir, stack_dumps=False)
            watchdog.wait_until_watching(2)

            children(create_then_die, shm_dir).join(10)
            dead = watchdog.wait_for("the orphan's dead writer", about(N.RULE_DEAD), 5)
            assert (dead["queue"], dead["role"], dead["reader"]) == ("orphan", "writer", None)
            assert shmq.cleanup(shm_dir), "cleanup unlinks the orphan"
            gone = watchdog.wait_for("the orphan forgotten", about(N.RULE_DEAD, kind="clear"), 5)
            assert gone["reason"] == "the queue's segment was unlinked"

            # A stray write that makes a record unreadable: the watchdog skips that queue and goes on.
            corrupt_word(os.path.join(shm_dir, second.handle.shm_name), L.record_offset(1) + L.REC_ROLE, 77)
            time.sleep(0.5)
            status, body = watchdog.healthz()
            assert status == 200 and body["queues"] == 2
            assert any("cannot read" in line for line in watchdog.log), watchdog.log

            second.close()
            deadline = time.monotonic() + 5
            while watchdog.healthz()[1]["queues"] != 1:
                assert time.monotonic() < deadline, "the unlinked queue was never forgotten"
                time.sleep(0.05)
            assert watchdog.process.poll() is None
        first.close()
        assert watchdog.events == [dead, gone], watchdog.brief()
