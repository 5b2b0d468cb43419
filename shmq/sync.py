"""Memory fences and futex calls: the few places where shmq needs the CPU's or the kernel's help.

They are C (shmq/_ring.c), as is every store and load that publishes a message or a
cursor; the ordering argument is written there, beside the atomics. Python code uses
``full_fence`` only for the rest of the park handshake (a flag store, the fence, a
re-check) and for rare one-off publications such as a new segment's version word.
"""

from ._ring import HAVE_FUTEX, full_fence, futex_wait, futex_wake

__all__ = ["HAVE_FUTEX", "full_fence", "futex_wait", "futex_wake"]
