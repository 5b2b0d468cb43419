"""Create, open, list and remove the POSIX shared-memory objects that hold queues.

On Linux a POSIX shm object is a file in /dev/shm, so this module opens it there
directly: that gives mode 0600 at creation, an owner check on open, and
``posix_fallocate`` to find a full /dev/shm at creation rather than as SIGBUS later.
"""

from __future__ import annotations

import ctypes
import dataclasses
import errno
import mmap
import os
import secrets
import shutil
import time

from . import layout as L
from . import procs, sync
from . import _ring
from .errors import BadQueueArgument, LayoutMismatch, ShmFull, ShmqError

SHM_DIR = "/dev/shm"

PREFIX = "shmq-"


class QueueNotFound(ShmqError, FileNotFoundError):
    """No shared-memory object by that name: the handle is wrong or the writer has closed."""


class ForeignSegment(ShmqError, PermissionError):
    """The shared-memory object belongs to another user."""


def new_shm_name() -> str:
    return PREFIX + secrets.token_hex(12)


class Segment:
    """One mapped queue segment. ``words`` is the 8-byte-word view every shared field goes through."""

    def __init__(self, shm_name: str, path: str, mm: mmap.mmap, writable: bool) -> None:
        self.shm_name = shm_name
        self.path = path
        self._mm = mm
        self.writable = writable
        self.buf = memoryview(mm)
        self.readonly = self.buf.toreadonly()  # what leases hand out: views the caller cannot write through
        self._rings: list[_ring.Ring] = []
        self.words = self.buf.cast("Q")
        if writable:
            probe = ctypes.c_char.from_buffer(mm)  # a buffer export; dropped at once so close() works
            self.address = ctypes.addressof(probe)
            del probe
        else:
            self.address = 0
        w = self.words
        self.n_readers = w[L.word(L.OFF_N_READERS)]  # reader records: the local readers', then the remote slots
        self.n_remote_readers = w[L.word(L.OFF_N_REMOTE_READERS)]
        self.ring_bytes = w[L.word(L.OFF_RING_BYTES)]
        self.frame_bytes = w[L.word(L.OFF_FRAME_BYTES)]
        self.piece_bytes = w[L.word(L.OFF_PIECE_BYTES)]
        self.flags = w[L.word(L.OFF_FLAGS)]
        self.max_message_bytes = w[L.word(L.OFF_MAX_MESSAGE_BYTES)]
        self.flight_entries = w[L.word(L.OFF_FLIGHT_ENTRIES)]
        self.creator_pid = w[L.word(L.OFF_CREATOR_PID)]
        self.creator_start = w[L.word(L.OFF_CREATOR_START)]
        self.created_ns = w[L.word(L.OFF_CREATED_NS)]
        self.instance_id = bytes(self.buf[L.OFF_INSTANCE_ID : L.OFF_INSTANCE_ID + L.INSTANCE_ID_BYTES]).hex()
        self.name = L.decode_text(self.buf[L.OFF_NAME : L.OFF_NAME + L.NAME_BYTES])
        self.endpoint = L.decode_text(self.buf[L.OFF_ENDPOINT : L.OFF_ENDPOINT + L.ENDPOINT_BYTES])

    # -- creation ---------------------------------------------------------------
    @classmethod
    def create(cls, *, name: str, n_readers: int, ring_bytes: int, frame_bytes: int, piece_bytes: int, flags: int,
               max_message_bytes: int, flight_entries: int, n_remote_readers: int = 0, endpoint: str = "",
               shm_dir: str = SHM_DIR) -> Segment:
        _check_size("n_readers", n_readers, 0, L.MAX_READERS)
        _check_size("n_remote_readers", n_remote_readers, 0, L.MAX_READERS - n_readers)
        n_readers += n_remote_readers
        check_geometry(ring_bytes, frame_bytes, piece_bytes, BadQueueArgument)
        _check_size("max_message_bytes", max_message_bytes, 0, _MAX_SIZE)
        _check_flight_entries(flight_entries)
        name_field = L.encode_text(name, L.NAME_BYTES, "queue name")
        endpoint_field = L.encode_text(endpoint, L.ENDPOINT_BYTES, "endpoint")
        size = L.segment_bytes(n_readers, ring_bytes, flight_entries)
        if size > shutil.disk_usage(shm_dir).total:  # posix_fallocate would refuse it too, after creating the file
            raise _no_room(errno.EFBIG, size, shm_dir)
        shm_name = new_shm_name()
        path = os.path.join(shm_dir, shm_name)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            _allocate(fd, size, shm_dir)
            mm = mmap.mmap(fd, size)
        except BaseException:
            os.unlink(path)
            raise
        finally:
            os.close(fd)
        w = memoryview(mm).cast("Q")
        w[L.word(L.OFF_MAGIC)] = L.MAGIC_WORD
        w[L.word(L.OFF_SEGMENT_BYTES)] = size
        w[L.word(L.OFF_CREATOR_PID)] = os.getpid()
        w[L.word(L.OFF_CREATOR_START)] = procs.start_time(os.getpid()) or 0
        w[L.word(L.OFF_CREATOR_UID)] = os.getuid()
        w[L.word(L.OFF_CREATED_NS)] = time.time_ns()
        w[L.word(L.OFF_N_READERS)] = n_readers
        w[L.word(L.OFF_N_REMOTE_READERS)] = n_remote_readers
        w[L.word(L.OFF_RING_BYTES)] = ring_bytes
        w[L.word(L.OFF_FRAME_BYTES)] = frame_bytes
        w[L.word(L.OFF_PIECE_BYTES)] = piece_bytes
        w[L.word(L.OFF_FLAGS)] = flags
        w[L.word(L.OFF_MAX_MESSAGE_BYTES)] = max_message_bytes
        w[L.word(L.OFF_FLIGHT_ENTRIES)] = flight_entries
        mm[L.OFF_INSTANCE_ID : L.OFF_INSTANCE_ID + L.INSTANCE_ID_BYTES] = secrets.token_bytes(L.INSTANCE_ID_BYTES)
        mm[L.OFF_NAME : L.OFF_NAME + L.NAME_BYTES] = name_field
        mm[L.OFF_ENDPOINT : L.OFF_ENDPOINT + L.ENDPOINT_BYTES] = endpoint_field
        # Everything above must be visible before the version says "ready".
        sync.full_fence()
        w[L.word(L.OFF_VERSION)] = L.LAYOUT_VERSION
        w.release()
        return cls(shm_name, path, mm, writable=True)

    @property
    def n_local_readers(self) -> int:
        """The readers that attach to the segment itself (reader records 1..n_local_readers)."""
        return self.n_readers - self.n_remote_readers

    def set_endpoint(self, endpoint: str) -> None:
        self.buf[L.OFF_ENDPOINT : L.OFF_ENDPOINT + L.ENDPOINT_BYTES] = L.encode_text(endpoint, L.ENDPOINT_BYTES, "endpoint")
        self.endpoint = endpoint

    # -- opening ----------------------------------------------------------------
    @classmethod
    def open(cls, shm_name: str, *, writable: bool, shm_dir: str = SHM_DIR, ready_timeout_s: float = 5.0) -> Segment:
        if not shm_name.startswith(PREFIX) or "/" in shm_name or shm_name in (".", ".."):
            raise QueueNotFound(f"{shm_name!r} is not the name of a shmq shared-memory object (they start with "
                                f"{PREFIX!r}): the handle is wrong")
        path = os.path.join(shm_dir, shm_name)
        try:
            fd = os.open(path, (os.O_RDWR if writable else os.O_RDONLY) | os.O_NOFOLLOW)
        except FileNotFoundError:
            raise QueueNotFound(f"no shared-memory object {shm_name!r} in {shm_dir}: the handle is wrong "
                                "or its writer has closed") from None
        except PermissionError:
            st = os.stat(path)
            raise ForeignSegment(f"{path} (owner uid {st.st_uid}, mode {st.st_mode & 0o777:o}) cannot be opened "
                                 f"{'for writing' if writable else 'for reading'} by uid {os.getuid()}: run as the "
                                 "queue's user") from None
        except OSError as e:  # a directory, a symlink, ...
            raise QueueNotFound(f"{path} cannot be opened as a queue segment: {e.strerror}") from None
        try:
            st = os.fstat(fd)
            if st.st_uid != os.getuid():
                raise ForeignSegment(f"{path} belongs to uid {st.st_uid}, not to this process's uid {os.getuid()}")
            if st.st_size < L.HEADER_BYTES:
                raise LayoutMismatch(f"{path} is {st.st_size} bytes, smaller than a shmq header "
                                     f"({L.HEADER_BYTES} bytes): not a shmq segment")
            mm = mmap.mmap(fd, st.st_size, prot=mmap.PROT_READ | (mmap.PROT_WRITE if writable else 0))
        finally:
            os.close(fd)
        try:
            _validate(mm, path, st.st_size, ready_timeout_s)
        except BaseException:
            mm.close()
            raise
        return cls(shm_name, path, mm, writable=writable)

    def ring(self, participant: int) -> _ring.Ring:
        """Participant `participant`'s C view of the ring, the cursors and its record, for the hot
        path (shmq/_ring.c); close() releases it."""
        ring = _ring.Ring(self.buf, ring_offset=L.ring_offset(self.n_readers), ring_bytes=self.ring_bytes,
                          frame_bytes=self.frame_bytes, writer_cursor_offset=L.OFF_WRITER_CURSOR,
                          writer_position_offset=L.OFF_WRITER_POSITION, reader_parked_offset=L.OFF_READER_PARKED,
                          n_readers=self.n_readers, writer_parked_offset=L.OFF_WRITER_PARKED,
                          writer_wake_offset=L.OFF_WRITER_WAKE)
        ring.bind_record(L.record_offset(participant), bool(self.flags & L.FLAG_STATS), L.RECORD_FIELDS,
                         L.HIST_FINITE_BUCKETS)
        if self.flight_entries:
            ring.bind_flight(self.flight_offset(participant), self.flight_entries)
        self._rings.append(ring)
        return ring

    def flight_offset(self, participant: int) -> int:
        return L.flight_offset(self.n_readers, self.ring_bytes, self.flight_entries, participant)

    # -- closing ----------------------------------------------------------------
    def close(self) -> None:
        if self._mm.closed:
            return
        for ring in self._rings:  # each holds a buffer export, which would keep the mapping open
            ring.release()
        self.words.release()
        self.readonly.release()
        self.buf.release()
        try:
            self._mm.close()
        except BufferError:
            pass  # views of it live on (a lease's arrays, ZeroMQ's frames): unmapped when they are collected

    @property
    def closed(self) -> bool:
        return self._mm.closed

    def unlink(self) -> None:
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass


