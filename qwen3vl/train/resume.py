"""Resumable training state. One folder per save, `<out>/checkpoints/step-000100/`:

    trainable.safetensors   every parameter that trains (full weights of the trained parts, or LoRA A/B)
    optimizer.pt            AdamW state (moments, step counts)
    trainer.json            step, data position (batches consumed), scheduler state, the run's config
    rng.pt                  torch (and CUDA), numpy and Python RNG states

Frozen weights are not saved: a resumed run loads them from the base checkpoint again. With these, a resumed run
takes bit-identical steps to an uninterrupted one (same batches, same dropout masks, same optimizer state). A save
is written to a temporary folder and renamed, so an interrupted save never leaves a half checkpoint behind.
"""

from __future__ import annotations

import json
import random
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn


@dataclass
class TrainerState:
    step: int  # optimizer steps done
    position: int  # training batches consumed
    config: dict[str, Any]


def checkpoint_dir(out_dir: str | Path, step: int) -> Path:
    return Path(out_dir) / "checkpoints" / f"step-{step:06d}"


def latest_checkpoint(out_dir: str | Path) -> Path | None:
    folder = Path(out_dir) / "checkpoints"
    found = sorted(p for p in folder.glob("step-*") if (p / "trainer.json").is_file()) if folder.is_dir() else []
    return found[-1] if found else None


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])


def save_state(folder: str | Path, model: nn.Module, optimizer, scheduler, state: TrainerState,
               keep: int | None = None) -> Path:
    from safetensors.torch import save_file

    folder = Path(folder)
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    trainable = {n: p.detach().cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad}
    save_file(trainable, tmp / "trainable.safetensors")
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    torch.save(rng_state(), tmp / "rng.pt")
    meta = {"step": state.step, "position": state.position, "scheduler": scheduler.state_dict(),
            "config": state.config}
    (tmp / "trainer.json").write_text(json.dumps(meta, indent=2, default=_jsonable) + "\n")
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
    if keep:
        old = sorted(p for p in folder.parent.glob("step-*") if p.is_dir() and not p.name.endswith(".tmp"))
        for p in old[:-keep]:
            shutil.rmtree(p, ignore_errors=True)
    return folder


def _jsonable(obj: Any) -> Any:
    if hasattr(obj, "__dict__"):  # the schedule object inside LambdaLR's state
        return vars(obj)
    return str(obj)


def read_state(folder: str | Path) -> TrainerState:
    meta = json.loads((Path(folder) / "trainer.json").read_text())
    return TrainerState(meta["step"], meta["position"], meta["config"])


def load_trainable(folder: str | Path, model: nn.Module) -> None:
    """Copy a checkpoint's trainable weights into a model set up as when saved (same parts, same LoRA)."""
    from safetensors.torch import load_file

    folder = Path(folder)
    if not (folder / "trainer.json").is_file():
        raise FileNotFoundError(f"{folder} is not a training checkpoint (no trainer.json)")
    weights = load_file(folder / "trainable.safetensors")
    params = dict(model.named_parameters())
    want = {n for n, p in params.items() if p.requires_grad}
    if set(weights) != want:
        missing, extra = sorted(want - set(weights)), sorted(set(weights) - want)
        raise ValueError(f"checkpoint {folder} trains other parameters than this run: missing {missing[:3]}, "
                         f"unexpected {extra[:3]}; use the same parts to train and LoRA settings")
    with torch.no_grad():
        for n, t in weights.items():
            params[n].copy_(t)


def load_state(folder: str | Path, model: nn.Module, optimizer, scheduler) -> TrainerState:
    """Load trainable weights, optimizer, scheduler and RNG states into a model set up exactly as when saved."""
    folder = Path(folder)
    load_trainable(folder, model)
    optimizer.load_state_dict(torch.load(folder / "optimizer.pt", weights_only=False))
    meta = json.loads((folder / "trainer.json").read_text())
    sched = meta["scheduler"]
    sched.pop("lr_lambdas", None)  # the schedule is rebuilt from the config; its numbers are the same
    scheduler.load_state_dict({**scheduler.state_dict(), **sched})
    # the optimizer came back with the learning rate of the saved schedule; a run resumed with another length (a
    # finished run extended) must take its next step at the rebuilt schedule's rate
    for group, base, factor in zip(optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas):
        group["lr"] = base * factor(scheduler.last_epoch)
    scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]
    set_rng_state(torch.load(folder / "rng.pt", weights_only=False))
    return TrainerState(meta["step"], meta["position"], meta["config"])
