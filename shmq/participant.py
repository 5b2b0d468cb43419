"""What writer and reader share: the record they own, the one wait loop, heartbeats and liveness."""

from __future__ import annotations

import atexit
import logging
import math
import os
import sys
import threading
import time
import weakref
from typing import Callable

from . import diagnostics
from . import hooks as hooks_module
from . import layout as L
from . import procs
from . import wait as wait_module
from .errors import (
    BadQueueArgument, BadTimeout, ConcurrentUse, ForkedParticipant, QueueClosed, QueueTimeout, ReaderDead, WouldBlock, WriterDead,
)
from ._ring import compare_exchange
from .segment import Segment

log = logging.getLogger("shmq")

State = L.ParticipantState
# The states every wait stores, as plain ints: an IntEnum member costs three times as much to
# look up and to store, and a wait stores two of them.
BUSY, WAITING_READ, WAITING_WRITE = int(State.BUSY), int(State.WAITING_READ), int(State.WAITING_WRITE)

# Word indexes inside a record (add the record's base word).
R_PID = L.word(L.REC_PID)
R_START_TIME = L.word(L.REC_START_TIME)
R_ROLE = L.word(L.REC_ROLE)
R_INDEX = L.word(L.REC_INDEX)
R_STATE = L.word(L.REC_STATE)
R_STATE_SINCE = L.word(L.REC_STATE_SINCE_NS)
R_HEARTBEAT = L.word(L.REC_HEARTBEAT_NS)
R_CURSOR = L.word(L.REC_CURSOR)
R_POSITION = L.word(L.REC_POSITION)
R_MESSAGES = L.word(L.REC_MESSAGES)
R_BYTES = L.word(L.REC_BYTES)
R_TIMEOUTS = L.word(L.REC_TIMEOUTS)
R_OVERFLOW = L.word(L.REC_OVERFLOW)
R_ATTACHES = L.word(L.REC_ATTACHES)
R_PROGRESS = L.word(L.REC_PROGRESS_NS)
R_OWNER = L.word(L.REC_OWNER)
R_PREDICTED_WAKES = L.word(L.REC_PREDICTED_WAKES)
R_PREDICTION_HITS = L.word(L.REC_PREDICTION_HITS)
R_PREDICTION_MISSES = L.word(L.REC_PREDICTION_MISSES)
R_SPIN_BEFORE_ARRIVAL = L.word(L.REC_SPIN_BEFORE_ARRIVAL_NS)

W_WRITER_CURSOR = L.word(L.OFF_WRITER_CURSOR)
W_WRITER_POSITION = L.word(L.OFF_WRITER_POSITION)

#: How a wait that ended without a message shows in the flight record (anything else: INTERRUPTED).
_FAILED_WAIT = {QueueTimeout: L.FlightOp.TIMEOUT, ReaderDead: L.FlightOp.DEAD_CHECK, WriterDead: L.FlightOp.DEAD_CHECK}
#: How often a long wait flushes its counters, refreshes the heartbeat and checks cancel and timeout.
HOUSEKEEPING_NS = 5_000_000
#: How often a blocked participant checks that the peers it waits for are alive.
PEER_CHECK_NS = 100_000_000
HEARTBEAT_INTERVAL_S = 0.1
DEFAULT_WARN_AFTER_S = 10.0
_NEVER_NS = 1 << 62  # warn_after_s = math.inf: a deadline no wait reaches
#: How long close() waits for a call in another thread to end (a blocked get() is cancelled first).
CLOSE_WAIT_S = 2.0

_open_participants: weakref.WeakSet = weakref.WeakSet()


@atexit.register
def _close_all_at_exit() -> None:
    # Interpreter exit (including after Ctrl-C) unlinks what writers created; no __del__ needed.
    for participant in list(_open_participants):
        participant.close()


_exit_hooked_pid = 0  # the process that _hook_child_exit last ran in


def _hook_child_exit() -> None:
    """A forked multiprocessing child leaves through os._exit, past atexit; its exit runs
    multiprocessing's finalizers, so close there too (a worker's queue is unlinked as in vLLM)."""
    global _exit_hooked_pid
    if _exit_hooked_pid == os.getpid():
        return
    _exit_hooked_pid = os.getpid()
    multiprocessing = sys.modules.get("multiprocessing")  # a multiprocessing child has imported it
    if multiprocessing is not None and multiprocessing.parent_process() is not None:
        from multiprocessing import util

        util.Finalize(None, _close_all_at_exit, exitpriority=0)


