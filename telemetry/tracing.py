"""OpenTelemetry traces of shmq messages, following the messaging semantic conventions.

For a sampled message the writer's ``send <queue>`` span (kind PRODUCER) stores
its W3C ``traceparent`` in the frame header, and every reader's ``receive <queue>``
span (kind CONSUMER) *links* to it. Links, not parents: one message fans out to N
readers, and each reader's span belongs to that reader's own trace (its ambient
span, if it has one). Remote readers get the traceparent in the message's header
frame. Parks and backoff sleeps inside a traced put() or get() become span events.

Configuration is OpenTelemetry's own: an explicit ``TracerProvider``, the global
one the application set, or else one built from the standard ``OTEL_*``
environment variables (exporter, sampler, resource).

Cost. Asking the SDK about every message would cost more than sending it, so a
put() with no application span active is decided here, before any SDK call, at
the rate the configured sampler starts new traces (read from the sampler, see
``root_sampling_rate``): a countdown to the next sampled message, a geometric
draw, which gives each message the same odds as a coin of that rate. An
unsampled message costs a call, a context lookup and a decrement. A sampled one
costs what the SDK charges for a span, in the writer and in each reader.
Disabled tracing (``OTEL_SDK_DISABLED=true``, ``always_off``) installs no hooks,
and the queue is back to its one ``is None`` branch.
"""

from __future__ import annotations

import copy
import logging
import math
import os
import random
import re
import time
from importlib.metadata import entry_points

from opentelemetry import context, trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.sampling import ALWAYS_ON, Sampler
from opentelemetry.semconv._incubating.attributes import messaging_attributes as M
from opentelemetry.semconv.attributes.error_attributes import ERROR_TYPE
from opentelemetry.trace import Link, SpanKind, StatusCode, format_span_id, format_trace_id

from shmq import hooks

log = logging.getLogger("shmq.telemetry")

SCOPE = "shmq"
MESSAGING_SYSTEM = "shmq"
#: shmq's own span attributes
WAIT_SECONDS = "shmq.wait.seconds"
SPINS = "shmq.spins"
READER = "shmq.reader"
#: attribute of the park and backoff_sleep span events
EVENT_DURATION_SECONDS = "shmq.duration.seconds"

_SEND = M.MessagingOperationTypeValues.SEND.value
_RECEIVE = M.MessagingOperationTypeValues.RECEIVE.value
_TRACE_ID_SPACE = 1 << 64  # ratio samplers decide on the low 64 bits of the trace id
_TRACEPARENT = re.compile(rb"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")


class ShmqTracing:
    """The ``shmq.hooks.MessageHooks`` that turn messages into spans. See ``install``."""

    def __init__(self, tracer_provider: trace.TracerProvider, *, rng: random.Random | None = None) -> None:
        self._tracer = tracer_provider.get_tracer(SCOPE)
        self._rng = rng or random.Random()
        sampler = getattr(self._tracer, "sampler", None)  # the SDK's tracers carry their provider's sampler
        if isinstance(self._tracer, trace.NoOpTracer):  # e.g. OTEL_SDK_DISABLED=true
            self.root_rate, follows_parents = 0.0, False
        elif isinstance(sampler, Sampler):
            self.root_rate, follows_parents = root_sampling_rate(sampler), samples_under_sampled_parent(sampler)
        else:
            self.root_rate, follows_parents = None, True
        #: False when no span could ever be recorded (install() then installs nothing)
        self.enabled = self.root_rate != 0.0 or follows_parents
        self._log_unsampled = math.log1p(-self.root_rate) if self.root_rate and self.root_rate < 1 else 0.0
        self._recording: trace.Tracer | None = None
        self._countdown = self._next_countdown()

    # -- MessageHooks ---------------------------------------------------------------------
    def start_send(self, queue: str) -> _SendSpan | None:
        ambient = context.get_current()
        if not ambient and self._countdown:  # the common case: no application span, not this message's turn
            self._countdown -= 1
            return None
        return self._start_send(self._send_tracer(ambient), queue)

    def received(self, *, queue: str, reader: int, message_id: int, body_size: int, traceparent: bytes,
                 wait_start_ns: int, wait_ns: int, spins: int, events: list[hooks.IdleEvent]) -> None:
        producer = producer_context(traceparent)
        if producer is None:
            return
        tracer = self._tracer if _has_valid_span(context.get_current()) else self._root_tracer()
        if tracer is None:
            return
        to_wall = _wall_clock_offset_ns()
        start = wait_start_ns + to_wall if wait_start_ns else None
        span = tracer.start_span(f"{_RECEIVE} {queue}", kind=SpanKind.CONSUMER, links=[Link(producer)],
                                 start_time=start, attributes={
                                     **message_attributes(_RECEIVE, queue, message_id, body_size, wait_ns, spins),
                                     READER: reader,
                                 })
        _add_idle_events(span, events, to_wall)
        span.end()

    # -- sampling -----------------------------------------------------------------------------
    def _next_countdown(self) -> float:
        """Unsampled messages before the next sampled one: geometric, so each message has root_rate odds."""
        if self.root_rate is None or self.root_rate >= 1:
            return 0  # no countdown: every message asks the tracer (unknown sampler) or is sampled
        if self.root_rate == 0:
            return math.inf
        return math.floor(math.log(1.0 - self._rng.random()) / self._log_unsampled)

    def _root_tracer(self) -> trace.Tracer | None:
        """The tracer for a span with no ambient parent, once this module has decided to sample it."""
        if self.root_rate is None:
            return self._tracer  # an unknown sampler decides for itself, at full cost
        if self.root_rate == 0:
            return None
        # The decision is made; the sampler must not make it a second time. A copy of our
        # tracer that records everything shares the provider's processors and resource
        # (copied again when the provider replaced the resource, e.g. after a fork).
        if self._recording is None or self._recording.resource is not self._tracer.resource:
            self._recording = copy.copy(self._tracer)
            self._recording.sampler = ALWAYS_ON
        return self._recording

    def _send_tracer(self, ambient: context.Context) -> trace.Tracer | None:
        if _has_valid_span(ambient):
            return self._tracer  # the configured sampler follows the application's span
        if self._countdown:
            self._countdown -= 1
            return None
        self._countdown = self._next_countdown()
        return self._root_tracer()

    @staticmethod
    def _start_send(tracer: trace.Tracer | None, queue: str) -> _SendSpan | None:
        if tracer is None:
            return None
        span = tracer.start_span(f"{_SEND} {queue}", kind=SpanKind.PRODUCER, attributes={
            M.MESSAGING_SYSTEM: MESSAGING_SYSTEM,
            M.MESSAGING_OPERATION_TYPE: _SEND,
            M.MESSAGING_OPERATION_NAME: _SEND,
            M.MESSAGING_DESTINATION_NAME: queue,
        })
        return _SendSpan(span) if span.is_recording() else None


