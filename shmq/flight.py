"""The flight recorder, read from outside: every participant's last operations, and what they say.

Each participant records its operations in a ring of its own in the segment (shmq/_ring.c:
flight_record; the layout is shmq/layout.py's FLIGHT_*). ``read(view)`` copies every ring
through the read-only mapping, leaving out an entry its owner was writing at that moment, and
``Flight.analyse()`` answers what an engineer asks of a stall, in the manner of PyTorch's
NCCL flight recorder analysis:

- how far the writer got, and each reader;
- the first message some reader has not taken, and who is missing it;
- what each of them has done since: dead, stopped, parked and never woken, holding the message
  in a lease, waiting with the message there to take, or busy since it took the one before;
- where a wake-up was due and none was recorded.

The watchdog attaches this to its alerts; ``shmq flight QUEUE`` prints it.
"""

from __future__ import annotations

import dataclasses
import time

from . import layout as L
from . import procs
from .stats import ParticipantStats, QueueStats, QueueView

Op = L.FlightOp
State = L.ParticipantState


@dataclasses.dataclass(frozen=True)
class Operation:
    """One recorded operation of one participant."""

    who: str  #: "writer" or "reader N"
    op: L.FlightOp
    seq: int  #: the message it concerns
    size: int  #: bytes (PUT, GET); the reader's index (DEAD_CHECK and EVICT by the writer)
    begin_ns: int  #: time.monotonic_ns(); a wait that led to the operation counts
    end_ns: int  #: 0 while it lasts (a park, a lease)
    spins: int
    yields: int
    parks: int

    @property
    def ongoing(self) -> bool:
        return self.end_ns == 0

    def short(self) -> str:
        """A few characters, for a table cell: the operation and its message."""
        suffix = (" (held)" if self.op is Op.LEASE else " (asleep)") if self.ongoing else ""
        return f"{self.op.name.lower()} {self.seq}{suffix}"

    def describe(self) -> str:
        what = {Op.PUT: f"put message {self.seq} ({self.size:,} B)", Op.PIECE: f"published a piece of message {self.seq}",
                Op.GET: f"took message {self.seq} ({self.size:,} B)", Op.WAKE: f"woke a peer for message {self.seq}",
                Op.TIMEOUT: f"timed out waiting at message {self.seq}",
                Op.DEAD_CHECK: f"found its peer dead at message {self.seq}",
                Op.EVICT: f"evicted dead reader {self.size} at its message {self.seq}",
                Op.INTERRUPTED: f"stopped waiting at message {self.seq} (cancel, close or an exception)"}
        if self.op is Op.PARK:
            return f"parked for message {self.seq}" + (" (still asleep)" if self.ongoing else "")
        if self.op is Op.LEASE:
            return f"leased message {self.seq} ({self.size:,} B)" + (" (still holds it)" if self.ongoing else "")
        return what[self.op]


@dataclasses.dataclass(frozen=True)
class Participant:
    """A participant's record as read, and its recorded operations, oldest first."""

    who: str
    record: ParticipantStats
    operations: tuple[Operation, ...]

    @property
    def last(self) -> Operation | None:
        return self.operations[-1] if self.operations else None


@dataclasses.dataclass(frozen=True)
class Verdict:
    """What a participant that is missing a message has done since."""

    who: str
    pid: int
    cursor: int  #: the first message it has not taken
    doing: str  #: dead | stopped | parked_unwoken | leasing | waiting_with_data | busy | waiting
    detail: str  #: one sentence, for people
    last: Operation | None


@dataclasses.dataclass(frozen=True)
class Analysis:
    writer_seq: int  #: messages the writer has published
    reader_seqs: dict[int, int]  #: each attached reader's cursor
    first_missing: int | None  #: the first message some attached reader has not taken; None: all caught up
    missing: tuple[Verdict, ...]  #: every reader behind the writer, the furthest behind first
    unwoken: tuple[str, ...]  #: wake-ups that were due and not recorded
    writer: str  #: what the writer is doing

    def summary(self) -> str:
        """One line, for an alert's annotation."""
        if self.first_missing is None:
            return f"every reader has taken all {self.writer_seq} messages; writer: {self.writer}"
        culprit = self.missing[0]
        return (f"message {self.first_missing} is missing at {culprit.who} (pid {culprit.pid}): {culprit.detail}"
                + (f"; {len(self.missing) - 1} more behind" if len(self.missing) > 1 else "")
                + (f"; {self.unwoken[0]}" if self.unwoken else ""))

    def as_json(self) -> dict:
        return {"writer_seq": self.writer_seq, "reader_seqs": {str(i): c for i, c in self.reader_seqs.items()},
                "first_missing": self.first_missing, "writer": self.writer, "unwoken": list(self.unwoken),
                "missing": [{"who": v.who, "pid": v.pid, "cursor": v.cursor, "doing": v.doing, "detail": v.detail,
                             "last": _operation_json(v.last)} for v in self.missing],
                "summary": self.summary()}


