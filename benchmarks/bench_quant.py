"""Weight-only int8 (`--quantization int8`): speed against our bf16 model and transformers' bf16 model, in one
process on the same random weights, and what it costs in accuracy on the trained demo model.

Speed (`--preset`, default 2B; random bf16 weights): batch-1 decode time per token, decode throughput with
`--batch` requests, time to prefill a `--prefill-tokens` text prompt, and the bytes of the weights. Ours runs through
the engine; transformers runs `generate` (sdpa) on the same token ids. The int8 kernel is used for steps of up
to 16 rows (model/quant.py); larger steps (prefill) convert the weight per call instead. A layer-level sweep (one
2B-sized MLP projection, rows 1..128) shows where each path wins, which is how that threshold was chosen.

Accuracy: `eval synthetic` (the five demo tasks, greedy) of the shipped demo model on `--eval-n` scenes of the
validation seed 2, in float32, bfloat16 and bfloat16 + int8; and on the random preset, how far the int8 logits of
one prompt are from bf16's (max |diff| over max |logit|) and how many greedy tokens agree.

    python benchmarks/bench_quant.py                      # 2B preset: a few minutes
    python benchmarks/bench_quant.py --preset debug --eval-n 50
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import tempfile
import time
from pathlib import Path


def weight_bytes(model) -> int:
    return sum(t.numel() * t.element_size() for t in {id(t): t for t in
                                                      [*model.parameters(), *model.buffers()]}.values())


def run_ours(ckpt: Path, quantization: str | None, args, rows: list[list[int]], prompt: list[int]) -> dict:
    import torch

    import qwen3vl
    from qwen3vl.engine.engine import Engine, EngineConfig
    from qwen3vl.engine.sampling import SamplingParams
    from qwen3vl.model.quant import quantize_model

    model = qwen3vl.load_model(ckpt, dtype=torch.bfloat16)
    if quantization:
        quantize_model(model, quantization)
    gc.collect()
    eng = Engine(model, eos_token_ids=[], config=EngineConfig(kv_cache_bytes=512 * 1024**2,
                                                              enable_prefix_cache=False))
    k = 0

    def gen(batch: list[list[int]], tokens: int, logits: bool = False):
        nonlocal k
        seqs = []
        for r in batch:
            k += 1
            seqs += eng.add_request(f"r{k}", r, SamplingParams(max_tokens=tokens, temperature=0.0, ignore_eos=True,
                                                               logprobs=0 if logits else None))
        t0 = time.perf_counter()
        first = None
        while eng.has_work():
            eng.step()
            if first is None:
                first = time.perf_counter() - t0
        return seqs, first, time.perf_counter() - t0

    gen([rows[0][:8]], 2)  # warm up
    out = {"bytes": weight_bytes(model)}
    _, first, total = gen([rows[0]], args.decode_tokens + 1)
    out["decode_ms"] = (total - first) / args.decode_tokens * 1e3
    seqs, _, total = gen(rows[:args.batch], args.decode_tokens)
    out["batch_tok_s"] = sum(len(s.output_ids) for s in seqs) / total
    _, first, _ = gen([prompt], 1)
    out["prefill_s"] = first
    seqs, _, _ = gen([rows[0]], args.decode_tokens)
    out["greedy"] = list(seqs[0].output_ids)
    with torch.no_grad():
        ids = torch.tensor([rows[0]])
        out["logits"] = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[0, -1].float()
    return out  # the model goes with this frame (main collects before the next run)


def run_reference(ckpt: Path, args, rows: list[list[int]], prompt: list[int]) -> dict:
    import torch
    from transformers import Qwen3VLForConditionalGeneration

    model = Qwen3VLForConditionalGeneration.from_pretrained(ckpt, dtype=torch.bfloat16, attn_implementation="sdpa")
    model.eval()

    def gen(batch: list[list[int]], tokens: int) -> float:
        width = max(len(r) for r in batch)
        ids = torch.zeros((len(batch), width), dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, r in enumerate(batch):
            ids[i, width - len(r):] = torch.tensor(r)
            mask[i, width - len(r):] = 1
        t0 = time.perf_counter()
        with torch.no_grad():
            model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=tokens, min_new_tokens=tokens,
                           do_sample=False, pad_token_id=0)
        return time.perf_counter() - t0

    gen([rows[0][:8]], 2)
    out = {"bytes": weight_bytes(model)}
    one = gen([rows[0]], 1)
    out["decode_ms"] = (gen([rows[0]], args.decode_tokens + 1) - one) / args.decode_tokens * 1e3
    out["batch_tok_s"] = args.batch * args.decode_tokens / gen(rows[:args.batch], args.decode_tokens)
    out["prefill_s"] = gen([prompt], 1)
    return out


def layer_sweep(rows=(1, 2, 4, 8, 16, 32, 128), out_features: int = 6144, in_features: int = 2048) -> None:
    import torch
    import torch.nn.functional as F

    from qwen3vl.model.quant import quantize_weight

    g = torch.Generator().manual_seed(0)
    w = torch.randn(out_features, in_features, generator=g).to(torch.bfloat16)
    q, s = quantize_weight(w)
    s = s.to(torch.bfloat16)
    print(f"\none {out_features}x{in_features} layer, ms per call:\n")
    print("| rows | bf16 linear | int8 kernel | int8 converted to bf16 |")
    print("|---|---|---|---|")
    for m in rows:
        x = torch.randn(m, in_features, generator=g).to(torch.bfloat16)
        times = []
        for f in (lambda: F.linear(x, w), lambda: torch._weight_int8pack_mm(x, q, s),
                  lambda: F.linear(x, q.to(torch.bfloat16)) * s):
            f()
            n = max(3, 64 // m)
            t0 = time.perf_counter()
            for _ in range(n):
                f()
            times.append((time.perf_counter() - t0) / n * 1e3)
        print(f"| {m} | " + " | ".join(f"{t:.2f}" for t in times) + " |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="2B")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--prompt-tokens", type=int, default=32)
    ap.add_argument("--prefill-tokens", type=int, default=512)
    ap.add_argument("--decode-tokens", type=int, default=16)
    ap.add_argument("--eval-n", type=int, default=200, help="demo-model scenes per setting (0: skip)")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    from qwen3vl.config import load_config
    from qwen3vl.model.testing import write_random_checkpoint

    with tempfile.TemporaryDirectory() as tmp:
        ckpt = write_random_checkpoint(Path(tmp) / "ckpt", args.preset, seed=0, dtype=torch.bfloat16)
        vocab = load_config(ckpt).text_config.vocab_size
        g = torch.Generator().manual_seed(0)
        lo, hi = min(1000, vocab // 4), min(vocab, 100000)
        rows = [torch.randint(lo, hi, (args.prompt_tokens,), generator=g).tolist() for _ in range(args.batch)]
        prompt = torch.randint(lo, hi, (args.prefill_tokens,), generator=g).tolist()
        results = {}
        for name, run in (("ours bf16", lambda: run_ours(ckpt, None, args, rows, prompt)),
                          ("ours int8", lambda: run_ours(ckpt, "int8", args, rows, prompt)),
                          ("transformers bf16", lambda: run_reference(ckpt, args, rows, prompt))):
            results[name] = run()
            gc.collect()
    base = results["ours bf16"]
    print(f"\n{args.preset} preset, random weights; {os.cpu_count()} cores, {args.threads} threads; "
          f"decode after a {args.prompt_tokens}-token prompt\n")
    print(f"| model | weights (GB) | batch-1 decode (ms/token) | batch-{args.batch} decode (tok/s) | "
          f"prefill {args.prefill_tokens} tokens (s) |")
    print("|---|---|---|---|---|")
    for name, r in results.items():
        print(f"| {name} | {r['bytes'] / 1e9:.2f} | {r['decode_ms']:.1f} | {r['batch_tok_s']:.1f} | "
              f"{r['prefill_s']:.2f} |")
    ref, q = results["transformers bf16"], results["ours int8"]
    print(f"\nours int8 against ours bf16: decode {base['decode_ms'] / q['decode_ms']:.2f}x faster, batch-{args.batch} "
          f"{q['batch_tok_s'] / base['batch_tok_s']:.2f}x, prefill {base['prefill_s'] / q['prefill_s']:.2f}x, "
          f"weights {q['bytes'] / base['bytes']:.2f}x")
    print(f"ours int8 against transformers bf16: decode {ref['decode_ms'] / q['decode_ms']:.2f}x faster, "
          f"batch-{args.batch} {q['batch_tok_s'] / ref['batch_tok_s']:.2f}x, prefill "
          f"{ref['prefill_s'] / q['prefill_s']:.2f}x")
    diff = (q["logits"] - base["logits"]).abs().max() / base["logits"].abs().max()
    agree = sum(a == b for a, b in zip(q["greedy"], base["greedy"]))
    print(f"int8 vs bf16 on the random weights: max |logit diff| / max |logit| = {diff:.4f}; "
          f"greedy tokens agreeing: {agree}/{len(base['greedy'])} (random weights: small margins)")
    layer_sweep()
    if args.eval_n:
        from qwen3vl.commands import DEMO_MODEL
        from qwen3vl.train.demo import evaluate_demo

        print(f"\nthe demo model, eval synthetic, validation seed 2, n={args.eval_n}:\n")
        print("| setting | color_shape | count | grounding | ocr | video_time |")
        print("|---|---|---|---|---|---|")
        for name, dtype, quant in (("float32", "float32", None), ("bfloat16", "bfloat16", None),
                                   ("bfloat16 + int8", "bfloat16", "int8")):
            s = evaluate_demo(DEMO_MODEL, 2, args.eval_n, progress=False, dtype=dtype, quantization=quant)
            print(f"| {name} | " + " | ".join(f"{100 * s[t]:.1f}%" for t in
                                              ("color_shape", "count", "grounding", "ocr", "video_time")) + " |")
    print(f"\ncommand: python benchmarks/bench_quant.py {' '.join(sys.argv[1:])}")


if __name__ == "__main__":
    main()
