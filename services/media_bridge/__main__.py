"""``python -m media_bridge [options]``: the same as ``lupita bridge [options]``."""

import sys

from lupita.cli import main

sys.exit(main(["bridge", *sys.argv[1:]]))
