"""Memory fences: the few places where Python code needs the CPU's help.

Every store and load that publishes a message or a cursor, and the whole park/wake
handshake with its futexes, is C (shmq/_ring.c); the ordering argument is written
there, beside the atomics. Python code uses ``full_fence`` only for rare one-off
publications, such as a new segment's version word or a writer's final state. The bare
futex calls are here for the benchmark's limit rows, which time the kernel's wake itself.
"""

from ._ring import HAVE_FUTEX, full_fence, futex_wait, futex_wake

__all__ = ["HAVE_FUTEX", "full_fence", "futex_wait", "futex_wake"]
