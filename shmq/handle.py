"""The handle: a small, picklable, versioned description of a queue that lets another process attach."""

from __future__ import annotations

import dataclasses
import urllib.parse

from . import layout as L
from .errors import BadHandle

_SCHEME = "shmq"


@dataclasses.dataclass(frozen=True)
class Handle:
    """Everything a reader needs to find a queue and check it found the right one.

    ``str(handle)`` is one line, ``Handle.parse`` reads it back, so a shell, a CLI
    or a sidecar can pass it around.
    """

    shm_name: str  #: the POSIX shared-memory object, ``shmq-`` plus a random suffix
    name: str  #: the queue's logical name, as it appears in metrics and logs
    n_readers: int  #: local reader indexes
    ring_bytes: int  #: the ring's size
    frame_bytes: int  #: the largest payload of one frame
    instance_id: str  #: 32 hex digits, random per segment: a handle edited to name another queue is refused
    endpoint: str = ""  #: ZeroMQ endpoint for remote readers, "" without them
    n_remote_readers: int = 0  #: remote reader slots (shmq.attach_remote(handle, reader=j))
    version: int = L.LAYOUT_VERSION  #: the segment layout version

    def __str__(self) -> str:
        query = urllib.parse.urlencode({
            "v": self.version, "name": self.name, "readers": self.n_readers,
            "ring_bytes": self.ring_bytes, "frame_bytes": self.frame_bytes, "id": self.instance_id,
            "endpoint": self.endpoint, "remote_readers": self.n_remote_readers,
        })
        return f"{_SCHEME}://{self.shm_name}?{query}"

    @classmethod
    def parse(cls, text: str) -> Handle:
        parts = urllib.parse.urlsplit(text.strip())
        if parts.scheme != _SCHEME or not parts.netloc:
            raise BadHandle(f"not a shmq handle: {text!r} (expected 'shmq://shmq-...?v=...')")
        query = urllib.parse.parse_qs(parts.query, keep_blank_values=True)
        version = query.get("v", [""])[0]
        if version != str(L.LAYOUT_VERSION):
            raise BadHandle(f"handle {text!r} is for layout version {version or '(none)'}; this shmq reads "
                            f"version {L.LAYOUT_VERSION}")
        try:
            fields = {k: query[k][0] for k in ("name", "readers", "ring_bytes", "frame_bytes", "id")}
            handle = cls(
                shm_name=parts.netloc, name=fields["name"], n_readers=int(fields["readers"]),
                ring_bytes=int(fields["ring_bytes"]), frame_bytes=int(fields["frame_bytes"]), instance_id=fields["id"],
                endpoint=query.get("endpoint", [""])[0], n_remote_readers=int(query.get("remote_readers", ["0"])[0]),
            )
        except (KeyError, ValueError) as e:
            raise BadHandle(f"malformed shmq handle {text!r}: {e!r}") from None
        return handle

    @classmethod
    def coerce(cls, handle: Handle | str) -> Handle:
        if isinstance(handle, Handle):
            return handle
        if isinstance(handle, str):
            return cls.parse(handle)
        raise BadHandle(f"expected a shmq.Handle or its string form, got {type(handle).__name__}")
