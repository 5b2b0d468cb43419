"""OpenTelemetry traces of real messages between real processes, collected with InMemorySpanExporter."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF, ALWAYS_ON, DEFAULT_OFF, DEFAULT_ON, Decision, ParentBasedTraceIdRatio, Sampler, SamplingResult,
    TraceIdRatioBased,
)

import shmq
from shmq import hooks, wait
from shmq.telemetry import tracing

from .conftest import FORK
from .telemetry_helpers import ROOT

SMALL_FRAME = 256  # the ring bytes of the frame of a small message


@pytest.fixture(autouse=True)
def no_hooks_left_installed():
    yield
    hooks.install(None)


def in_memory_provider(sampler: Sampler = ALWAYS_ON) -> tuple[TracerProvider, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(sampler=sampler, shutdown_on_exit=False)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter


def span_record(span) -> dict:
    """What the tests look at in a finished span, in a form a pipe can carry."""
    return {
        "name": span.name, "kind": span.kind.name, "trace_id": span.context.trace_id,
        "span_id": span.context.span_id, "parent": span.parent.span_id if span.parent else None,
        "links": [(link.context.trace_id, link.context.span_id) for link in span.links],
        "attributes": dict(span.attributes), "events": [event.name for event in span.events],
        "status": span.status.status_code.name,
    }


def traced_reader(handle, index, count, conn, remote=False, wait_strategy=None, delay_s=0.0):
    """Child: trace into its own in-memory exporter, read `count` messages, send back the spans."""
    provider, exporter = in_memory_provider()
    tracing.install(provider)
    source = shmq.attach_remote(handle) if remote else shmq.attach(handle, index, wait=wait_strategy)
    with source:
        conn.send("attached")
        for _ in range(count):
            source.get(timeout=30)
            time.sleep(delay_s)
    conn.send([span_record(s) for s in exporter.get_finished_spans()])


def start_readers(children, writer, count, indexes, remote=(), wait_strategy=None, delay_s=0.0) -> dict:
    pipes = {}
    for index in [*indexes, *remote]:
        pipes[index], child_end = FORK.Pipe()
        children(traced_reader, writer.handle, index, count, child_end, index in remote, wait_strategy, delay_s)
    for index, pipe in pipes.items():
        assert pipe.poll(15) and pipe.recv() == "attached", f"reader {index} did not attach"
    return pipes


def receive_spans(pipes: dict) -> dict:
    spans = {}
    for index, pipe in pipes.items():
        assert pipe.poll(30), f"reader {index} sent no spans"
        spans[index] = pipe.recv()
    return spans


@pytest.mark.timeout(60)
def test_every_reader_receive_span_links_to_the_producer_span_of_its_message(queue_name, children):
    count = 50
    provider, exporter = in_memory_provider()
    tracing.install(provider)
    with shmq.create(3, name=queue_name, n_chunks=8, chunk_bytes=512, n_remote_readers=1) as writer:
        pipes = start_readers(children, writer, count, indexes=(0, 1, 2), remote=(3,))
        writer.wait_for_readers(timeout=15)
        for i in range(count):
            writer.put({"i": i}, timeout=30)
        spans_by_reader = receive_spans(pipes)
    sends = {int(s.attributes["messaging.message.id"]): s for s in exporter.get_finished_spans()}
    assert sorted(sends) == list(range(count))
    for send in sends.values():
        assert send.name == f"send {queue_name}" and send.kind == trace.SpanKind.PRODUCER
        assert send.attributes["messaging.system"] == "shmq"
        assert send.attributes["messaging.operation.type"] == "send"
        assert send.attributes["messaging.destination.name"] == queue_name
        assert send.attributes["messaging.message.body.size"] > 0
    message_of = {(s.context.trace_id, s.context.span_id): message_id for message_id, s in sends.items()}
    for index, spans in spans_by_reader.items():  # 3 is the remote reader, over ZeroMQ
        assert len(spans) == count, f"reader {index}"
        for span in spans:
            message_id = int(span["attributes"]["messaging.message.id"])
            send = sends[message_id]
            assert [message_of.get(link) for link in span["links"]] == [message_id], \
                f"reader {index}: the receive span of message {message_id} links to another producer span"
            assert span["parent"] is None, "a receive span links to the producer; it is not its child"
            assert span["trace_id"] != send.context.trace_id
            assert span["name"] == f"receive {queue_name}" and span["kind"] == "CONSUMER"
            assert span["attributes"]["messaging.operation.type"] == "receive"
            assert span["attributes"]["shmq.reader"] == index
            body_size = span["attributes"]["messaging.message.body.size"]
            assert body_size == send.attributes["messaging.message.body.size"]  # local and remote alike
            assert span["attributes"]["shmq.wait.seconds"] >= 0


@pytest.mark.timeout(60)
@pytest.mark.parametrize("strategy, event", [(wait.SpinYieldPark(spins=1, yields=1), "park"),
                                             (wait.Backoff(spins_per_sleep=2, sleep_s=0.001), "backoff_sleep")])
def test_parks_and_backoff_sleeps_inside_traced_calls_become_span_events(strategy, event, queue_name, children):
    provider, exporter = in_memory_provider()
    tracing.install(provider)
    with shmq.create(1, name=queue_name, ring_bytes=2 * SMALL_FRAME, wait=strategy) as writer:
        (pipe,) = start_readers(children, writer, 4, indexes=(0,), wait_strategy=strategy, delay_s=0.05).values()
        writer.wait_for_readers(timeout=15)
        time.sleep(0.05)  # the reader waits for the first message
        for i in range(4):  # the ring holds 2 and the reader sleeps after each message: the writer waits
            writer.put(i, timeout=30)
        (reader_spans,) = receive_spans({0: pipe}).values()
    first_receive = reader_spans[0]
    assert first_receive["attributes"]["shmq.wait.seconds"] > 0.04 and event in first_receive["events"]
    waited = [s for s in exporter.get_finished_spans() if s.attributes["shmq.wait.seconds"] > 0.01]
    assert waited and all(event in [e.name for e in s.events] for s in waited)


def test_a_send_inside_an_application_span_is_its_child(queue_name):
    provider, exporter = in_memory_provider()
    tracing.install(provider)
    with shmq.create(1, name=queue_name, chunk_bytes=256) as writer:
        with provider.get_tracer("app").start_as_current_span("request") as request:
            writer.put("inside")
        writer.put("outside")
    send_inside, _, send_outside = exporter.get_finished_spans()
    assert send_inside.parent.span_id == request.get_span_context().span_id
    assert send_outside.parent is None


def test_a_failed_put_ends_its_span_with_the_error(queue_name):
    provider, exporter = in_memory_provider()
    tracing.install(provider)
    with shmq.create(1, name=queue_name, ring_bytes=2 * SMALL_FRAME) as writer, shmq.attach(writer.handle, 0):
        writer.put(1)
        writer.put(2)
        with pytest.raises(shmq.WouldBlock):
            writer.put_nowait(3)
    failed = exporter.get_finished_spans()[-1]
    assert failed.status.status_code == trace.StatusCode.ERROR
    assert failed.attributes["error.type"] == "WouldBlock"
    assert [e.name for e in failed.events] == ["exception"]


def test_a_ratio_sampler_traces_that_share_of_messages_and_readers_follow_the_writer(queue_name):
    provider, exporter = in_memory_provider(ParentBasedTraceIdRatio(0.25))
    hooks.install(tracing.ShmqTracing(provider, rng=random.Random(4)))
    count = 4000
    with shmq.create(1, name=queue_name, n_chunks=64, chunk_bytes=256) as writer, \
            shmq.attach(writer.handle, 0) as reader:
        for i in range(count):
            writer.put_bytes(b"x")
            reader.get_bytes()
    sent = {s.attributes["messaging.message.id"] for s in exporter.get_finished_spans() if s.name.startswith("send")}
    received = {s.attributes["messaging.message.id"] for s in exporter.get_finished_spans()
                if s.name.startswith("receive")}
    assert abs(len(sent) - count / 4) < 4 * (count * 0.25 * 0.75) ** 0.5  # within four standard deviations
    assert received == sent


@pytest.mark.parametrize("sampler, rate", [
    (ALWAYS_ON, 1.0), (ALWAYS_OFF, 0.0), (DEFAULT_ON, 1.0), (DEFAULT_OFF, 0.0),
    (TraceIdRatioBased(0.01), 0.01), (ParentBasedTraceIdRatio(0.3), 0.3),
])
def test_the_root_sampling_rate_is_read_from_the_standard_samplers(sampler, rate):
    assert tracing.root_sampling_rate(sampler) == pytest.approx(rate, rel=1e-12)


class EveryOtherSampler(Sampler):
    """Not a function of the trace id: shmq cannot predict it, so it must ask it for every message."""

    def __init__(self) -> None:
        self.calls = 0

    def should_sample(self, parent_context, trace_id, name, kind=None, attributes=None, links=None,
                      trace_state=None) -> SamplingResult:
        self.calls += 1
        return SamplingResult(Decision.RECORD_AND_SAMPLE if self.calls % 2 else Decision.DROP)

    def get_description(self) -> str:
        return "EveryOther"


def test_a_sampler_that_does_not_decide_by_trace_id_is_asked_for_every_message(queue_name):
    sampler = EveryOtherSampler()
    provider, exporter = in_memory_provider(sampler)
    tracing_hooks = tracing.ShmqTracing(provider)
    assert tracing_hooks.root_rate is None
    hooks.install(tracing_hooks)
    with shmq.create(1, name=queue_name, chunk_bytes=256) as writer:
        calls = sampler.calls
        for i in range(10):
            writer.put(i)
    assert sampler.calls - calls == 10
    assert len(exporter.get_finished_spans()) == 5


def test_disabled_tracing_installs_no_hooks(monkeypatch):
    provider, _ = in_memory_provider(ALWAYS_OFF)
    assert tracing.install(provider) is None and hooks.installed() is None
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "none")
    assert tracing.install() is None and hooks.installed() is None


def test_a_parentbased_always_off_sampler_traces_only_inside_sampled_application_spans(queue_name):
    provider, exporter = in_memory_provider(DEFAULT_OFF)
    assert tracing.install(provider) is not None
    with shmq.create(1, name=queue_name, chunk_bytes=256) as writer:
        writer.put("root: not sampled")
        with TracerProvider(sampler=ALWAYS_ON).get_tracer("app").start_as_current_span("request"):
            writer.put("in a sampled request")
    (send,) = exporter.get_finished_spans()
    assert send.attributes["messaging.message.id"] == "1"


@pytest.mark.timeout(60)
def test_tracing_is_configured_by_the_standard_environment_variables(queue_name):
    program = (
        "import shmq; from shmq.telemetry import tracing\n"
        "assert tracing.install() is not None\n"
        f"with shmq.create(1, name={queue_name!r}, chunk_bytes=256) as w:\n"
        "    w.put('hello')\n"
    )
    env = {**os.environ, "OTEL_TRACES_EXPORTER": "console", "OTEL_TRACES_SAMPLER": "always_on",
           "OTEL_SERVICE_NAME": "engine-under-test"}
    done = subprocess.run([sys.executable, "-c", program], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=50)
    assert done.returncode == 0, done.stderr
    span = json.loads(done.stdout)
    assert span["name"] == f"send {queue_name}" and span["kind"] == "SpanKind.PRODUCER"
    assert span["resource"]["attributes"]["service.name"] == "engine-under-test"
    env["OTEL_TRACES_EXPORTER"] = "no-such-exporter"
    failed = subprocess.run([sys.executable, "-c", program], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=50)
    assert failed.returncode != 0 and "no OpenTelemetry span exporter 'no-such-exporter'" in failed.stderr


@pytest.mark.parametrize("field", [b"", b"garbage", b"\xff" * 55, b"01-" + b"a" * 32 + b"-" + b"b" * 16 + b"-01",
                                  b"00-" + b"0" * 32 + b"-" + b"b" * 16 + b"-01",
                                  b"00-" + b"A" * 32 + b"-" + b"b" * 16 + b"-01"])
def test_a_frame_traceparent_that_is_not_valid_w3c_is_ignored(field):
    assert tracing.producer_context(field) is None


def test_a_valid_frame_traceparent_names_the_remote_producer_span():
    producer = tracing.producer_context(b"00-" + b"a" * 32 + b"-" + b"b" * 16 + b"-01")
    assert (producer.trace_id, producer.span_id, producer.is_remote) == (int("a" * 32, 16), int("b" * 16, 16), True)
    assert producer.trace_flags.sampled


@pytest.mark.timeout(60)
def test_a_message_spanning_several_slots_links_to_its_own_producer_span(queue_name, children):
    count = 20
    provider, exporter = in_memory_provider()
    tracing.install(provider)
    with shmq.create(1, name=queue_name, n_chunks=2, chunk_bytes=1024) as writer:
        pipes = start_readers(children, writer, count, indexes=(0,))
        writer.wait_for_readers(timeout=15)
        for i in range(count):  # three slots each, through a ring of two: the writer reuses slots at once
            writer.put_bytes(bytes([i]) * 3000, timeout=30)
        (spans,) = receive_spans(pipes).values()
    sends = {s.attributes["messaging.message.id"]: s.context for s in exporter.get_finished_spans()}
    links = {s["attributes"]["messaging.message.id"]: s["links"] for s in spans}
    assert links == {message_id: [(ctx.trace_id, ctx.span_id)] for message_id, ctx in sends.items()}
