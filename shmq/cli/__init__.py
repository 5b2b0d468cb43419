"""The ``shmq`` command (also ``python -m shmq``): the command-line layer.

This package is where the core and the telemetry package are composed: the rest
of ``shmq`` never imports ``telemetry`` (tests/test_layers.py checks it), while
the demo and the benchmarks here use both, and the exporter, watchdog and top
subcommands live in ``telemetry``. Each subcommand is a module with
``add_arguments(parser)`` and ``main(args) -> int``, imported only when that
subcommand runs.
"""

from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS = {
    "demo": ("shmq.cli.demo", "run the engine-and-workers demo"),
    "bench": ("shmq.cli.bench", "benchmark shmq against its peers side by side"),
    "list": ("shmq.cli.admin", "list shmq segments in /dev/shm"),
    "cleanup": ("shmq.cli.admin", "unlink segments whose creator died, and unused ones of other shmq versions"),
    "flight": ("shmq.cli.flight", "every participant's last operations, and what they say about a stall"),
    "relay": ("shmq.cli.relay", "republish a queue from another host into a local one"),
    "exporter": ("shmq.telemetry.exporter", "serve Prometheus metrics for shmq queues"),
    "watchdog": ("shmq.telemetry.watchdog", "flag stalled, dead and livelocked participants"),
    "top": ("shmq.telemetry.top", "live view of queues and participants"),
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in COMMANDS:
        width = max(map(len, COMMANDS))
        listing = "\n".join(f"  {name:<{width}}  {help_}" for name, (_, help_) in COMMANDS.items())
        print(f"usage: shmq COMMAND [options]\n\ncommands:\n{listing}", file=sys.stderr if argv else sys.stdout)
        return 0 if not argv or argv[0] in ("-h", "--help") else 2
    name = argv[0]
    module = importlib.import_module(COMMANDS[name][0])
    parser = argparse.ArgumentParser(prog=f"shmq {name}", description=COMMANDS[name][1])
    module.add_arguments(parser)
    args = parser.parse_args(argv[1:])
    args.command = name
    return module.main(args) or 0


if __name__ == "__main__":
    sys.exit(main())
