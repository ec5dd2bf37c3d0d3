"""Per-request LoRA adapters: what serving several adapters in one batch costs, ours against peft 0.21's mixed-adapter
batches (`generate(..., adapter_names=[...])`) on transformers 5.23, in one process on the same random weights.

Writes a random checkpoint of `--preset` (bf16) and `--adapters` random peft LoRA adapters (rank `--rank` on every
attention and MLP projection of the decoder), then generates `--gen-tokens` greedy tokens for `--requests` text
prompts three ways on each side: all on the base model, all on one adapter, and spread over all the adapters. Ours
runs the requests through the engine (continuous batching); peft runs them as one left-padded batch. Prints
throughput (generated tokens/s) and each mode's cost relative to the base model on the same side.

    python benchmarks/bench_lora.py                       # debug-size model: seconds
    python benchmarks/bench_lora.py --preset 2B --requests 8 --gen-tokens 32
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path


def make_adapters(ckpt: Path, out: Path, n: int, rank: int) -> list[Path]:
    import peft
    import torch
    from transformers import Qwen3VLForConditionalGeneration

    folders = []
    for k in range(n):
        torch.manual_seed(100 + k)
        hf = Qwen3VLForConditionalGeneration.from_pretrained(ckpt, dtype=torch.bfloat16)
        cfg = peft.LoraConfig(r=rank, lora_alpha=2 * rank, init_lora_weights=False,
                              target_modules=r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj"
                                             r"|down_proj)")
        model = peft.get_peft_model(hf, cfg)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.normal_(0, 0.02)
        folders.append(out / f"adapter{k}")
        model.save_pretrained(folders[-1])
    return folders


def prompts(n: int, length: int, vocab: int) -> list[list[int]]:
    import torch

    g = torch.Generator().manual_seed(0)
    return [torch.randint(min(1000, vocab // 4), min(vocab, 100000), (length,), generator=g).tolist() for _ in range(n)]


def run_ours(ckpt: Path, adapters: list[Path], rows: list[list[int]], gen: int, modes: dict) -> dict[str, float]:
    import torch

    import qwen3vl
    from qwen3vl.engine.engine import Engine, EngineConfig
    from qwen3vl.engine.sampling import SamplingParams

    model = qwen3vl.load_model(ckpt, dtype=torch.bfloat16)
    eng = Engine(model, eos_token_ids=[], config=EngineConfig(kv_cache_bytes=512 * 1024**2,
                                                              enable_prefix_cache=False))
    for k, folder in enumerate(adapters):
        eng.adapters.add(f"a{k}", folder)
    out = {}
    for mode, names in modes.items():
        for warm in (True, False):
            t0 = time.perf_counter()
            seqs = [eng.add_request(f"{mode}-{warm}-{i}", r[:8] if warm else r,
                                    SamplingParams(max_tokens=2 if warm else gen, temperature=0.0, ignore_eos=True,
                                                   adapter=names[i]))[0] for i, r in enumerate(rows)]
            eng.run_until_done()
            if not warm:
                out[mode] = sum(len(s.output_ids) for s in seqs) / (time.perf_counter() - t0)
            for s in seqs:
                eng.requests.pop(s.request_id, None)
    return out


def run_peft(ckpt: Path, adapters: list[Path], rows: list[list[int]], gen: int, modes: dict) -> dict[str, float]:
    import peft
    import torch
    from transformers import Qwen3VLForConditionalGeneration

    base = Qwen3VLForConditionalGeneration.from_pretrained(ckpt, dtype=torch.bfloat16, attn_implementation="sdpa")
    model = peft.PeftModel.from_pretrained(base, adapters[0], adapter_name="a0")
    for k, folder in enumerate(adapters[1:], start=1):
        model.load_adapter(folder, adapter_name=f"a{k}")
    model.eval()
    width = max(len(r) for r in rows)
    ids = torch.zeros((len(rows), width), dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, r in enumerate(rows):
        ids[i, width - len(r):] = torch.tensor(r)
        mask[i, width - len(r):] = 1
    out = {}
    for mode, names in modes.items():
        adapter_names = [n if n is not None else "__base__" for n in names]
        for warm in (True, False):
            t0 = time.perf_counter()
            with torch.no_grad():
                res = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=2 if warm else gen,
                                     min_new_tokens=2 if warm else gen, do_sample=False, pad_token_id=0,
                                     adapter_names=adapter_names)
            if not warm:
                out[mode] = (res.shape[1] - width) * len(rows) / (time.perf_counter() - t0)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="debug")
    ap.add_argument("--adapters", type=int, default=4)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--requests", type=int, default=8)
    ap.add_argument("--prompt-tokens", type=int, default=64)
    ap.add_argument("--gen-tokens", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    from qwen3vl.config import load_config
    from qwen3vl.model.testing import write_random_checkpoint

    with tempfile.TemporaryDirectory() as tmp:
        ckpt = Path(tmp) / "base"
        write_random_checkpoint(ckpt, args.preset, seed=0, dtype=torch.bfloat16)
        adapters = make_adapters(ckpt, Path(tmp), args.adapters, args.rank)
        vocab = load_config(ckpt).text_config.vocab_size
        rows = prompts(args.requests, args.prompt_tokens, vocab)
        n = args.requests
        modes = {"base model": [None] * n, "one adapter": ["a0"] * n,
                 f"{args.adapters} adapters mixed": [f"a{i % args.adapters}" for i in range(n)]}
        ours = run_ours(ckpt, adapters, rows, args.gen_tokens, modes)
        ref = run_peft(ckpt, adapters, rows, args.gen_tokens, modes)
    print(f"\n{args.preset} preset, bf16, {args.requests} requests x {args.prompt_tokens} prompt + {args.gen_tokens} "
          f"generated tokens, rank-{args.rank} adapters on all decoder projections; {os.cpu_count()} cores, "
          f"{args.threads} threads\n")
    print("| batch | ours (tok/s) | vs our base | peft (tok/s) | vs peft base | ours / peft |")
    print("|---|---|---|---|---|---|")
    for mode in modes:
        print(f"| {mode} | {ours[mode]:.1f} | {ours[mode] / ours['base model']:.2f} | {ref[mode]:.1f} | "
              f"{ref[mode] / ref['base model']:.2f} | {ours[mode] / ref[mode]:.2f}x |")
    print(f"\ncommand: python benchmarks/bench_lora.py {' '.join(sys.argv[1:])}")


if __name__ == "__main__":
    main()
