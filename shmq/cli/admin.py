"""``shmq list`` and ``shmq cleanup``."""

from __future__ import annotations

import argparse

from shmq.segment import SHM_DIR, cleanup, list_segments


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--shm-dir", default=SHM_DIR, help="where POSIX shared memory lives (default %(default)s)")


def main(args: argparse.Namespace) -> int:
    if args.command == "cleanup":
        for shm_name in cleanup(args.shm_dir):
            print(f"unlinked {shm_name}")
        return 0
    for info in list_segments(args.shm_dir):
        if info.error:
            print(f"{info.shm_name}  unreadable: {info.error}")
        else:
            alive = "alive" if info.creator_alive else "DEAD"
            print(f"{info.shm_name}  {info.name!r}  creator pid {info.creator_pid} ({alive})  {info.size_bytes:,} B")
    return 0
