"""The ``seghiresgradcam`` command line."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _demo(arguments) -> int:
    from .toy_example import run_toy_example

    summary = run_toy_example(Path(arguments.out))
    print(f"Toy example written to {arguments.out}/ (figure.png, one heatmap per method)")
    print(f"  trained a small 2D U-Net in {summary['training_s']:.1f} s; total {summary['seconds']:.1f} s")
    for name, numbers in summary["methods"].items():
        print(
            f"  {name:20s} layer {numbers['layer']:8s} T = {numbers['score']:10.2f}   "
            f"heat inside the segment: {100 * numbers['mass_in_segment']:5.1f} %"
        )
    return 0


def _methods(arguments) -> int:
    from .methods import METHODS

    for method in METHODS.values():
        print(f"{method.name:20s} {method.title}  ({method.reference})")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="seghiresgradcam", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="run the built-in example and write a figure")
    demo.add_argument("--out", default="demo_output", help="output folder (default: demo_output)")
    demo.set_defaults(run=_demo)
    methods = commands.add_parser("methods", help="list the registered CAM methods")
    methods.set_defaults(run=_methods)
    arguments = parser.parse_args(argv)
    return arguments.run(arguments)


if __name__ == "__main__":
    sys.exit(main())
