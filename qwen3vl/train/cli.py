"""`qwen3vl train ...`: typed functions plus one argparse hook (`add_parser`) for `qwen3vl.cli` to mount.

    train sft     --model DIR --data train.jsonl --out DIR     fine-tune (full, chosen parts, or LoRA); resumable
    train export  CHECKPOINT --out DIR                         a training checkpoint -> a merged model folder
    train merge   --model M --adapter A --out DIR              a peft LoRA adapter folded into a model folder
    train synth   --out data/train.jsonl --n 1000              write synthetic conversations as JSONL + media
    train demo    --out DIR                                    train the tiny demo model from scratch
    train score   MODEL --seed S --n 200                       score a model on fresh synthetic examples

Functions return the process exit code.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import logging
from typing import Any

from qwen3vl.train.sft import SFTConfig

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------- typed functions
def sft(model: str, out: str, data: str, **options: Any) -> int:
    """Fine-tune `model` on `data`; options are `SFTConfig` fields."""
    from qwen3vl.train.sft import train_sft

    result = train_sft(SFTConfig(model=model, out_dir=out, data=data, **options))
    print(json.dumps({"steps": result.step, "final_loss": result.losses.get(result.step),
                      "eval_losses": result.eval_losses, "model": str(result.export_dir)}, indent=2))
    return 0


def export(checkpoint: str, out: str, dtype: str | None = None, base: str | None = None) -> int:
    from qwen3vl.train.sft import export_checkpoint

    print(export_checkpoint(checkpoint, out, dtype=dtype, base=base))
    return 0


def merge(model: str, adapters: list[str], out: str, dtype: str | None = None, revision: str | None = None) -> int:
    """Fold peft LoRA adapters (in order) into `model` and write a model folder in the official layout, side files
    (tokenizer, preprocessor, template) copied from the base. The merge runs in float32; `dtype` defaults to the
    base checkpoint's."""
    import torch

    from qwen3vl.config import load_config
    from qwen3vl.model.qwen3vl import load_model
    from qwen3vl.train.export import export_model
    from qwen3vl.weights.adapters import AdapterError, merge_adapter
    from qwen3vl.weights.hub import ModelNotFoundError, resolve_checkpoint
    from qwen3vl.weights.loader import parse_dtype

    try:
        folder = resolve_checkpoint(model, revision=revision)
        target = parse_dtype(dtype or load_config(folder).dtype or "float32")
        base = load_model(folder, dtype=torch.float32)
        changed = sorted({n for a in adapters for n in merge_adapter(base, a)})
    except (ModelNotFoundError, AdapterError) as e:
        raise SystemExit(f"error: {e}") from None
    export_model(base, out, folder, dtype=target)
    print(json.dumps({"model": out, "adapters": adapters, "changed_tensors": len(changed)}))
    return 0


def synth(out: str, n: int, seed: int = 0, tasks: str | None = None, video_format: str = "frames",
          second_event_p: float = 0.5) -> int:
    from qwen3vl.train.synthetic import TASKS, SyntheticConfig, iter_examples
    from qwen3vl.train.synthetic_io import write_jsonl

    chosen = tuple(t.strip() for t in tasks.split(",")) if tasks else TASKS
    stream = itertools.islice(iter_examples(seed, chosen, SyntheticConfig(second_event_p=second_event_p)), n)
    print(write_jsonl(stream, out, video_format=video_format))
    return 0


def demo(out: str, **options: Any) -> int:
    from qwen3vl.train.demo import DemoConfig, build_demo

    summary = build_demo(DemoConfig(out=out, **options))
    print(json.dumps(summary, indent=2))
    return 0


def score(model: str, seed: int, n: int = 200, second_event_p: float = 1.0, records: str | None = None) -> int:
    from qwen3vl.train.demo import evaluate_demo

    rows: list = []
    scores = evaluate_demo(model, seed, n, records=rows, second_event_p=second_event_p)
    if records:
        with open(records, "w", encoding="utf-8") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")
    print(json.dumps(scores, indent=2))
    return 0


# ---------------------------------------------------------------------------------------------- argparse
def _csv(text: str) -> tuple[str, ...]:
    return tuple(s.strip() for s in text.split(",") if s.strip())


