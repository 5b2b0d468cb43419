"""Helpers for tests of code that uses shmq: isolated queue names, leak checks, a full ring and fault injection.

``blind(reader)`` is the fault the watchdog calls waiting_with_data and
livelock: the reader stops seeing what the writer publishes, as if its loads of
the writer cursor were stale (a missing fence), so get() waits although messages
are there. The other faults of the demo need no hook: stall a process with
SIGSTOP (and SIGCONT), kill it with SIGKILL, slow it with a sleep.
"""

from __future__ import annotations

import itertools
import os

from ._ring import NOTHING
from .errors import ShmqError, WouldBlock
from .reader import Reader
from .segment import PREFIX, SHM_DIR
from .writer import Writer

_counter = itertools.count()


def unique_name(prefix: str = "test") -> str:
    """A queue name no other test in any process uses."""
    return f"{prefix}-{os.getpid()}-{next(_counter)}"


def shm_segments(shm_dir: str = SHM_DIR) -> set[str]:
    """Names of the shmq segments now in `shm_dir`, to compare before and after a test."""
    return {n for n in os.listdir(shm_dir) if n.startswith(PREFIX)}


def fill_ring(writer: Writer, message=0) -> int:
    """Put `message` until the ring has no room for it (readers hold it); returns how many were put."""
    count = 0
    while True:
        try:
            writer.put_nowait(message)
        except WouldBlock:
            return count
        count += 1


# -- fault injection ---------------------------------------------------------------------------------
class NotBlindable(ShmqError, TypeError):
    """blind() was given something other than a local reader, or a condition without is_set()."""


class Blindfold:
    """What ``blind()`` returns: ``end()``, or the end of its ``with`` block, gives the reader its sight back."""

    def __init__(self, ring: _BlindRing) -> None:
        self._ring = ring

    def end(self) -> None:
        self._ring.remove()

    def __enter__(self) -> Blindfold:
        return self

    def __exit__(self, *exc) -> None:
        self.end()


def blind(reader: Reader, while_=None) -> Blindfold:
    """Make `reader` (a ``shmq.attach`` reader in this process) blind to new messages.

    While blind, get() takes what the reader had already seen and then waits,
    spinning, parking or timing out as its wait strategy says, however many
    messages the writer publishes; its cursor stays put, so the writer fills the
    ring behind it. `while_` is anything with ``is_set()`` (a threading or
    multiprocessing Event, set from another process for a fault that comes and
    goes): the reader is blind while it is set. Without it the reader is blind
    until ``end()``. Once sight is back it reads every waiting message, in order.
    """
    if not isinstance(reader, Reader):
        raise NotBlindable(f"blind() needs a shmq.Reader of this process (shmq.attach), not {type(reader).__name__}")
    if while_ is not None and not callable(getattr(while_, "is_set", None)):
        raise NotBlindable(f"blind(while_=...) needs an Event or anything with is_set(), not {type(while_).__name__}")
    return Blindfold(_BlindRing(reader, (lambda: True) if while_ is None else while_.is_set))


class _BlindRing:
    """The only code of the hook that knows shmq's internals: the reader's ring (``Reader._ring``, the C
    object of shmq/_ring.c) is swapped for this proxy, which stops loading the writer cursor while blind.

    The ring's ``available`` is the writer cursor as last loaded; ``load_available()`` loads it afresh and
    ``take_one()`` does so when the reader has taken everything below it.
    """

    def __init__(self, reader: Reader, is_blind) -> None:
        self._reader, self._ring, self._is_blind = reader, reader._ring, is_blind
        reader._ring = self

    def remove(self) -> None:
        if self._reader._ring is self:
            self._reader._ring = self._ring

    def __getattr__(self, name: str):  # everything but the loads of the writer cursor goes to the real ring
        return getattr(self._ring, name)

    def __setattr__(self, name: str, value) -> None:  # and so do the ring's settable fields (``unfinished``)
        if name.startswith("_"):
            object.__setattr__(self, name, value)
        else:
            setattr(self._ring, name, value)

    def load_available(self) -> int:
        return self._ring.available if self._is_blind() else self._ring.load_available()

    def take_one(self, keep: bool = False):
        if self._is_blind() and self._ring.cursor >= self._ring.available:
            return NOTHING
        return self._ring.take_one(keep)
