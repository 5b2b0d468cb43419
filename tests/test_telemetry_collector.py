"""ShmqCollector in one process: what it exports for real queues in shared memory, in both exposition formats."""

from __future__ import annotations

import os
import urllib.request

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families as parse_text
from prometheus_client.utils import floatToGoString

import shmq
from shmq import layout as L
from shmq.telemetry import ShmqCollector, names as N, serve
from shmq.stats import CREATION_GRACE_S

from .telemetry_helpers import corrupt_word, garbage_segment, isolated_shm_dir, sample_values, value, who

PAYLOAD = b"p" * 100
FRAME = L.ONE_SEGMENT.size + len(PAYLOAD)  # what one put_bytes() adds to bytes_total


@pytest.fixture
def shm_dir():
    with isolated_shm_dir() as path:
        yield path


def scrape(collector: ShmqCollector, openmetrics: bool = False) -> dict:
    registry = CollectorRegistry()
    registry.register(collector)
    if openmetrics:
        return sample_values(parse_openmetrics(generate_openmetrics(registry).decode()))
    return sample_values(parse_text(generate_latest(registry).decode()))


def test_counters_gauges_and_states_of_a_queue_in_both_formats(queue_name):
    with shmq.create(2, name=queue_name, n_chunks=8, chunk_bytes=256) as writer:
        with shmq.attach(writer.handle, reader=0) as reader:
            for _ in range(5):
                writer.put_bytes(PAYLOAD)
            for _ in range(3):
                reader.get_bytes()
            with shmq.stats.open(writer.handle) as view:
                reader_state = view.snapshot().readers[0].state.name.lower()
            collector = ShmqCollector([writer.handle], host="test-host")
            for samples in (scrape(collector), scrape(collector, openmetrics=True)):
                assert value(samples, N.total(N.MESSAGES), **who(queue_name)) == 5
                assert value(samples, N.total(N.MESSAGES), **who(queue_name, 0)) == 3
                assert value(samples, N.total(N.BYTES), **who(queue_name)) == 5 * FRAME
                assert value(samples, N.total(N.BYTES), **who(queue_name, 0)) == 3 * FRAME
                assert value(samples, N.RING_CAPACITY, queue=queue_name) == 8 * L.frame_stride(256)
                # Reader 1 never attached: it still gates the writer, so occupancy counts from its cursor 0.
                assert value(samples, N.RING_OCCUPANCY_MESSAGES, queue=queue_name) == 5
                assert value(samples, N.RING_OCCUPANCY, queue=queue_name) == 5 * L.frame_stride(FRAME)
                assert value(samples, N.READER_LAG, **who(queue_name, 0)) == 2
                assert value(samples, N.READER_LAG, **who(queue_name, 1)) == 5
                assert value(samples, N.PARTICIPANT_STATE, **who(queue_name, 1), state="pending") == 1
                assert value(samples, N.PARTICIPANT_STATE, **who(queue_name, 0), state=reader_state) == 1
                assert sum(v for (name, labels), v in samples.items()
                           if name == N.PARTICIPANT_STATE and dict(labels)[N.LABEL_READER] == "0") == 1
                info = value(samples, N.PARTICIPANT_INFO + "_info", **who(queue_name, 0), pid=str(os.getpid()),
                             host="test-host")
                assert info == 1
                assert value(samples, N.total(N.EXPORTER_ERRORS)) == 0
            collector.close()


@pytest.mark.timeout(30)
def test_a_remote_reader_is_exported_with_its_role_host_and_lag(queue_name):
    with shmq.create(0, name=queue_name, ring_bytes=1 << 20, n_remote_readers=1) as writer, \
            shmq.attach_remote(writer.handle) as remote:
        for _ in range(5):
            writer.put_bytes(PAYLOAD)
        assert remote.get_bytes(timeout=10) == PAYLOAD
        collector = ShmqCollector([writer.handle], host="exporter-host")
        samples = scrape(collector)
        labels = {"queue": queue_name, N.LABEL_ROLE: "remote_reader", N.LABEL_READER: "0"}
        assert value(samples, N.PARTICIPANT_INFO + "_info", **labels, pid=str(os.getpid()),
                     host=shmq.stats.open(writer.handle).snapshot().readers[0].host) == 1
        assert value(samples, N.READER_LAG, **labels) == 5  # nothing acknowledged yet: it has not waited
        collector.close()


