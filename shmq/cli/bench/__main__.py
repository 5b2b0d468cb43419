"""``python -m shmq.cli.bench``: the same as ``shmq bench``."""

import sys

from .. import main

sys.exit(main(["bench", *sys.argv[1:]]))
