"""Activation (gradient) checkpointing applied from outside: each decoder layer and each ViT block gets an
instance-level `forward` that runs the original under `torch.utils.checkpoint` (non-reentrant) while training
with grad enabled. Module and parameter names do not change, so checkpoints and LoRA see the same model, and
`remove_activation_checkpointing` restores the class `forward`.
"""

from __future__ import annotations

import functools

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

_FLAG = "_qwen3vl_checkpointed"


def _checkpointed(module: nn.Module, *args):
    original = type(module).forward.__get__(module)
    if module.training and torch.is_grad_enabled():
        # the layers' non-tensor arguments (rotary tables, the attention backend, vision windows) pass through
        return checkpoint(original, *args, use_reentrant=False)
    return original(*args)


def checkpoint_targets(model: nn.Module, language: bool = True, vision: bool = True) -> list[nn.Module]:
    out: list[nn.Module] = []
    if language:
        out += list(model.model.language_model.layers)
    if vision:
        out += list(model.model.visual.blocks)
    return out


def apply_activation_checkpointing(model: nn.Module, language: bool = True, vision: bool = True) -> int:
    """Checkpoint decoder layers and/or ViT blocks in place; returns how many modules are wrapped."""
    n = 0
    for module in checkpoint_targets(model, language, vision):
        if not getattr(module, _FLAG, False):
            module.forward = functools.partial(_checkpointed, module)
            setattr(module, _FLAG, True)
            n += 1
    return n


def remove_activation_checkpointing(model: nn.Module) -> None:
    for module in checkpoint_targets(model):
        if getattr(module, _FLAG, False):
            del module.forward
            delattr(module, _FLAG)
