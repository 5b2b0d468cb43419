"""Which segments the watchdog watches: it follows new ones and forgets unlinked ones.

Segments are mapped read-only (``Segment.open(writable=False)``), so nothing
here can change a queue. A segment that cannot be read (corrupt, foreign,
another layout version, or still being created) is skipped and looked at again
only when its file changes, so a bad file costs one ``stat`` per refresh.
"""

from __future__ import annotations

import collections
import logging
import os
import time
from typing import Iterable

from shmq.errors import ShmqError
from shmq.handle import Handle
from shmq.segment import PREFIX, SHM_DIR, Segment
from shmq.stats import QueueView

from .alerts import QueueId

log = logging.getLogger("shmq.watchdog")

#: A segment this young that fails to open may still be being created (its version word comes last).
CREATION_GRACE_S = 2.0


class Segments:
    """The watched queues, by shm name. `selection` None means every shmq segment in `shm_dir`.

    Otherwise each item is a handle string, a ``shmq-...`` shm name or a logical
    queue name (every segment holding a queue of that name, including ones
    created later).
    """

    def __init__(self, selection: Iterable[str] | None = None, *, shm_dir: str = SHM_DIR) -> None:
        self.shm_dir = shm_dir
        self._shm_names: set[str] = set()
        self._names: set[str] | None = None if selection is None else set()
        for item in selection or ():
            if item.startswith("shmq://"):
                self._shm_names.add(Handle.parse(item).shm_name)
            elif item.startswith(PREFIX):
                self._shm_names.add(item)
            else:
                self._names.add(item)
        self.views: dict[str, QueueView] = {}
        self.ids: dict[str, QueueId] = {}
        # Segments passed over: unreadable ones by (inode, size, mtime), looked at again when those change;
        # ones of other queues by inode alone, since a segment's name never changes.
        self._passed: dict[str, tuple[int, ...]] = {}
        self._listed: tuple[int, float] | None = None  # (directory mtime, monotonic time) of the last listing
        self._retry = False  # a segment that may still be being created waits for the next refresh

    def refresh(self) -> tuple[list[str], list[QueueId]]:
        """Map new segments and unmap unlinked ones. Returns the added shm names and the removed queues.

        The directory is listed only when its mtime changed (a segment was created or
        unlinked), or a second has passed since the last listing: mtimes are kept at
        the kernel's coarse clock, so two changes a few ms apart may share one.
        """
        try:
            mtime = os.stat(self.shm_dir).st_mtime_ns
            now = time.monotonic()
            if not self._retry and self._listed is not None and self._listed[0] == mtime and now - self._listed[1] < 1:
                return [], []
            self._listed = (mtime, now)
            present = {n for n in os.listdir(self.shm_dir) if n.startswith(PREFIX)}
        except FileNotFoundError:
            present = set()
        self._retry = False
        if self._names is not None and not self._names:
            present &= self._shm_names  # only logical names need every header read
        removed = [self.ids[shm_name] for shm_name in sorted(self.views.keys() - present)]
        for queue in removed:
            self.views.pop(queue.shm_name).close()
        for shm_name in self._passed.keys() - present:
            del self._passed[shm_name]
        added = [shm_name for shm_name in sorted(present - self.views.keys()) if self._open(shm_name)]
        if added or removed:
            self._label()
        return added, removed

    def _open(self, shm_name: str) -> bool:
        try:
            st = os.stat(os.path.join(self.shm_dir, shm_name))
        except FileNotFoundError:
            return False
        identity = (st.st_ino, st.st_size, st.st_mtime_ns)
        if self._passed.get(shm_name) in (identity, identity[:1]):
            return False
        try:
            segment = Segment.open(shm_name, writable=False, shm_dir=self.shm_dir, ready_timeout_s=0)
        except FileNotFoundError:
            return False
        except (ShmqError, OSError, ValueError) as e:
            if time.time() - max(st.st_mtime, st.st_ctime) < CREATION_GRACE_S:
                self._retry = True  # maybe still being made
            else:
                log.warning("shmq watchdog: not watching %s: %s", shm_name, e)
                self._passed[shm_name] = identity
            return False
        if self._names is not None and shm_name not in self._shm_names and segment.name not in self._names:
            segment.close()
            self._passed[shm_name] = identity[:1]
            return False
        self.views[shm_name] = QueueView(segment)
        return True

    def _label(self) -> None:
        counts = collections.Counter(view.name for view in self.views.values())
        self.ids = {shm_name: QueueId(shm_name, view.name if counts[view.name] == 1 else f"{view.name}/{shm_name}")
                    for shm_name, view in self.views.items()}

    def close(self) -> None:
        for view in self.views.values():
            view.close()
        self.views.clear()