def _options(args: argparse.Namespace, names: set[str]) -> dict[str, Any]:
    return {k: v for k, v in vars(args).items() if k in names and v is not None}


def _run_sft(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    names = {f.name for f in dataclasses.fields(SFTConfig)} - {"model", "out_dir", "data"}
    return sft(args.model, args.out, args.data, **_options(args, names))


def _run_demo(args: argparse.Namespace) -> int:
    from qwen3vl.train.demo import DemoConfig

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    names = {f.name for f in dataclasses.fields(DemoConfig)} - {"out"}
    return demo(args.out, **_options(args, names))


def _add_sft(sub: Any) -> None:
    p = sub.add_parser("sft", help="supervised fine-tuning on JSONL conversations (loss on assistant tokens)")
    p.add_argument("--model", required=True, help="base checkpoint folder")
    p.add_argument("--data", required=True, help="training JSONL: one {'messages': [...]} per line, or LLaVA/ShareGPT "
                   "{'image': ..., 'conversations': [...]} records")
    p.add_argument("--out", required=True, help="run folder: checkpoints/, metrics.jsonl, model/ (and adapter/)")
    p.add_argument("--eval-data", dest="eval_data", help="held-out JSONL for the evaluation loss")
    p.add_argument("--train", type=_csv, help="parts that train: vision,merger,language (default: all)")
    p.add_argument("--lora", action="store_true", default=None, help="train LoRA adapters instead of full weights")
    p.add_argument("--lora-rank", dest="lora_rank", type=int)
    p.add_argument("--lora-alpha", dest="lora_alpha", type=float)
    p.add_argument("--lora-dropout", dest="lora_dropout", type=float)
    p.add_argument("--lora-targets", dest="lora_targets", type=_csv,
                   help="module names or regexes (default: q/k/v/o/gate/up/down_proj, ViT qkv/proj/linear_fc1/2)")
    p.add_argument("--batch-size", dest="batch_size", type=int)
    p.add_argument("--grad-accum", dest="grad_accum", type=int)
    p.add_argument("--epochs", type=float)
    p.add_argument("--max-steps", dest="max_steps", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--min-lr-ratio", dest="min_lr_ratio", type=float)
    p.add_argument("--warmup-steps", dest="warmup_steps", type=int)
    p.add_argument("--weight-decay", dest="weight_decay", type=float)
    p.add_argument("--max-grad-norm", dest="max_grad_norm", type=float)
    p.add_argument("--no-bf16", dest="bf16", action="store_false", default=None, help="train in float32")
    p.add_argument("--grad-checkpointing", dest="grad_checkpointing", action="store_true", default=None)
    p.add_argument("--max-length", dest="max_length", type=int)
    p.add_argument("--workers", dest="num_workers", type=int,
                   help="data processes: 0 in-process, 1 background, N a pool (the same batches either way)")
    p.add_argument("--seed", type=int)
    p.add_argument("--eval-every", dest="eval_every", type=int)
    p.add_argument("--save-every", dest="save_every", type=int)
    p.add_argument("--keep-checkpoints", dest="keep_checkpoints", type=int)
    p.add_argument("--resume", help="a checkpoint folder, or 'auto' for the latest in --out")
    p.add_argument("--no-export", dest="export", action="store_false", default=None)
    p.add_argument("--export-dtype", dest="export_dtype", choices=("float32", "bfloat16"))
    p.add_argument("--device", help="cpu (default) or cuda")
    p.set_defaults(func=_run_sft)


def _add_export(sub: Any) -> None:
    p = sub.add_parser("export", help="merge a training checkpoint into a model folder (official layout)")
    p.add_argument("checkpoint", help="<run>/checkpoints/step-N")
    p.add_argument("--out", required=True)
    p.add_argument("--dtype", choices=("float32", "bfloat16"))
    p.add_argument("--base", help="base checkpoint folder, if it moved since training")
    p.set_defaults(func=lambda a: export(a.checkpoint, a.out, a.dtype, a.base))


def _add_merge(sub: Any) -> None:
    p = sub.add_parser("merge", help="fold peft LoRA adapters into a model folder (official layout)")
    p.add_argument("--model", required=True, help="base checkpoint folder or hub id")
    p.add_argument("--adapter", action="append", required=True, dest="adapters",
                   help="peft LoRA adapter folder or hub id (repeatable; merged in order)")
    p.add_argument("--out", required=True)
    p.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), help="default: the base checkpoint's")
    p.add_argument("--revision", help="hub revision of the base model")
    p.set_defaults(func=lambda a: merge(a.model, a.adapters, a.out, a.dtype, a.revision))


