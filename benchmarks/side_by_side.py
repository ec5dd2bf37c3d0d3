"""Shared setup of the one-process benchmarks (bench_beam.py, bench_prompt_lookup.py): the flags for a random
checkpoint, and both models loaded on its weights."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_checkpoint_flags(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--ckpt", default="/tmp/qwen3vl-bench-2b")
    ap.add_argument("--preset", default="2B", help="the random checkpoint's shape, when --ckpt does not exist yet")
    ap.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=2, help="best of this many timed runs per side and case")


def load_both(args: argparse.Namespace):
    """(ours, transformers' model) on the same random checkpoint, written first if `--ckpt` holds none."""
    import torch
    from transformers import Qwen3VLForConditionalGeneration

    import qwen3vl
    from qwen3vl.model.testing import write_random_checkpoint

    torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    if not (Path(args.ckpt) / "config.json").exists():
        print(f"writing a {args.preset}-shaped random {args.dtype} checkpoint to {args.ckpt} ...", flush=True)
        write_random_checkpoint(args.ckpt, args.preset, seed=0, dtype=dtype)
    ours = qwen3vl.load_model(args.ckpt, dtype=dtype)
    ref = Qwen3VLForConditionalGeneration.from_pretrained(args.ckpt, dtype=dtype, attn_implementation="sdpa").eval()
    return ours, ref
