"""shmq: a shared-memory broadcast queue. One writer, N reader processes, every message to every reader.

    writer = shmq.create(n_readers=4, name="engine")
    reader = shmq.attach(writer.handle, reader=0)   # in each worker process
    writer.put(obj); reader.get()
"""

from . import stats, wait
from .errors import (
    AlreadyAttached, BadQueueArgument, BadHandle, BadTimeout, ConcurrentUse, ConnectionLost, CorruptMessage,
    ForkedParticipant, LayoutMismatch, MessageOverwritten, MessageTooLarge, NotAuthorized, NotRawMessage, PeerDead,
    QueueClosed, QueueTimeout, ReaderDead, ReaderEvicted, ShmFull, ShmqError, WouldBlock, WriterDead,
)
from .handle import Handle
from .layout import ParticipantState, Role
from .reader import Reader, attach
from .segment import ForeignSegment, QueueNotFound, SegmentInfo, cleanup, list_segments
from .writer import Writer, create


def attach_remote(handle, reader: int | None = None, **kwargs):
    """Attach remote reader `reader` over ZeroMQ TCP (see shmq.remote.attach_remote)."""
    from .remote import attach_remote as _attach_remote

    return _attach_remote(handle, reader, **kwargs)


__all__ = [
    "AlreadyAttached", "BadQueueArgument", "BadHandle", "BadTimeout", "ConcurrentUse", "ConnectionLost",
    "CorruptMessage", "ForeignSegment", "ForkedParticipant", "Handle", "LayoutMismatch", "MessageOverwritten",
    "MessageTooLarge", "NotAuthorized", "NotRawMessage",
    "ParticipantState", "PeerDead", "QueueClosed", "QueueNotFound", "QueueTimeout", "Reader", "ReaderDead",
    "ReaderEvicted", "Role", "SegmentInfo", "ShmFull", "ShmqError", "WouldBlock", "Writer", "WriterDead", "attach",
    "attach_remote", "cleanup", "create", "list_segments", "stats", "wait",
]
