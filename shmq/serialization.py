"""Serializers turn an object into buffers and back; the ring only moves buffers.

A serializer's ``encode(obj)`` returns a list of buffers: the first is the main
stream, the rest are out-of-band buffers copied into the slot verbatim (pickle
protocol 5 puts a numpy array's bytes there, so they are copied once, straight
into shared memory). ``decode(stream, buffers)`` gets the stream as a read-only
view of the slot (valid only during the call) and the buffers as private,
writable copies the result may keep.
"""

from __future__ import annotations

import pickle
from typing import Any, Protocol, Sequence


class Serializer(Protocol):
    #: True when messages are the caller's bytes and readers must not unpickle.
    raw: bool

    def encode(self, obj: Any) -> list: ...

    def decode(self, stream: memoryview, buffers: Sequence[bytearray]) -> Any: ...


class PickleSerializer:
    """Pickle protocol 5 with out-of-band buffers."""

    raw = False

    def encode(self, obj: Any) -> list:
        buffers: list = []
        stream = pickle.dumps(obj, protocol=5, buffer_callback=buffers.append)
        if buffers:
            return [stream, *(b.raw() for b in buffers)]
        return [stream]

    def decode(self, stream: memoryview, buffers: Sequence[bytearray]) -> Any:
        return pickle.loads(stream, buffers=buffers)


class BytesSerializer:
    """Bytes in, bytes out; nothing is ever unpickled."""

    raw = True

    def encode(self, obj: Any) -> list:
        if not isinstance(obj, (bytes, bytearray, memoryview)):
            raise TypeError(f"serializer='bytes' carries bytes-like objects, not {type(obj).__name__}")
        return [obj]

    def decode(self, stream: memoryview, buffers: Sequence[bytearray]) -> bytes:
        return bytes(stream)


def resolve(serializer: None | str | Serializer) -> Serializer:
    if serializer is None or serializer == "pickle":
        return PickleSerializer()
    if serializer == "bytes":
        return BytesSerializer()
    if isinstance(serializer, str):
        raise ValueError(f"unknown serializer {serializer!r}: use 'pickle', 'bytes' or an object with encode/decode")
    return serializer
