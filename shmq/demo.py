"""``shmq demo``: an engine broadcasts batches of requests to worker processes, which reply.

The shape of an LLM server's engine-to-worker channel: every worker sees every
batch (a broadcast queue, reader i = worker i) and handles its share of the
items; each worker answers on its own result queue, of which the engine is the
single reader.
"""

from __future__ import annotations

import argparse
import dataclasses
import multiprocessing
import sys
import time

import numpy as np

from . import layout as L
from . import stats
from .errors import QueueClosed
from .reader import attach
from .writer import create

_FORK = multiprocessing.get_context("fork")


@dataclasses.dataclass(frozen=True)
class DemoConfig:
    workers: int = 4
    batches: int = 120
    items: int = 12  #: concurrent items per batch
    tokens: int = 512  #: int32 tokens per item
    reply_timeout_s: float = 30.0


@dataclasses.dataclass(frozen=True)
class DemoReport:
    batches: int  #: batches that every worker answered
    items: int  #: items answered in all
    seconds: float  #: from the first send to the last reply
    round_trip_s: tuple[float, ...]  #: per batch: send until the last worker's reply
    reader_waits: tuple[int, ...]  #: merged wait histogram of the workers (log2 buckets)
    lost: int  #: items sent but never answered


def worker(handle: str, index: int, result_handles, config: DemoConfig) -> None:
    """Attach as reader `index`, answer the items whose id falls to this worker, until the engine closes."""
    with create(1, name=f"demo-results-{index}", chunk_bytes=64 << 10, n_chunks=32) as results:
        result_handles.put((index, str(results.handle)))
        with attach(handle, index) as requests:
            results.wait_for_readers(timeout=config.reply_timeout_s)
            while True:
                try:
                    batch = requests.get()
                except QueueClosed:
                    break
                mine = [item for item in batch["items"] if item["id"] % config.workers == index]
                answers = [{"id": item["id"], "checksum": int(item["tokens"].sum())} for item in mine]
                results.put({"batch": batch["batch"], "worker": index, "answers": answers})


def run(config: DemoConfig, progress=None) -> DemoReport:
    rng = np.random.default_rng(0)
    with create(config.workers, name="demo-requests", chunk_bytes=256 << 10, n_chunks=16) as requests:
        result_handles = _FORK.Queue()
        workers = [_FORK.Process(target=worker, args=(str(requests.handle), i, result_handles, config), daemon=True)
                   for i in range(config.workers)]
        for process in workers:
            process.start()
        results = {}
        try:
            for _ in workers:
                index, handle = result_handles.get(timeout=config.reply_timeout_s)
                results[index] = attach(handle, 0)
            requests.wait_for_readers(timeout=config.reply_timeout_s)
            round_trips, answered = [], 0
            start = time.perf_counter()
            for b in range(config.batches):
                items = [{"id": b * config.items + i,
                          "tokens": rng.integers(0, 32_000, size=config.tokens, dtype=np.int32)}
                         for i in range(config.items)]
                expected = {item["id"]: int(item["tokens"].sum()) for item in items}
                sent = time.perf_counter()
                requests.put({"batch": b, "items": items}, timeout=config.reply_timeout_s)
                for index in range(config.workers):
                    reply = results[index].get(timeout=config.reply_timeout_s)
                    answered += sum(expected[a["id"]] == a["checksum"] for a in reply["answers"])
                round_trips.append(time.perf_counter() - sent)
                if progress:
                    progress(b + 1, config.batches)
            seconds = time.perf_counter() - start
            with stats.open(requests.handle) as view:
                snapshot = view.snapshot()
            waits = tuple(sum(r.histogram[i] for r in snapshot.readers) for i in range(L.HIST_BUCKETS))
        finally:
            requests.close()
            for process in workers:
                process.join(10)
                if process.is_alive():
                    process.kill()
            for reader in results.values():
                reader.close()
    return DemoReport(batches=len(round_trips), items=answered, seconds=seconds, round_trip_s=tuple(round_trips),
                      reader_waits=waits, lost=config.batches * config.items - answered)


def histogram_quantile(q: float, counts: tuple[int, ...]) -> float:
    """Upper bound of the log2 bucket that holds quantile `q`, in seconds (inf for the last bucket)."""
    total = sum(counts)
    if not total:
        return 0.0
    running = 0
    for bound, count in zip((*L.HISTOGRAM_UPPER_BOUNDS_S, float("inf")), counts):
        running += count
        if running >= q * total:
            return bound
    return float("inf")


def format_report(config: DemoConfig, report: DemoReport) -> str:
    rt = np.array(report.round_trip_s) * 1e6
    lines = [
        f"{report.batches} batches x {config.items} items to {config.workers} workers in {report.seconds:.2f} s: "
        f"{report.batches / report.seconds:,.0f} batches/s, {report.items / report.seconds:,.0f} items/s, "
        f"{report.lost} lost",
        f"batch round trip (send to last reply): p50 {np.percentile(rt, 50):,.0f} us, "
        f"p99 {np.percentile(rt, 99):,.0f} us, max {rt.max():,.0f} us",
        f"worker waits in get(): {sum(report.reader_waits)} waits, p50 <= "
        f"{histogram_quantile(0.5, report.reader_waits) * 1e6:,.0f} us, p99 <= "
        f"{histogram_quantile(0.99, report.reader_waits) * 1e6:,.0f} us (log2 buckets)",
    ]
    return "\n".join(lines)


def progress_bar(done: int, total: int, width: int = 40) -> None:
    filled = width * done // total
    sys.stdout.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total} batches")
    if done == total:
        sys.stdout.write("\n")
    sys.stdout.flush()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = DemoConfig()
    parser.add_argument("--workers", type=int, default=defaults.workers)
    parser.add_argument("--batches", type=int, default=defaults.batches)
    parser.add_argument("--items", type=int, default=defaults.items, help="concurrent items per batch")
    parser.add_argument("--tokens", type=int, default=defaults.tokens, help="int32 tokens per item")


def main(args: argparse.Namespace) -> int:
    config = DemoConfig(workers=args.workers, batches=args.batches, items=args.items, tokens=args.tokens)
    report = run(config, progress=progress_bar)
    print(format_report(config, report))
    return 0 if report.lost == 0 else 1
