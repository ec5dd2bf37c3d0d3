"""`python -m qwen3vl.serve ...`: the same as `qwen3vl serve ...`."""

from __future__ import annotations

import argparse
import logging
import sys

from qwen3vl.serve.cli import add_serve_parser


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m qwen3vl.serve")
    sub = parser.add_subparsers(dest="command")
    add_serve_parser(sub)
    sub.choices["serve"].add_argument("--log-level", default="WARNING", help="logging level")
    args = parser.parse_args(["serve"] + list(sys.argv[1:] if argv is None else argv))
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
