"""JSON-lines events, one per raise and one per clear, with the stalled process's Python stacks.

Asking a process for its stacks takes a few milliseconds to a few hundred (the
handler runs when the kernel delivers the signal), so events are written by a
worker thread, in the order the poll loop produced them: the poll loop never
waits, and a clear is never written before its raise. Metrics and /healthz do
not wait for this thread; they change in the poll that decided.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import threading
from typing import Callable, TextIO

from shmq import diagnostics, flight

from .. import names as N
from .alerts import Transition, event_fields

log = logging.getLogger("shmq.watchdog")

#: Rules about a process that is stuck: their raise carries that process's stacks.
STACK_RULES = (N.RULE_READER_STALLED, N.RULE_WRITER_BLOCKED, N.RULE_LIVELOCK)
#: The first lines of a dump go into the event (main thread first); the whole dump stays in the file.
STACK_EXCERPT_LINES = 80
#: The last operations of the flight record that go into the event; the whole record goes to a file.
FLIGHT_EXCERPT_OPERATIONS = 20


def excerpt(text: str) -> str:
    """The dump with the main thread first (the dump lists it last), cut to STACK_EXCERPT_LINES lines."""
    lines = "\n\n".join(diagnostics.threads(text) or [text]).splitlines()
    if len(lines) <= STACK_EXCERPT_LINES:
        return "\n".join(lines)
    return "\n".join(lines[:STACK_EXCERPT_LINES] + [f"... {len(lines) - STACK_EXCERPT_LINES} more lines in the file"])


class EventWriter:
    """Writes events to `stream` (and hands them to `listeners`) from a background thread."""

    def __init__(self, stream: TextIO, *, listeners: tuple[Callable[[dict], None], ...] = (),
                 stack_dir: str | None = None, stack_timeout_s: float = 0.5, capture_stacks: bool = True) -> None:
        self._stream = stream
        self._listeners = listeners
        self._stack_dir = stack_dir
        self._stack_timeout_s = stack_timeout_s
        self._capture_stacks = capture_stacks
        self._stacks: dict[int, diagnostics.StackDump] = {}  # by id(alert), from raise to clear
        self._jobs: queue.SimpleQueue[Transition | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="shmq-watchdog-events", daemon=True)
        self._thread.start()

    def submit(self, transition: Transition) -> None:
        self._jobs.put(transition)

    def _run(self) -> None:
        while (transition := self._jobs.get()) is not None:
            try:
                self._write(self._event(transition))
            except Exception:  # one bad event must not silence the rest
                log.exception("shmq watchdog: could not write an event")

    def _event(self, transition: Transition) -> dict:
        fields = event_fields(transition)
        alert = transition.alert
        if transition.kind == "raise":
            if self._capture_stacks and alert.raised.rule in STACK_RULES and alert.raised.pid:
                dump = diagnostics.request_dump(alert.raised.pid, alert.raised.start_time,
                                                directory=self._stack_dir, timeout_s=self._stack_timeout_s)
                self._stacks[id(alert)] = dump
                fields.update(stack_fields(dump, dump.text))
            if transition.flight is not None:
                fields.update(self._flight_fields(transition.flight, alert))
        else:
            dump = self._stacks.pop(id(alert), None)
            if dump is not None and not dump.text:
                late = diagnostics.read_dump(dump)  # a stopped process dumps when it resumes
                if late:
                    fields.update(stack_fields(dump, late))
                    fields["stack_note"] = f"dumped by pid {dump.pid} when it resumed"
        return fields

    def _flight_fields(self, record: flight.Flight, alert) -> dict:
        """The analysis and the last operations in the event; the whole record in a file beside the stacks."""
        analysis = record.analyse()
        directory = self._stack_dir or diagnostics.default_stack_dir()
        path = os.path.join(directory, f"flight-{alert.queue.shm_name}-{int(alert.raised_at_s * 1000)}.json")
        try:
            os.makedirs(directory, mode=0o700, exist_ok=True)
            with open(path, "w") as out:
                json.dump(record.as_json(), out)
        except OSError as e:
            path = f"not written: {e}"
        return {"flight": analysis.as_json(), "flight_summary": analysis.summary(), "flight_file": path,
                "flight_last": record.timeline_lines(FLIGHT_EXCERPT_OPERATIONS)}

    def _write(self, fields: dict) -> None:
        self._stream.write(json.dumps(fields) + "\n")
        self._stream.flush()
        for listener in self._listeners:
            listener(fields)

    def close(self, timeout_s: float = 5.0) -> None:
        """Write what is queued, then stop."""
        self._jobs.put(None)
        self._thread.join(timeout_s)


def stack_fields(dump: diagnostics.StackDump, text: str) -> dict:
    return {"stack_file": dump.path, "stack": excerpt(text), "stack_note": dump.note}
