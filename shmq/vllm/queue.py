"""vLLM 0.33's ``MessageQueue`` and ``Handle``, carried by shmq.

vLLM's executors, ``parallel_state`` and the Ray executor use one queue per direction: a
broadcast from the engine to its workers, one response queue per worker, one broadcaster per
process group. This class keeps their interface and semantics (constructor, handle, collective
``wait_until_ready``, ``enqueue``/``dequeue`` with ``TimeoutError``, ``shutdown`` waking a blocked
reader with ``RuntimeError``) and replaces the transport: local readers read shmq's ring, remote
readers (``n_local_reader < n_reader``) shmq's ZeroMQ path. So a dead peer raises within a second
naming its pid, a reader parks instead of spinning for a second after each message, and
``shmq top``, the exporter and the watchdog see each queue by its role.

Only ``shmq.vllm`` imports vllm or torch, and only where vLLM's own helpers are needed (process
groups, the node's address): the queue itself runs without vLLM installed.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import sys
from typing import Any

import shmq
from shmq.errors import BadQueueArgument, QueueClosed, QueueTimeout, ShmqError

log = logging.getLogger(__name__)

#: vLLM's default period for "No available shared memory broadcast block found" (its
#: VLLM_RINGBUFFER_WARNING_INTERVAL); shmq's warning at that period says who blocks the queue.
DEFAULT_WARNING_INTERVAL_S = 60
#: How many frames above MessageQueue() to look for the vLLM object creating it, to name the queue.
_CALLER_DEPTH = 6


class Cancelled(QueueClosed, RuntimeError):
    """dequeue() on a queue whose shutdown() was called (vLLM raises RuntimeError("cancelled"))."""


class WrongEnd(ShmqError, RuntimeError):
    """enqueue() on a reader's end, or dequeue() on the writer's."""


@dataclasses.dataclass
class Handle:
    """What a reader needs to open a queue; picklable, like vLLM's Handle, whose fields vLLM's executors read.

    `queue` is the shmq handle. vLLM's fields keep their meaning: `buffer_handle` is set when the
    queue has local readers, `remote_subscribe_addr` when it has remote ones; shmq needs no local
    sockets, so `local_subscribe_addr` and `local_notify_addr` stay None.
    """

    local_reader_ranks: list[int] = dataclasses.field(default_factory=list)
    buffer_handle: str | None = None
    local_subscribe_addr: str | None = None
    local_notify_addr: str | None = None
    remote_subscribe_addr: str | None = None
    remote_addr_ipv6: bool = False
    tensor_arena_handle: None = None
    queue: str = ""


def _warning_interval() -> float:
    """vLLM's VLLM_RINGBUFFER_WARNING_INTERVAL, read as vLLM reads it."""
    raw = os.environ.get("VLLM_RINGBUFFER_WARNING_INTERVAL", str(DEFAULT_WARNING_INTERVAL_S))
    try:
        seconds = int(raw)
    except ValueError:
        raise BadQueueArgument(f"VLLM_RINGBUFFER_WARNING_INTERVAL must be whole seconds, got {raw!r}") from None
    if seconds <= 0:
        raise BadQueueArgument(f"VLLM_RINGBUFFER_WARNING_INTERVAL must be > 0, got {seconds}")
    return seconds


def _role_name() -> str:
    """The queue's name from the vLLM object that creates it: its executor, a worker, or a process group.

    vLLM passes no name, and ``shmq top`` or an alert naming "vllm-worker-3-response" says what
    "queue-8812" cannot. Falls back to the pid for a queue made outside those objects.
    """
    frame = sys._getframe(2)
    for _ in range(_CALLER_DEPTH):
        if frame is None:
            break
        owner = frame.f_locals.get("self")
        if owner is not None and not isinstance(owner, MessageQueue):
            kind = type(owner).__name__
            if isinstance(getattr(owner, "unique_name", None), str):  # a GroupCoordinator: "tp:0", "world:0"
                return f"vllm-{owner.unique_name.replace(':', '')}-broadcast"
            if "Executor" in kind:
                return "vllm-rpc-broadcast"
            if "Worker" in kind and isinstance(getattr(owner, "rank", None), int):
                return f"vllm-worker-{owner.rank}-response"
        frame = frame.f_back
    return f"vllm-queue-{os.getpid()}"


def _remote_bind(connect_ip: str | None) -> tuple[str, bool]:
    """The endpoint remote readers connect to, on vLLM's choice of address when none is given."""
    if not connect_ip:
        from vllm.utils.network_utils import get_ip

        connect_ip = get_ip()
    ipv6 = ":" in connect_ip
    host = f"[{connect_ip}]" if ipv6 else connect_ip
    return f"tcp://{host}:*", ipv6


