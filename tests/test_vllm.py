"""shmq.vllm against the real vLLM 0.33: its plugin loader, its process groups, an executor-shaped loop.

Without vllm these tests skip, saying so; .ci/run installs vLLM and sets SHMQ_REQUIRE_VLLM=1, which
turns the skip into a failure, so CI always runs them.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest

import shmq

if os.environ.get("SHMQ_REQUIRE_VLLM") == "1":
    import torch
    import vllm
else:
    torch = pytest.importorskip("torch", reason="needs torch (CPU) and vllm 0.33: see .ci/run")
    vllm = pytest.importorskip("vllm", reason="needs vllm 0.33 (pip install --no-deps vllm==0.33.0): see .ci/run")

from shmq.vllm import Cancelled, Handle, MessageQueue, WrongEnd  # noqa: E402

WORLD = 4  # one writer and three readers, as the process-group test asks
ARRAYS = 10_000
MAX_CHUNK_BYTES = 64 << 10


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_python(code: str, **env) -> subprocess.CompletedProcess:
    """A fresh interpreter, as vLLM starts its processes; run outside the repository so the installed
    package's entry points are the ones found."""
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=120, cwd="/", env={**os.environ, **env})


# -- the plugin -------------------------------------------------------------------------------------------------
_PLUGIN_PROBE = """
    import logging, sys, types
    records = []
    handler = logging.Handler(); handler.emit = records.append
    logging.getLogger("vllm").addHandler(handler); logging.getLogger("vllm").setLevel(logging.INFO)
    # A vLLM module that took the names before plugins load, as a worker's executor module does.
    early = types.ModuleType("vllm._early_binding")
    exec("from vllm.distributed.device_communicators.shm_broadcast import Handle, MessageQueue", early.__dict__)
    sys.modules[early.__name__] = early
    from vllm.plugins import load_general_plugins
    load_general_plugins()
    from shmq.vllm import plugin
    plugin.register()  # a second call changes nothing and logs nothing
    import shmq.vllm
    from vllm.distributed.device_communicators import shm_broadcast
    print(shm_broadcast.MessageQueue is shmq.vllm.MessageQueue, shm_broadcast.Handle is shmq.vllm.Handle,
          early.MessageQueue is shmq.vllm.MessageQueue, early.Handle is shmq.vllm.Handle,
          sum("shmq" in r.getMessage() for r in records))
"""


def test_plugin_replaces_vllms_classes_in_a_fresh_process_only_when_enabled():
    enabled = _run_python(_PLUGIN_PROBE, SHMQ_VLLM="1")
    assert enabled.returncode == 0, enabled.stderr
    assert enabled.stdout.split() == ["True"] * 4 + ["1"], enabled.stdout + enabled.stderr

    disabled = _run_python(_PLUGIN_PROBE, SHMQ_VLLM="")
    assert disabled.returncode == 0, disabled.stderr
    assert disabled.stdout.split() == ["False"] * 4 + ["0"], disabled.stdout


def test_the_vllm_under_test_is_the_supported_release():
    assert vllm.__version__ == "0.33.0"


def test_plugin_leaves_an_unknown_vllm_version_alone():
    result = _run_python("""
        import vllm
        vllm.__version__ = "0.99.0"
        from shmq.vllm import plugin
        from vllm.distributed.device_communicators import shm_broadcast
        print(plugin.register(), shm_broadcast.MessageQueue.__module__)
    """, SHMQ_VLLM="1")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["False", "vllm.distributed.device_communicators.shm_broadcast"]
    assert "0.99.0 is not a version shmq.vllm supports" in result.stderr


# -- process groups: 10,000 arrays to three readers ------------------------------------------------------------
def _arrays(seed: int):
    """The same arrays in every process: mostly small, 1 % larger than max_chunk_bytes."""
    rng = np.random.default_rng(seed)
    for i in range(ARRAYS):
        n = int(rng.integers(80_000, 120_000)) if i % 100 == 7 else int(rng.integers(0, 2_000))
        yield rng.integers(0, 255, n, dtype=np.uint8)


def _group_member(rank: int, port: int, kind: str) -> None:
    if kind == "torch":
        import torch.distributed as dist

        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
        group = dist.group.WORLD
    else:
        from vllm.distributed.utils import StatelessProcessGroup

        group = StatelessProcessGroup.create(host="127.0.0.1", port=port, rank=rank, world_size=WORLD)
    queue = MessageQueue.create_from_process_group(group, MAX_CHUNK_BYTES, 8, writer_rank=0)
    for expected in _arrays(seed=port):
        if rank == 0:
            queue.broadcast_object(expected)
        else:
            received = queue.broadcast_object()
            if not np.array_equal(received, expected):
                raise AssertionError(f"rank {rank}: array of {expected.size} bytes arrived changed")
    if rank == 0:
        queue.enqueue("done")
        time.sleep(0.5)  # the readers read "done" before the segment goes
    else:
        assert queue.dequeue(timeout=30) == "done"


