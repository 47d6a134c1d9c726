"""Command line for the experiments.

Usage: ``python -m normtut.experiments small-batch [--norms bn gn ...] [--out results.csv]``
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from . import small_batch


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` (default: sys.argv[1:]) and run the chosen experiment."""
    parser = argparse.ArgumentParser(
        prog="python -m normtut.experiments", description=__doc__.split("\n")[0]
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="EXPERIMENT")
    sub = commands.add_parser(
        "small-batch",
        help="BatchNorm vs GroupNorm as the batch shrinks (sklearn digits)",
        description=small_batch.__doc__.split("\n\n")[0],
    )
    small_batch.add_arguments(sub)
    args = parser.parse_args(argv)
    return small_batch.main(args)


if __name__ == "__main__":
    sys.exit(main())
