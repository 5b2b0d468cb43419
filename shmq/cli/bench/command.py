"""The ``shmq bench`` command line: choose rows, run them side by side, print one markdown table."""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import statistics
import sys
import time

from . import cadence, configs, limits, peers, soak, trial, vllm_peers, workloads
from .table import Row, load_average, machine_line, markdown

EPILOG = """\
rows: every shmq wait strategy (BusySpin, Yield, Backoff, Adaptive, SpinYieldPark = default),
a zero-copy lease row on large messages, then each peer, for every workload
(zenoh: peer sessions over a Unix socket, its default copying transport), and
vLLM's MessageQueue beside shmq.vllm's drop-in for it (module vllm_peers; vLLM's
row needs vllm importable); then the limits of this machine (the 1 MiB ring ones run interleaved with the large rows). A peer that is not installed shows as skipped.

--compare replaces the shmq rows with the given configurations and leaves out
peers and limits, e.g. to measure the cost of counters or tracing:

  shmq bench --compare stats=on,stats=off --repeat 5 --workloads small-1,small-4
  shmq bench --compare wait=BusySpin,wait=SpinYieldPark,wait=SpinYieldPark:spins=50:yields=100
  shmq bench --compare hooks=off,hooks=shmq.cli.bench.tracing_hooks:tracing_1_percent
  shmq bench --compare tracing --repeat 20 --workloads small-1   (stats and every tracing
                                                                  configuration: tracing_hooks)

A configuration is key=value options joined by '+': wait=NAME[:ARG=VALUE...], stats=on|off,
lease=on|off, hooks=MODULE:CALLABLE (called in every process, its result passed
to shmq.hooks.install; hooks=off installs none), ring_bytes=INT, and chunk_bytes=INT with
n_chunks=INT (a ring sized as shmq's old fixed slots: n_chunks frames of chunk_bytes).

--cadence measures an engine's step cadence instead (module cadence): one ~500 B
message (and one carrying a 10 KB array) every 0.1, 1, 10 and 50 ms (± 2 %) to 1, 4
and 8 readers; latency p50/p99/p99.9 and reader and writer CPU for every wait
strategy (Adaptive included), pyzmq, iceoryx2 (its event listener), zenoh and
vLLM's MessageQueue when importable; then the machine's timer slack, timed-futex
lateness and wake latency. --compare replaces its shmq rows, e.g.

  shmq bench --cadence --compare wait=SpinYieldPark,wait=Adaptive --periods 1,10 --readers 1,4

--watchdog measures shmq watchdog instead (module watchdog): detection latency per
rule, freeze_risk's lead time before the writer blocks, the margins of a healthy
workload below the thresholds, and the watchdog's CPU.
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = EPILOG
    parser.add_argument("--quick", action="store_true",
                        help="few messages and a short idle phase (a smoke run of seconds, not a measurement)")
    parser.add_argument("--workloads", default=workloads.DEFAULT_WORKLOADS, metavar="LIST",
                        help=f"comma-separated KIND-N, KIND in small|large|huge|mixed (default {workloads.DEFAULT_WORKLOADS})")
    parser.add_argument("--compare", action="append", metavar="SPECS",
                        help="compare shmq configurations: SPEC[,SPEC...]; may be repeated (see below)")
    parser.add_argument("--repeat", type=int, default=1, metavar="R",
                        help="run every row R times, interleaved, and report medians (default 1)")
    parser.add_argument("--scale", type=float, default=1.0, metavar="F", help="multiply every message count by F")
    parser.add_argument("--idle-seconds", type=float, default=None, metavar="S",
                        help="how long readers wait on an empty queue for the idle CPU column (default 3, quick 0.3)")
    parser.add_argument("--row-timeout", type=float, default=None, metavar="S",
                        help="kill a row (writer and readers) that runs longer (default 300, quick 60)")
    for peer in ("mpq", "zmq", "faster-fifo", "iceoryx2", "zenoh", "vllm"):
        parser.add_argument(f"--no-{peer}", action="store_true", help=f"leave out the {peer} rows")
    parser.add_argument("--remote", action="store_true",
                        help="instead of the local transports: shmq's remote readers, a shmq relay feeding local "
                             "readers, and pyzmq PUB/SUB, all over loopback TCP")
    parser.add_argument("--no-strategies", action="store_true",
                        help="only the default strategy (and the lease row), not one row per wait strategy")
    parser.add_argument("--no-limits", action="store_true",
                        help="leave out the limit rows (memcpy, 1 MiB ring, ping-pong, pickle-only ring, futex wake)")
    parser.add_argument("--json", metavar="PATH", help="also write every row's figures to PATH as JSON")
    parser.add_argument("--soak", action="store_true",
                        help="instead: send --soak-messages to --soak-readers readers and report msgs/s, RSS of "
                             "every process at start and end, leftover files in /dev/shm and /tmp, and loss "
                             "(with --compare, in its first configuration); exits 1 on loss or leftovers")
    parser.add_argument("--soak-messages", type=int, default=1_000_000, metavar="N")
    parser.add_argument("--soak-readers", type=int, default=8, metavar="N")
    parser.add_argument("--watchdog", action="store_true",
                        help="instead: benchmark shmq watchdog (its real sidecar against real queues) and print "
                             "Markdown tables; --quick runs fewer trials")
    parser.add_argument("--cadence", action="store_true",
                        help="instead: the engine-cadence workload (one message every period to N readers; latency "
                             "p50/p99/p99.9 and reader/writer CPU per wait strategy and peer), then this machine's "
                             "timer slack, timed-futex lateness and wake latency; --quick runs 2 cells")
    parser.add_argument("--periods", default=None, metavar="MS_LIST",
                        help=f"with --cadence: periods in ms (default {','.join(f'{p:g}' for p in cadence.PERIODS_MS)})")
    parser.add_argument("--readers", default=None, metavar="LIST",
                        help=f"with --cadence: reader counts (default {','.join(map(str, cadence.READERS))})")
    parser.add_argument("--sizes", default=None, metavar="LIST",
                        help=f"with --cadence: message sizes, of {', '.join(cadence.SIZES)} (default all)")
    parser.add_argument("--watchdog-part", action="append", metavar="PART",
                        help="with --watchdog, only this part: latency, lead, margins or cpu (repeat for more)")


def main(args: argparse.Namespace) -> int:
    try:
        compared = [c for text in args.compare or () for c in configs.parse_specs(text)]
        chosen = workloads.parse_workloads(args.workloads)
    except ValueError as e:
        print(f"shmq bench: {e}", file=sys.stderr)
        return 2
    if args.watchdog:
        from . import watchdog  # needs the telemetry extra

        parts = set(args.watchdog_part or watchdog.PARTS)
        if not parts <= set(watchdog.PARTS):
            print(f"shmq bench: --watchdog-part must be one of {', '.join(watchdog.PARTS)}, not "
                  f"{', '.join(sorted(parts - set(watchdog.PARTS)))}", file=sys.stderr)
            return 2
        watchdog.run(parts, quick=args.quick)
        return 0
    if args.cadence:
        return _cadence(args, compared)
    if args.soak:
        config = compared[0] if compared else configs.ShmqConfig(label="shmq SpinYieldPark")
        report, clean = soak.run_soak(args.soak_messages, args.soak_readers, config)
        print(report)
        return 0 if clean else 1

    idle_s = args.idle_seconds if args.idle_seconds is not None else (0.3 if args.quick else 3.0)
    row_timeout = args.row_timeout or (60.0 if args.quick else 300.0)
    print(f"shmq bench{' --quick' if args.quick else ''}: {machine_line()}", flush=True)
    load_at_start = load_average()
    rows: list[Row] = []
    iceoryx2_before = peers.iceoryx2_global_state()
    ring_ceilings = None
    pickle_ceilings: dict[int, Row] = {}
    limits_wanted = not (compared or args.remote or args.no_limits)
    try:
        for workload in chosen:
            plan = workloads.plan_for(workload, quick=args.quick, idle_s=idle_s, scale=args.scale)
            measures = [functools.partial(_timed_row, p, workload, plan, row_timeout)
                        for p in _candidates(args, compared, workload)]
            n_rows = len(measures)
            # This machine's speed moves minute to minute: the ceilings run beside the rows they bound.
            if workload.kind == "large" and ring_ceilings is None and limits_wanted:
                measures += limits.ring_ceilings(quick=args.quick)
            elif workload.kind == "small" and workload.n_readers in limits.PICKLE_RING_READERS and limits_wanted:
                measures.append(functools.partial(_timed_row, limits.PickleRingPeer(workload.n_readers), workload,
                                                  plan, row_timeout))
            runs = [[measure() for measure in measures] for _ in range(args.repeat)]
            medians = [_median_row([run[i] for run in runs]) for i in range(len(measures))]
            rows.extend(medians[:n_rows])
            if len(measures) > n_rows and workload.kind == "large":
                ring_ceilings = medians[n_rows:]
            elif len(measures) > n_rows:
                pickle_ceilings[workload.n_readers] = limits.as_limit(medians[n_rows])
    finally:
        peers.remove_iceoryx2_global_state(iceoryx2_before)
    if limits_wanted:
        rows.extend(limits.limit_rows(quick=args.quick, ring_rows=ring_ceilings, pickle_rows=pickle_ceilings))
    print()
    print(markdown(rows))
    print(f"\n1-minute load average: {load_at_start} at the start, {load_average()} at the end.")
    if args.repeat > 1:
        print(f"\nEach row is the median of {args.repeat} interleaved runs; lost is their sum.")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": machine_line(), "rows": [dataclasses.asdict(r) for r in rows]}, f, indent=1)
    return 1 if any(r.lost for r in rows) else 0


def _cadence(args: argparse.Namespace, compared: list) -> int:
    try:
        periods = [float(p) for p in args.periods.split(",")] if args.periods else \
            ([1.0, 10.0] if args.quick else list(cadence.PERIODS_MS))
        readers = [int(n) for n in args.readers.split(",")] if args.readers else \
            ([1] if args.quick else list(cadence.READERS))
    except ValueError:
        print("shmq bench: --periods takes numbers of ms and --readers integers, comma-separated", file=sys.stderr)
        return 2
    sizes = args.sizes.split(",") if args.sizes else (["small"] if args.quick else list(cadence.SIZES))
    if not set(sizes) <= set(cadence.SIZES) or not all(p > 0 for p in periods) or not all(1 <= n <= 64 for n in readers):
        print(f"shmq bench: --sizes must be of {', '.join(cadence.SIZES)}, --periods > 0, --readers in 1..64",
              file=sys.stderr)
        return 2
    chosen = cadence.transports(zmq=not args.no_zmq, iceoryx2=not args.no_iceoryx2, zenoh=not args.no_zenoh,
                                vllm=not args.no_vllm)
    if compared:
        chosen = [peers.ShmqPeer(c) for c in compared] + [p for p in chosen if not p.is_shmq]
    rows = cadence.run(cadence.cells(quick=args.quick, periods_ms=periods, readers=readers, sizes=sizes), chosen,
                       quick=args.quick)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": machine_line(), "rows": [dataclasses.asdict(r) for r in rows]}, f, indent=1)
    return 1 if any(r.lost for r in rows) else 0


def _candidates(args: argparse.Namespace, compared: list, workload: workloads.Workload) -> list[peers.Peer]:
    if args.remote:
        return peers.remote_rows(zmq=not args.no_zmq)
    if compared:
        return [peers.ShmqPeer(c) for c in compared]
    shmq_rows = configs.strategy_rows()[-1:] if args.no_strategies else configs.strategy_rows()
    if workload.kind == "large":
        shmq_rows.append(configs.LEASE)
    chosen = [peers.ShmqPeer(c) for c in shmq_rows]
    return chosen + peers.peer_rows(mpq=not args.no_mpq, zmq=not args.no_zmq, faster_fifo=not args.no_faster_fifo,
                                    iceoryx2=not args.no_iceoryx2, zenoh=not args.no_zenoh) \
        + vllm_peers.peer_rows(vllm=not args.no_vllm)


def _median_row(runs: list[Row]) -> Row:
    """Medians of each figure over repeated runs of one row; losses add up and notes are kept."""
    if len(runs) == 1:
        return runs[0]

    def median(name: str):
        values = [getattr(r, name) for r in runs if getattr(r, name) is not None]
        return statistics.median(values) if values else None

    figures = ("msgs_per_s", "gb_per_s", "cpu_us_per_msg", "p50_us", "p99_us", "idle_cpu_pct", "wake_p50_us",
               "writer_rss_mb", "reader_rss_mb", "sidecar_cpu_pct", "sidecar_traced_pct")
    lost = [r.lost for r in runs if r.lost is not None]
    return dataclasses.replace(runs[0], **{name: median(name) for name in figures},
                               lost=sum(lost) if lost else None,
                               note="; ".join(sorted({r.note for r in runs if r.note})))


def _timed_row(peer: peers.Peer, workload: workloads.Workload, plan: workloads.Plan, timeout_s: float) -> Row:
    """Run one row, with a progress line on stderr (the table goes to stdout)."""
    start = time.monotonic()
    row = trial.run_row(peer, workload, plan, timeout_s)
    rate = f"{row.msgs_per_s:>10,.0f} msgs/s  lost {row.lost}" if row.msgs_per_s is not None else ""
    print(f"  {workload.name:<8} {peer.label:<32} {time.monotonic() - start:5.1f} s {rate}  {row.note}",
          file=sys.stderr, flush=True)
    return row
