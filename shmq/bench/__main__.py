"""``python -m shmq.bench``: the same as ``shmq bench``."""

import sys

from ..cli import main

sys.exit(main(["bench", *sys.argv[1:]]))
