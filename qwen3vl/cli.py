"""`qwen3vl` command line: each subcommand maps to a typed function elsewhere; no logic lives here."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

# (module, function) pairs that add subcommands to the parser, in the order `--help` lists them
_PARSERS = [
    ("qwen3vl.commands", "add_run_parser"),
    ("qwen3vl.commands", "add_chat_parser"),
    ("qwen3vl.commands", "add_init_random_parser"),
    ("qwen3vl.serve.cli", "add_serve_parser"),
    ("qwen3vl.serve.cli", "add_run_batch_parser"),
    ("qwen3vl.train.cli", "add_parser"),
    ("qwen3vl.tasks.cli", "add_ground_parser"),
    ("qwen3vl.tasks.cli", "add_ground3d_parser"),
    ("qwen3vl.tasks.cli", "add_document_parser"),
    ("qwen3vl.tasks.cli", "add_ocr_parser"),
    ("qwen3vl.tasks.cli", "add_clip_parser"),
    ("qwen3vl.tasks.cli", "add_captions_parser"),
    ("qwen3vl.tasks.cli", "add_agent_parser"),
    ("qwen3vl.tasks.cli", "add_eval_parser"),
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="qwen3vl", description="Run, serve and fine-tune Qwen3-VL models.")
    parser.add_argument("--log-level", default="WARNING", help="logging level (DEBUG, INFO, WARNING, ...)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module, name in _PARSERS:
        getattr(importlib.import_module(module), name)(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    if not getattr(args, "func", None):
        parser.print_help()
        return 1
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