_MAX_SIZE = 1 << 48  # past any /dev/shm; keeps every offset computation inside 64 bits


def _check_size(what: str, value, low: int, high: int) -> None:
    if type(value) is not int:  # bool is an int subclass, and so are IntEnums: only a plain int is a size
        raise BadQueueArgument(f"{what} must be an int, got {type(value).__name__} {value!r}")
    if not low <= value <= high:
        raise BadQueueArgument(f"{what} must be in {low:,}..{high:,}, got {value:,}")


def check_geometry(ring_bytes, frame_bytes, piece_bytes, error: type[ShmqError]) -> None:
    """A ring of `ring_bytes` (FRAME_ALIGN-aligned), frames of at most `frame_bytes` payload, at most half
    the ring (shmq/layout.py: max_frame_bytes), and pieces of `piece_bytes`, at most a frame; `error`
    names the bad argument or header field."""
    if type(ring_bytes) is not int or type(frame_bytes) is not int or type(piece_bytes) is not int:
        raise error(f"ring_bytes, frame_bytes and piece_bytes must be ints, got {ring_bytes!r}, {frame_bytes!r} "
                    f"and {piece_bytes!r}")
    if not L.MIN_RING_BYTES <= ring_bytes <= _MAX_SIZE or ring_bytes % L.FRAME_ALIGN:
        raise error(f"ring_bytes must be a multiple of {L.FRAME_ALIGN} in {L.MIN_RING_BYTES:,}..{_MAX_SIZE:,}, "
                    f"got {ring_bytes:,}")
    if not L.MIN_FRAME_BYTES <= frame_bytes <= L.max_frame_bytes(ring_bytes):
        raise error(f"frame_bytes must be in {L.MIN_FRAME_BYTES}..{L.max_frame_bytes(ring_bytes):,} (half the ring "
                    f"less a frame header) for ring_bytes={ring_bytes:,}, got {frame_bytes:,}")
    if not L.MIN_FRAME_BYTES <= piece_bytes <= frame_bytes:
        raise error(f"piece_bytes must be in {L.MIN_FRAME_BYTES}..{frame_bytes:,} (frame_bytes), got {piece_bytes:,}")


