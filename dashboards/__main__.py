"""``python -m dashboards`` regenerates the dashboards, the rules and docs/metrics.md; ``--check`` only reports stale files."""

from __future__ import annotations

import argparse
import sys

from . import generate


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dashboards", description=__doc__)
    parser.add_argument("--check", action="store_true", help="exit 1 if a committed file differs from the code")
    args = parser.parse_args(argv)
    if args.check:
        stale = generate.stale()
        for path in stale:
            print(f"stale: {path} (run `python -m dashboards`)", file=sys.stderr)
        return 1 if stale else 0
    for path in generate.write():
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
