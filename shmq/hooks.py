"""Instrumentation hooks: how tracing (in ``shmq.telemetry``) sees messages without shmq importing it.

With no hooks installed, each put() and get() pays one ``is None`` branch. A
receive hook runs only for messages whose producer attached a traceparent.
"""

from __future__ import annotations

from typing import Protocol

#: (event name, time.monotonic_ns() at its start, duration in ns): parks and backoff sleeps
IdleEvent = tuple[str, int, int]


class SendTrace(Protocol):
    #: The W3C traceparent to store in the frame header, ASCII.
    traceparent: bytes

    def finish(self, *, message_id: int, body_size: int, wait_ns: int, spins: int,
               events: list[IdleEvent], error: BaseException | None) -> None: ...


class MessageHooks(Protocol):
    def start_send(self, queue: str) -> SendTrace | None:
        """Called as put() starts; None when this message is not traced."""

    def received(self, *, queue: str, reader: int, message_id: int, body_size: int, traceparent: bytes,
                 wait_start_ns: int, wait_ns: int, spins: int, events: list[IdleEvent]) -> None:
        """Called after get() took a traced message; times are time.monotonic_ns()."""


_installed: MessageHooks | None = None


def install(hooks: MessageHooks | None) -> None:
    """Set the hooks that queues opened from now on use; None removes them."""
    global _installed
    _installed = hooks


def installed() -> MessageHooks | None:
    return _installed