class _SendSpan:
    """One traced put(): the ``shmq.hooks.SendTrace`` the writer fills in when the message is out."""

    __slots__ = ("_span", "traceparent")

    def __init__(self, span: trace.Span) -> None:
        self._span = span
        ctx = span.get_span_context()
        self.traceparent = (f"00-{format_trace_id(ctx.trace_id)}-{format_span_id(ctx.span_id)}-"
                            f"{ctx.trace_flags:02x}").encode("ascii")

    def finish(self, *, message_id: int, body_size: int, wait_ns: int, spins: int,
               events: list[hooks.IdleEvent], error: BaseException | None) -> None:
        span = self._span
        span.set_attributes({
            M.MESSAGING_MESSAGE_ID: str(message_id),
            M.MESSAGING_MESSAGE_BODY_SIZE: body_size,
            WAIT_SECONDS: wait_ns / 1e9,
            SPINS: spins,
        })
        _add_idle_events(span, events, _wall_clock_offset_ns())
        if error is not None:
            span.set_attribute(ERROR_TYPE, type(error).__qualname__)
            span.record_exception(error)
            span.set_status(StatusCode.ERROR, str(error))
        span.end()


def message_attributes(operation: str, queue: str, message_id: int, body_size: int, wait_ns: int,
                       spins: int) -> dict:
    """The attributes of a whole send or receive span: the messaging conventions' and shmq's own."""
    return {
        M.MESSAGING_SYSTEM: MESSAGING_SYSTEM,
        M.MESSAGING_OPERATION_TYPE: operation,
        M.MESSAGING_OPERATION_NAME: operation,
        M.MESSAGING_DESTINATION_NAME: queue,
        M.MESSAGING_MESSAGE_ID: str(message_id),
        M.MESSAGING_MESSAGE_BODY_SIZE: body_size,
        WAIT_SECONDS: wait_ns / 1e9,
        SPINS: spins,
    }


def producer_context(traceparent: bytes) -> trace.SpanContext | None:
    """The producer span a frame's W3C traceparent names; None if it is not a valid version-00 traceparent."""
    found = _TRACEPARENT.fullmatch(traceparent)
    if found is None:
        return None
    trace_id, span_id, flags = (int(field, 16) for field in found.groups())
    producer = trace.SpanContext(trace_id, span_id, is_remote=True, trace_flags=trace.TraceFlags(flags))
    return producer if producer.is_valid else None


def _has_valid_span(ctx: context.Context) -> bool:
    return bool(ctx) and trace.get_current_span(ctx).get_span_context().is_valid


