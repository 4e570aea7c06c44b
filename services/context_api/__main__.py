"""``python -m context_api`` = ``lupita context-api``."""

import argparse
import sys

from context_api.cli import add_arguments, run

if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="context-api")
    add_arguments(parser)
    sys.exit(run(parser.parse_args()))
