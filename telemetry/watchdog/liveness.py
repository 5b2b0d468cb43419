"""Exact death detection: one pidfd per watched process, polled all at once.

A pidfd (Linux 5.3+) becomes readable the moment its process exits, and it
stays bound to that process even if the pid is reused later. So one ``poll(0)``
per watchdog tick answers "is anyone dead?" for every participant, instead of
reading /proc for each of them ten times a second. The start time recorded in
the participant's record is checked once, when the pidfd is opened, which
catches a pid that was reused before the watchdog first looked.
Where pidfds are unavailable, each check reads /proc (``shmq.procs.is_alive``).
"""

from __future__ import annotations

import os
import select

from shmq import procs

_Key = tuple[int, int]  # (pid, start time)


class PidWatch:
    """``alive(pid, start_time)`` between ``begin()`` and ``end()`` of each poll."""

    def __init__(self) -> None:
        self._fds: dict[_Key, int] = {}
        self._by_fd: dict[int, _Key] = {}
        self._exited: set[_Key] = set()
        self._seen: set[_Key] = set()
        self._poller = select.poll()
        self._pidfds = hasattr(os, "pidfd_open")

    def begin(self) -> None:
        """Collect the exits since the last poll."""
        self._seen = set()
        for fd, _ in self._poller.poll(0):
            key = self._by_fd.get(fd)
            if key is not None:
                self._exited.add(key)
                self._close(key)

    def alive(self, pid: int, start_time: int) -> bool:
        key = (pid, start_time)
        self._seen.add(key)
        if key in self._exited:
            return False
        if key in self._fds:
            return True
        if not self._pidfds:
            return procs.is_alive(pid, start_time)
        try:
            fd = os.pidfd_open(pid)
        except ProcessLookupError:
            self._exited.add(key)
            return False
        except OSError:  # no pidfd support in this kernel or sandbox
            self._pidfds = False
            return procs.is_alive(pid, start_time)
        # The pidfd now pins whatever process has this pid; it must be the one that registered.
        if not procs.is_alive(pid, start_time):
            os.close(fd)
            self._exited.add(key)
            return False
        self._fds[key] = fd
        self._by_fd[fd] = key
        self._poller.register(fd, select.POLLIN)
        return True

    def end(self) -> None:
        """Stop watching processes no record named in this poll."""
        for key in [k for k in self._fds if k not in self._seen]:
            self._close(key)
        self._exited &= self._seen

    def _close(self, key: _Key) -> None:
        fd = self._fds.pop(key, None)
        if fd is not None:
            del self._by_fd[fd]
            self._poller.unregister(fd)
            os.close(fd)

    def close(self) -> None:
        for key in list(self._fds):
            self._close(key)