def _check_flight_entries(value) -> None:
    _check_size("flight_entries", value, 0, 1 << 20)
    if value & (value - 1):
        raise BadQueueArgument(f"flight_entries must be 0 (no flight recorder) or a power of two, got {value:,}")


def _allocate(fd: int, size: int, shm_dir: str) -> None:
    """Reserve the pages now: a full tmpfs otherwise shows up later as SIGBUS on first touch."""
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as e:
        if e.errno not in (errno.ENOSPC, errno.EFBIG):
            raise
        raise _no_room(e.errno, size, shm_dir) from None


def _no_room(errno_: int, size: int, shm_dir: str) -> ShmFull:
    free = shutil.disk_usage(shm_dir).free
    return ShmFull(
        errno_,
        f"{shm_dir} has no room for a {size:,}-byte queue segment ({free:,} bytes free). "
        "Shrink the queue (ring_bytes) or give the container more shared memory: "
        "Docker --shm-size=1g or --ipc=host, or in Kubernetes an emptyDir with medium: Memory "
        "mounted at /dev/shm.",
    )


def _validate(mm: mmap.mmap, path: str, file_size: int, ready_timeout_s: float) -> None:
    """Magic, then version (waiting while it is 0: the creator writes it last), then sizes."""
    words = memoryview(mm).cast("Q")
    try:
        magic = words[L.word(L.OFF_MAGIC)]
        if magic != L.MAGIC_WORD:
            raise LayoutMismatch(f"{path} is not a shmq segment: magic is {magic.to_bytes(8, 'little')!r}, "
                                 f"expected {L.MAGIC!r}")
        deadline = time.monotonic() + ready_timeout_s
        while (version := words[L.word(L.OFF_VERSION)]) == 0:
            if time.monotonic() > deadline:
                raise LayoutMismatch(f"{path} was never made ready: its creator wrote no version within "
                                     f"{ready_timeout_s} s")
            time.sleep(0.001)
        sync.full_fence()  # reads of the fields below stay after the version's
        if version != L.LAYOUT_VERSION:
            raise LayoutMismatch(f"{path} has layout version {version}; this shmq reads version {L.LAYOUT_VERSION}")
        declared = words[L.word(L.OFF_SEGMENT_BYTES)]
        n_readers = words[L.word(L.OFF_N_READERS)]
        n_remote_readers = words[L.word(L.OFF_N_REMOTE_READERS)]
        ring_bytes = words[L.word(L.OFF_RING_BYTES)]
        frame_bytes = words[L.word(L.OFF_FRAME_BYTES)]
        piece_bytes = words[L.word(L.OFF_PIECE_BYTES)]
        flight_entries = words[L.word(L.OFF_FLIGHT_ENTRIES)]
        if not 0 <= n_remote_readers <= n_readers <= L.MAX_READERS or flight_entries & (flight_entries - 1) \
                or flight_entries > _MAX_SIZE:
            raise LayoutMismatch(f"{path} has a corrupt header: n_readers={n_readers}, n_remote_readers="
                                 f"{n_remote_readers}, flight_entries={flight_entries}")
        try:
            check_geometry(ring_bytes, frame_bytes, piece_bytes, LayoutMismatch)
        except LayoutMismatch as e:
            raise LayoutMismatch(f"{path} has a corrupt header: {e}") from None
        expected = L.segment_bytes(n_readers, ring_bytes, flight_entries)
        if declared != expected or file_size != expected:
            raise LayoutMismatch(f"{path} has a corrupt header: it declares {declared:,} bytes, its geometry "
                                 f"needs {expected:,} bytes, and the object is {file_size:,} bytes")
    finally:
        words.release()


