"""Python stacks of a live participant, on request from outside the process.

A participant installs a handler for ``STACK_SIGNAL`` (SIGUSR2) with a per-pid
file ``<stack dir>/<pid>.txt``; a watchdog that sees the process stall sends
the signal and reads what the handler appended: every thread's stack, in
faulthandler's format. The handler is Python, so it runs in the main thread
between two bytecodes: at once when that thread runs Python or waits in a
system call (the signal interrupts it), when the call returns if it is stuck in
C code that holds the GIL. A stopped process (SIGSTOP) takes the signal when it
resumes, so its dump shows where it was frozen. faulthandler's own
``register()`` dumps from inside the C signal handler, even while the main thread
is stuck in C, but it reads frames the interrupted thread may be half-way
through pushing: readers crashed with SIGSEGV in CPython 3.11's dump_frame
(Python/traceback.c) under repeated signals, so shmq does not use it.

Sending a signal a process does not handle would kill it, so the watchdog
signals only when both hold: the file's header names this pid *and* its start
time, and ``/proc/PID/status`` says the signal is caught. A process never
uninstalls the handler once installed (after the last participant closes it
writes nothing and the file is removed), so no race between those checks and
the ``kill`` can turn the signal lethal. Only the main thread can install it: a
process whose first participant is made in another thread has no stack dumps.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time

from . import procs

log = logging.getLogger("shmq")

STACK_SIGNAL = signal.SIGUSR2
STALE_HEADERLESS_S = 60.0  #: a stack file with no header yet this old is garbage
PY_SPY_TIMEOUT_S = 5.0  #: py-spy attaches, reads every thread's stack and detaches well within this
_HEADER = "# shmq stack dumps: pid={pid} start_time={start_time} signal={signal}\n"
_HEADER_RE = re.compile(r"# shmq stack dumps: pid=(\d+) start_time=(\d+) signal=(\w+)\n")
# A dump is faulthandler's format: per thread, this line, then its frames innermost first.
_THREAD_LINE = "{kind} 0x{ident:016x} (most recent call first):"
_MAIN_THREAD = "Current thread"
_THREAD_RE = re.compile(r"^(?=(?:Current thread|Thread) 0x[0-9a-f]+ \(most recent call first\):$)", re.M)
_FRAME_LINE = '  File "{file}", line {line} in {function}'
_FRAME_RE = re.compile(r'\s*File "(?P<file>[^"]+)", line (?P<line>\d+) in (?P<function>\S+)')


def default_stack_dir() -> str:
    """Where participants write stack dumps unless told otherwise: one directory per user.

    A watchdog in another container must see it: deploy/ shares /tmp between the
    application and the watchdog sidecar for this.
    """
    return f"/tmp/shmq-stacks-{os.getuid()}"


def stack_file(pid: int, directory: str) -> str:
    return os.path.join(directory, f"{pid}.txt")


# -- the participant's side: one registration per process ----------------------------
class _Registration:
    """Process-wide: one handler and one stack file, shared by every participant in the process."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.users = 0
        self.installed = False  # our handler owns STACK_SIGNAL in this process (for good, see module doc)
        self.fd: int | None = None  # the open stack file while users > 0; the handler writes nothing without it
        self.dumping = False  # the handler is writing a dump (signals that arrive meanwhile are answered by it)
        self.path: str | None = None

    def stop_writing(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
        self.fd = None


_registration = _Registration()


def _dump_stacks(signum: int, interrupted) -> None:
    """The STACK_SIGNAL handler: every thread's stack, most recent call first, the main thread last.

    Not reentrant: Python runs a handler for a signal that arrives during this one inside it, so a
    storm of requests nested handlers thousands deep, each dumping a deeper stack, and the process
    did nothing else until they unwound (a reader under 10,000 signals stalled for over 5 s).
    """
    reg = _registration
    if reg.fd is None or reg.dumping:
        return
    reg.dumping = True
    try:
        _write_dump(reg.fd, interrupted)
    finally:
        reg.dumping = False


def _write_dump(fd: int, interrupted) -> None:
    main = threading.get_ident()  # Python runs signal handlers in the main thread
    frames = sys._current_frames()
    frames[main] = interrupted  # not this handler's own frame
    blocks = []
    for ident in sorted(frames, key=lambda i: i == main):
        lines = [_THREAD_LINE.format(kind=_MAIN_THREAD if ident == main else "Thread", ident=ident)]
        frame = frames[ident]
        while frame is not None:
            lines.append(_FRAME_LINE.format(file=frame.f_code.co_filename, line=frame.f_lineno,
                                            function=frame.f_code.co_name))
            frame = frame.f_back
        blocks.append("\n".join(lines) + "\n")
    try:
        os.write(fd, ("\n".join(blocks) + "\n").encode("utf-8", "replace"))
    except OSError:
        pass  # the file went away under us: a dump is best effort


def _after_fork_in_child() -> None:
    # The child inherits the handler and the parent's file descriptor; its dumps must not land in the
    # parent's file. Its own participants register again (they were forgotten at fork, too).
    global _registration
    inherited = _registration
    _registration = _Registration()
    _registration.installed = inherited.installed
    _registration.fd = inherited.fd
    _registration.stop_writing()


os.register_at_fork(after_in_child=_after_fork_in_child)


def acquire(directory: str | None = None) -> bool:
    """Count one more participant in this process that wants its stacks dumpable; install on first use.

    Returns False (and logs why) when the signal already has another handler or
    the directory is unusable; the queue works the same, only without stack dumps.
    """
    reg = _registration
    with reg.lock:
        if reg.users:
            reg.users += 1
            return True
        directory = directory or default_stack_dir()
        if not reg.installed and _signal_caught(os.getpid()):
            log.info("shmq: %s already has a handler in pid %d; stack dumps are off", STACK_SIGNAL.name, os.getpid())
            return False
        if not reg.installed and threading.current_thread() is not threading.main_thread():
            log.info("shmq: only the main thread can install the %s handler; stack dumps are off in pid %d",
                     STACK_SIGNAL.name, os.getpid())
            return False
        try:
            fd, path = _open_stack_file(directory)
        except OSError as e:
            log.info("shmq: cannot write stack dumps to %s (%s); stack dumps are off", directory, e)
            return False
        if not reg.installed:
            signal.signal(STACK_SIGNAL, _dump_stacks)
        reg.installed = True
        reg.fd, reg.path, reg.users = fd, path, 1
        return True


def release() -> None:
    """One participant that acquired closed; the last one removes the file."""
    reg = _registration
    with reg.lock:
        if not reg.users:
            return
        reg.users -= 1
        if reg.users:
            return
        path, reg.path = reg.path, None
        reg.stop_writing()
        try:
            os.unlink(path)
            if os.path.dirname(path) == default_stack_dir():  # ours to tidy; a directory the caller named is not
                os.rmdir(os.path.dirname(path))  # fails while another process has a file there
        except OSError:
            pass


def _open_stack_file(directory: str) -> tuple[int, str]:
    pid = os.getpid()
    path = stack_file(pid, directory)
    for attempt in (1, 2):  # another process's release may remove the directory between makedirs and open
        os.makedirs(directory, mode=0o700, exist_ok=True)
        if os.stat(directory).st_uid != os.getuid():
            raise PermissionError(f"{directory} belongs to another user")
        _remove_stale_files(directory)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            break
        except FileNotFoundError:
            if attempt == 2:
                raise
    header = _HEADER.format(pid=pid, start_time=procs.start_time(pid) or 0, signal=STACK_SIGNAL.name)
    os.write(fd, header.encode())
    return fd, path


def _remove_stale_files(directory: str) -> None:
    """Files of processes that died without closing (SIGKILL, os._exit) would otherwise pile up.

    A file without a header may be one another process is creating right now, so it is
    left alone unless it is old.
    """
    for name in os.listdir(directory):
        stem, _, ext = name.partition(".")
        path = os.path.join(directory, name)
        if ext != "txt" or not stem.isdigit():
            continue
        header = _read_header(path)
        try:
            stale = (not procs.is_alive(*header) if header is not None
                     else time.time() - os.stat(path).st_mtime > STALE_HEADERLESS_S)
            if stale:
                os.unlink(path)
        except FileNotFoundError:
            pass


# -- the watchdog's side ------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class StackDump:
    """The outcome of asking a process for its stacks."""

    pid: int  #: the process asked
    path: str  #: its stack file ("" when it has none)
    text: str  #: the dump, "" when none was captured (see note)
    note: str  #: why there is no text, or where it will appear; "" when text holds the dump
    offset: int = 0  #: where in `path` this request's dump starts (for read_dump after a resume)


def request_dump(pid: int, start_time: int, *, directory: str | None = None, timeout_s: float = 0.5,
                 clock=time.monotonic) -> StackDump:
    """`pid`'s Python stacks: from its own handler, or else from py-spy.

    Never signals a process that has not registered for it. A stopped (T) or
    uninterruptible (D) process takes the signal only when it resumes: then the
    result has no text, and ``read_dump`` fetches it later from `offset`. A
    process that cannot dump its own stacks (not registered, or its main thread
    stuck in C code that holds the GIL) is read with ``py-spy dump`` when py-spy
    is installed and may trace it; the note then says where the text came from,
    or exactly why there is none.
    """
    dump = _request_own_dump(pid, start_time, directory=directory, timeout_s=timeout_s, clock=clock)
    if dump.text or procs.run_state(pid) in (None, "Z", "T", "t", "D"):
        return dump  # its own stacks; or it is gone; or they come when it resumes (read_dump)
    if start_time and procs.start_time(pid) != start_time:
        return dump  # the pid now belongs to another process: not the participant asked about
    text, note = py_spy_dump(pid)
    return StackDump(pid, dump.path, text, f"{dump.note}; {note}", dump.offset)


def py_spy_dump(pid: int, timeout_s: float = PY_SPY_TIMEOUT_S) -> tuple[str, str]:
    """(text, note): `pid`'s stacks as ``py-spy dump`` reads them from outside, or why it could not."""
    exe = shutil.which("py-spy") or shutil.which("py-spy", path=os.path.dirname(sys.executable))
    if exe is None:
        return "", "py-spy is not installed (pip install py-spy), so no stacks could be read from outside"
    try:
        done = subprocess.run([exe, "dump", "--pid", str(pid)], capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return "", f"py-spy dump --pid {pid} took over {timeout_s} s"
    if done.returncode == 0 and done.stdout.strip():
        return done.stdout, "read from outside by py-spy dump"
    error = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
    if any(word in error[0].lower() for word in ("permission", "not permitted", "ptrace")):
        return "", (f"py-spy may not trace pid {pid} ({error[0]}): run the watchdog as the same user with ptrace "
                    "allowed (kernel.yama.ptrace_scope 0) or with CAP_SYS_PTRACE (Kubernetes: "
                    "securityContext.capabilities.add: [SYS_PTRACE], and shareProcessNamespace)")
    return "", f"py-spy dump --pid {pid} failed: {error[0]}"


def _request_own_dump(pid: int, start_time: int, *, directory: str | None, timeout_s: float, clock) -> StackDump:
    """Signal `pid` to dump its Python stacks through its own handler, and wait for them."""
    directory = directory or default_stack_dir()
    path = stack_file(pid, directory)
    header = _read_header(path)
    if header is None:
        return StackDump(pid, "", "", f"pid {pid} has no stack-dump registration in {directory} "
                                      "(stack_dumps=False, another stack directory, or the signal was taken)")
    if header[0] != pid or (start_time and header[1] and header[1] != start_time):
        return StackDump(pid, "", "", f"{path} belongs to an earlier process with pid {pid}")
    state = procs.run_state(pid)
    if state is None or state == "Z":
        return StackDump(pid, "", "", f"pid {pid} has exited")
    if not _signal_caught(pid):
        return StackDump(pid, "", "", f"pid {pid} does not handle {STACK_SIGNAL.name} now; not signalled")
    try:
        offset = os.stat(path).st_size
        os.kill(pid, STACK_SIGNAL)
    except (FileNotFoundError, ProcessLookupError):
        return StackDump(pid, "", "", f"pid {pid} exited before its stacks could be dumped")
    if state in ("T", "t", "D"):
        return StackDump(pid, path, "", f"pid {pid} is in state {state}: it dumps its stacks to {path} when it "
                                        "resumes", offset)
    text = _await_growth(path, offset, timeout_s, clock)
    if not text:
        return StackDump(pid, path, "", f"pid {pid} wrote no stacks within {timeout_s} s", offset)
    return StackDump(pid, path, text, "", offset)


def read_dump(dump: StackDump) -> str:
    """What the process appended to its stack file since `dump` was requested ("" if nothing yet)."""
    return _read_from(dump.path, dump.offset) if dump.path else ""


def _read_from(path: str, offset: int) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read().decode("utf-8", "replace")
    except FileNotFoundError:
        return ""


def _await_growth(path: str, offset: int, timeout_s: float, clock) -> str:
    """The handler appends the dump in a few writes with no end marker: wait until the size settles."""
    deadline = clock() + timeout_s
    size, settled_polls = offset, 0
    while clock() < deadline:
        time.sleep(0.005)
        try:
            now = os.stat(path).st_size
        except FileNotFoundError:
            return ""
        if now > offset and now == size:
            settled_polls += 1
            if settled_polls >= 2:
                break
        else:
            settled_polls = 0
        size = now
    return _read_from(path, offset)


def _read_header(path: str) -> tuple[int, int] | None:
    """(pid, start_time) from a stack file's first line, None if absent or not ours."""
    try:
        with open(path, "rb") as f:
            first = f.readline(200).decode("ascii", "replace")
    except OSError:
        return None
    match = _HEADER_RE.fullmatch(first)
    if match is None or match.group(3) != STACK_SIGNAL.name:
        return None
    return int(match.group(1)), int(match.group(2))


def _signal_caught(pid: int) -> bool:
    """Whether `pid` has a handler for STACK_SIGNAL, from the SigCgt mask in /proc/PID/status."""
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"SigCgt:"):
                    return bool(int(line.split()[1], 16) >> (STACK_SIGNAL - 1) & 1)
    except OSError:
        pass
    return False


# -- reading a dump ------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Frame:
    """One line of a thread's stack."""

    file: str
    line: int
    function: str


def threads(dump: str) -> list[str]:
    """Each thread's block of a dump (its header line, then its frames), the main thread's first."""
    blocks = [block.strip("\n") for block in _THREAD_RE.split(dump)]
    return sorted((block for block in blocks if _THREAD_RE.match(block)),
                  key=lambda block: not block.startswith(_MAIN_THREAD))


def frames(thread: str) -> list[Frame]:
    """The frames of one thread's block, innermost first."""
    return [Frame(m["file"], int(m["line"]), m["function"]) for m in map(_FRAME_RE.match, thread.splitlines()) if m]