@pytest.mark.timeout(180)
@pytest.mark.parametrize("kind", ["torch", "stateless"])
def test_create_from_process_group_broadcasts_10000_arrays_to_every_rank(children, kind):
    port = _free_port()
    members = [children(_group_member, rank, port, kind) for rank in range(WORLD)]
    for member in members:
        member.join(150)
    assert [m.exitcode for m in members] == [0] * WORLD


# -- tensors ------------------------------------------------------------------------------------------------------
DTYPES = [torch.bfloat16, torch.float16, torch.float32, torch.float64, torch.int8, torch.int64, torch.bool,
          torch.complex64, torch.float8_e4m3fn]


def _tensor(dtype, i: int):
    values = torch.arange(i, i + 60, dtype=torch.float32).reshape(3, 4, 5) % 7
    return values.to(dtype)


def _tensor_reader(handle: Handle, cycles: int) -> None:
    queue = MessageQueue.create_from_handle(handle, 0)
    kept = []
    for i in range(cycles):
        for dtype in DTYPES:
            tensor = queue.dequeue(timeout=30)
            assert tensor.dtype == dtype and tensor.shape == (3, 4, 5)
            kept.append((i, dtype, tensor))
    for i, dtype, tensor in kept:  # after the ring has cycled many times
        if not torch.equal(tensor.view(torch.uint8), _tensor(dtype, i).view(torch.uint8)):
            raise AssertionError(f"{dtype} tensor {i} changed after the ring cycled")
    kept[0][2].add_(0)  # private and writable
    queue.dequeue(timeout=30)


@pytest.mark.timeout(60)
def test_tensors_of_every_dtype_arrive_unchanged_after_the_ring_cycles(children):
    writer = MessageQueue(1, 1, max_chunk_bytes=4096, max_chunks=4)
    cycles = 20  # 180 tensors through 4 slots
    reader = children(_tensor_reader, writer.export_handle(), cycles)
    writer.wait_until_ready()
    for i in range(cycles):
        for dtype in DTYPES:
            writer.enqueue(_tensor(dtype, i), timeout=30)
    writer.enqueue("end", timeout=30)
    reader.join(30)
    assert reader.exitcode == 0
    writer.shutdown()


# -- mixed local and remote readers ---------------------------------------------------------------------------
def _mixed_reader(handle: Handle, rank: int, count: int) -> None:
    queue = MessageQueue.create_from_handle(handle, rank)
    assert isinstance(queue.queue, shmq.Reader) == (rank in handle.local_reader_ranks)
    queue.wait_until_ready()
    for i in range(count):
        message = queue.dequeue(timeout=30)
        if message != {"step": i, "tokens": list(range(i % 50))}:
            raise AssertionError(f"rank {rank}: message {i} was {message!r}")


@pytest.mark.timeout(60)
def test_local_and_remote_readers_get_the_same_stream(children):
    writer = MessageQueue(3, 2, local_reader_ranks=[1, 2], connect_ip="127.0.0.1")
    handle = writer.export_handle()
    assert handle.remote_subscribe_addr.startswith("tcp://127.0.0.1:")
    count = 2_000
    readers = [children(_mixed_reader, handle, rank, count) for rank in (1, 2, 3)]  # rank 3 is remote
    writer.wait_until_ready()
    for i in range(count):
        writer.enqueue({"step": i, "tokens": list(range(i % 50))}, timeout=30)
    for reader in readers:
        reader.join(30)
    assert [r.exitcode for r in readers] == [0, 0, 0]
    writer.shutdown()


@pytest.mark.timeout(60)
def test_a_queue_with_only_remote_readers_reaches_them_all(children):
    # create_from_process_group_single_reader across nodes: the writer has no reader on its own node.
    writer = MessageQueue(2, 0, connect_ip="127.0.0.1")
    handle = writer.export_handle()
    assert handle.local_reader_ranks == [] and writer.queue.handle.n_readers == 0
    count = 2_000
    readers = [children(_mixed_reader, handle, rank, count) for rank in (0, 1)]
    writer.wait_until_ready()
    for i in range(count):
        writer.enqueue({"step": i, "tokens": list(range(i % 50))}, timeout=30)
    for reader in readers:
        reader.join(30)
    assert [r.exitcode for r in readers] == [0, 0]
    writer.shutdown()


