"""Fine-tune a demo model on video-time scenes alone (the experiment of docs/TRAINING.md, "Why video time stays at
guessing level"): full weights, batch 16, AdamW, `--warmup` steps then cosine to 10% of `--lr`, each clip with up to
8 more turns (`MultiTurnSource`), with `--video-steps` the task in parts too.

    .venv/bin/python scripts/video_finetune.py --model qwen3vl/assets/demo --out /tmp/video-600 --steps 600
    .venv/bin/python scripts/video_finetune.py --model qwen3vl/assets/demo --out /tmp/video-steps-600 --steps 600 \\
        --video-steps
    .venv/bin/python scripts/video_diagnosis.py --model /tmp/video-steps-600

The data stream is seed `--seed` (10 by default: neither training's 0 nor the evaluation seeds 1, 2, 1234, 4242).
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="a demo model folder (with synthetic_config.json)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--warmup", type=int, default=50)
    ap.add_argument("--seed", type=int, default=10)
    ap.add_argument("--video-steps", action="store_true")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    import torch

    from qwen3vl.train.demo import SYNTHETIC_CONFIG_FILE, synthetic_config_for
    from qwen3vl.train.demo_data import MultiTurnSource
    from qwen3vl.train.export import export_model
    from qwen3vl.train.sft import SFTConfig, train_sft

    torch.set_num_threads(args.threads)
    synth = synthetic_config_for(args.model)
    sft = SFTConfig(model=args.model, out_dir=args.out + ".work", batch_size=16, max_steps=args.steps, lr=args.lr,
                    min_lr_ratio=0.1, warmup_steps=args.warmup, weight_decay=0.01, bf16=True, seed=args.seed,
                    export=False)
    source = MultiTurnSource(args.seed, ("video_time",), synth, extra_turns=8, video_steps=args.video_steps)
    start = time.perf_counter()
    result = train_sft(sft, source=source)
    print(f"{args.steps} steps in {time.perf_counter() - start:.0f} s; metrics: {args.out}.work/metrics.jsonl")
    export_model(result.model.cpu(), args.out, args.model, dtype=torch.float32)
    shutil.copyfile(Path(args.model) / SYNTHETIC_CONFIG_FILE, Path(args.out) / SYNTHETIC_CONFIG_FILE)


if __name__ == "__main__":
    main()
