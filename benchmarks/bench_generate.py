"""Generation speed: our engine against transformers 5.23 (sdpa) on the same 2B-shaped random weights.

Each side runs in its own subprocess (clean peak RSS), both on the same checkpoint, same inputs, same threads.
Prompts are token ids plus random pixel values in the processor's layout, so both sides see identical tensors and
the numbers measure the model and the generation loop, not preprocessing.

  (a) batch-1 decode time per token (bf16), and the machine's floor for it: weight bytes read per decode step
      over the measured memory-read bandwidth
  (b) time to first token with one 448x448 image (196 visual tokens)
  (c) throughput (generated tokens/s) with 8 and with 32 concurrent requests, prompts of 16..128 tokens,
      64 generated tokens each;
      transformers runs its batch of 8 as one left-padded `generate`
  (d) a second turn on the same image (ours: prefix and vision caches; transformers: no cache across calls)
  (e) peak RSS of each side (and, with --device cuda, peak GPU memory allocated)

With --device cuda both sides run on the GPU, every timing is taken after torch.cuda.synchronize(), and the
decode floor uses the GPU's measured memory-read bandwidth instead of the host's.

Usage: python benchmarks/bench_generate.py [--ckpt DIR] [--device cpu|cuda] [--threads 2] [--decode-tokens 16]
                                           [--gen-tokens 64]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

IMAGE_GRID = (1, 28, 28)  # a 448x448 image: 28x28 patches, 196 merged tokens


def _rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def _sync(device: str) -> None:
    """Wait for queued GPU work, so that a time.perf_counter() read after it covers that work."""
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


def _memory(out: dict, device: str) -> None:
    out["peak_rss_gib"] = _rss_gib()
    if device == "cuda":
        import torch

        out["peak_gpu_gib"] = torch.cuda.max_memory_allocated() / 1024**3


def _inputs(cfg, seed: int = 0):
    """Shared prompts: an image prompt, a follow-up turn on it, and 32 text prompts of mixed lengths."""
    import torch

    g = torch.Generator().manual_seed(seed)

    def text(n):
        return torch.randint(1000, 100000, (n,), generator=g).tolist()

    t, h, w = IMAGE_GRID
    n_img = t * h * w // 4
    pixels = torch.randn(t * h * w, 1536, generator=g).to(torch.bfloat16)
    first = text(12) + [cfg.vision_start_token_id] + [cfg.image_token_id] * n_img + [cfg.vision_end_token_id] + text(20)
    mixed = [text(int(n)) for n in torch.randint(16, 129, (32,), generator=g)]  # 16..128 tokens
    out = {"image_prompt": first, "image_offset": 13, "pixels": pixels, "mixed": mixed, "decode_prompt": text(32),
           "follow_up": text(24)}
    # drawn last, so the measured inputs stay what they were: an image prompt of its own for the warm-up (another
    # image and other text, so no cache of either side can serve the measured one from it)
    out["warm_pixels"] = torch.randn(t * h * w, 1536, generator=g).to(torch.bfloat16)
    out["warm_image_prompt"] = (text(12) + [cfg.vision_start_token_id] + [cfg.image_token_id] * n_img
                                + [cfg.vision_end_token_id] + text(20))
    return out


# ------------------------------------------------------------------------------------------------------ ours
def run_ours(ckpt: str, args) -> dict:
    import torch

    import qwen3vl
    from qwen3vl.engine.engine import Engine, EngineConfig
    from qwen3vl.engine.sampling import SamplingParams
    from qwen3vl.engine.sequence import MediaItem

    dev = args.device
    model = qwen3vl.load_model(ckpt, dtype=torch.bfloat16, device=dev)  # the engine runs on the model's device
    cfg = model.config
    inp = _inputs(cfg)
    eng = Engine(model, eos_token_ids=[], config=EngineConfig(kv_cache_bytes=1024**3,  # ~9000 tokens: enough
                                                              max_batch_tokens=args.max_batch_tokens))
    greedy = dict(temperature=0.0, ignore_eos=True)
    out = {}

    def ttft_and_total(rid, ids, media, max_tokens):
        _sync(dev)
        t0 = time.perf_counter()
        (seq,) = eng.add_request(rid, ids, SamplingParams(max_tokens=max_tokens, **greedy), media,
                                 ["image"] * len(media))
        first = None
        while eng.has_work():
            eng.step()
            if first is None and seq.output_ids:
                _sync(dev)
                first = time.perf_counter() - t0
        _sync(dev)
        return first, time.perf_counter() - t0, seq

    # warm-up: text, then an image (first CUDA calls of the vision path are slow: not what (b) measures)
    ttft_and_total("warm", inp["decode_prompt"][:8], [], 2)
    ttft_and_total("warm-img", inp["warm_image_prompt"],
                   [MediaItem("warm-img", IMAGE_GRID, inp["image_offset"], 196, inp["warm_pixels"])], 2)
    # (a) decode
    first, total, _ = ttft_and_total("decode", inp["decode_prompt"], [], args.decode_tokens + 1)
    out["decode_s_per_token"] = (total - first) / args.decode_tokens
    # (b) image TTFT, (d) second turn on the same image; pixels stay on the host: the runner moves them
    item = MediaItem("img-0", IMAGE_GRID, inp["image_offset"], 196, inp["pixels"])
    first, _, seq = ttft_and_total("img", inp["image_prompt"], [item], 8)
    out["image_ttft_s"] = first
    turn2 = inp["image_prompt"] + seq.output_ids + inp["follow_up"]
    first2, _, _ = ttft_and_total("img2", turn2, [item], 8)
    out["second_turn_ttft_s"] = first2
    # (c) throughput with 8 and 32 concurrent requests
    for n in (8, 32):
        eng.runner.vision_cache.items.clear()
        _sync(dev)
        t0 = time.perf_counter()
        seqs = [eng.add_request(f"tp{n}-{i}", p, SamplingParams(max_tokens=args.gen_tokens, **greedy))[0]
                for i, p in enumerate(inp["mixed"][:n])]
        eng.run_until_done()
        _sync(dev)
        dt = time.perf_counter() - t0
        out[f"throughput_{n}_tok_s"] = sum(len(s.output_ids) for s in seqs) / dt
    _memory(out, dev)
    return out


# ------------------------------------------------------------------------------------------------------ reference
def run_reference(ckpt: str, args) -> dict:
    import torch
    from transformers import Qwen3VLForConditionalGeneration

    dev = args.device
    model = Qwen3VLForConditionalGeneration.from_pretrained(ckpt, dtype=torch.bfloat16,
                                                            attn_implementation="sdpa").eval().to(dev)
    cfg = model.config
    inp = _inputs(type("C", (), {"vision_start_token_id": cfg.vision_start_token_id,
                                 "image_token_id": cfg.image_token_id,
                                 "vision_end_token_id": cfg.vision_end_token_id}))
    out = {}

    def gen(ids_rows, n_new, pixels=None):
        width = max(len(r) for r in ids_rows)
        ids = torch.full((len(ids_rows), width), 0, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, r in enumerate(ids_rows):
            ids[i, width - len(r):] = torch.tensor(r)
            mask[i, width - len(r):] = 1
        kw = {}
        if pixels is not None:
            kw = {"pixel_values": pixels.to(dev), "image_grid_thw": torch.tensor([IMAGE_GRID], device=dev),
                  "mm_token_type_ids": (ids == cfg.image_token_id).long().to(dev)}
        ids, mask = ids.to(dev), mask.to(dev)
        _sync(dev)
        t0 = time.perf_counter()
        with torch.no_grad():
            res = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=n_new, min_new_tokens=n_new,
                                 do_sample=False, pad_token_id=0, **kw)
        _sync(dev)
        return time.perf_counter() - t0, res[:, width:].cpu()

    gen([inp["decode_prompt"][:8]], 2)  # warm-up: text, then an image
    gen([inp["warm_image_prompt"]], 1, inp["warm_pixels"])
    t1, _ = gen([inp["decode_prompt"]], 1)
    tn, _ = gen([inp["decode_prompt"]], args.decode_tokens + 1)
    out["decode_s_per_token"] = (tn - t1) / args.decode_tokens
    ttft, _ = gen([inp["image_prompt"]], 1, inp["pixels"])
    out["image_ttft_s"] = ttft
    _, answer = gen([inp["image_prompt"]], 8, inp["pixels"])
    turn2 = inp["image_prompt"] + answer[0].tolist() + inp["follow_up"]
    out["second_turn_ttft_s"], _ = gen([turn2], 1, inp["pixels"])
    dt, res = gen(inp["mixed"][:8], args.gen_tokens)
    out["throughput_8_tok_s"] = res.numel() / dt
    _memory(out, dev)
    return out


# ------------------------------------------------------------------------------------------------------ driver
def bandwidth_gbs(device: str = "cpu") -> float:
    """Memory-read bandwidth of the device the benchmark runs on: summing a 1 GiB float32 tensor."""
    import torch

    if device == "cuda":
        a = torch.empty(256 * 1024**2, dtype=torch.float32, device="cuda").normal_()  # 1 GiB on the GPU
        a.sum()
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(20):
            a.sum()
        torch.cuda.synchronize()
        return 20 * a.numel() * 4 / (time.perf_counter() - t0) / 1e9
    a = torch.empty(256 * 1024**2, dtype=torch.float32).normal_()  # 1 GiB
    a.sum()
    t0 = time.perf_counter()
    for _ in range(5):
        a.sum()
    return 5 * a.numel() * 4 / (time.perf_counter() - t0) / 1e9


def decode_weight_bytes(ckpt: str) -> int:
    """Bytes of weights one decode step reads: the decoder and LM head (not the ViT, one embedding row)."""
    from qwen3vl.config import load_config
    from qwen3vl.weights.loader import build_empty

    model = build_empty(load_config(ckpt))
    lm = model.model.language_model
    n = sum(p.numel() for n, p in lm.named_parameters() if not n.startswith("embed_tokens"))
    n += model.lm_head.weight.numel()
    return n * 2  # bf16


def child(side: str, ckpt: str, args, result_path: str) -> None:
    import torch

    torch.set_num_threads(args.threads)
    res = run_ours(ckpt, args) if side == "ours" else run_reference(ckpt, args)
    Path(result_path).write_text(json.dumps(res))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ckpt", default="/tmp/qwen3vl-bench-2b")
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="where both sides run")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--decode-tokens", type=int, default=16)
    ap.add_argument("--gen-tokens", type=int, default=64)
    ap.add_argument("--max-batch-tokens", type=int, default=2048)
    ap.add_argument("--sides", default="ours,reference")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--result", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("bench_generate.py: --device cuda, but torch.cuda.is_available() is False "
                 f"(no NVIDIA GPU or driver visible; torch {torch.__version__}, built with CUDA {torch.version.cuda})")
    if args.child:
        child(args.child, args.ckpt, args, args.result)
        return

    torch.set_num_threads(args.threads)
    if not (Path(args.ckpt) / "config.json").exists():
        from qwen3vl.model.testing import write_random_checkpoint

        print(f"writing a 2B-shaped random bf16 checkpoint to {args.ckpt} ...", flush=True)
        write_random_checkpoint(args.ckpt, "2B", seed=0, dtype=torch.bfloat16)
    results = {}
    for side in args.sides.split(","):
        with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
            path = f.name
        t0 = time.perf_counter()
        cmd = [sys.executable, __file__, "--child", side, "--result", path, "--ckpt", args.ckpt,
               "--device", args.device, "--threads", str(args.threads), "--decode-tokens", str(args.decode_tokens),
               "--gen-tokens", str(args.gen_tokens), "--max-batch-tokens", str(args.max_batch_tokens)]
        subprocess.run(cmd, check=True, env={**os.environ, "OMP_NUM_THREADS": str(args.threads)})
        results[side] = json.loads(Path(path).read_text())
        print(f"{side}: {json.dumps(results[side])} ({time.perf_counter() - t0:.0f} s)", flush=True)
    bw = bandwidth_gbs(args.device)
    floor = decode_weight_bytes(args.ckpt) / (bw * 1e9)
    ours, ref = results.get("ours", {}), results.get("reference", {})

    def ratio(key, base_key=None, base=None):
        b = (base or ref).get(base_key or key)
        return f"{ours[key] / b:.2f}x" if b and key in ours else "-"

    rows = [
        ("(a) decode s/token, batch 1", "decode_s_per_token", ratio("decode_s_per_token")),
        ("(b) TTFT, one 448x448 image (s)", "image_ttft_s", ratio("image_ttft_s")),
        ("(c) throughput, 8 concurrent (tok/s)", "throughput_8_tok_s", ratio("throughput_8_tok_s")),
        ("(c) throughput, 32 concurrent (tok/s)", "throughput_32_tok_s",
         ratio("throughput_32_tok_s", "throughput_8_tok_s") + " of ref. batch-8"),
        ("(d) TTFT, second turn on the image (s)", "second_turn_ttft_s",
         ratio("second_turn_ttft_s") + f"; {ours.get('second_turn_ttft_s', 0) / ours.get('image_ttft_s', 1):.2f}x "
                                       "of our first turn"),
        ("(e) peak RSS (GiB)", "peak_rss_gib", ratio("peak_rss_gib")),
    ]
    if "peak_gpu_gib" in ours or "peak_gpu_gib" in ref:
        rows.append(("(e) peak GPU memory (GiB)", "peak_gpu_gib", ratio("peak_gpu_gib")))
    if args.device == "cuda":
        print(f"\nmachine: {torch.cuda.get_device_name(0)}, {os.cpu_count()} cores, torch threads {args.threads}; "
              f"GPU memory read bandwidth {bw:.1f} GB/s")
    else:
        print(f"\nmachine: {os.cpu_count()} cores, torch threads {args.threads}; memory read bandwidth {bw:.1f} GB/s")
    print(f"decode floor: {decode_weight_bytes(args.ckpt) / 1e9:.2f} GB of weights per step / {bw:.1f} GB/s "
          f"= {floor:.3f} s/token; ours is {ours.get('decode_s_per_token', 0) / floor:.2f}x the floor\n")
    print("| measure | ours | transformers | ours / transformers |")
    print("|---|---|---|---|")
    for label, key, r in rows:
        o, t = ours.get(key), ref.get(key)
        print(f"| {label} | {o:.3f} | {t:.3f} | {r} |" if t is not None else f"| {label} | {o:.3f} | - | {r} |")


if __name__ == "__main__":
    main()
