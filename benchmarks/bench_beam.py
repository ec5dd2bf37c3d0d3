"""Beam search: ours (engine/beam.py through the engine, as `LLM.beam_search` runs it) against transformers 5.23's
`generate(num_beams=W, do_sample=False)`, in one process on the same random weights and the same inputs.

Prompts are token ids (plus random pixel values in the processor's layout for the image case), so both sides see
identical tensors and preprocessing is not timed. Two cases: a 32-token text prompt, and a prompt with one
448x448 image (196 visual tokens). Each side searches W beams for `--new-tokens` tokens (no end token: the random
model is not asked to stop, so both run to the limit). Printed: seconds per search, the ratio, and whether the two
sides found the same best hypothesis (bf16 on random weights: near-ties may order differently).

    python benchmarks/bench_beam.py                     # 2B-shaped bf16 checkpoint at /tmp/qwen3vl-bench-2b
    python benchmarks/bench_beam.py --preset debug --dtype float32 --ckpt /tmp/qwen3vl-bench-debug
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from side_by_side import add_checkpoint_flags, load_both

IMAGE_GRID = (1, 28, 28)  # 448x448: 28x28 patches, 196 merged tokens


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_checkpoint_flags(ap)
    ap.add_argument("--width", type=int, default=4)
    ap.add_argument("--new-tokens", type=int, default=32)
    args = ap.parse_args()

    import torch

    from qwen3vl.engine.beam import EngineExpander, beam_search
    from qwen3vl.engine.engine import Engine, EngineConfig
    from qwen3vl.engine.sequence import MediaItem

    ours, ref = load_both(args)
    dtype = getattr(torch, args.dtype)
    cfg = ours.config
    engine = Engine(ours, eos_token_ids=[], config=EngineConfig(kv_cache_bytes=1024**3))

    g = torch.Generator().manual_seed(0)

    def text(n):
        vocab = cfg.text_config.vocab_size  # (ordinary tokens: clear of the special ids at the top)
        return torch.randint(min(1000, vocab // 4), min(100000, vocab // 2), (n,), generator=g).tolist()

    t, h, w = IMAGE_GRID
    n_img = t * h * w // 4
    patch = cfg.vision_config.in_channels * cfg.vision_config.temporal_patch_size * cfg.vision_config.patch_size ** 2
    pixels = torch.randn(t * h * w, patch, generator=g).to(dtype)
    cases = {"text, 32-token prompt": (text(32), None),
             "one 448x448 image": (text(12) + [cfg.vision_start_token_id] + [cfg.image_token_id] * n_img
                                   + [cfg.vision_end_token_id] + text(20), pixels)}

    def run_ours(ids, px, key):
        media = [MediaItem(key, IMAGE_GRID, 13, n_img, px)] if px is not None else []
        expand = EngineExpander(engine, ids, media, ["image"] * len(media))
        return beam_search(expand, args.width, args.new_tokens, end_ids=[])[0].tokens

    def run_ref(ids, px):
        input_ids = torch.tensor([ids])
        kw = {}
        if px is not None:
            kw = {"pixel_values": px, "image_grid_thw": torch.tensor([IMAGE_GRID]),
                  "mm_token_type_ids": (input_ids == cfg.image_token_id).long()}
        with torch.no_grad():
            out = ref.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), num_beams=args.width,
                               do_sample=False, max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens,
                               eos_token_id=None, pad_token_id=0, early_stopping=False, **kw)
        return out[0, len(ids):].tolist()

    run_ours(text(8), None, "warm")  # warm-up: first calls of each path
    run_ours(cases["one 448x448 image"][0], pixels, "warm-image")
    run_ref(text(8), None)
    print(f"machine: {os.cpu_count()} cores, torch threads {args.threads}; {args.preset}-shaped {args.dtype}; "
          f"{args.width} beams, {args.new_tokens} new tokens; best of {args.runs}\n")
    print("| case | ours (s) | transformers (s) | ours / transformers | same best hypothesis |")
    print("|---|---:|---:|---:|---|")
    for k, (name, (ids, px)) in enumerate(cases.items()):
        t_ours = t_ref = float("inf")
        for r in range(args.runs):
            # each run a prompt of its own (another first token, another media key), so that neither our prefix
            # cache nor our vision cache serves it from the run before
            run_ids = [ids[0] + 1 + r] + ids[1:]
            t0 = time.perf_counter()
            got = run_ours(run_ids, px, f"img-{k}-{r}")
            t_ours = min(t_ours, time.perf_counter() - t0)
            t0 = time.perf_counter()
            want = run_ref(run_ids, px)
            t_ref = min(t_ref, time.perf_counter() - t0)
        print(f"| {name} | {t_ours:.2f} | {t_ref:.2f} | {t_ours / t_ref:.2f}x | {'yes' if got == want else 'no'} |",
              flush=True)


if __name__ == "__main__":
    sys.exit(main())
