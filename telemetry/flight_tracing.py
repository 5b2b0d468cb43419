"""Traces built from outside the process: the flight rings turned into OpenTelemetry spans.

``shmq exporter --traces`` reads every participant's flight ring (shmq.flight) and, for
each sampled message, makes the writer's ``send <queue>`` span (PRODUCER) from its put
and each reader's ``receive <queue>`` span (CONSUMER) from its get, linked to the send
span, as the in-process tracing does (shmq.telemetry.tracing): the same names, kinds and
attributes, with the operations' real begin and end times. The traced processes pay only
for the recorder, at any sampling rate; the sampling and the export happen here.

Sampling is by message number, so a message's send span and its receive spans are
sampled together. The sidecar sees what the rings still hold at each poll: a ring that
wrapped between two polls loses its oldest entries, counted in ``missed``.
"""

from __future__ import annotations

import collections
import logging
import os

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import Link, SpanKind

from shmq import layout as L
from shmq.stats import QueueView, Segments

from .tracing import _RECEIVE, _SEND, READER, SCOPE, _wall_clock_offset_ns, message_attributes

log = logging.getLogger("shmq.telemetry")

_MASK = (1 << 64) - 1
#: Send spans remembered per queue for their receive spans to link to (a reader may lag this far).
REMEMBERED_SENDS = 1 << 16
#: What a BatchSpanProcessor queues before it drops spans, unless OTEL_BSP_MAX_QUEUE_SIZE says otherwise.
BSP_QUEUE_DEFAULT = 2048


class FlightTracer:
    """Polls the flight rings of `segments`' queues and exports a span per sampled operation."""

    def __init__(self, segments: Segments, tracer_provider: TracerProvider, *, ratio: float = 1.0) -> None:
        if not 0.0 <= ratio <= 1.0:
            raise ValueError(f"the traces ratio must be in [0, 1], got {ratio}")
        self.segments = segments
        self._provider = tracer_provider
        self._tracer = tracer_provider.get_tracer(SCOPE)
        # One poll may find thousands of operations, more than the span processor queues (it drops the
        # rest, saying only "Queue full"): flush after every half queue, so every span counted is sent.
        self._flush_every = max(1, int(os.environ.get("OTEL_BSP_MAX_QUEUE_SIZE", BSP_QUEUE_DEFAULT)) // 2)
        self._bound = int(ratio * (1 << 64))
        self._queues: dict[str, _QueueTraces] = {}
        self.spans = 0  #: spans exported so far
        self.missed = 0  #: operations overwritten in their ring before a poll read them

    def poll(self) -> None:
        self.segments.refresh()
        for shm_name in self._queues.keys() - self.segments.views.keys():
            del self._queues[shm_name]
        to_wall_ns = _wall_clock_offset_ns()
        for shm_name, view in self.segments.views.items():
            if not view.flight_entries:
                continue
            queue = self._queues.setdefault(shm_name, _QueueTraces(view))
            for number in range(1 + view.n_readers):  # the writer first: receive spans link to its sends
                for entry in queue.new_entries(view, number):
                    if number and entry[2] > queue.put_through:
                        break  # put after the writer's ring was read: its send span comes at the next poll
                    if entry[1] == L.FlightOp.LEASE and not entry[5]:
                        break  # still held: its receive span ends when the lease does, at a later poll
                    self._trace(queue, number, entry, to_wall_ns)
                    queue.handled(number, entry)
            self.missed += queue.take_missed()

    def _trace(self, queue: _QueueTraces, number: int, entry: tuple, to_wall_ns: int) -> None:
        _stamp, op, seq, size, begin, end, spins_yields, _parks = entry
        if op not in (L.FlightOp.PUT, L.FlightOp.GET, L.FlightOp.LEASE) or not self._sampled(queue.salt, seq):
            return
        operation = _SEND if op == L.FlightOp.PUT else _RECEIVE
        attributes = message_attributes(operation, queue.name, seq, size, end - begin, spins_yields >> 32)
        if op == L.FlightOp.PUT:
            kind, links = SpanKind.PRODUCER, ()
        else:
            producer = queue.sends.get(seq)
            kind, links = SpanKind.CONSUMER, [Link(producer)] if producer else ()
            attributes[READER] = number - 1
        name = f"{operation} {queue.name}"
        span = self._tracer.start_span(name, kind=kind, links=links, start_time=begin + to_wall_ns,
                                       attributes=attributes)
        span.end(end_time=end + to_wall_ns)
        if op == L.FlightOp.PUT:
            queue.remember(seq, span.get_span_context())
        self.spans += 1
        if self.spans % self._flush_every == 0:
            self._provider.force_flush()

    def _sampled(self, salt: int, seq: int) -> bool:
        """The same answer for a message in the writer and in every reader: a hash of its number."""
        return _mix(seq ^ salt) < self._bound


class _QueueTraces:
    """What the tracer keeps per queue: the last entry read of each ring, and recent send spans."""

    def __init__(self, view: QueueView) -> None:
        self.name = view.name
        self.salt = int.from_bytes(view.shm_name.encode()[-8:], "little")
        self._read_up_to: dict[int, int] = {}  # participant -> the stamp of the newest entry handled
        self._missed = 0
        self.put_through = -1  #: the newest message the writer's ring showed put
        self.sends: collections.OrderedDict[int, trace.SpanContext] = collections.OrderedDict()

    def new_entries(self, view: QueueView, number: int) -> list[tuple]:
        """The entries of ring `number` not handled yet (all of it at the first), oldest first."""
        seen = self._read_up_to.get(number)
        fresh = view.flight_ring(number, after=seen or 0)  # only what the ring wrote since the last poll
        if fresh and seen is not None and fresh[0][0] > seen + 1:
            self._missed += fresh[0][0] - seen - 1  # overwritten before a poll read them
            self._read_up_to[number] = fresh[0][0] - 1
        return fresh

    def handled(self, number: int, entry: tuple) -> None:
        self._read_up_to[number] = entry[0]
        if number == 0 and entry[1] in (L.FlightOp.PUT, L.FlightOp.PIECE):
            self.put_through = max(self.put_through, entry[2])

    def remember(self, seq: int, context: trace.SpanContext) -> None:
        self.sends[seq] = context
        if len(self.sends) > REMEMBERED_SENDS:
            self.sends.popitem(last=False)

    def take_missed(self) -> int:
        missed, self._missed = self._missed, 0
        return missed


def _mix(x: int) -> int:
    """splitmix64's finaliser: message numbers spread evenly over 64 bits."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK
    return x ^ (x >> 31)
