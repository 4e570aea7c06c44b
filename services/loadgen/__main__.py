"""``python -m loadgen ...`` is ``lupita call ...``."""

import sys

from lupita.cli import main

if __name__ == "__main__":
    sys.exit(main(["call", *sys.argv[1:]]))
