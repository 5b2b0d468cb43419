"""Memory fences, futexes and timer slack: the few places where Python code needs the CPU's or the kernel's help.

Every store and load that publishes a message or a cursor, and the whole park/wake
handshake with its futexes, is C (shmq/_ring.c); the ordering argument is written
there, beside the atomics. Python code uses ``full_fence`` only for rare one-off
publications, such as a new segment's version word or a writer's final state. The bare
futex calls are here for the benchmark's limit rows, which time the kernel's wake itself.

A thread's timer slack (Linux, prctl) is how late the kernel may fire its timers, so
how late a timed futex wait returns: 50 µs by default, more than a wake-up planned just
before a message can afford.
"""

from __future__ import annotations

import contextlib
import ctypes
import sys

from ._ring import HAVE_FUTEX, full_fence, futex_wait, futex_wake

__all__ = ["HAVE_FUTEX", "full_fence", "futex_wait", "futex_wake", "timer_slack", "timer_slack_ns",
           "set_timer_slack"]

_PR_SET_TIMERSLACK, _PR_GET_TIMERSLACK = 29, 30
_prctl = ctypes.CDLL(None, use_errno=True).prctl if sys.platform.startswith("linux") else None


def timer_slack_ns() -> int | None:
    """The calling thread's timer slack in ns; None where there is none to read (not Linux)."""
    return None if _prctl is None else _prctl(_PR_GET_TIMERSLACK, 0, 0, 0, 0)


def set_timer_slack(ns: int) -> None:
    """Set the calling thread's timer slack (0: back to the process default); nothing where there is none."""
    if _prctl is not None:
        _prctl(_PR_SET_TIMERSLACK, ctypes.c_ulong(ns), 0, 0, 0)


@contextlib.contextmanager
def timer_slack(ns: int):
    """The calling thread's timer slack set to `ns` for the block, then restored."""
    previous = timer_slack_ns()
    set_timer_slack(ns)
    try:
        yield
    finally:
        if previous is not None:
            set_timer_slack(previous)