class MessageQueue:
    """One writer, `n_reader` readers; the first `n_local_reader` of them on this machine."""

    def __init__(self, n_reader: int, n_local_reader: int, local_reader_ranks: list[int] | None = None,
                 max_chunk_bytes: int = 24 << 20, max_chunks: int = 10, connect_ip: str | None = None,
                 enable_shm_tensor_arena: bool = False, *, name: str | None = None) -> None:
        # enable_shm_tensor_arena is accepted and has nothing to do: vLLM's arena saves copying large
        # tensors through its pickle stream, and shmq already copies a tensor's bytes once into the
        # ring and once out (shmq.serialization).
        if local_reader_ranks is None:
            local_reader_ranks = list(range(n_local_reader))
        if not 0 <= n_local_reader <= n_reader or len(local_reader_ranks) != n_local_reader:
            raise BadQueueArgument(
                f"MessageQueue(n_reader={n_reader}, n_local_reader={n_local_reader}, local_reader_ranks="
                f"{local_reader_ranks}): need 0 <= n_local_reader <= n_reader and one rank per local reader")
        if max_chunk_bytes <= 0 or max_chunks <= 0:
            raise BadQueueArgument(f"max_chunk_bytes and max_chunks must be > 0, got {max_chunk_bytes}, {max_chunks}")
        self.n_local_reader = n_local_reader
        self.n_remote_reader = n_reader - n_local_reader
        self.local_reader_rank = -1
        self.shutting_down = False
        # Not vLLM's max_chunks x max_chunk_bytes (240 MiB for the engine's broadcast): shmq's default ring,
        # whose frames take messages of every size up to a quarter of it and a page, and stream larger ones
        # through it in pieces instead of leaving shared memory as in vLLM.
        remote, ipv6 = {}, False
        if self.n_remote_reader:
            bind, ipv6 = _remote_bind(connect_ip)
            remote = {"n_remote_readers": self.n_remote_reader, "remote_bind": bind}
        self._writer = shmq.create(
            n_local_reader, name=name or _role_name(), warn_after_s=_warning_interval(), **remote)
        self._reader = None
        queue = self._writer.handle
        self.handle = Handle(
            local_reader_ranks=list(local_reader_ranks), buffer_handle=str(queue),
            remote_subscribe_addr=queue.endpoint or None, remote_addr_ipv6=ipv6, queue=str(queue))
        log.debug("shmq queue %r for vLLM: %s", queue.name, self.handle)

    @property
    def queue(self) -> shmq.Writer | shmq.Reader | shmq.remote.RemoteReader:
        """The shmq end underneath, for its stats or its lag."""
        return self._writer if self._writer is not None else self._reader

    def export_handle(self) -> Handle:
        return self.handle

    @staticmethod
    def create_from_handle(handle: Handle, rank: int) -> MessageQueue:
        """A reader's end: local when `rank` is one of the handle's local reader ranks, remote otherwise."""
        if not isinstance(handle, Handle):
            raise shmq.BadHandle(f"expected a shmq.vllm.Handle, got {type(handle).__name__}: was the queue made "
                                 "by vLLM's own MessageQueue in a process without SHMQ_VLLM=1?")
        self = MessageQueue.__new__(MessageQueue)
        self.handle = handle
        self.shutting_down = False
        self._writer = None
        self._indefinite = False
        if rank in handle.local_reader_ranks:
            self.local_reader_rank = handle.local_reader_ranks.index(rank)
            self._reader = shmq.attach(handle.queue, reader=self.local_reader_rank,
                                       warn_after_s=_warning_interval())
        else:
            self.local_reader_rank = -1
            self._reader = shmq.attach_remote(handle.queue)
        return self

    def wait_until_ready(self) -> None:
        """Collective, as in vLLM: the writer returns when every reader is attached; a reader is ready
        once create_from_handle() returned. The writer says every interval who it still waits for."""
        if self._writer is None:
            return
        while True:
            try:
                self._writer.wait_for_readers(timeout=_warning_interval())
                return
            except QueueTimeout as e:
                log.warning("%s", e)

    def enqueue(self, obj: Any, timeout: float | None = None) -> None:
        if self._writer is None:
            raise WrongEnd(f"enqueue() on a reader of queue {self.handle.queue}: only the writer enqueues")
        self._writer.put(obj, timeout=timeout)

    def dequeue(self, timeout: float | None = None, indefinite: bool = False) -> Any:
        """The next message; TimeoutError after `timeout`. `indefinite` waits without the long-wait
        warning (a worker waiting for its next request is idle, not stuck)."""
        reader = self._reader
        if reader is None:
            raise WrongEnd(f"dequeue() on the writer of queue {self.handle.queue}: only readers dequeue")
        if indefinite != self._indefinite and isinstance(reader, shmq.Reader):  # a worker's loop passes the same
            self._indefinite = indefinite
            reader.warn_after_s = math.inf if indefinite else _warning_interval()
        try:
            return reader.get(timeout=timeout)
        except QueueClosed:
            if self.shutting_down:
                raise Cancelled(f"queue {reader.queue_name!r} was shut down") from None
            raise

    def broadcast_object(self, obj: Any = None) -> Any:
        if self._writer is not None:
            self.enqueue(obj)
            return obj
        return self.dequeue()

    def shutdown(self) -> None:
        """Close this end (a remote reader is only cancelled). A reader blocked in dequeue() in another
        thread is woken first and raises Cancelled (a RuntimeError); the writer's readers see the queue
        closed. Idempotent."""
        self.shutting_down = True
        if isinstance(self._reader, shmq.Reader):
            self._reader.close()
        elif self._reader is not None:
            self._reader.cancel()  # a ZeroMQ socket must not close under a get() in another thread
        else:
            self._writer.close()

    @staticmethod
    def create_from_process_group(pg, max_chunk_bytes: int, max_chunks: int, writer_rank: int = 0,
                                  external_writer_handle: Handle | None = None,
                                  blocking: bool = True) -> MessageQueue:
        """Collective: `writer_rank` makes the queue (or joins `external_writer_handle`'s), every rank
        of `pg` (a torch ProcessGroup or vLLM's StatelessProcessGroup) gets its end."""
        import torch.distributed as dist
        from vllm.distributed.parallel_state import in_the_same_node_as

        if isinstance(pg, dist.ProcessGroup):
            group_rank, world_size = dist.get_rank(pg), dist.get_world_size(pg)
            global_writer = dist.get_process_group_ranks(pg)[writer_rank]
        else:
            group_rank, world_size, global_writer = pg.rank, pg.world_size, writer_rank
        same_node = in_the_same_node_as(pg, source_rank=writer_rank)
        if group_rank == writer_rank:
            if external_writer_handle is not None:
                queue = MessageQueue.create_from_handle(external_writer_handle, group_rank)
            else:
                local = [r for r, here in enumerate(same_node) if here and r != writer_rank]
                queue = MessageQueue(world_size - 1, len(local), local, max_chunk_bytes, max_chunks)
            handle = queue.export_handle()
            if isinstance(pg, dist.ProcessGroup):
                dist.broadcast_object_list([handle], src=global_writer, group=pg)
            else:
                pg.broadcast_obj(handle, writer_rank)
        else:
            if isinstance(pg, dist.ProcessGroup):
                received = [None]
                dist.broadcast_object_list(received, src=global_writer, group=pg)
                handle = received[0]
            else:
                handle = pg.broadcast_obj(None, writer_rank)
            queue = MessageQueue.create_from_handle(handle, group_rank)
        if blocking:
            queue.wait_until_ready()
        return queue

    @staticmethod
    def create_from_process_group_single_reader(pg, max_chunk_bytes: int, max_chunks: int, reader_rank: int = 0,
                                                blocking: bool = False) -> tuple[MessageQueue, list[Handle]]:
        """Collective: every rank of `pg` makes a queue to the one reader `reader_rank` (a global rank),
        which gets all their handles (an empty list elsewhere)."""
        import torch.distributed as dist
        from vllm.platforms import current_platform
        from vllm.platforms.interface import get_assigned_physical_gpu_ids

        assigned = get_assigned_physical_gpu_ids()
        local_size = len(assigned) if assigned is not None else current_platform.device_count()
        rank = dist.get_rank()
        same_node = rank // local_size == reader_rank // local_size
        queue = MessageQueue(1, 1 if same_node else 0, max_chunk_bytes=max_chunk_bytes, max_chunks=max_chunks)
        handles = [None] * dist.get_world_size(pg) if rank == reader_rank else None
        dist.gather_object(queue.export_handle(), handles, dst=reader_rank, group=pg)
        if blocking:
            queue.wait_until_ready()
        return queue, handles or []

    def __repr__(self) -> str:
        return f"<shmq.vllm.MessageQueue {self.queue!r}>"
