"""The ``int8lab`` command: ``int8lab demo`` runs the lab end to end."""

from __future__ import annotations

import argparse
import sys
import time


def _demo(args) -> int:
    from .data import load_data
    from .training import evaluate, trained_model

    started = time.perf_counter()
    _, test_loader = load_data(args.dataset)
    model = trained_model(args.dataset)
    accuracy = evaluate(model, test_loader)
    print(f"float Net on {args.dataset}: test accuracy {accuracy:.2f}% ({time.perf_counter() - started:.1f} s)")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="int8lab", description="int8 post-training quantization lab")
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="run the lab end to end on a dataset")
    demo.add_argument("--dataset", default="digits", choices=("digits", "cifar10"))
    demo.set_defaults(run=_demo)
    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
