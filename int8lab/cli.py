"""The ``int8lab`` command line."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _demo(args) -> int:
    from .demo import run

    return run(Path(args.out), Path(args.json) if args.json else None, Path(args.solutions) if args.solutions else None)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="int8lab", description="int8 post-training quantization lab")
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser(
        "demo", help="run the three solution notebooks end to end on the digits data and print the accuracy table"
    )
    demo.add_argument(
        "--out", default="results", help="folder for the executed notebooks and figures (default: results)"
    )
    demo.add_argument("--json", metavar="PATH", help="also write the accuracy table as JSON to PATH")
    demo.add_argument("--solutions", metavar="DIR", help="the solution notebooks' folder (default: the repository's)")
    demo.set_defaults(run=_demo)
    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
