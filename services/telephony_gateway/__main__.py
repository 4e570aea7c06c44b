"""``python -m telephony_gateway`` = ``lupita gateway``."""

import argparse
import sys

from .cli import add_arguments, run

if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="telephony_gateway")
    add_arguments(parser)
    sys.exit(run(parser.parse_args()))
