"""Supervised fine-tuning: `train_sft(SFTConfig(model=..., data=..., out_dir=...))`.

One optimizer step = `grad_accum` length-bucketed micro-batches; the loss is the mean cross-entropy over all
assistant target tokens of the step (each micro-batch's summed loss is divided by the step's total target count, so
the result does not depend on how the step is split). AdamW, linear warmup then cosine decay, gradient clipping,
bf16 autocast (fp32 master weights), optional activation checkpointing and LoRA, all applied to the loaded model
from outside. Checkpoints every `save_every` steps hold what a bit-identical resume needs (`resume.py`); the held-out
loss is measured every `eval_every` steps; metrics go to `<out_dir>/metrics.jsonl` and a tqdm bar. At the end the
model (LoRA merged) is exported to `<out_dir>/model` with the base folder's tokenizer and preprocessor files.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from qwen3vl.train.data import Batch, BucketedBatches, JsonlSource, Source, batch_loader
from qwen3vl.train.loss import loss_sum
from qwen3vl.train.parts import MODULE_PREFIXES, PARTS, parse_parts, set_trainable

log = logging.getLogger(__name__)


@dataclass
class SFTConfig:
    model: str  # base checkpoint folder: weights, config.json, tokenizer and preprocessor files
    out_dir: str
    data: str | None = None  # JSONL of {"messages": [...]} (or pass a Source to train_sft)
    eval_data: str | None = None
    train: tuple[str, ...] = PARTS  # parts that train: vision, merger, language
    lora: bool = False  # adapters on the chosen parts instead of full weights
    lora_rank: int = 8
    lora_alpha: float = 16.0
    lora_dropout: float = 0.0
    lora_targets: tuple[str, ...] | None = None  # None: decoder q/k/v/o/gate/up/down, ViT qkv/proj/fc1/fc2
    batch_size: int = 4
    grad_accum: int = 1
    epochs: float = 1.0  # used when max_steps is None (needs a finite source)
    max_steps: int | None = None
    lr: float = 1e-4
    min_lr_ratio: float = 0.1
    warmup_steps: int = 0
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.95)
    max_grad_norm: float | None = 1.0
    bf16: bool = True  # autocast; weights and optimizer state stay float32
    grad_checkpointing: bool = False
    max_length: int | None = None
    window_batches: int = 8  # bucketing window, in batches
    num_workers: int = 0  # 1: prepare batches in a background process
    seed: int = 0
    eval_every: int = 0
    save_every: int = 0
    keep_checkpoints: int = 2
    resume: str | None = None  # a checkpoint folder, or "auto" for the latest one in out_dir
    export: bool = True
    export_dtype: str | None = None  # float32 / bfloat16; None keeps float32
    progress: bool = True
    device: str = "cpu"  # where the model trains ("cuda" too; the tests cover CPU only)

    def __post_init__(self):
        self.train = parse_parts(self.train)
        if self.lora_targets is not None:
            self.lora_targets = tuple(self.lora_targets)
        self.betas = tuple(self.betas)
        if self.batch_size <= 0 or self.grad_accum <= 0:
            raise ValueError(f"batch_size ({self.batch_size}) and grad_accum ({self.grad_accum}) must be positive")


@dataclass
class TrainResult:
    step: int
    losses: dict[int, float] = field(default_factory=dict)  # step -> mean target-token loss (steps run this call)
    eval_losses: dict[int, float] = field(default_factory=dict)
    export_dir: Path | None = None
    model: torch.nn.Module | None = None


# ------------------------------------------------------------------------------------------------ pieces
def lora_config(cfg: SFTConfig):
    """The adapters a LoRA run adds: the given (or default) targets, restricted to the parts that train."""
    from qwen3vl.train.lora import LANGUAGE_TARGETS, VISION_TARGETS, LoRAConfig

    if not cfg.lora:
        return None
    targets = cfg.lora_targets or (LANGUAGE_TARGETS + VISION_TARGETS)
    prefixes = tuple(p for part in cfg.train for p in MODULE_PREFIXES[part])
    return LoRAConfig(cfg.lora_rank, cfg.lora_alpha, cfg.lora_dropout, targets, prefixes)


def setup_model(model: torch.nn.Module, cfg: SFTConfig) -> list[str]:
    """Freeze / add LoRA / checkpoint activations from outside; returns the trainable parameter names."""
    from qwen3vl.train.checkpointing import apply_activation_checkpointing
    from qwen3vl.train.lora import apply_lora

    if cfg.lora:
        apply_lora(model, lora_config(cfg))
    else:
        set_trainable(model, cfg.train)
    if cfg.grad_checkpointing:
        apply_activation_checkpointing(model, language=True, vision="vision" in cfg.train)
    return [n for n, p in model.named_parameters() if p.requires_grad]


def total_steps(cfg: SFTConfig, batches: BucketedBatches) -> int:
    if cfg.max_steps is not None:
        return cfg.max_steps
    per_epoch = batches.batches_per_epoch
    if per_epoch is None:
        raise ValueError("an endless data source needs max_steps")
    return max(1, math.ceil(cfg.epochs * per_epoch / cfg.grad_accum))


def autocast(model: torch.nn.Module, enabled: bool):
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device_type=model.device.type, dtype=torch.bfloat16)


def train_step(model, micro: list[Batch], optimizer, scheduler, cfg: SFTConfig) -> dict[str, float]:
    """One optimizer step over the micro-batches; returns loss (mean per target token), targets, tokens, grad_norm."""
    total = sum(b.num_targets for b in micro)
    loss_total = 0.0
    for b in micro:
        with autocast(model, cfg.bf16):
            s, n = loss_sum(model, b)
        if n:
            (s / total).backward()
            loss_total += float(s.detach())
    params = [p for group in optimizer.param_groups for p in group["params"]]
    grad_norm = float("nan")
    if cfg.max_grad_norm:
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm))
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return {"loss": loss_total / max(total, 1), "targets": total, "tokens": sum(b.num_tokens for b in micro),
            "grad_norm": grad_norm}


@torch.no_grad()
def evaluate_loss(model, batches: list[Batch], bf16: bool = True) -> float:
    """Mean cross-entropy per assistant target token over the batches (eval mode, no dropout)."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for b in batches:
        with autocast(model, bf16):
            s, n = loss_sum(model, b)
        total, count = total + float(s), count + n
    model.train(was_training)
    return total / max(count, 1)