@dataclasses.dataclass(frozen=True)
class Flight:
    """Every participant's recorded operations, with the snapshot read beside them."""

    queue: str
    entries: int  #: the size of each participant's flight ring; 0: the queue records nothing
    snapshot: QueueStats
    participants: tuple[Participant, ...]  #: the writer, then each reader that ever attached
    read_ns: int  #: time.monotonic_ns() when it was read

    def timeline(self, last: int | None = None) -> list[Operation]:
        """Every participant's operations merged on one time axis, oldest first (the `last` ones)."""
        merged = sorted((op for p in self.participants for op in p.operations), key=lambda op: op.begin_ns)
        return merged[-last:] if last else merged

    def analyse(self) -> Analysis:
        writer = self.participants[0]
        published = self.snapshot.writer_cursor
        readers = [p for p in self.participants[1:] if p.record.state < State.CLOSED and p.record.pid]
        behind = sorted((p for p in readers if p.record.cursor < published), key=lambda p: p.record.cursor)
        wakes = [op for op in writer.operations if op.op is Op.WAKE]
        unwoken = tuple(note for p in behind if (note := _unwoken(p, wakes, published)))
        return Analysis(
            writer_seq=published,
            reader_seqs={p.record.index: p.record.cursor for p in readers},
            first_missing=behind[0].record.cursor if behind else None,
            missing=tuple(_verdict(p, published, self.read_ns) for p in behind),
            unwoken=unwoken,
            writer=_writer_doing(writer, behind, self.read_ns),
        )

    def as_json(self, last: int | None = None) -> dict:
        return {"queue": self.queue, "read_ns": self.read_ns,
                "operations": [_operation_json(op) for op in self.timeline(last)],
                "analysis": self.analyse().as_json()}

    def timeline_lines(self, last: int) -> list[str]:
        """The last operations, one line each: how long before the read, who, what, and its wait."""
        lines = []
        for op in self.timeline(last):
            took = "" if op.ongoing or op.end_ns == op.begin_ns else f" in {_duration(op.end_ns - op.begin_ns)}"
            waited = f" (spins {op.spins}, yields {op.yields}, parks {op.parks})" if op.spins or op.yields or op.parks \
                else ""
            lines.append(f"{_ago(op.begin_ns, self.read_ns):>10} ago  {op.who:<10} {op.describe()}{took}{waited}")
        return lines

    def format(self, last: int = 40) -> str:
        """The merged timeline (times relative to the read), then the analysis."""
        lines = [f"flight record of queue {self.queue!r}: the last {last} operations of "
                 f"{len(self.participants)} participants"]
        lines += [f"  {line}" for line in self.timeline_lines(last)]
        analysis = self.analyse()
        lines.append("analysis:")
        lines.append(f"  writer at message {analysis.writer_seq}: {analysis.writer}")
        for index, cursor in sorted(analysis.reader_seqs.items()):
            lines.append(f"  reader {index} at message {cursor}")
        if analysis.first_missing is None:
            lines.append("  every reader has taken every message")
        else:
            lines.append(f"  first message not taken by everyone: {analysis.first_missing}")
            lines += [f"  {v.who} (pid {v.pid}) is missing {v.cursor}..: {v.detail}" for v in analysis.missing]
        lines += [f"  {note}" for note in analysis.unwoken]
        return "\n".join(lines)


def read(view: QueueView) -> Flight:
    """Copy every participant's flight ring, and the snapshot beside it."""
    snapshot = view.snapshot()
    participants = []
    for number, record in enumerate((snapshot.writer, *snapshot.readers)):
        if number and not record.pid and not record.attaches:
            continue  # a reader index never attached has recorded nothing
        who = "writer" if number == 0 else f"reader {record.index}"
        operations = tuple(filter(None, (_operation(who, entry) for entry in view.flight_ring(number))))
        participants.append(Participant(who, record, operations))
    return Flight(view.name, view.flight_entries, snapshot, tuple(participants), time.monotonic_ns())


