"""``python -m stream_processor`` = ``lupita worker``."""

import sys

from lupita.cli import main

sys.exit(main(["worker", *sys.argv[1:]]))