def test_wait_histogram_is_cumulative_and_its_count_is_the_records_waits(queue_name):
    chunk = b"c" * 240  # with its table, the whole of a 256-byte chunk: two fill the ring
    with shmq.create(1, name=queue_name, n_chunks=2, chunk_bytes=256) as writer:
        with shmq.attach(writer.handle, reader=0) as reader:
            writer.put_bytes(chunk)
            writer.put_bytes(chunk)
            with pytest.raises(shmq.QueueTimeout):  # the ring is full: the writer waits, then gives up
                writer.put_bytes(chunk, timeout=0.002)
            reader.get_bytes()
            reader.get_bytes()
            with pytest.raises(shmq.QueueTimeout):  # the ring is empty: the reader waits, then gives up
                reader.get_bytes(timeout=0.003)
            with shmq.stats.open(writer.handle) as view:
                snapshot = view.snapshot()
        samples = scrape(ShmqCollector([writer.handle]))
    for participant, labels in ((snapshot.writer, who(queue_name)), (snapshot.readers[0], who(queue_name, 0))):
        assert participant.waits >= 1
        buckets = [value(samples, N.bucket(N.WAIT_SECONDS), **labels, le=le)
                   for le in [*map(floatToGoString, L.HISTOGRAM_UPPER_BOUNDS_S), "+Inf"]]
        assert buckets == sorted(buckets), "buckets must be cumulative"
        assert buckets[-1] == value(samples, N.WAIT_SECONDS + "_count", **labels) == participant.waits
        assert value(samples, N.WAIT_SECONDS + "_sum", **labels) == pytest.approx(participant.wait_ns / 1e9)
        assert value(samples, N.total(N.TIMEOUTS), **labels) == 1
        # where the waits' time went, in seconds: busy and parked (no Backoff here) add up to all of it
        busy, parked = value(samples, N.total(N.BUSY_WAIT_SECONDS), **labels), \
            value(samples, N.total(N.PARKED_SECONDS), **labels)
        assert busy == pytest.approx(participant.busy_wait_ns / 1e9)
        assert parked == pytest.approx(participant.parked_ns / 1e9)
        assert busy + parked == pytest.approx(participant.wait_ns / 1e9) and busy > 0


def test_a_queue_without_stats_exports_its_gauges_but_no_counters(queue_name):
    with shmq.create(1, name=queue_name, n_chunks=4, chunk_bytes=256, stats=False) as writer:
        writer.put_bytes(PAYLOAD)
        samples = scrape(ShmqCollector([writer.handle]))
    names = {name for name, _ in samples}
    assert value(samples, N.RING_OCCUPANCY_MESSAGES, queue=queue_name) == 1
    assert value(samples, N.RING_OCCUPANCY, queue=queue_name) == L.frame_stride(FRAME)
    assert N.total(N.MESSAGES) not in names and N.WAIT_SECONDS + "_count" not in names


def test_two_segments_with_one_queue_name_get_distinct_queue_labels(queue_name):
    with shmq.create(1, name=queue_name, chunk_bytes=256) as first, \
            shmq.create(1, name=queue_name, chunk_bytes=256) as second:
        samples = scrape(ShmqCollector([queue_name]))
        queues = {dict(labels)[N.LABEL_QUEUE] for name, labels in samples if name == N.RING_CAPACITY}
    assert queues == {f"{queue_name}/{first.handle.shm_name}", f"{queue_name}/{second.handle.shm_name}"}


def test_watching_everything_finds_new_segments_and_forgets_unlinked_ones(shm_dir):
    collector = ShmqCollector(shm_dir=shm_dir)
    assert not [k for k in scrape(collector) if k[0] == N.RING_CAPACITY]
    writer = shmq.create(1, name="appears", chunk_bytes=256, shm_dir=shm_dir)
    try:
        assert value(scrape(collector), N.RING_CAPACITY, queue="appears") == writer.handle.ring_bytes
    finally:
        writer.close()
    assert not [k for k in scrape(collector) if k[0] == N.RING_CAPACITY]
    collector.close()


def test_a_young_unreadable_file_is_retried_and_counted_once_its_grace_has_passed(shm_dir):
    now = [0.0]
    collector = ShmqCollector(shm_dir=shm_dir, clock=lambda: now[0])
    path = garbage_segment(shm_dir, age_s=0)
    now[0] = os.stat(path).st_mtime + CREATION_GRACE_S / 2
    assert value(scrape(collector), N.total(N.EXPORTER_ERRORS)) == 0  # maybe its creator is still writing it
    now[0] += CREATION_GRACE_S
    assert value(scrape(collector), N.total(N.EXPORTER_ERRORS)) == 1
    assert value(scrape(collector), N.total(N.EXPORTER_ERRORS)) == 1  # counted once while it stays the same


def test_a_record_corrupted_after_discovery_is_skipped_and_counted_at_each_scrape(shm_dir):
    with shmq.create(1, name="corrupted", chunk_bytes=256, shm_dir=shm_dir) as writer, \
            shmq.create(1, name="healthy", chunk_bytes=256, shm_dir=shm_dir):
        collector = ShmqCollector(shm_dir=shm_dir)
        assert value(scrape(collector), N.RING_CAPACITY, queue="corrupted") == writer.handle.ring_bytes
        corrupt_word(os.path.join(shm_dir, writer.handle.shm_name), L.record_offset(0) + L.REC_ROLE, 99)
        for errors in (1, 2):
            samples = scrape(collector)
            assert value(samples, N.total(N.EXPORTER_ERRORS)) == errors
            assert value(samples, N.RING_CAPACITY, queue="healthy") == writer.handle.ring_bytes
            assert not [k for k in samples if dict(k[1]).get(N.LABEL_QUEUE) == "corrupted"]
        collector.close()


@pytest.mark.timeout(20)
def test_serve_binds_loopback_and_answers_a_scrape(queue_name):
    with shmq.create(1, name=queue_name, chunk_bytes=256) as writer, serve(0, queues=[queue_name]) as exporter:
        assert exporter.addr == "127.0.0.1"
        with urllib.request.urlopen(exporter.url, timeout=5) as response:
            samples = sample_values(parse_text(response.read().decode()))
        assert value(samples, N.RING_CAPACITY, queue=queue_name) == writer.handle.ring_bytes
