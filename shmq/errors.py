"""One error tree, rooted at ShmqError; each error also inherits the matching builtin."""

from __future__ import annotations


class ShmqError(Exception):
    """Base of every error shmq raises."""


class QueueTimeout(ShmqError, TimeoutError):
    """A blocking put() or get() ran out of time."""


class WouldBlock(ShmqError, BlockingIOError):
    """A _nowait call found the ring full (writer) or empty (reader)."""


class QueueClosed(ShmqError, EOFError):
    """The writer closed the queue, or this end was closed or cancelled."""


class LayoutMismatch(ShmqError, ValueError):
    """The shared-memory object is not a shmq segment this version can read."""


class MessageTooLarge(ShmqError, ValueError):
    """A message exceeds the queue's max_message_bytes."""


class PeerDead(ShmqError, ConnectionError):
    """A process on the other end of the queue is gone."""


class ReaderDead(PeerDead):
    """A reader the writer waits for has died."""


class WriterDead(PeerDead):
    """The writer of the queue has died."""


class ConnectionLost(PeerDead):
    """A remote reader's connection to the writer stayed lost for its grace: the network or the writer's host
    is down."""


class NotAuthorized(ShmqError, PermissionError):
    """The writer refused a remote reader's CurveZMQ handshake."""


class ReaderEvicted(ShmqError):
    """The writer evicted this remote reader (its connection stayed lost for the writer's grace)."""


class ShmFull(ShmqError, OSError):
    """/dev/shm has no room for the segment."""


class AlreadyAttached(ShmqError, RuntimeError):
    """Another live process holds this reader index."""


class BadHandle(ShmqError, ValueError):
    """A handle string that does not parse, or a handle that does not match its segment."""


class BadQueueArgument(ShmqError, ValueError):
    """An argument of create() (a size, the name, the endpoint) is out of range or of the wrong type."""


class BadTimeout(ShmqError, ValueError):
    """A timeout that is not a number of seconds (NaN, or not a number at all)."""


class ForkedParticipant(ShmqError, RuntimeError):
    """A Reader or Writer used in a process forked from the one that made it."""


class ConcurrentUse(ShmqError, RuntimeError):
    """Two threads called into the same Reader or Writer at once."""


class CorruptMessage(ShmqError, ValueError):
    """A frame holds a header, lengths or a table its writer cannot have written; the reader has moved past it."""


class MessageOverwritten(ShmqError):
    """The writer overwrote a frame before this reader copied it (the reader was evicted while alive)."""


class NotRawMessage(ShmqError, TypeError):
    """get_bytes() met a message that was sent with put(); it must be read with get()."""
