"""Stack dumps on request (shmq.diagnostics): what the watchdog may signal, and what it gets back."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time

import pytest

import shmq
from shmq import diagnostics, procs

from .conftest import FORK
from .watchdog_harness import ROOT


@pytest.fixture
def stack_dir():
    with tempfile.TemporaryDirectory(prefix="watchdog-stacks-") as path:
        yield path


class Participant:
    """A fresh interpreter (no inherited signal handlers) that runs `before`, attaches reader 0, and waits."""

    def __init__(self, handle: str, stack_dumps, before: str = "") -> None:
        code = "\n".join([
            "import signal, sys",
            "import shmq",
            before,
            f"reader = shmq.attach({handle!r}, reader=0, stack_dumps={stack_dumps!r})",
            "def waiting_in_here():",
            "    print('ready', flush=True)",
            "    sys.stdin.read()",
            "waiting_in_here()",
        ])
        self.process = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, text=True)
        assert self.process.stdout.readline() == "ready\n"
        self.pid = self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self) -> None:
        self.process.stdin.close()
        self.process.wait(10)
        self.process.stdout.close()


@pytest.mark.timeout(30)
def test_a_registered_process_dumps_the_function_it_is_in(writer, stack_dir):
    p = Participant(str(writer.handle), stack_dir, "")
    try:
        dump = diagnostics.request_dump(p.pid, procs.start_time(p.pid), directory=stack_dir)
        assert dump.note == "" and dump.path == os.path.join(stack_dir, f"{p.pid}.txt")
        assert "in waiting_in_here" in dump.text and "shmq-heartbeat" not in dump.text  # faulthandler names no threads
        assert dump.text.count("(most recent call first)") >= 2, "all threads: the main one and the heartbeat"
        # diagnostics reads its own format back: the main thread first (the dump writes it last)
        threads = diagnostics.threads(dump.text)
        assert len(threads) == dump.text.count("(most recent call first)") and threads[0].startswith("Current thread")
        main = diagnostics.frames(threads[0])
        assert [f.function for f in main[-2:]] == ["waiting_in_here", "<module>"] and main[-1].file == "<string>"
        assert all(f.line > 0 for f in main)
        assert p.alive()
    finally:
        p.stop()
    assert not os.path.exists(dump.path), "closing the last participant removes the file"


@pytest.mark.timeout(30)
def test_a_process_that_did_not_register_is_never_signalled_even_with_a_forged_file(writer, stack_dir):
    p = Participant(str(writer.handle), False, "")
    try:
        assert diagnostics.request_dump(p.pid, procs.start_time(p.pid), directory=stack_dir).note.startswith(
            f"pid {p.pid} has no stack-dump registration")
        # A file that claims the pid (left by an earlier process, say) is not enough: the handler must be there.
        with open(os.path.join(stack_dir, f"{p.pid}.txt"), "w") as f:
            f.write(f"# shmq stack dumps: pid={p.pid} start_time={procs.start_time(p.pid)} signal=SIGUSR2\n")
        dump = diagnostics.request_dump(p.pid, procs.start_time(p.pid), directory=stack_dir)
        assert "does not handle SIGUSR2" in dump.note and "not signalled" in dump.note
        time.sleep(0.1)
        assert p.alive(), "SIGUSR2's default action would have killed it"
        # Its stacks are read from outside instead, without a signal.
        assert "read from outside by py-spy dump" in dump.note and "waiting_in_here" in dump.text
    finally:
        p.stop()
        os.unlink(os.path.join(stack_dir, f"{p.pid}.txt"))


@pytest.mark.timeout(30)
def test_a_main_thread_stuck_in_c_code_holding_the_gil_is_read_by_py_spy(writer, stack_dir):
    code = "\n".join([
        "import ctypes, signal, sys, shmq",
        f"reader = shmq.attach({str(writer.handle)!r}, reader=0, stack_dumps={stack_dir!r})",
        "def stuck_in_c():",
        "    # A C call that keeps the GIL (PyDLL) and that the signal does not cut short (the signal is",
        "    # masked, as a C library waiting on a device may do): the Python handler cannot run.",
        "    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR2})",
        "    print('ready', flush=True)",
        "    ctypes.PyDLL(None).sleep(30)",
        "stuck_in_c()",
    ])
    process = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout.readline() == "ready\n"
        time.sleep(0.2)  # inside sleep()
        dump = diagnostics.request_dump(process.pid, procs.start_time(process.pid), directory=stack_dir)
        assert f"pid {process.pid} wrote no stacks within" in dump.note, dump.note
        assert "read from outside by py-spy dump" in dump.note and "stuck_in_c" in dump.text, dump
    finally:
        process.kill()
        process.wait(10)
        process.stdout.close()


def test_without_py_spy_the_note_says_how_to_get_it(monkeypatch):
    monkeypatch.setattr(diagnostics.shutil, "which", lambda *args, **kwargs: None)
    assert diagnostics.py_spy_dump(os.getpid()) == (
        "", "py-spy is not installed (pip install py-spy), so no stacks could be read from outside")


@pytest.mark.timeout(30)
def test_a_file_left_by_an_earlier_process_with_the_same_pid_is_not_trusted(writer, stack_dir):
    p = Participant(str(writer.handle), stack_dir, "")
    try:
        dump = diagnostics.request_dump(p.pid, procs.start_time(p.pid) + 1, directory=stack_dir)
        assert "belongs to an earlier process" in dump.note and dump.text == ""
    finally:
        p.stop()


@pytest.mark.timeout(30)
def test_an_application_handler_for_the_signal_is_left_alone(writer, stack_dir):
    p = Participant(str(writer.handle), stack_dir,
                    before="signal.signal(signal.SIGUSR2, lambda *_: print('the application', flush=True))")
    try:
        assert not os.path.exists(os.path.join(stack_dir, f"{p.pid}.txt"))
        os.kill(p.pid, signal.SIGUSR2)
        assert p.process.stdout.readline() == "the application\n"
    finally:
        p.stop()


def sleep_quietly() -> None:
    time.sleep(30)


@pytest.mark.timeout(30)
def test_a_forked_child_never_writes_into_its_parents_file(queue_name, children, stack_dir):
    with shmq.create(1, name=queue_name, chunk_bytes=256, n_chunks=4, stack_dumps=stack_dir):
        own = os.path.join(stack_dir, f"{os.getpid()}.txt")
        size = os.path.getsize(own)
        child = children(sleep_quietly)
        time.sleep(0.2)
        os.kill(child.pid, diagnostics.STACK_SIGNAL)  # it inherited our handler, now aimed at /dev/null
        time.sleep(0.2)
        assert child.is_alive()
        assert os.path.getsize(own) == size
        assert sorted(os.listdir(stack_dir)) == [f"{os.getpid()}.txt"]
    assert os.listdir(stack_dir) == []


def test_registering_sweeps_the_files_of_dead_processes_but_not_one_being_created(queue_name, stack_dir):
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(gone.stdout)
    with open(os.path.join(stack_dir, f"{dead_pid}.txt"), "w") as f:
        f.write(f"# shmq stack dumps: pid={dead_pid} start_time=1 signal=SIGUSR2\n")
    being_created = os.path.join(stack_dir, "999999999.txt")
    open(being_created, "w").close()
    with shmq.create(1, name=queue_name, chunk_bytes=256, n_chunks=4, stack_dumps=stack_dir):
        assert sorted(os.listdir(stack_dir)) == sorted([f"{os.getpid()}.txt", "999999999.txt"])
    os.unlink(being_created)


def read_in_a_loop(handle: str, stack_dir: str, stop) -> None:
    with shmq.attach(handle, reader=0, stack_dumps=stack_dir) as reader:
        while not stop.is_set():
            try:
                reader.get_bytes(timeout=0.01)
            except shmq.QueueTimeout:
                pass


@pytest.mark.timeout(60)
def test_a_reader_dumping_its_stacks_over_and_over_while_it_works_survives(queue_name, children, stack_dir):
    # faulthandler's dump, which shmq used before, killed such a reader with SIGSEGV within
    # a few thousand signals (it read a frame the interrupted thread was half-way through pushing).
    stop = FORK.Event()
    with shmq.create(1, name=queue_name, chunk_bytes=1024, n_chunks=16) as writer:
        reader = children(read_in_a_loop, str(writer.handle), stack_dir, stop)
        writer.wait_for_readers(timeout=10)
        dumps = os.path.join(stack_dir, f"{reader.pid}.txt")
        deadline = time.monotonic() + 10
        while not os.path.exists(dumps) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert os.path.exists(dumps), "the reader never registered for stack dumps"
        for round_ in range(10_000):
            os.kill(reader.pid, diagnostics.STACK_SIGNAL)
            if not round_ % 10:
                try:
                    writer.put_bytes(b"x" * 100, timeout=5)
                except shmq.QueueTimeout as e:  # seen twice in ~20 full runs, never alone: keep the evidence
                    stacks, note = diagnostics.py_spy_dump(reader.pid)
                    raise AssertionError(f"{e}\nthe reader's stacks after {round_ + 1} dumps ({note}):\n{stacks}") \
                        from None
                assert reader.is_alive(), f"the reader died after {round_ + 1} dumps (exit code {reader.exitcode})"
        stop.set()
        reader.join(10)
        assert reader.exitcode == 0


def test_a_dump_request_that_arrives_during_a_dump_is_answered_by_it_not_nested(monkeypatch, tmp_path):
    # Python runs the handler of a signal that arrives during a handler inside it: a storm of requests
    # once nested dumps thousands deep, and a reader did nothing else for seconds (found by the test above).
    written = []
    registration = diagnostics._Registration()
    registration.fd = os.open(tmp_path / "dump.txt", os.O_WRONLY | os.O_CREAT)
    monkeypatch.setattr(diagnostics, "_registration", registration)

    def write_dump(fd, interrupted):
        written.append(interrupted)
        if len(written) == 1:  # a second request lands while the first is being written
            diagnostics._dump_stacks(diagnostics.STACK_SIGNAL, "nested")

    monkeypatch.setattr(diagnostics, "_write_dump", write_dump)
    diagnostics._dump_stacks(diagnostics.STACK_SIGNAL, "first")
    diagnostics._dump_stacks(diagnostics.STACK_SIGNAL, "later")
    os.close(registration.fd)
    assert written == ["first", "later"] and not registration.dumping
