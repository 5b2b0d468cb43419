"""Bad input gets a clear error naming what is wrong, and never disturbs another reader's data."""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading

import pytest

import shmq
from shmq import layout as L
from shmq.segment import PREFIX, Segment


@pytest.fixture
def foreign_file():
    """A file in /dev/shm with the shmq prefix that the test fills, removed afterwards."""
    path = os.path.join("/dev/shm", PREFIX + "foreign-" + secrets.token_hex(4))
    yield path
    if os.path.exists(path):
        os.unlink(path)


def copy_of(writer, path, patch_offset=None, patch_value=None) -> str:
    """A copy of the writer's segment, optionally with one header word changed; returns its shm name."""
    shutil.copyfile(os.path.join("/dev/shm", writer.handle.shm_name), path)
    if patch_offset is not None:
        with open(path, "r+b") as f:
            f.seek(patch_offset)
            f.write(patch_value.to_bytes(8, "little"))
    return os.path.basename(path)


def test_a_foreign_shared_memory_object_is_refused(foreign_file):
    with open(foreign_file, "wb") as f:
        f.write(b"definitely not a queue" * 100)
    with pytest.raises(shmq.LayoutMismatch, match=r"not a shmq segment: magic is b'definite'"):
        shmq.stats.open(os.path.basename(foreign_file))


def test_a_truncated_object_is_refused(foreign_file):
    with open(foreign_file, "wb") as f:
        f.write(L.MAGIC)
    with pytest.raises(shmq.LayoutMismatch, match="smaller than a shmq header"):
        shmq.stats.open(os.path.basename(foreign_file))


def test_a_version_mismatch_names_both_versions(writer, foreign_file):
    name = copy_of(writer, foreign_file, L.OFF_VERSION, 99)
    with pytest.raises(shmq.LayoutMismatch, match=f"layout version 99; this shmq reads version {L.LAYOUT_VERSION}"):
        shmq.stats.open(name)


def test_a_corrupt_header_is_refused(writer, foreign_file):
    name = copy_of(writer, foreign_file, L.OFF_SEGMENT_BYTES, 12345)
    with pytest.raises(shmq.LayoutMismatch, match="declares 12,345 bytes"):
        shmq.stats.open(name)
    name = copy_of(writer, foreign_file, L.OFF_RING_BYTES, 100)
    with pytest.raises(shmq.LayoutMismatch, match="corrupt header: ring_bytes must be a multiple of 128 .* got 100"):
        shmq.stats.open(name)
    name = copy_of(writer, foreign_file, L.OFF_FRAME_BYTES, writer.handle.ring_bytes)
    with pytest.raises(shmq.LayoutMismatch, match="corrupt header: frame_bytes must be in 16..16,768 .* got 33,792"):
        shmq.stats.open(name)
    name = copy_of(writer, foreign_file, L.OFF_PIECE_BYTES, writer.handle.frame_bytes + 1)
    with pytest.raises(shmq.LayoutMismatch, match=r"corrupt header: piece_bytes must be in 16..4,096 \(frame_bytes\), got 4,097"):
        shmq.stats.open(name)


def test_a_segment_that_never_becomes_ready_is_refused(writer, foreign_file):
    name = copy_of(writer, foreign_file, L.OFF_VERSION, 0)
    with pytest.raises(shmq.LayoutMismatch, match="never made ready"):
        Segment.open(name, writable=False, ready_timeout_s=0.05)


def test_a_segment_owned_by_another_user_is_refused(writer, foreign_file):
    if os.getuid() != 0:
        pytest.skip("only root can give a file to another uid")
    name = copy_of(writer, foreign_file)
    os.chown(foreign_file, 65534, 65534)
    with pytest.raises(shmq.ForeignSegment, match="belongs to uid 65534"):
        shmq.stats.open(name)


def test_segments_are_private_to_their_owner(writer):
    assert os.stat(os.path.join("/dev/shm", writer.handle.shm_name)).st_mode & 0o777 == 0o600


@pytest.mark.parametrize("text, problem", [
    ("", "not a shmq handle"),
    ("shmq-abc", "not a shmq handle"),
    (f"shmq://shmq-abc?v={L.LAYOUT_VERSION}&name=q", "malformed"),
    (f"shmq://shmq-abc?v={L.LAYOUT_VERSION}&name=q&readers=x&ring_bytes=1&frame_bytes=1&id=00", "malformed"),
    ("shmq://shmq-abc?v=99&name=q&readers=1&ring_bytes=256&frame_bytes=64", "layout version 99"),
])
def test_a_wrong_handle_string_is_refused(text, problem):
    with pytest.raises(shmq.BadHandle, match=problem):
        shmq.attach(text, 0)


def test_a_handle_to_a_missing_queue_says_so():
    with pytest.raises(shmq.QueueNotFound, match="the handle is wrong or its writer has closed"):
        shmq.attach(f"shmq://shmq-000000?v={L.LAYOUT_VERSION}&name=q&readers=1&ring_bytes=256&frame_bytes=64&id=00", 0)


def test_a_handle_that_does_not_match_its_segment_is_refused(writer):
    wrong = shmq.Handle(writer.handle.shm_name, "q", n_readers=5, ring_bytes=1 << 20, frame_bytes=4096,
                        instance_id=writer.handle.instance_id)
    with pytest.raises(shmq.BadHandle, match="the handle says 5 readers"):
        shmq.attach(wrong, 0)
    with pytest.raises(shmq.BadHandle, match="there is no reader 2"):
        shmq.attach(writer.handle, 2)


