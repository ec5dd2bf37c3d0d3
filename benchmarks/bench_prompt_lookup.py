"""Prompt-lookup decoding: ours (`EngineConfig(prompt_lookup=K)`, engine/speculative.py) against plain greedy
decoding, and transformers 5.23's `generate(prompt_lookup_num_tokens=K)` against its plain greedy `generate`, in one
process on the same random weights and the same prompt ids.

A random model copies nothing on purpose, so the gain depends on how often its greedy output repeats itself (a
random model falls into loops, which n-gram lookup then predicts): the script prints the share of drafts kept
next to the times, and whether each side's lookup run wrote exactly its plain run's tokens. Two prompts: a random
32-token passage written twice (something to look up from the start), and 64 random tokens.

    python benchmarks/bench_prompt_lookup.py                     # 2B-shaped bf16 checkpoint at /tmp/qwen3vl-bench-2b
    python benchmarks/bench_prompt_lookup.py --preset debug --dtype float32 --ckpt /tmp/qwen3vl-bench-debug
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from side_by_side import add_checkpoint_flags, load_both


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_checkpoint_flags(ap)
    ap.add_argument("--lookup", type=int, default=5, help="draft tokens per step (K)")
    ap.add_argument("--lookup-max", type=int, default=3, help="longest n-gram looked up (ours and transformers)")
    ap.add_argument("--new-tokens", type=int, default=64)
    args = ap.parse_args()

    import torch

    from qwen3vl.engine.engine import Engine, EngineConfig
    from qwen3vl.engine.sampling import SamplingParams

    ours, ref = load_both(args)
    vocab = ours.config.text_config.vocab_size
    engines = {k: Engine(ours, eos_token_ids=[], config=EngineConfig(
        kv_cache_bytes=512 * 1024**2, prompt_lookup=k, prompt_lookup_max=args.lookup_max, enable_prefix_cache=False))
        for k in (0, args.lookup)}

    g = torch.Generator().manual_seed(0)

    def text(n):  # ordinary tokens, clear of the special ids at the top
        return torch.randint(min(1000, vocab // 4), min(100000, vocab // 2), (n,), generator=g).tolist()

    passage = text(32)
    cases = {"a 32-token passage written twice": passage + passage, "64 random tokens": text(64)}

    def run_ours(ids, k):
        engine = engines[k]
        before = dict(engine.stats)
        (seq,) = engine.add_request(f"r{time.perf_counter_ns()}", ids, SamplingParams(
            temperature=0.0, max_tokens=args.new_tokens, ignore_eos=True))
        engine.run_until_done()
        engine.requests.clear()
        kept = engine.stats["accepted_draft_tokens"] - before["accepted_draft_tokens"]
        drafted = engine.stats["draft_tokens"] - before["draft_tokens"]
        return seq.output_ids, engine.stats["steps"] - before["steps"], kept, drafted

    def run_ref(ids, k):
        input_ids = torch.tensor([ids])
        kw = {"prompt_lookup_num_tokens": k, "max_matching_ngram_size": args.lookup_max} if k else {}
        with torch.no_grad():
            out = ref.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), do_sample=False,
                               max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, eos_token_id=None,
                               pad_token_id=0, **kw)
        return out[0, len(ids):].tolist()

    for k in (0, args.lookup):  # warm-up: first calls of each path
        run_ours(text(8), k)
        run_ref(text(8), k)
    print(f"machine: {os.cpu_count()} cores, torch threads {args.threads}; {args.preset}-shaped {args.dtype}; "
          f"{args.new_tokens} new tokens, greedy; K={args.lookup} drafts, n-grams up to {args.lookup_max}; "
          f"best of {args.runs}\n")
    print("| prompt | ours plain (s) | ours lookup (s) | speed-up | steps | drafts kept | same tokens "
          "| transformers plain (s) | transformers lookup (s) | speed-up | same tokens | ours lookup / transformers "
          "lookup |")
    print("|---|---:|---:|---:|---:|---:|---|---:|---:|---:|---|---:|")
    for name, ids in cases.items():
        best = {}
        results = {}
        for side, fn in (("ours", run_ours), ("ref", run_ref)):
            for k in (0, args.lookup):
                for r in range(args.runs):
                    t0 = time.perf_counter()
                    results[side, k] = fn(ids, k)
                    best[side, k] = min(best.get((side, k), float("inf")), time.perf_counter() - t0)
        plain, lookup = results["ours", 0], results["ours", args.lookup]
        _, steps, kept, drafted = lookup
        same_ours = plain[0] == lookup[0]
        same_ref = results["ref", 0] == results["ref", args.lookup]
        o0, o1, r0, r1 = best["ours", 0], best["ours", args.lookup], best["ref", 0], best["ref", args.lookup]
        print(f"| {name} | {o0:.2f} | {o1:.2f} | {o0 / o1:.2f}x | {steps} | {kept}/{drafted} | "
              f"{'yes' if same_ours else 'no'} | {r0:.2f} | {r1:.2f} | {r0 / r1:.2f}x | "
              f"{'yes' if same_ref else 'no'} | {o1 / r1:.2f}x |", flush=True)


if __name__ == "__main__":
    sys.exit(main())