def _resume_dir(cfg: SFTConfig) -> Path | None:
    from qwen3vl.train.resume import latest_checkpoint

    if cfg.resume is None:
        return None
    if cfg.resume == "auto":
        found = latest_checkpoint(cfg.out_dir)
        if found is None:
            log.info("no checkpoint in %s/checkpoints; starting from scratch", cfg.out_dir)
        return found
    return Path(cfg.resume)


def _check_same_run(saved: dict, cfg: SFTConfig) -> None:
    ignore = {"resume", "progress", "max_steps", "out_dir", "eval_every", "save_every", "keep_checkpoints",
              "export", "export_dtype", "num_workers", "eval_data", "device"}
    now = json.loads(json.dumps(dataclasses.asdict(cfg)))
    for k, v in now.items():
        if k not in ignore and k in saved and saved[k] != v:
            log.warning("resuming with %s=%r, but the checkpoint was written with %r", k, v, saved[k])


class _Metrics:
    def __init__(self, out_dir: Path):
        self.path = out_dir / "metrics.jsonl"

    def drop_after(self, step: int) -> None:
        """On resume: forget what an interrupted run logged past its last checkpoint."""
        if self.path.is_file():
            kept = [line for line in self.path.read_text().splitlines() if json.loads(line)["step"] <= step]
            self.path.write_text("".join(line + "\n" for line in kept))

    def write(self, record: dict) -> None:
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")


