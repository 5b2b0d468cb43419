"""Helpers for tests of code that uses shmq: isolated queue names and leak checks."""

from __future__ import annotations

import itertools
import os

from .segment import PREFIX, SHM_DIR

_counter = itertools.count()


def unique_name(prefix: str = "test") -> str:
    """A queue name no other test in any process uses."""
    return f"{prefix}-{os.getpid()}-{next(_counter)}"


def shm_segments(shm_dir: str = SHM_DIR) -> set[str]:
    """Names of the shmq segments now in `shm_dir`, to compare before and after a test."""
    return {n for n in os.listdir(shm_dir) if n.startswith(PREFIX)}