def test_an_unpicklable_object_fails_cleanly_and_the_stream_goes_on(writer):
    with shmq.attach(writer.handle, 0) as reader, shmq.attach(writer.handle, 1) as other:
        writer.put("before")
        with pytest.raises(TypeError, match="pickle"):
            writer.put(threading.Lock())
        writer.put("after")
        assert [reader.get(), reader.get()] == ["before", "after"]
        assert [other.get(), other.get()] == ["before", "after"]
        with pytest.raises(shmq.WouldBlock):
            reader.get_nowait()


def test_a_message_over_the_limit_is_refused_and_the_stream_goes_on(queue_name):
    with shmq.create(2, name=queue_name, chunk_bytes=4096, n_chunks=4, max_message_bytes=10_000) as writer:
        with shmq.attach(writer.handle, 0) as reader, shmq.attach(writer.handle, 1) as other:
            writer.put(b"a" * 9_000)
            with pytest.raises(shmq.MessageTooLarge, match=r"10,0\d\d-byte message exceeds max_message_bytes=10,000"):
                writer.put_bytes(b"b" * 10_000)
            writer.put("small")
            assert reader.get() == b"a" * 9_000 and reader.get() == "small"
            assert other.get() == b"a" * 9_000 and other.get() == "small"


def test_a_queue_that_does_not_fit_dev_shm_raises_shm_full_with_the_fixes(tmp_path, queue_name):
    mountpoint = tmp_path / "tiny-shm"
    mountpoint.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mountpoint)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.strip()}")
    try:
        with pytest.raises(shmq.ShmFull) as raised:
            shmq.create(1, name=queue_name, chunk_bytes=1 << 20, n_chunks=4, shm_dir=str(mountpoint))
        message = str(raised.value)
        size = L.segment_bytes(1, 4 * L.frame_stride(1 << 20), L.DEFAULT_FLIGHT_ENTRIES)
        assert f"no room for a {size:,}-byte" in message and "bytes free" in message
        assert "--shm-size" in message and "--ipc=host" in message and "medium: Memory" in message
        assert os.listdir(mountpoint) == []  # nothing half-made is left
    finally:
        subprocess.run(["umount", str(mountpoint)], check=False)


def test_the_core_never_imports_telemetry():
    code = ("import sys, shmq, shmq.stats, shmq.remote, shmq.cli, shmq.cli.admin;"
            "assert not [m for m in sys.modules if m.startswith(('telemetry', 'shmq.telemetry'))], 'telemetry imported'")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_a_remote_endpoint_that_cannot_be_bound_raises_its_error_and_leaves_no_segment():
    before = set(os.listdir("/dev/shm"))
    with pytest.raises(Exception, match="256.0.0.1") as raised:
        shmq.create(1, n_remote_readers=1, remote_bind="tcp://256.0.0.1:1")
    assert not isinstance(raised.value, BufferError)  # the ring's export must not keep the mapping open
    assert set(os.listdir("/dev/shm")) - before == set()


class _StrSerializer:
    """A broken serializer: its frames are text, not bytes."""

    raw = False

    def encode(self, obj) -> list:
        return [str(obj)]

    def decode(self, stream, buffers):
        return bytes(stream).decode()


def test_a_serializer_that_returns_no_buffer_fails_cleanly_and_the_stream_goes_on(queue_name):
    with shmq.create(1, name=queue_name, serializer=_StrSerializer(), chunk_bytes=1024, n_chunks=4) as writer:
        with shmq.attach(writer.handle, 0) as reader:
            with pytest.raises(TypeError, match="bytes-like"):
                writer.put("text")
            writer.put_bytes(b"after")  # the failed put took no room
            assert reader.get_bytes(timeout=5) == b"after"


class _NoDecode:
    """Half a serializer: it says what it is and encodes, but cannot decode."""

    raw = False

    def encode(self, obj) -> list:
        return [repr(obj).encode()]


def test_an_object_that_is_not_a_serializer_is_refused_by_name_and_the_reader_slot_stays_free(queue_name):
    with shmq.create(1, name=queue_name, chunk_bytes=1024, n_chunks=4) as writer:
        for bad in (_NoDecode(), object(), "json"):
            with pytest.raises(shmq.BadQueueArgument, match="unknown serializer"):
                shmq.attach(writer.handle, 0, serializer=bad)
            with pytest.raises(shmq.BadQueueArgument, match="unknown serializer"):
                shmq.create(1, name=f"{queue_name}-x", serializer=bad)
        with shmq.attach(writer.handle, 0) as reader:  # nothing was claimed, and the segment still maps
            writer.put("fine")
            assert reader.get(timeout=5) == "fine"


def test_stats_open_finds_a_queue_by_its_name_and_refuses_an_unknown_or_ambiguous_one():
    shm_dir = tempfile.mkdtemp(prefix="stats-open-", dir="/dev/shm")  # tmpfs, and only this test's segments
    try:
        with open(os.path.join(shm_dir, PREFIX + secrets.token_hex(12)), "wb") as garbage:
            garbage.write(secrets.token_bytes(4096))  # an unreadable segment beside them is passed over
        with shmq.create(1, name="engine", n_chunks=4, chunk_bytes=256, shm_dir=shm_dir) as writer:
            with shmq.stats.open("engine", shm_dir=shm_dir) as view:
                assert view.shm_name == writer.handle.shm_name and view.snapshot().ring_bytes == 4 * L.frame_stride(256)
            with pytest.raises(shmq.QueueNotFound, match="no shmq segment .* holds a queue named 'nothing'"):
                shmq.stats.open("nothing", shm_dir=shm_dir)
            with shmq.create(1, name="engine", n_chunks=4, chunk_bytes=256, shm_dir=shm_dir):
                with pytest.raises(shmq.QueueNotFound, match="2 segments hold a queue named 'engine'"):
                    shmq.stats.open("engine", shm_dir=shm_dir)
    finally:
        shutil.rmtree(shm_dir, ignore_errors=True)
