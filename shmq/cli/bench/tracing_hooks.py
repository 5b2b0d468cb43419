"""What stats and tracing cost the queue: small messages, configurations run side by side.

    python -m telemetry.overhead [--readers 1] [--rounds 40] [--burst 2000]

All configurations live in one process tree at once: the writer (this process)
holds one queue per configuration, and each reader process holds a reader of
every queue. A round sends a burst of small messages (the ``shmq bench`` small
dict, about 200 bytes pickled) through each queue in turn, rotating the order,
and times it from the first put() until every reader has confirmed the last
message. Each configuration's burst time is compared with its baseline's in the
same round, so load that changes from one round to the next cancels out; the
table shows the median of those per-round ratios of msgs/s, with the quartiles.

Rows (baseline in parentheses):

- ``stats=off``: ``shmq.create(stats=False)``, the baseline of ``stats=on``;
- ``stats=on``: the default, and the baseline of every tracing row;
- ``tracing disabled``: ``tracing.install()`` when the configuration records
  nothing (here ``always_off``; ``OTEL_SDK_DISABLED=true`` does the same): no hooks;
- ``tracing installed, never sampling``: ``parentbased_always_off``: every put()
  asks the hooks and nothing is sampled (only an application span could be);
- ``tracing 1% sampler``: ``parentbased_traceidratio`` 0.01, spans batched and
  encoded to OTLP protobuf, then dropped (there is no collector to send to);
- ``tracing 1% sampler, no exporter``: the same without the span processor: the
  cost of making the spans alone.

The factories below also serve ``shmq bench --compare``, e.g.
``shmq bench --compare stats=on,hooks=telemetry.overhead:tracing_1_percent``.
"""

from __future__ import annotations

import argparse
import dataclasses
import multiprocessing
import os
import statistics
import sys
import time
from typing import Callable, Sequence

from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, DEFAULT_OFF, ParentBasedTraceIdRatio, Sampler

import shmq
from shmq import hooks

from . import tracing

_FORK = multiprocessing.get_context("fork")
_TOKENS = list(range(1000, 1048))


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


@dataclasses.dataclass(frozen=True)
class Config:
    """One row: how its queue is made, and what it is compared with."""

    name: str
    stats: bool = True
    hooks: Callable[[], tracing.ShmqTracing | None] | None = None  #: called in every process of the row
    baseline: str | None = None
    target: float | None = None  #: the lowest acceptable msgs/s ratio to the baseline

    def make_hooks(self) -> tracing.ShmqTracing | None:
        if self.hooks is None:
            return None
        made = self.hooks()
        hooks.install(None)  # each queue gets its hooks explicitly; nothing is left installed for the next
        return made


CONFIGS = (
    Config("stats=off", stats=False),
    Config("stats=on", baseline="stats=off", target=0.95),
    Config("tracing disabled (no hooks)", hooks=tracing_disabled, baseline="stats=on", target=0.99),
    Config("tracing installed, never sampling", hooks=tracing_never_sampling, baseline="stats=on", target=0.99),
    Config("tracing 1% sampler", hooks=tracing_1_percent, baseline="stats=on", target=0.95),
    Config("tracing 1% sampler, no exporter", hooks=tracing_1_percent_no_exporter, baseline="stats=on"),
)


def small_message(seq: int) -> dict:
    return {"seq": seq, "t": time.perf_counter_ns(), "op": "step", "tokens": _TOKENS}


def _order(round_: int) -> list[Config]:
    shift = round_ % len(CONFIGS)
    return [*CONFIGS[shift:], *CONFIGS[:shift]]


def _reader_main(handles: dict, index: int, rounds: int, burst: int, conn) -> None:
    readers = {c.name: shmq.attach(handles[c.name], index, hooks=c.make_hooks()) for c in CONFIGS}
    conn.send_bytes(b"attached")
    for round_ in range(rounds):
        for config in _order(round_):
            get = readers[config.name].get
            for _ in range(burst):
                get(timeout=60)
            conn.send_bytes(b"")
    for reader in readers.values():
        reader.close()


def measure(n_readers: int, rounds: int, burst: int) -> dict[str, list[float]]:
    """Seconds per burst, by configuration, over `rounds` rounds (after one warm-up round)."""
    writers = {c.name: shmq.create(n_readers, name=f"overhead-{os.getpid()}-{i}", stats=c.stats,
                                   hooks=c.make_hooks(), n_chunks=1024, chunk_bytes=1024)
               for i, c in enumerate(CONFIGS)}
    handles = {name: w.handle for name, w in writers.items()}
    pipes, processes = [], []
    try:
        for index in range(n_readers):
            parent_end, child_end = _FORK.Pipe()
            process = _FORK.Process(target=_reader_main, args=(handles, index, rounds + 1, burst, child_end),
                                    daemon=True)
            process.start()
            pipes.append(parent_end)
            processes.append(process)
        for pipe in pipes:
            if not pipe.poll(60):
                raise RuntimeError("a reader process did not attach within 60 s")
            pipe.recv_bytes()
        times: dict[str, list[float]] = {c.name: [] for c in CONFIGS}
        seq = 0
        for round_ in range(rounds + 1):
            for config in _order(round_):
                put = writers[config.name].put
                start = time.perf_counter()
                for _ in range(burst):
                    put(small_message(seq))
                    seq += 1
                for pipe in pipes:
                    pipe.recv_bytes()
                if round_:  # round 0 warms up caches, imports and span processors
                    times[config.name].append(time.perf_counter() - start)
        return times
    finally:
        for process in processes:
            process.join(timeout=10)
            if process.is_alive():
                process.kill()
                process.join()
        for writer in writers.values():
            writer.close()


def report(times: dict[str, list[float]], burst: int) -> str:
    lines = ["| configuration | msgs/s (median) | vs baseline (median) | quartiles | target | met |",
             "|---|---:|---:|---|---:|---|"]
    for config in CONFIGS:
        rate = burst / statistics.median(times[config.name])
        if config.baseline is None:
            lines.append(f"| {config.name} | {rate:,.0f} | baseline | | | |")
            continue
        ratios = [b / t for b, t in zip(times[config.baseline], times[config.name])]  # msgs/s ratio per round
        q1, median, q3 = statistics.quantiles(ratios, n=4)
        target = f">= {config.target:.2f}" if config.target else ""
        met = "" if config.target is None else ("yes" if median >= config.target else "NO")
        lines.append(f"| {config.name} (vs {config.baseline}) | {rate:,.0f} | {median:.3f} | "
                     f"{q1:.3f} .. {q3:.3f} | {target} | {met} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m telemetry.overhead", description=__doc__.split("\n\n")[0])
    parser.add_argument("--readers", type=int, default=1, help="reader processes (default %(default)s)")
    parser.add_argument("--rounds", type=int, default=40, help="rounds after the warm-up (default %(default)s)")
    parser.add_argument("--burst", type=int, default=2000, help="messages per configuration per round")
    args = parser.parse_args(argv)
    times = measure(args.readers, args.rounds, args.burst)
    print(f"{args.readers} reader(s), {args.rounds} rounds of {args.burst} small messages per configuration, "
          f"{os.cpu_count()} cores, Python {sys.version.split()[0]}")
    print(report(times, args.burst))
    return 0


if __name__ == "__main__":
    sys.exit(main())