def _add_synth(sub: Any) -> None:
    p = sub.add_parser("synth", help="write synthetic conversations (JSONL + media) for training or evaluation")
    p.add_argument("--out", required=True, help="JSONL path; media go to <stem>_media/ beside it")
    p.add_argument("--n", type=int, required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tasks", help="comma-separated; repeat a task to weight it (default: all five)")
    p.add_argument("--video-format", dest="video_format", choices=("frames", "mp4"), default="frames")
    p.add_argument("--second-event-p", dest="second_event_p", type=float, default=0.5)
    p.set_defaults(func=lambda a: synth(a.out, a.n, a.seed, a.tasks, a.video_format, a.second_event_p))


def _add_demo(sub: Any) -> None:
    p = sub.add_parser("demo", help="train the tiny demo model from scratch on synthetic data")
    p.add_argument("--out", required=True, help="final model folder")
    p.add_argument("--work-dir", dest="work_dir", help="tokenizer, initial weights, checkpoints, metrics")
    p.add_argument("--steps", type=int)
    p.add_argument("--batch-size", dest="batch_size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--seed", type=int)
    p.add_argument("--workers", dest="num_workers", type=int,
                   help="data processes: 0 in-process, 1 background (default), N a pool (for a GPU)")
    p.add_argument("--tasks", type=_csv, help="task mix, a task named twice drawn twice as often (default: "
                   "color_shape,count,count,grounding x3,ocr x3,video_time x2)")
    p.add_argument("--init-from", dest="init_from", metavar="DIR",
                   help="start from this demo model (same tokenizer) instead of random weights, new optimizer")
    p.add_argument("--resume", action="store_true", default=None,
                   help="continue from the last checkpoint in the work dir; a larger --steps extends a finished run "
                        "(the cosine schedule is recomputed for the new length)")
    p.add_argument("--eval-every", dest="eval_every", type=int, help="held-out loss every N steps")
    p.add_argument("--save-every", dest="save_every", type=int, help="resumable checkpoint every N steps")
    p.add_argument("--export-dtype", dest="export_dtype", choices=("float32", "bfloat16"))
    p.add_argument("--shuffle-turns", dest="shuffle_turns", type=float, metavar="P",
                   help="chance that a scene's scored question moves from the first turn to a random later one "
                        "(default 0; docs/TRAINING.md)")
    p.add_argument("--video-steps", dest="video_steps", action="store_true", default=None,
                   help="add the video task in parts to each clip's turns: what changes at a given second, whether an "
                        "object is visible at a given second (docs/TRAINING.md)")
    p.add_argument("--device", help="cpu (default) or cuda")
    p.set_defaults(func=_run_demo)


def _add_score(sub: Any) -> None:
    p = sub.add_parser("score", help="accuracy per synthetic task on fresh examples (greedy decoding)")
    p.add_argument("model")
    p.add_argument("--seed", type=int, required=True, help="an evaluation seed training never saw")
    p.add_argument("--n", type=int, default=200)
    p.add_argument("--second-event-p", dest="second_event_p", type=float, default=1.0)
    p.add_argument("--records", help="write per-example predictions to this JSONL")
    p.set_defaults(func=lambda a: score(a.model, a.seed, a.n, a.second_event_p, a.records))


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Mount `train` and its subcommands on the top-level CLI's subparsers."""
    p = subparsers.add_parser("train", help="fine-tuning, synthetic data and the demo model")
    sub = p.add_subparsers(dest="train_command", required=True)
    for add in (_add_sft, _add_export, _add_merge, _add_synth, _add_demo, _add_score):
        add(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    """Standalone entry (`python -m qwen3vl.train.cli sft ...`), the same as `qwen3vl train sft ...`."""
    import sys

    parser = argparse.ArgumentParser(prog="qwen3vl")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["train", *(sys.argv[1:] if argv is None else argv)])
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
