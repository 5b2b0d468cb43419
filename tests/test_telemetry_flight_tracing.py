"""Traces from outside the process: ``shmq exporter --traces`` sends spans built from the flight records
to a real OTLP/HTTP endpoint (this test's), linked as the in-process tracing links them."""

from __future__ import annotations

import gzip
import http.server
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest, ExportTraceServiceResponse,
)

import shmq

from .conftest import FORK
from .watchdog_harness import ROOT


class OtlpReceiver:
    """An OTLP/HTTP traces endpoint (POST /v1/traces, protobuf) that keeps every span it is sent."""

    def __init__(self) -> None:
        self.spans: list = []
        received = self.spans

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                request = ExportTraceServiceRequest.FromString(body)
                received.extend((resource.resource, span) for resource in request.resource_spans
                                for scope in resource.scope_spans for span in scope.spans)
                reply = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args):
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/v1/traces"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def read_all(handle: str, index: int, count: int, done) -> None:
    """Reader `index` takes `count` messages: reader 1 holds each in a lease() block for a moment (its
    flight entries stay open until the block exits), the others get() them."""
    with shmq.attach(handle, reader=index, stack_dumps=False) as reader:
        for _ in range(count):
            if index == 1:
                with reader.lease(timeout=30):
                    time.sleep(0.001)
            else:
                reader.get(timeout=30)
        done.wait(30)


def attributes(span) -> dict:
    return {a.key: next(v for v in (a.value.string_value, a.value.int_value, a.value.double_value) if v != "")
            for a in span.attributes}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("count, pause_s, span_queue", [(20, 0.005, 2048), (300, 0.0, 64)],
                         ids=["paced", "a burst over the span queue"])
def test_the_sidecar_traces_every_message_from_the_flight_records_with_linked_receive_spans(
        queue_name, children, count, pause_s, span_queue):
    receiver = OtlpReceiver()
    env = {**os.environ, "OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf",
           "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": receiver.url, "OTEL_BSP_SCHEDULE_DELAY": "200",
           "OTEL_BSP_MAX_QUEUE_SIZE": str(span_queue), "OTEL_BSP_MAX_EXPORT_BATCH_SIZE": str(span_queue // 4),
           "OTEL_SERVICE_NAME": "shmq-sidecar"}
    done = FORK.Event()
    with shmq.create(2, name=queue_name, chunk_bytes=256, n_chunks=64, stack_dumps=False) as writer:
        sidecar = subprocess.Popen([sys.executable, "-m", "shmq", "exporter", "--port", "0", "--queue", queue_name,
                                    "--traces"], cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)
        try:
            assert "serving" in sidecar.stdout.readline() and "tracing 100%" in sidecar.stdout.readline()
            for index in range(2):
                children(read_all, str(writer.handle), index, count, done)
            writer.wait_for_readers(timeout=10)
            for n in range(count):
                writer.put({"n": n})
                time.sleep(pause_s)
            deadline = time.monotonic() + 20
            while len(receiver.spans) < 3 * count and time.monotonic() < deadline:
                time.sleep(0.1)
        finally:
            done.set()
            sidecar.send_signal(signal.SIGTERM)
            sidecar.wait(20)
            sidecar.stdout.close()
            receiver.stop()
    assert sidecar.returncode == 0
    spans = [span for _, span in receiver.spans]
    sends = {attributes(s)["messaging.message.id"]: s for s in spans if s.name == f"send {queue_name}"}
    receives = [s for s in spans if s.name == f"receive {queue_name}"]
    assert sorted(sends, key=int) == [str(n) for n in range(count)] and len(receives) == 2 * count
    resource = {a.key: a.value.string_value for a in receiver.spans[0][0].attributes}
    assert resource["service.name"] == "shmq-sidecar"
    for span in receives:
        got = attributes(span)
        send = sends[got["messaging.message.id"]]
        [link] = span.links
        assert (link.trace_id, link.span_id) == (send.trace_id, send.span_id), "a receive links to its send"
        assert got["messaging.system"] == "shmq" and got["shmq.reader"] in (0, 1)
        assert got["messaging.operation.type"] == "receive" and span.kind == span.SPAN_KIND_CONSUMER
        assert send.start_time_unix_nano <= span.end_time_unix_nano, "a message is taken after it was put"
        assert span.start_time_unix_nano <= span.end_time_unix_nano
    readers = sorted(attributes(s)["shmq.reader"] for s in receives)
    assert readers == [0] * count + [1] * count
    first = sends["0"]
    assert first.kind == first.SPAN_KIND_PRODUCER and attributes(first)["messaging.message.body.size"] > 0
    assert abs(first.start_time_unix_nano / 1e9 - time.time()) < 60, "wall-clock times, not monotonic ones"