def _forget_inherited_participants() -> None:
    # A forked child inherits the parent's objects but not their threads. Their records are the
    # parent's: the child must neither read on with them nor close (and so unlink) the parent's queues.
    for participant in list(_open_participants):
        participant._disown()
    _open_participants.clear()


os.register_at_fork(after_in_child=_forget_inherited_participants)


def checked_timeout(timeout) -> float | None:
    """A caller's timeout in seconds: None or inf wait for ever, <= 0 does not wait; NaN is an error.

    Checked before a wait begins, so a bad argument never leaves the record in a waiting state.
    """
    if (timeout.__class__ is float or timeout.__class__ is int) and 0 < timeout < math.inf:  # the usual one
        return timeout
    try:
        seconds = float(timeout)
    except (TypeError, ValueError):
        raise BadTimeout(f"timeout must be a number of seconds or None, got {timeout!r}") from None
    if math.isnan(seconds):
        raise BadTimeout("timeout is NaN: pass None (or float('inf')) to wait for ever, 0 not to wait")
    return None if seconds == math.inf else seconds


class _Inherited:
    """Stands in for the shared state of a participant inherited through fork(): every use raises."""

    def __init__(self, description: str, owner_pid: int) -> None:
        self._description = description
        self._owner_pid = owner_pid

    def _refuse(self, *args):
        raise ForkedParticipant(
            f"{self._description} belongs to pid {self._owner_pid}; this process (pid {os.getpid()}) was forked "
            "from it and may not use it: attach or create its own after the fork")

    __getattr__ = __getitem__ = __setitem__ = _refuse


class Heartbeat(threading.Thread):
    """Stamps the owner's heartbeat, and its progress time when its position moved, every `interval_s`.

    A thread rather than the hot path: it costs put() and get() nothing, it keeps
    beating while the application is busy, and it stops when the process is
    stopped or a C call holds the GIL, which is what a watchdog needs to tell
    "busy" from "frozen". It follows the owner's own cursor, not the published
    one: a reader working through a backlog publishes only every few messages.
    """

    def __init__(self, words: memoryview, record: int, owner: Participant, interval_s: float) -> None:
        super().__init__(name=f"shmq-heartbeat-{record}", daemon=True)
        self._words = words
        self._record = record
        self._owner = weakref.ref(owner)  # a participant dropped without close() may still be collected
        self._registered_cursor = owner._cursor
        self._interval_s = interval_s
        self._stop_event = threading.Event()

    def run(self) -> None:
        w, rec = self._words, self._record
        last_cursor = self._registered_cursor
        while not self._stop_event.wait(self._interval_s):
            owner = self._owner()
            if owner is None:
                return
            now = time.monotonic_ns()
            w[rec + R_HEARTBEAT] = now
            owner._publish_behind()
            cursor = owner._cursor
            del owner
            if cursor != last_cursor:
                w[rec + R_PROGRESS] = now
                last_cursor = cursor

    def stop(self) -> None:
        self._stop_event.set()
        if self is not threading.current_thread():
            self.join(timeout=2 * self._interval_s + 1)