def last_operations(view: QueueView) -> dict[int, Operation]:
    """Each participant's newest recorded operation, by participant number (0: the writer, 1 + i: reader i)."""
    found = {}
    for number in range(1 + view.n_readers):
        entries = view.flight_ring(number, last=1)
        if entries and (op := _operation("writer" if number == 0 else f"reader {number - 1}", entries[-1])):
            found[number] = op
    return found


def _operation(who: str, entry: tuple) -> Operation | None:
    """An entry as an Operation; None for an operation this version does not know (a stray write)."""
    _stamp, op, seq, size, begin, end, spins_yields, parks = entry
    if op not in Op._value2member_map_:
        return None
    return Operation(who, Op(op), seq, size, begin, end, spins_yields >> 32, spins_yields & 0xFFFFFFFF, parks)


def _verdict(p: Participant, published: int, now_ns: int) -> Verdict:
    record, last = p.record, p.last
    cursor = record.cursor
    if not record.alive:
        doing, detail = "dead", f"its process (pid {record.pid}) is gone" + _since_last(last, now_ns)
    elif procs.run_state(record.pid) == "T":
        doing, detail = "stopped", "its process is stopped (SIGSTOP or a debugger)" + _since_last(last, now_ns)
    elif last is not None and last.op is Op.PARK and last.ongoing and last.seq < published:
        doing, detail = "parked_unwoken", (f"parked for message {last.seq} {_ago(last.begin_ns, now_ns)} ago and "
                                           f"never woken, though the writer has published up to {published - 1}")
    elif last is not None and last.op is Op.LEASE and last.ongoing:
        doing, detail = "leasing", (f"holding message {last.seq} in a lease() block since {_ago(last.begin_ns, now_ns)} "
                                    "ago: the block has not exited, and its frame stays in the ring until it does")
    elif record.state == State.WAITING_READ:
        doing, detail = "waiting_with_data", (f"in get() with message {cursor} there to take, but not taking it"
                                              + _since_last(last, now_ns))
    elif record.state == State.BUSY:
        doing, detail = "busy", (f"busy in the application since it took message {cursor - 1}"
                                 + (f", {_ago(last.end_ns, now_ns)} ago" if last is not None and last.op is Op.GET
                                    and last.end_ns else ""))
    else:
        doing, detail = "waiting", f"{State(record.state).name.lower()}" + _since_last(last, now_ns)
    return Verdict(p.who, record.pid, cursor, doing, detail, last)


def _unwoken(p: Participant, writer_wakes: list[Operation], published: int) -> str:
    """A reader asleep for a message the writer published without recording a wake for it."""
    park = p.last
    if park is None or park.op is not Op.PARK or not park.ongoing or park.seq >= published:
        return ""
    if any(w.seq >= park.seq and w.begin_ns >= park.begin_ns for w in writer_wakes):
        return ""
    return (f"{p.who} parked for message {park.seq}; the writer published it and recorded no wake-up "
            "after that park")


def _writer_doing(writer: Participant, behind: list[Participant], now_ns: int) -> str:
    record, last = writer.record, writer.last
    if not record.alive and record.pid:
        return f"dead (pid {record.pid})"
    if record.state == State.WAITING_WRITE:
        held = ", ".join(p.who for p in behind[:3]) or "a reader"
        return f"waiting for room in the ring, held by {held}" + _since_last(last, now_ns)
    return State(record.state).name.lower() + _since_last(last, now_ns)


def _since_last(last: Operation | None, now_ns: int) -> str:
    if last is None:
        return "; it recorded nothing"
    return f"; its last operation: {last.describe()}, {_ago(last.begin_ns, now_ns)} ago"


def _operation_json(op: Operation | None) -> dict | None:
    if op is None:
        return None
    return {"who": op.who, "op": op.op.name.lower(), "seq": op.seq, "size": op.size, "begin_ns": op.begin_ns,
            "end_ns": op.end_ns or None, "spins": op.spins, "yields": op.yields, "parks": op.parks}


def _ago(then_ns: int, now_ns: int) -> str:
    return _duration(max(0, now_ns - then_ns))


def _duration(ns: int) -> str:
    if ns < 1_000:
        return f"{ns} ns"
    if ns < 1_000_000:
        return f"{ns / 1e3:.1f} µs"
    if ns < 1_000_000_000:
        return f"{ns / 1e6:.1f} ms"
    return f"{ns / 1e9:.2f} s"

