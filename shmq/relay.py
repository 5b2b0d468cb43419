"""A relay: the way past one machine. It reads a queue on another host as one of its remote readers
and republishes every message, as it was sent (never unpickled), into a local queue, whose K readers
then cost that host one TCP stream and read at shared-memory speed. Relays chain into a tree.

Back-pressure passes through: a slow local reader fills the local ring, the relay's put() waits,
it stops acknowledging, and the origin's writer waits for its remote slot. Liveness passes through:
the origin closing closes the local queue (its readers drain it, then QueueClosed); the origin
dying or staying unreachable for the grace abandons it (see Writer.abandon), so once the relay's
process exits, its readers get WriterDead. The local queue is a queue like any other: ``shmq top``,
the exporter and the watchdog see it.
"""

from __future__ import annotations

import logging

from .errors import ConnectionLost, QueueClosed, ReaderEvicted, WriterDead
from .handle import Handle
from .remote import DEFAULT_GRACE_S, attach_remote
from .writer import Writer, create

log = logging.getLogger("shmq")


class Relay:
    """Remote reader `reader` of the queue behind `handle`, republishing into a new local queue of
    `n_readers` readers (`create_kwargs` go to ``shmq.create``; its name defaults to the origin's)."""

    def __init__(self, handle: Handle | str, n_readers: int, *, reader: int | None = None,
                 endpoint: str | None = None, grace_s: float = DEFAULT_GRACE_S, **create_kwargs) -> None:
        handle = Handle.coerce(handle)
        self._remote = attach_remote(handle, reader, endpoint=endpoint, grace_s=grace_s)
        try:
            self.writer: Writer = create(n_readers, **{"name": handle.name, **create_kwargs})
        except BaseException:
            self._remote.close()
            raise
        self.handle = self.writer.handle  #: the local queue's handle, for its readers
        self.relayed = 0  #: messages republished so far

    def run(self) -> None:
        """Relay until the origin closes (then the local queue closes too), or raise what ended it."""
        try:
            while True:
                stream, buffers, flags = self._remote.receive_encoded()
                self.writer.put_encoded([stream, *buffers], flags)
                self.relayed += 1
        except QueueClosed:
            log.info("shmq relay of queue %r: the origin closed after %d messages", self.writer.queue_name,
                     self.relayed)
            self.close()
        except (WriterDead, ConnectionLost, ReaderEvicted):
            self._remote.close()
            self.writer.abandon()
            raise

    def close(self) -> None:
        self._remote.close()
        self.writer.close()

    def __enter__(self) -> Relay:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