# -- shutdown, wrong ends, dead workers ------------------------------------------------------------------------
def test_shutdown_wakes_a_reader_blocked_in_another_thread():
    writer = MessageQueue(2, 2)
    reader = MessageQueue.create_from_handle(writer.export_handle(), 0)
    laggard = MessageQueue.create_from_handle(writer.export_handle(), 1)
    outcome = []

    def blocked():
        try:
            reader.dequeue(indefinite=True)
        except BaseException as e:
            outcome.append(e)

    thread = threading.Thread(target=blocked)
    thread.start()
    time.sleep(0.3)
    assert not outcome  # it is blocked
    reader.shutdown()
    thread.join(2)
    assert len(outcome) == 1 and isinstance(outcome[0], Cancelled)
    assert isinstance(outcome[0], RuntimeError) and isinstance(outcome[0], shmq.ShmqError)
    with pytest.raises(WrongEnd):
        reader.enqueue("x")
    with pytest.raises(WrongEnd):
        writer.dequeue()
    try:
        with pytest.raises(TimeoutError):  # the laggard never reads: the ring fills (16 MiB of small frames)
            for i in range(1_000_000):
                writer.enqueue(i, timeout=0.1)
    finally:
        laggard.shutdown()
        writer.shutdown()


def test_bad_arguments_are_named():
    with pytest.raises(shmq.BadQueueArgument, match="one rank per local reader"):
        MessageQueue(4, 2, local_reader_ranks=[1])
    with pytest.raises(shmq.BadHandle, match="shmq.vllm.Handle"):
        MessageQueue.create_from_handle("shmq://not-a-vllm-handle", 0)


class WorkerProc:
    """Shaped like vLLM's WorkerProc: it reads the broadcast and answers on its own response queue."""

    def __init__(self, rank: int, broadcast: Handle, responses) -> None:
        self.rank = rank
        self.rpc_broadcast_mq = MessageQueue.create_from_handle(broadcast, rank)
        self.worker_response_mq = MessageQueue(1, 1)  # named by its creator: vllm-worker-<rank>-response
        responses.put(self.worker_response_mq.export_handle())

    def busy_loop(self) -> None:
        while True:
            method, args = self.rpc_broadcast_mq.dequeue(indefinite=True)
            if method == "exit":
                return
            if method == "die" and args == self.rank:
                os.kill(os.getpid(), signal.SIGKILL)
            self.worker_response_mq.enqueue(("SUCCESS", (self.rank, sum(args) if method == "sum" else None)))


def _worker_main(rank: int, broadcast: Handle, responses) -> None:
    WorkerProc(rank, broadcast, responses).busy_loop()


class MultiprocExecutor:
    """Shaped like vLLM's MultiprocExecutor: one broadcast queue to every worker, one response queue per worker."""

    def __init__(self, children, workers: int) -> None:
        import multiprocessing

        self.rpc_broadcast_mq = MessageQueue(workers, workers)
        responses = multiprocessing.get_context("fork").Queue()
        self.procs = [children(_worker_main, rank, self.rpc_broadcast_mq.export_handle(), responses)
                      for rank in range(workers)]
        handles = sorted((responses.get(timeout=30) for _ in range(workers)),
                         key=lambda h: shmq.Handle.parse(h.queue).name)
        self.response_mqs = [MessageQueue.create_from_handle(h, 0) for h in handles]
        self.rpc_broadcast_mq.wait_until_ready()

    def collective_rpc(self, method: str, args, timeout: float = 10.0) -> list:
        self.rpc_broadcast_mq.enqueue((method, args))
        return [mq.dequeue(timeout=timeout)[1] for mq in self.response_mqs]


@pytest.mark.timeout(60)
def test_executor_shaped_loop_and_a_killed_worker_named_within_a_second(children):
    executor = MultiprocExecutor(children, workers=4)
    try:
        _run_and_kill_a_worker(executor)
    finally:
        for mq in (executor.rpc_broadcast_mq, *executor.response_mqs):
            mq.shutdown()


def _run_and_kill_a_worker(executor: MultiprocExecutor) -> None:
    assert sorted(mq.queue.queue_name for mq in executor.response_mqs) == [
        f"vllm-worker-{rank}-response" for rank in range(4)]
    assert executor.rpc_broadcast_mq.queue.queue_name == "vllm-rpc-broadcast"
    for step in range(500):
        assert executor.collective_rpc("sum", [step, 1, 2]) == [(rank, step + 3) for rank in range(4)]

    executor.rpc_broadcast_mq.enqueue(("die", 2))
    start = time.monotonic()
    with pytest.raises(shmq.WriterDead) as dead:
        for mq in executor.response_mqs:
            mq.dequeue(timeout=30)
    assert time.monotonic() - start < 1.0
    assert f"pid {executor.procs[2].pid}" in str(dead.value) and "vllm-worker-2-response" in str(dead.value)
    shmq.cleanup()  # the killed worker's response segment

    executor.rpc_broadcast_mq.enqueue(("exit", None))
    for rank in (0, 1, 3):
        executor.procs[rank].join(10)
        assert executor.procs[rank].exitcode == 0