# ------------------------------------------------------------------------------------------------ the loop
def train_sft(cfg: SFTConfig, source: Source | None = None, eval_source: Source | None = None) -> TrainResult:
    """Fine-tune `cfg.model` on `source` (default: `JsonlSource(cfg.data)`); returns losses and the export folder."""
    from tqdm import tqdm

    from qwen3vl.model.qwen3vl import load_model
    from qwen3vl.processing.processor import load_processor
    from qwen3vl.train.optim import build_optimizer, build_scheduler
    from qwen3vl.train.resume import TrainerState, checkpoint_dir, load_state, save_state
    from qwen3vl.weights.hub import resolve_checkpoint

    out_dir = Path(cfg.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if source is None:
        if cfg.data is None:
            raise ValueError("no training data: set SFTConfig.data to a JSONL file or pass a source")
        source = JsonlSource(cfg.data)
    if eval_source is None and cfg.eval_data:
        eval_source = JsonlSource(cfg.eval_data)

    torch.manual_seed(cfg.seed)
    folder = resolve_checkpoint(cfg.model)  # a hub id: its (downloaded or cached) snapshot
    processor = load_processor(folder)
    model = load_model(folder, dtype=torch.float32, device=cfg.device)
    trainable = setup_model(model, cfg)
    n_train = sum(p.numel() for n, p in model.named_parameters() if p.requires_grad)
    log.info("training %d tensors, %.2fM parameters (%s%s)", len(trainable), n_train / 1e6, ",".join(cfg.train),
             ", LoRA" if cfg.lora else "")
    model.train()

    batches = BucketedBatches(source, processor, cfg.batch_size, window_batches=cfg.window_batches, seed=cfg.seed,
                              max_length=cfg.max_length, pixel_dtype=torch.bfloat16 if cfg.bf16 else None)
    steps = total_steps(cfg, batches)
    optimizer = build_optimizer(model, cfg.lr, cfg.weight_decay, cfg.betas)
    scheduler = build_scheduler(optimizer, cfg.warmup_steps, steps, cfg.min_lr_ratio)
    step, position = 0, 0
    resume_from = _resume_dir(cfg)
    if resume_from is not None:
        state = load_state(resume_from, model, optimizer, scheduler)
        _check_same_run(state.config, cfg)
        step, position = state.step, state.position
        log.info("resumed from %s at step %d (batch %d)", resume_from, step, position)
    batches.start = position
    eval_batches: list[Batch] | None = None
    metrics = _Metrics(out_dir)
    metrics.drop_after(step)
    result = TrainResult(step=step, model=model)
    config_dict = json.loads(json.dumps(dataclasses.asdict(cfg)))

    loader = batch_loader(batches, cfg.num_workers)
    bar = tqdm(total=steps, initial=step, desc="sft", unit="step", disable=not cfg.progress, dynamic_ncols=True)
    start_time = time.perf_counter()
    while step < steps:
        t0 = time.perf_counter()
        micro = [next(loader) for _ in range(cfg.grad_accum)]
        stats = train_step(model, micro, optimizer, scheduler, cfg)
        step, position = step + 1, micro[-1].position
        dt = time.perf_counter() - t0
        result.losses[step] = stats["loss"]
        record = {"step": step, "loss": stats["loss"], "lr": scheduler.get_last_lr()[0], "tokens": stats["tokens"],
                  "targets": stats["targets"], "tokens_per_s": stats["tokens"] / dt, "grad_norm": stats["grad_norm"],
                  "elapsed_s": time.perf_counter() - start_time}
        metrics.write(record)
        bar.update(1)
        bar.set_postfix(loss=f"{stats['loss']:.4f}", tok_s=f"{record['tokens_per_s']:.0f}",
                        lr=f"{record['lr']:.2e}")
        if eval_source is not None and cfg.eval_every and (step % cfg.eval_every == 0 or step == steps):
            if eval_batches is None:
                eval_batches = list(BucketedBatches(eval_source, processor, cfg.batch_size, shuffle=False,
                                                    max_length=cfg.max_length).epoch(0))
            result.eval_losses[step] = evaluate_loss(model, eval_batches, cfg.bf16)
            metrics.write({"step": step, "eval_loss": result.eval_losses[step]})
            bar.write(f"step {step}: eval loss {result.eval_losses[step]:.4f}")
        if cfg.save_every and (step % cfg.save_every == 0 or step == steps):
            save_state(checkpoint_dir(out_dir, step), model, optimizer, scheduler,
                       TrainerState(step, position, config_dict), keep=cfg.keep_checkpoints)
    bar.close()
    result.step = step
    if cfg.export:
        result.export_dir = export_trained(model, cfg, out_dir / "model", adapter_dir=out_dir / "adapter")
    return result


def export_trained(model, cfg: SFTConfig, out: Path, adapter_dir: Path | None = None) -> Path:
    """The merged model in the official layout (and, for LoRA runs, the adapter alone in `adapter_dir`)."""
    from qwen3vl.train.export import export_model
    from qwen3vl.train.lora import lora_modules, save_adapter
    from qwen3vl.weights.loader import parse_dtype

    if adapter_dir is not None and cfg.lora and lora_modules(model):
        save_adapter(model, adapter_dir, lora_config(cfg), base_model=str(cfg.model))
    return export_model(model, out, cfg.model, dtype=parse_dtype(cfg.export_dtype))


def export_checkpoint(checkpoint: str | Path, out: str | Path, dtype: str | None = None,
                      base: str | None = None) -> Path:
    """Turn a training checkpoint (`<out_dir>/checkpoints/step-N`) into a model folder: base weights from the run's
    base checkpoint (or `base`), its trained weights or LoRA adapters on top, merged."""
    from qwen3vl.model.qwen3vl import load_model
    from qwen3vl.train.resume import load_trainable, read_state

    saved = read_state(checkpoint).config
    known = {f.name for f in dataclasses.fields(SFTConfig)}
    cfg = SFTConfig(**{k: v for k, v in saved.items() if k in known})
    cfg.model = base or cfg.model
    cfg.grad_checkpointing = False
    cfg.export_dtype = dtype or cfg.export_dtype
    model = load_model(cfg.model, dtype=torch.float32)
    setup_model(model, cfg)
    load_trainable(checkpoint, model)
    return export_trained(model, cfg, Path(out))
