"""`python -m loadtests ...`; the parser and command live in loadtests.cli."""

import sys

from loadtests.cli import build_parser, run_cli

__all__ = ["build_parser", "run_cli"]

if __name__ == "__main__":
    sys.exit(run_cli())