@dataclasses.dataclass(frozen=True)
class SegmentInfo:
    """One entry of list_segments()."""

    shm_name: str  #: the object's name in /dev/shm
    name: str  #: the queue's logical name ("" if unreadable)
    creator_pid: int  #: pid of the process that created it (0 if unreadable)
    creator_alive: bool  #: whether that process still runs
    size_bytes: int  #: size of the object
    error: str = ""  #: why the header could not be read, if it could not
    shmq_magic: bool = False  #: unreadable, but begins with shmq's magic: another layout version, or corrupt


def list_segments(shm_dir: str = SHM_DIR) -> list[SegmentInfo]:
    """Every shmq segment in `shm_dir`, readable or not."""
    found = []
    try:
        names = sorted(n for n in os.listdir(shm_dir) if n.startswith(PREFIX))
    except FileNotFoundError:
        return []
    for shm_name in names:
        path = os.path.join(shm_dir, shm_name)
        try:
            size = os.stat(path).st_size
            seg = Segment.open(shm_name, writable=False, shm_dir=shm_dir, ready_timeout_s=0)
        except FileNotFoundError:
            continue  # unlinked while we looked
        except (ShmqError, OSError) as e:
            found.append(SegmentInfo(shm_name, "", 0, False, 0, error=str(e),
                                     shmq_magic=isinstance(e, LayoutMismatch) and _begins_with_magic(path)))
            continue
        try:
            alive = procs.is_alive(seg.creator_pid, seg.creator_start)
            found.append(SegmentInfo(shm_name, seg.name, seg.creator_pid, alive, size))
        finally:
            seg.close()
    return found


def _begins_with_magic(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(len(L.MAGIC)) == L.MAGIC
    except OSError:
        return False


def cleanup(shm_dir: str = SHM_DIR) -> list[str]:
    """Unlink the segments whose creator has died, and the shmq segments this version cannot read
    (another layout version, never made ready, or corrupt) that no process maps or holds open.
    Returns their shm names."""
    removed = []
    for info in list_segments(shm_dir):
        path = os.path.join(shm_dir, info.shm_name)
        orphan = info.shmq_magic and not procs.in_use(path) if info.error else not info.creator_alive
        if orphan:
            try:
                os.unlink(path)
                removed.append(info.shm_name)
            except FileNotFoundError:
                pass
    return removed
