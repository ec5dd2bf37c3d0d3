"""Random initialisation for training from scratch and for test checkpoints: normal(0, std) weights, unit norm
scales, zero biases. Deterministic for a given seed regardless of the device the model lives on."""

from __future__ import annotations

import torch
from torch import nn

from qwen3vl.model.text import RMSNorm


@torch.no_grad()
def init_weights(model: nn.Module, seed: int = 0, std: float = 0.02) -> nn.Module:
    gen = torch.Generator(device="cpu").manual_seed(seed)
    for name, p in model.named_parameters(remove_duplicate=True):
        leaf = name.rsplit(".", 1)[-1]
        owner = model.get_submodule(name.rpartition(".")[0])
        if leaf == "bias":
            value = torch.zeros(p.shape)
        elif isinstance(owner, (nn.LayerNorm, RMSNorm)):
            value = torch.ones(p.shape)
        else:
            value = torch.randn(p.shape, generator=gen) * std
        if p.is_meta:
            parent, _, attr = name.rpartition(".")
            model.get_submodule(parent)._parameters[attr] = nn.Parameter(value.to(p.dtype))
        else:
            p.copy_(value)
    return model
