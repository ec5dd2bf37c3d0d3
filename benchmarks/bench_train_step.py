"""Training step speed: our SFT loss forward + backward against transformers 5.23 on the same weights and batch.

Both sides load the shipped demo model (or --model), get the same length-bucketed batch of synthetic demo
conversations (images and multi-turn video clips, as `qwen3vl train demo` trains on), and run forward + backward of
the assistant-token cross-entropy under the same autocast. Ours: `qwen3vl.train.loss.loss_sum` (LM head only on target
positions). Transformers: `Qwen3VLForConditionalGeneration(..., labels=...)` with -100 outside the assistant tokens
(it shifts the labels itself). The mean losses must agree (printed), so both compute the same thing.

Reported: seconds per step (mean of --steps after one warm-up step) for the whole model and for the vision encoder
alone (forward + backward), and the number of attention calls the vision encoder makes per step.

Usage: python benchmarks/bench_train_step.py [--batch 64] [--steps 3] [--threads 2] [--device cpu|cuda] [--fp32]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="checkpoint folder (default: the shipped demo model)")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--fp32", action="store_true", help="no bf16 autocast")
    args = ap.parse_args()

    import torch
    import torch.nn.functional as F
    from transformers import Qwen3VLForConditionalGeneration

    import qwen3vl
    from qwen3vl.processing.processor import load_processor
    from qwen3vl.train.data import BucketedBatches
    from qwen3vl.train.demo import DEMO_TASKS, synthetic_config_for
    from qwen3vl.train.demo_data import MultiTurnSource
    from qwen3vl.train.loss import loss_sum

    torch.set_num_threads(args.threads)
    folder = Path(args.model or Path(qwen3vl.__file__).parent / "assets" / "demo")
    processor = load_processor(folder)
    source = MultiTurnSource(20, DEMO_TASKS, synthetic_config_for(folder), 8, 0.5, True)
    batch = next(iter(BucketedBatches(source, processor, args.batch, window_batches=1)))
    inputs = {k: v.to(args.device) for k, v in batch.inputs.items()}
    n_items = sum(len(inputs[k]) for k in ("image_grid_thw", "video_grid_thw") if k in inputs)
    print(f"batch: {args.batch} conversations, {tuple(inputs['input_ids'].shape)} tokens, {n_items} images/clips, "
          f"{batch.num_targets} target tokens; device {args.device}, threads {args.threads}, "
          f"{'fp32' if args.fp32 else 'bf16 autocast'}", flush=True)

    calls = [0]
    sdpa = F.scaled_dot_product_attention

    def counted(*a, **k):
        calls[0] += 1
        return sdpa(*a, **k)

    def autocast():
        return torch.autocast(device_type=torch.device(args.device).type, dtype=torch.bfloat16, enabled=not args.fp32)

    def timed(step) -> tuple[float, float]:
        step()  # warm-up
        times, value = [], 0.0
        for _ in range(args.steps):
            _sync(args.device)
            t0 = time.perf_counter()
            value = step()
            _sync(args.device)
            times.append(time.perf_counter() - t0)
        return sum(times) / len(times), value

    # ours
    ours = qwen3vl.load_model(folder, dtype=torch.float32, device=args.device).train().requires_grad_(True)
    on_device = _moved(batch, inputs)

    def ours_step() -> float:
        with autocast():
            s, n = loss_sum(ours, on_device)
        (s / n).backward()
        ours.zero_grad(set_to_none=True)
        return float(s.detach()) / n

    def ours_vision() -> float:
        with autocast():
            out = [ours.model.visual(inputs[p], inputs[g])[0] for p, g in _media(inputs)]
        sum(o.float().sum() for o in out).backward()
        ours.zero_grad(set_to_none=True)
        return 0.0

    # transformers
    ref = Qwen3VLForConditionalGeneration.from_pretrained(folder, dtype=torch.float32).to(args.device).train()
    cfg = ref.config
    labels = torch.where(batch.loss_mask.to(args.device).bool(), inputs["input_ids"], -100)
    mm = torch.zeros_like(inputs["input_ids"])
    mm[inputs["input_ids"] == cfg.image_token_id] = 1
    mm[inputs["input_ids"] == cfg.video_token_id] = 2

    def ref_step() -> float:
        with autocast():
            loss = ref(**inputs, mm_token_type_ids=mm, labels=labels).loss
        loss.backward()
        ref.zero_grad(set_to_none=True)
        return float(loss.detach())

    def ref_vision() -> float:
        with autocast():
            out = [ref.model.visual(inputs[p], grid_thw=inputs[g]) for p, g in _media(inputs)]
        sum(_first(o).float().sum() for o in out).backward()
        ref.zero_grad(set_to_none=True)
        return 0.0

    rows = {}
    for name, fn in (("ours", ours_step), ("transformers", ref_step)):
        rows[name] = timed(fn)
    for name, fn in (("ours", ours_vision), ("transformers", ref_vision)):
        calls[0] = 0
        F.scaled_dot_product_attention = counted  # the one module both sides call it through
        try:
            fn()
            n_calls = calls[0]
            rows[name + "_vision"] = (*timed(fn), n_calls)
        finally:
            F.scaled_dot_product_attention = sdpa

    o, r = rows["ours"], rows["transformers"]
    ov, rv = rows["ours_vision"], rows["transformers_vision"]
    print(f"mean target-token loss: ours {o[1]:.5f}, transformers {r[1]:.5f}\n")
    print("| measure | ours | transformers | ours / transformers |")
    print("|---|---|---|---|")
    print(f"| training step, forward + backward (s) | {o[0]:.3f} | {r[0]:.3f} | {o[0] / r[0]:.2f}x |")
    print(f"| vision encoder alone, forward + backward (s) | {ov[0]:.3f} | {rv[0]:.3f} | {ov[0] / rv[0]:.2f}x |")
    print(f"| vision attention calls per forward | {ov[2]} | {rv[2]} | |")
    print(f"\nmachine: {os.cpu_count()} cores" + (f", {torch.cuda.get_device_name(0)}" if args.device != "cpu" else ""))


def _media(inputs):
    return [(p, g) for p, g in (("pixel_values", "image_grid_thw"), ("pixel_values_videos", "video_grid_thw"))
            if p in inputs]


def _first(out):
    """transformers' visual returns a tuple or an output object; the merged tokens come first."""
    if isinstance(out, tuple):
        return out[0]
    return getattr(out, "pooler_output", None) if getattr(out, "pooler_output", None) is not None else out[0]


def _moved(batch, inputs):
    from qwen3vl.train.data import Batch

    return Batch(inputs, batch.loss_mask, batch.position)


if __name__ == "__main__":
    main()
