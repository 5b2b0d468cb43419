"""vLLM's MessageQueue as a benchmark peer, beside shmq's drop-in for it (shmq.vllm.MessageQueue).

Both rows run the same code: the class is the only difference, so the table shows what switching
with SHMQ_VLLM=1 changes. The queue is made as vLLM's executor makes its broadcast (every reader
local, vLLM's default ring of 10 chunks of 24 MiB) before the readers fork; each reader opens its
end with create_from_handle, and wait_until_ready is the collective handshake, so nothing is lost.
"""

from __future__ import annotations

import importlib

from .peers import Link, Peer, Receiver, Sender, fields
from .workloads import Workload


class _MessageQueuePeer(Peer):
    #: "module:attribute" of the MessageQueue class this row runs
    queue_class = ""

    def open(self, workload: Workload, workdir: str) -> Link:
        module, name = self.queue_class.split(":")
        cls = getattr(importlib.import_module(module), name)
        return _MessageQueueLink(cls(workload.n_readers, workload.n_readers))


class VllmPeer(_MessageQueuePeer):
    label = "vLLM MessageQueue"
    module = "vllm"
    queue_class = "vllm.distributed.device_communicators.shm_broadcast:MessageQueue"


class ShmqVllmPeer(_MessageQueuePeer):
    """What SHMQ_VLLM=1 puts in vLLM's place; runs without vLLM installed."""

    label = "shmq.vllm MessageQueue"
    is_shmq = True
    queue_class = "shmq.vllm:MessageQueue"


class _MessageQueueLink(Link):
    def __init__(self, writer) -> None:
        self._writer = writer
        self._handle = writer.export_handle()

    def sender(self) -> Sender:
        return _MessageQueueSender(self._writer)

    def receiver(self, index: int) -> Receiver:
        return _MessageQueueReceiver(type(self._writer).create_from_handle(self._handle, index))

    def close(self) -> None:
        self._writer.shutdown()


class _MessageQueueSender(Sender):
    def __init__(self, writer) -> None:
        writer.wait_until_ready()  # returns once every reader has connected
        self._enqueue = writer.enqueue

    def send(self, message) -> None:
        self._enqueue(message)


class _MessageQueueReceiver(Receiver):
    def __init__(self, reader) -> None:
        reader.wait_until_ready()
        self._reader = reader

    def take(self, timeout: float):
        try:
            return fields(self._reader.dequeue(timeout=timeout))
        except TimeoutError:
            return None

    def close(self) -> None:
        self._reader.shutdown()


def peer_rows(*, vllm: bool) -> list[Peer]:
    """The two MessageQueue rows, when switched on (vLLM's reports itself skipped where vllm is missing)."""
    return [VllmPeer(), ShmqVllmPeer()] if vllm else []


def cadence_peers() -> list[Peer]:
    return peer_rows(vllm=True)
