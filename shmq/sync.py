"""Memory fences and futex calls: the few places where shmq needs the CPU's or the kernel's help.

Ordering argument, used by every publish in writer.py and reader.py:

* x86-64 (TSO) never reorders a store with an earlier store, nor a load with an
  earlier load, and CPython's separate bytecodes each run behind opaque C calls
  the compiler cannot move stores across. So "payload, then cursor" needs no
  fence on x86-64: ``publish_fence`` and ``acquire_fence`` are free there.
* x86-64 *does* let a load pass an earlier store (the store buffer). The park
  protocol is a Dekker handshake ("I parked" then "is there data?" against
  "data published" then "is anyone parked?"), so both sides need a full fence:
  ``full_fence`` runs ``lock or qword [rsp], 0``, a ``lock``-prefixed instruction
  and so a full barrier on x86-64 (the idiom of Linux's ``smp_mb()``). Where the
  system refuses executable memory it takes and drops a ``threading.Lock``
  instead, whose acquire and release are ``lock``-prefixed instructions too.
* aarch64 reorders freely, so all three fences execute ``dmb ish`` there.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import platform
import threading
import time

_MACHINE = platform.machine().lower()
_FUTEX_SYSCALL = {"x86_64": 202, "amd64": 202, "aarch64": 98, "arm64": 98}.get(_MACHINE)
_FUTEX_WAIT = 0
_FUTEX_WAKE = 1  # not the _PRIVATE variants: the words live in memory shared between processes

_libc = ctypes.CDLL(None, use_errno=True) if os.name == "posix" else None  # releases the GIL in calls
HAVE_FUTEX = _libc is not None and _FUTEX_SYSCALL is not None and platform.system() == "Linux"


def _noop() -> None:
    pass


#: True where stores stay in program order and loads too (TSO): hot paths skip the no-op fence call.
ORDERED_STORES: bool


def _machine_code(code: bytes):
    """A function made of `code`, which must end in ``ret``, callable from Python without arguments."""
    page = mmap.mmap(-1, mmap.PAGESIZE, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    page.write(code)
    address = ctypes.addressof(ctypes.c_char.from_buffer(page))
    # PYFUNCTYPE keeps the GIL across the call: releasing and retaking it would cost
    # more than the barrier itself (the full fence runs once per message on each side).
    function = ctypes.PYFUNCTYPE(None)(address)
    function._page = page  # keep the code mapped as long as the function lives
    return function


_fence_lock = threading.Lock()


def _lock_fence() -> None:
    _fence_lock.acquire()
    _fence_lock.release()


if _MACHINE in ("x86_64", "amd64", "i386", "i686"):
    full_fence = _lock_fence
    if _MACHINE in ("x86_64", "amd64"):
        try:
            full_fence = _machine_code(bytes.fromhex("f0 48 83 0c 24 00 c3"))  # lock or qword [rsp], 0; ret
        except OSError:
            pass  # writable executable pages refused (SELinux execmem, PaX): keep the lock
    publish_fence = acquire_fence = _noop
    ORDERED_STORES = True
elif _MACHINE in ("aarch64", "arm64"):
    full_fence = publish_fence = acquire_fence = _machine_code(
        (0xD5033BBF).to_bytes(4, "little") + (0xD65F03C0).to_bytes(4, "little"))  # dmb ish; ret
    ORDERED_STORES = False
else:  # pragma: no cover - no other architecture has been tested
    raise ImportError(f"shmq has no memory-ordering argument for {_MACHINE!r}")


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


def futex_wait(address: int, expected: int, timeout_s: float) -> None:
    """Sleep while the 32-bit word at `address` equals `expected`, for at most `timeout_s`.

    Returns on a wake-up, a changed word, a signal or the timeout; the caller re-checks.
    Without futexes it sleeps for the timeout, which callers keep short.
    """
    if not HAVE_FUTEX:
        time.sleep(timeout_s)
        return
    seconds = int(timeout_s)
    timeout = _Timespec(seconds, int((timeout_s - seconds) * 1e9))
    _libc.syscall(
        _FUTEX_SYSCALL,
        ctypes.c_void_p(address),
        _FUTEX_WAIT,
        ctypes.c_uint32(expected & 0xFFFFFFFF),
        ctypes.byref(timeout),
        None,
        0,
    )


def futex_wake(address: int, count: int = 0x7FFFFFFF) -> None:
    if HAVE_FUTEX:
        _libc.syscall(_FUTEX_SYSCALL, ctypes.c_void_p(address), _FUTEX_WAKE, count, None, None, 0)
