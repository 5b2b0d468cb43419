"""``shmq relay HANDLE``: republish a queue from another host into a local one (shmq.relay)."""

from __future__ import annotations

import argparse
import sys

from shmq.relay import Relay
from shmq.remote import DEFAULT_GRACE_S


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("handle", help="the origin queue's handle (str(writer.handle))")
    parser.add_argument("--readers", type=int, required=True, help="local readers of the relayed queue")
    parser.add_argument("--reader", type=int, default=None,
                        help="the origin's remote reader slot to hold (default: the first free one)")
    parser.add_argument("--endpoint", default=None, help="the origin's address, if not the handle's")
    parser.add_argument("--name", default=None, help="the local queue's name (default: the origin's)")
    parser.add_argument("--ring-bytes", type=int, default=None, help="the local ring's size")
    parser.add_argument("--grace", type=float, default=DEFAULT_GRACE_S,
                        help="seconds the origin may stay unreachable (default %(default)s)")


def main(args: argparse.Namespace) -> int:
    options = {"name": args.name} if args.name else {}
    if args.ring_bytes:
        options["ring_bytes"] = args.ring_bytes
    relay = Relay(args.handle, args.readers, reader=args.reader, endpoint=args.endpoint, grace_s=args.grace,
                  **options)
    print(relay.handle, flush=True)  # what the local readers attach to
    try:
        relay.run()
    except KeyboardInterrupt:
        relay.close()
        return 130
    except Exception as e:  # the origin died or stayed unreachable: our readers see us die
        print(f"shmq relay: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    print(f"shmq relay: the origin closed after {relay.relayed} messages", file=sys.stderr)
    return 0
