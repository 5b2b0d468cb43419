"""What is sent in a benchmark row, to how many readers, and how much of each measurement phase."""

from __future__ import annotations

import dataclasses
import time

import numpy as np

KINDS = ("small", "large", "huge", "mixed")
DEFAULT_WORKLOADS = "small-1,small-4,small-8,large-1,huge-1"
MiB = 1 << 20

_TOKENS = list(range(1000, 1048))  # with seq and timestamp: a 200-byte pickle
_MIXED_MEDIUM, _MIXED_LARGE = 64 << 10, 4 * MiB


@dataclasses.dataclass(frozen=True)
class Workload:
    """One kind of message sent to `n_readers` readers."""

    #: small (a ~200 B dict), large (a 1 MiB numpy array), huge (16 MiB: in pieces through the default ring),
    #: mixed (of every 100 messages, 90 small, 9 with a 64 KiB array and 1 with a 4 MiB one, interleaved)
    kind: str
    n_readers: int  #: readers, each receiving every message

    @property
    def name(self) -> str:
        return f"{self.kind}-{self.n_readers}"

    @property
    def array_bytes(self) -> int:
        """Bytes of the largest numpy array a message carries; 0 for small messages."""
        return {"small": 0, "large": MiB, "huge": 16 * MiB, "mixed": _MIXED_LARGE}[self.kind]

    def bytes_of(self, seq: int) -> int:
        """Bytes of the array in message `seq` (what its readers check); 0 for a small one."""
        if self.kind != "mixed":
            return self.array_bytes
        place = seq % 100
        return _MIXED_LARGE if place == 50 else _MIXED_MEDIUM if place % 10 == 5 else 0

    @property
    def payload_bytes(self) -> float:
        """What one message carries on average, for GB/s: its array, or the pickled size of a small dict."""
        if self.kind == "mixed":
            return sum(self.bytes_of(seq) or 200 for seq in range(100)) / 100
        return self.array_bytes or 200

    def maker(self):
        """A function seq -> message, stamping the send time as late as possible.

        Every call builds a new dict: multiprocessing.Queue pickles in a feeder
        thread after put() returns, so a reused dict would be sent mutated.
        """
        tokens = _TOKENS
        if self.kind == "small":
            return lambda seq: {"seq": seq, "t": time.perf_counter_ns(), "op": "step", "tokens": tokens}
        if self.kind == "mixed":
            arrays = {n: np.arange(n, dtype=np.uint8) for n in (_MIXED_MEDIUM, _MIXED_LARGE)}

            def mixed(seq):
                n = self.bytes_of(seq)
                if not n:
                    return {"seq": seq, "t": time.perf_counter_ns(), "op": "step", "tokens": tokens}
                return {"seq": seq, "t": time.perf_counter_ns(), "data": arrays[n]}
            return mixed
        data = np.arange(self.array_bytes, dtype=np.uint8)
        return lambda seq: {"seq": seq, "t": time.perf_counter_ns(), "data": data}


def parse_workloads(text: str) -> list[Workload]:
    """``small-1,small-4,large-1`` -> workloads; raises ValueError naming the bad entry."""
    workloads = []
    for entry in filter(None, (e.strip() for e in text.split(","))):
        kind, _, readers = entry.partition("-")
        if kind not in KINDS or not readers.isdigit() or not 1 <= int(readers) <= 64:
            raise ValueError(f"--workloads: {entry!r} is not KIND-N with KIND in {KINDS} and N in 1..64")
        workloads.append(Workload(kind, int(readers)))
    return workloads


@dataclasses.dataclass(frozen=True)
class Plan:
    """How many messages each measurement phase sends, and its time limits."""

    throughput: int  #: messages sent back to back; msgs/s and GB/s
    latency: int  #: messages sent one at a time, each after every reader acknowledged the previous
    wake: int  #: ack-paced messages sent after a pause, to readers that have parked
    wake_gap_s: float  #: the pause before each wake-up message
    idle_s: float  #: how long readers wait on an empty queue while their CPU time is measured
    stall_s: float  #: a reader or writer that sees no progress for this long gives up (and reports loss)


def plan_for(workload: Workload, *, quick: bool, idle_s: float, scale: float = 1.0) -> Plan:
    """Message counts sized so a row takes seconds (or a fraction of one with `quick`).

    Idle CPU and wake-up are measured on small-message rows only: they do not
    depend on the message size, and each costs `idle_s` plus the pauses.
    """
    few_readers = workload.n_readers <= 2  # more readers than cores: every ack-paced message waits for all
    counts = {
        ("small", False): (50_000 if workload.n_readers <= 4 else 20_000, 2000 if few_readers else 500, 40),
        ("small", True): (2000, 100 if few_readers else 30, 3),
        ("large", False): (2000, 200, 0),
        ("large", True): (60, 20, 0),
        ("huge", False): (150, 30, 0),
        ("huge", True): (6, 4, 0),
        ("mixed", False): (30_000 if workload.n_readers <= 4 else 10_000, 300, 0),
        ("mixed", True): (200, 20, 0),
    }
    throughput, latency, wake = counts[workload.kind, quick]
    small = workload.kind == "small"
    return Plan(
        throughput=max(1, int(throughput * scale)),
        latency=max(1, int(latency * scale)),
        wake=int(wake * scale) if small else 0,
        wake_gap_s=0.005 if quick else 0.02,
        idle_s=idle_s if small else 0.0,
        stall_s=5.0 if quick else 15.0,
    )
