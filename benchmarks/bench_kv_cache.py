"""Quantized KV cache (`--kv-cache-dtype int8 | fp8`): memory, speed and accuracy against our bf16 cache and against
transformers' bf16 `DynamicCache`, in one process on the same random weights.

Speed (`--preset`, default 2B; random bf16 weights): for each `--contexts` length, the time to prefill a text prompt
of that many tokens and the batch-1 decode time per token after it. Ours runs through the engine; transformers runs
`generate` (sdpa) on the same token ids (its decode time: (time for 1 + D new tokens - time for 1) / D).

Memory: KV-cache bytes per token, and how many tokens fit in 1 GiB of cache.

Accuracy: on the random weights, teacher-forced over the longest prompt, how far each next token's logprob moves from
the bf16 cache's and how often the top token stays the same (and how many greedy tokens after it agree, which on
random weights with near-tied logits says little); on the trained demo model, `eval synthetic` on `--eval-n` scenes
of the validation seed 2 with each cache.

    python benchmarks/bench_kv_cache.py                                  # 2B preset, contexts 1024 and 4096
    python benchmarks/bench_kv_cache.py --preset debug --contexts 256 --eval-n 50
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import tempfile
import time
from pathlib import Path

KINDS = ("auto", "int8", "fp8")


def run_ours(ckpt: Path, kind: str, prompts: list[list[int]], decode: int) -> dict:
    import torch

    import qwen3vl
    from qwen3vl.engine.engine import Engine, EngineConfig
    from qwen3vl.engine.sampling import SamplingParams

    model = qwen3vl.load_model(ckpt, dtype=torch.bfloat16)
    longest = max(len(p) for p in prompts) + decode + 16
    eng = Engine(model, eos_token_ids=[], config=EngineConfig(num_blocks=longest // 16 + 2, kv_cache_dtype=kind,
                                                              enable_prefix_cache=False, max_batch_tokens=2048,
                                                              max_model_len=longest))
    out: dict = {"per_context": []}
    for k, p in enumerate([prompts[0], *prompts]):  # the first one warms up
        (seq,) = eng.add_request(f"r{k}", p, SamplingParams(max_tokens=(decode if k else 4) + 1, temperature=0.0,
                                                            ignore_eos=True, logprobs=0))
        t0 = time.perf_counter()
        first = None
        while eng.has_work():
            eng.step()
            if first is None and seq.output_ids:
                first = time.perf_counter() - t0
        total = time.perf_counter() - t0
        if k:
            out["per_context"].append({"prefill_s": first, "decode_ms": (total - first) / decode * 1e3})
            out["greedy"] = list(seq.output_ids)
            out["logprobs"] = [lp for lp, _ in seq.logprobs]
    # teacher-forced: the logprob of each actual next token of the longest prompt, and the top token at each position
    (seq,) = eng.add_request("scored", prompts[-1], SamplingParams(max_tokens=1, temperature=0.0, ignore_eos=True,
                                                                   prompt_logprobs=1))
    eng.run_until_done()
    scored = seq.prompt_logprobs[1:]
    out["forced"] = [lp for lp, _ in scored]
    out["forced_top"] = [max(top, key=lambda t: t[1])[0] if top else None for _, top in scored]
    cache = eng.runner.cache
    out["bytes_per_token"] = sum(t.numel() * t.element_size() for t in [*cache.k, *cache.v, *cache.k_scale,
                                                                        *cache.v_scale]) / eng.capacity
    return out


def run_reference(ckpt: Path, prompts: list[list[int]], decode: int) -> dict:
    import torch
    from transformers import Qwen3VLForConditionalGeneration

    model = Qwen3VLForConditionalGeneration.from_pretrained(ckpt, dtype=torch.bfloat16, attn_implementation="sdpa")
    model.eval()

    def gen(ids: list[int], tokens: int) -> float:
        x = torch.tensor([ids])
        t0 = time.perf_counter()
        with torch.no_grad():
            model.generate(input_ids=x, attention_mask=torch.ones_like(x), max_new_tokens=tokens,
                           min_new_tokens=tokens, do_sample=False, pad_token_id=0)
        return time.perf_counter() - t0

    gen(prompts[0], 4)
    out: dict = {"per_context": []}
    for p in prompts:
        one = gen(p, 1)
        out["per_context"].append({"prefill_s": one, "decode_ms": (gen(p, decode + 1) - one) / decode * 1e3})
    t = model.config.text_config
    out["bytes_per_token"] = 2 * t.num_hidden_layers * t.num_key_value_heads * t.head_dim * 2
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="2B")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--contexts", default="1024,4096", help="prompt lengths, comma-separated")
    ap.add_argument("--decode-tokens", type=int, default=16)
    ap.add_argument("--eval-n", type=int, default=200, help="demo-model scenes per cache (0: skip)")
    ap.add_argument("--sides", default="ours,reference")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    from qwen3vl.config import load_config
    from qwen3vl.model.testing import write_random_checkpoint

    contexts = [int(c) for c in args.contexts.split(",")]
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = write_random_checkpoint(Path(tmp) / "ckpt", args.preset, seed=0, dtype=torch.bfloat16)
        vocab = load_config(ckpt).text_config.vocab_size
        g = torch.Generator().manual_seed(0)
        lo, hi = min(1000, vocab // 4), min(vocab, 100000)
        prompts = [torch.randint(lo, hi, (n,), generator=g).tolist() for n in contexts]
        if "ours" in args.sides:
            for kind in KINDS:
                results[f"ours, {kind} cache"] = run_ours(ckpt, kind, prompts, args.decode_tokens)
                gc.collect()
        if "reference" in args.sides:
            results["transformers, bf16 DynamicCache"] = run_reference(ckpt, prompts, args.decode_tokens)
            gc.collect()
    print(f"\n{args.preset} preset, random bf16 weights; {os.cpu_count()} cores, {args.threads} threads; "
          f"{args.decode_tokens} decoded tokens\n")
    head = " | ".join(f"prefill {n} (s) | decode at {n} (ms/token)" for n in contexts)
    print(f"| side | KV bytes/token | tokens per GiB | {head} |")
    print("|---|---|---|" + "---|---|" * len(contexts))
    for name, r in results.items():
        cells = " | ".join(f"{c['prefill_s']:.2f} | {c['decode_ms']:.1f}" for c in r["per_context"])
        print(f"| {name} | {r['bytes_per_token']:.0f} | {int(2**30 // r['bytes_per_token']):,} | {cells} |")
    base = results.get("ours, auto cache")
    if base:
        for kind in KINDS[1:]:
            r = results[f"ours, {kind} cache"]
            diffs = [abs(a - b) for a, b in zip(r["forced"], base["forced"])]
            top = sum(a == b for a, b in zip(r["forced_top"], base["forced_top"])) / len(diffs)
            agree = sum(a == b for a, b in zip(r["greedy"], base["greedy"]))
            speed = ", ".join(f"decode at {n}: {b['decode_ms'] / c['decode_ms']:.2f}x"
                              for n, b, c in zip(contexts, base["per_context"], r["per_context"]))
            print(f"{kind} against the bf16 cache: {base['bytes_per_token'] / r['bytes_per_token']:.2f}x the tokens "
                  f"per byte; {speed}; over the {contexts[-1]}-token prompt (teacher-forced) |logprob diff| of the "
                  f"next token mean {sum(diffs) / len(diffs):.4f} max {max(diffs):.4f}, top token the same at "
                  f"{100 * top:.1f}% of positions; greedy tokens after it agreeing {agree}/{len(base['greedy'])} "
                  "(random weights: near-ties)")
    if args.eval_n:
        from qwen3vl.commands import DEMO_MODEL
        from qwen3vl.train.demo import evaluate_demo

        print(f"\nthe demo model (bfloat16), eval synthetic, validation seed 2, n={args.eval_n}:\n")
        print("| KV cache | color_shape | count | grounding | ocr | video_time |")
        print("|---|---|---|---|---|---|")
        for kind in KINDS:
            s = evaluate_demo(DEMO_MODEL, 2, args.eval_n, progress=False, dtype="bfloat16", kv_cache_dtype=kind)
            print(f"| {kind} | " + " | ".join(f"{100 * s[t]:.1f}%" for t in
                                             ("color_shape", "count", "grounding", "ocr", "video_time")) + " |")
    print(f"\ncommand: python benchmarks/bench_kv_cache.py {' '.join(sys.argv[1:])}")


if __name__ == "__main__":
    main()
