"""``shmq flight QUEUE``: every participant's last operations on one time axis, and the analysis."""

from __future__ import annotations

import argparse
import json
import sys

from shmq import flight, stats
from shmq.errors import ShmqError
from shmq.segment import SHM_DIR


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("queue", help="a handle, a shmq-... shm name, or a queue name")
    parser.add_argument("--last", type=int, default=40, metavar="N", help="operations shown (default %(default)s)")
    parser.add_argument("--json", action="store_true", help="print JSON: the operations and the analysis")
    parser.add_argument("--shm-dir", default=SHM_DIR, help="where POSIX shared memory lives (default %(default)s)")


def main(args: argparse.Namespace) -> int:
    try:
        with stats.open(args.queue, shm_dir=args.shm_dir) as view:
            record = flight.read(view)
    except ShmqError as e:
        print(f"shmq flight: {e}", file=sys.stderr)
        return 1
    if not record.entries:
        print(f"shmq flight: queue {record.queue!r} was created with flight_entries=0: it records nothing",
              file=sys.stderr)
        return 1
    print(json.dumps(record.as_json(args.last), indent=2) if args.json else record.format(args.last))
    return 0