def _wall_clock_offset_ns() -> int:
    """Add to a time.monotonic_ns() stamp to get Unix nanoseconds (span timestamps)."""
    return time.time_ns() - time.monotonic_ns()


def _add_idle_events(span: trace.Span, events: list[hooks.IdleEvent], to_wall_ns: int) -> None:
    for name, start_ns, duration_ns in events:
        span.add_event(name, {EVENT_DURATION_SECONDS: duration_ns / 1e9}, timestamp=start_ns + to_wall_ns)


def root_sampling_rate(sampler: Sampler) -> float | None:
    """The fraction of new traces `sampler` records, or None if it does not decide by trace id alone.

    The SDK's standard samplers (always_on, always_off, traceidratio and their
    parentbased forms) start a trace when the trace id's low 64 bits are below a
    bound. This asks the sampler itself (through its public ``should_sample``,
    with no parent) where that bound is, then checks the answer on random ids.
    """
    root = context.Context()  # no parent, whatever span is active at install time

    def samples(low_bits: int) -> bool:
        trace_id = _TRACE_ID_SPACE | low_bits  # never the invalid id 0
        return sampler.should_sample(root, trace_id, "probe", SpanKind.PRODUCER).decision.is_sampled()

    if not samples(0):
        bound = 0
    elif samples(_TRACE_ID_SPACE - 1):
        bound = _TRACE_ID_SPACE
    else:
        low, high = 0, _TRACE_ID_SPACE - 1  # samples(low) and not samples(high)
        while high - low > 1:
            middle = (low + high) // 2
            low, high = (middle, high) if samples(middle) else (low, middle)
        bound = high
    probes = random.Random(0)
    if any(samples(x) != (x < bound) for x in (probes.randrange(_TRACE_ID_SPACE) for _ in range(64))):
        return None
    return bound / _TRACE_ID_SPACE


def samples_under_sampled_parent(sampler: Sampler) -> bool:
    """Whether `sampler` records a span whose (local) parent was sampled, as the parentbased ones do."""
    parent = trace.NonRecordingSpan(trace.SpanContext(
        _TRACE_ID_SPACE, 1, is_remote=False, trace_flags=trace.TraceFlags(trace.TraceFlags.SAMPLED)))
    in_parent = trace.set_span_in_context(parent, context.Context())
    return sampler.should_sample(in_parent, _TRACE_ID_SPACE, "probe", SpanKind.PRODUCER).decision.is_sampled()


def provider_from_environment() -> TracerProvider:
    """A TracerProvider configured by the standard OTEL_* variables, read now.

    The SDK reads the sampler (OTEL_TRACES_SAMPLER, _ARG), the resource
    (OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES) and OTEL_SDK_DISABLED itself;
    this adds the exporters named by OTEL_TRACES_EXPORTER (default otlp, whose
    protocol comes from OTEL_EXPORTER_OTLP[_TRACES]_PROTOCOL, default http/protobuf),
    each behind a BatchSpanProcessor.
    """
    provider = TracerProvider()
    names = os.environ.get("OTEL_TRACES_EXPORTER", "otlp")
    for name in (n.strip() for n in names.split(",")):
        if name and name != "none":
            provider.add_span_processor(BatchSpanProcessor(_exporter_class(name)()))
    return provider


def _exporter_class(name: str) -> type:
    if name == "otlp":
        protocol = (os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
                    or os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL") or "http/protobuf").strip()
        name = {"http/protobuf": "otlp_proto_http", "grpc": "otlp_proto_grpc"}.get(protocol, protocol)
    found = entry_points(group="opentelemetry_traces_exporter", name=name)
    if not found:
        known = sorted(e.name for e in entry_points(group="opentelemetry_traces_exporter"))
        raise ValueError(f"no OpenTelemetry span exporter {name!r} is installed (installed: {known}); "
                         "otlp_proto_grpc needs the package opentelemetry-exporter-otlp-proto-grpc")
    return next(iter(found)).load()


def install(tracer_provider: trace.TracerProvider | None = None) -> ShmqTracing | None:
    """Trace the messages of queues created or attached from now on.

    Uses `tracer_provider`, else the global provider if the application set one,
    else one built from the OTEL_* environment variables. When that configuration
    can never record a span, no hooks are installed (and None is returned), so
    disabled tracing costs the queue nothing.
    """
    if tracer_provider is None:
        tracer_provider = trace.get_tracer_provider()
        if isinstance(tracer_provider, trace.ProxyTracerProvider):  # the application configured nothing
            tracer_provider = provider_from_environment()
    tracing = ShmqTracing(tracer_provider)
    if not tracing.enabled:
        log.info("shmq tracing: the tracer provider never records spans; no hooks installed")
        tracing = None
    hooks.install(tracing)
    return tracing


def uninstall() -> None:
    """Stop tracing queues created or attached from now on."""
    hooks.install(None)
