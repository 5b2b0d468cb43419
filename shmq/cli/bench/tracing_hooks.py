"""Tracing configurations for ``shmq bench --compare hooks=...``: what tracing costs the queue.

Each factory returns what ``shmq.telemetry.tracing.install`` returns for one
configuration; ``--compare`` calls it in the writer and in every reader process
(see configs.ShmqConfig.install_hooks). ``--compare tracing`` (configs.PRESETS)
runs stats=off, stats=on and one row per factory, side by side:

    shmq bench --workloads small-1 --repeat 20 --compare tracing

Compare stats=on with stats=off, and every tracing row with stats=on (the
default, which they all keep):

- ``tracing_disabled``: ``tracing.install()`` when the configuration records
  nothing (here ``always_off``; ``OTEL_SDK_DISABLED=true`` does the same): no hooks;
- ``tracing_never_sampling``: ``parentbased_always_off``: every put() asks the
  hooks and nothing is sampled (only an application span could be);
- ``tracing_1_percent``: ``parentbased_traceidratio`` 0.01, spans batched and
  encoded to OTLP protobuf, then dropped (there is no collector to send to);
- ``tracing_1_percent_no_exporter``: the same without the span processor: the
  cost of making the spans alone.
"""

from __future__ import annotations

from typing import Sequence

from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, DEFAULT_OFF, ParentBasedTraceIdRatio, Sampler

from shmq.telemetry import tracing

class EncodeAndDropExporter(SpanExporter):
    """Does an OTLP exporter's work short of the network: encodes each batch to protobuf bytes."""

    def export(self, spans: Sequence) -> SpanExportResult:
        encode_spans(spans).SerializeToString()
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass


def _tracing(sampler: Sampler, export: bool = True) -> tracing.ShmqTracing | None:
    provider = TracerProvider(sampler=sampler)
    if export:
        provider.add_span_processor(BatchSpanProcessor(EncodeAndDropExporter()))
    return tracing.install(provider)


def tracing_1_percent() -> tracing.ShmqTracing | None:
    return _tracing(ParentBasedTraceIdRatio(0.01))


def tracing_1_percent_no_exporter() -> tracing.ShmqTracing | None:
    return _tracing(ParentBasedTraceIdRatio(0.01), export=False)


def tracing_never_sampling() -> tracing.ShmqTracing | None:
    return _tracing(DEFAULT_OFF)


def tracing_disabled() -> tracing.ShmqTracing | None:
    return _tracing(ALWAYS_OFF)