class Participant:
    """Base of Writer and Reader: owns one record of the segment."""

    _role: L.Role
    _cursor: int  #: frames this participant has written or read (a reader publishes it in batches)

    def __init__(self, segment: Segment, record: int, *, wait: wait_module.WaitStrategy | None,
                 warn_after_s: float, hooks: hooks_module.MessageHooks | None) -> None:
        self._segment = segment
        self._w = segment.words
        self._record = record
        self._rec = L.word(L.record_offset(record))
        self.queue_name = segment.name
        self._stats = bool(segment.flags & L.FLAG_STATS)
        self._ring = segment.ring(record)  # the hot paths and the record's stores, in C
        self._counters = wait_module.WaitCounters()
        self._strategy = (wait or wait_module.default()).bound(self, self._counters)
        self.warn_after_s = warn_after_s
        self._hooks = hooks if hooks is not None else hooks_module.installed()
        self._events: list | None = None  # idle events of a traced operation
        self._deadline_ns: int | None = None
        self._last_wait_spins = 0
        self._idle = True  # no message handled yet
        self._cancelled = False
        self._closed = False
        self._heartbeat: Heartbeat | None = None
        self._stack_dumps = False
        self._pid = os.getpid()
        self._start_time = procs.start_time(self._pid) or 0
        self._owner = L.owner_word(self._pid, self._start_time)

    @property
    def warn_after_s(self) -> float:
        """How long a blocked call waits before it logs who blocks it, and again after each such
        period; math.inf never logs (an idle worker waiting for work is not stuck)."""
        return self._warn_after_ns / 1e9 if self._warn_after_ns < _NEVER_NS else math.inf

    @warn_after_s.setter
    def warn_after_s(self, seconds: float) -> None:
        if not isinstance(seconds, (int, float)) or not seconds > 0:
            raise BadQueueArgument(f"warn_after_s must be a number of seconds > 0 (math.inf: never), got {seconds!r}")
        self._warn_after_ns = min(int(seconds * 1e9), _NEVER_NS) if seconds < math.inf else _NEVER_NS

    # -- record -----------------------------------------------------------------
    def _register(self, index: int, stack_dumps: bool | str = True) -> None:
        w, rec = self._w, self._rec
        now = time.monotonic_ns()
        w[rec + R_PID] = self._pid
        w[rec + R_START_TIME] = self._start_time
        w[rec + R_ROLE] = self._role
        w[rec + R_INDEX] = index
        w[rec + R_HEARTBEAT] = now
        w[rec + R_PROGRESS] = now
        w[rec + R_ATTACHES] += 1
        self._set_state(State.IDLE)
        self._heartbeat = Heartbeat(w, rec, self, HEARTBEAT_INTERVAL_S)
        self._heartbeat.start()
        if stack_dumps:  # a watchdog can then ask for our Python stacks (shmq.diagnostics)
            self._stack_dumps = diagnostics.acquire(stack_dumps if isinstance(stack_dumps, str) else None)
        _hook_child_exit()
        _open_participants.add(self)

    def _busy_error(self) -> ConcurrentUse:
        return ConcurrentUse(f"{self._describe()} is in use by another thread: a Reader or Writer takes one call "
                             "at a time (give each thread its own reader, or serialise the calls; cancel() is "
                             "the one method another thread may call)")

    def _enter(self, wait_s: float = 0.0) -> None:
        """Hold the slow path of our ring (shmq/_ring.c: enter), or raise ConcurrentUse after `wait_s`.

        One call at a time: a call that must wait, or take a message in Python, holds it; the one-call
        fast paths (take_one, put_one) refuse to run while another thread holds it.
        """
        give_up = time.monotonic() + wait_s
        while not self._ring.enter():
            if time.monotonic() >= give_up:
                raise self._busy_error()
            time.sleep(0.001)

    def _disown(self) -> None:
        """In a forked child: make every later use raise ForkedParticipant; never touch the shared record."""
        guard = _Inherited(self._describe(), self._pid)
        self._ring = self._w = guard
        self._heartbeat = None
        self._stack_dumps = False

    @property
    def _inherited(self) -> bool:
        return self._pid != os.getpid()

    def _release_owner(self) -> None:
        """Give up the record, after its final state is stored: a new owner may claim it from now on."""
        compare_exchange(self._segment.buf, L.record_offset(self._record) + L.REC_OWNER, self._owner, 0)

    def _set_state(self, state: int) -> int:
        """Store our state and since when (returned, time.monotonic_ns())."""
        return self._ring.set_state(state)

    def _mark_busy(self) -> None:
        # The first message: from now on, outside the queue means busy in the application.
        self._idle = False
        self._set_state(BUSY)

    def _publish_behind(self) -> None:
        """Called by the heartbeat thread: publish progress the calling thread has deferred."""

    def _flush_counters(self, wait_start: int) -> None:
        c = self._counters
        self._ring.flush_counters(wait_start, c.spins, c.yields, c.backoff_sleeps, c.backoff_sleep_ns, c.parks)
        c.clear()

    # -- the one wait loop ----------------------------------------------------------
    def _block(self, ready: Callable[[], bool], timeout: float | None, waiting: int) -> int:
        """Idle until `ready()` is true. Returns the wait in ns.

        Raises WouldBlock for timeout == 0, QueueTimeout when the time runs out,
        QueueClosed when cancelled, and whatever `_check_peers` raises.
        """
        if timeout is not None and timeout <= 0:
            raise WouldBlock(self._would_block_reason())
        start = self._ring.set_state(waiting)
        deadline = None if timeout is None else start + int(timeout * 1e9)
        self._deadline_ns = deadline
        w, rec = self._w, self._rec
        strategy = self._strategy
        strategy.reset()
        housekeeping = start + HOUSEKEEPING_NS
        peer_check = start + PEER_CHECK_NS
        warn_at = start + self._warn_after_ns
        spins_flushed = 0
        failure = None
        try:
            while not ready():
                now = time.monotonic_ns()
                if now < housekeeping:
                    # Idle only now: a park that ends because the message came leaves the loop
                    # at once, with no housekeeping between the wake-up and the message.
                    strategy.idle()
                    continue
                housekeeping = now + HOUSEKEEPING_NS
                spins_flushed += self._counters.spins
                self._flush_counters(start)
                w[rec + R_HEARTBEAT] = now
                if self._cancelled or self._closed:
                    raise QueueClosed(f"{self._describe()} was cancelled or closed while waiting")
                if now >= peer_check:
                    peer_check = now + PEER_CHECK_NS
                    self._check_peers(now - start)
                if deadline is not None and now >= deadline:
                    if self._stats:
                        w[rec + R_TIMEOUTS] += 1
                    raise QueueTimeout(f"{self._describe()} timed out after {timeout} s: "
                                       f"{self._blockers(now - start)}")
                if now >= warn_at:
                    warn_at = now + self._warn_after_ns
                    log.warning("%s has waited %.1f s: %s", self._describe(), (now - start) / 1e9,
                                self._blockers(now - start))
            if strategy.learns:
                strategy.arrived()  # the wait ended with an arrival: Adaptive learns the rhythm from it
        except BaseException as e:
            failure = type(e)  # the type only: the exception itself would hold this frame in a cycle
            raise
        finally:
            c = self._counters
            self._last_wait_spins = spins_flushed + c.spins
            # One C call for the counters, the histogram and the state: this runs on every get()
            # that waits, between the message's arrival and its return.
            waited = self._ring.end_wait(start, -1 if self._closed else BUSY, c.spins, c.yields, c.backoff_sleeps,
                                         c.backoff_sleep_ns, c.parks)
            c.clear()
            if c.predicted_wakes or c.prediction_misses:
                self._flush_predictions(c)
            if failure is not None:  # the wait led to no message: the flight record says why, with its time
                self._ring.record(_FAILED_WAIT.get(failure, L.FlightOp.INTERRUPTED), self._cursor, 0)
        return waited

    def _flush_predictions(self, c: wait_module.WaitCounters) -> None:
        """The Adaptive strategy's decisions, once per wait that made one (plain stores: we own the record)."""
        if self._stats:
            w, rec = self._w, self._rec
            w[rec + R_PREDICTED_WAKES] += c.predicted_wakes
            w[rec + R_PREDICTION_HITS] += c.prediction_hits
            w[rec + R_PREDICTION_MISSES] += c.prediction_misses
            w[rec + R_SPIN_BEFORE_ARRIVAL] += c.spin_before_arrival_ns
        c.clear_predictions()

    def _park_timeout(self, timeout_s: float) -> float:
        """Never sleep past the caller's deadline or the next housekeeping."""
        if self._deadline_ns is not None:
            timeout_s = min(timeout_s, max(0.0, (self._deadline_ns - time.monotonic_ns()) / 1e9))
        return timeout_s

    def idle_event(self, name: str, start_ns: int, duration_ns: int) -> None:
        if self._events is not None:
            self._events.append((name, start_ns, duration_ns))

    # -- hooks for the subclasses -----------------------------------------------------
    def _describe(self) -> str:
        raise NotImplementedError

    def _blockers(self, waited_ns: int) -> str:
        """Who this participant waits for, for warnings and timeouts."""
        raise NotImplementedError

    def _would_block_reason(self) -> str:
        raise NotImplementedError

    def _check_peers(self, waited_ns: int) -> None:
        """Raise if a peer this participant waits for is dead."""
        raise NotImplementedError

    def park(self, timeout_s: float) -> None:
        raise NotImplementedError

    # -- lifecycle ---------------------------------------------------------------------
    def _stop_heartbeat(self) -> None:
        if self._heartbeat is not None:
            self._heartbeat.stop()
            self._heartbeat = None
        if self._stack_dumps:
            self._stack_dumps = False
            diagnostics.release()
        _open_participants.discard(self)

    def close(self) -> None:
        raise NotImplementedError

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()
