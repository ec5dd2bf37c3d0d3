"""Activation checkpointing from outside, choosing the parts that train, and the learning-rate schedule."""

from __future__ import annotations

import pytest
import torch

from qwen3vl.model.testing import random_model
from qwen3vl.train.checkpointing import apply_activation_checkpointing, remove_activation_checkpointing
from qwen3vl.train.optim import WarmupCosine, build_optimizer
from qwen3vl.train.parts import PARTS, parse_parts, part_of, set_trainable
from test_train_lora import _inputs


def _grads(model, inputs) -> dict[str, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    model(**inputs).logits.float().square().mean().backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_activation_checkpointing_gives_the_same_gradients():
    model = random_model("debug").train()
    for p in model.parameters():
        p.requires_grad_(True)
    inputs = _inputs(model.config)
    names = [n for n, _ in model.named_parameters()]
    plain = _grads(model, inputs)
    assert apply_activation_checkpointing(model) == len(model.model.language_model.layers) + len(
        model.model.visual.blocks)
    assert apply_activation_checkpointing(model) == 0  # idempotent
    assert [n for n, _ in model.named_parameters()] == names
    checkpointed = _grads(model, inputs)
    assert plain.keys() == checkpointed.keys() and len(plain) == len(names)
    for n in plain:
        assert torch.allclose(plain[n], checkpointed[n], atol=1e-6, rtol=1e-5), n
    remove_activation_checkpointing(model)
    assert "forward" not in vars(model.model.language_model.layers[0])


def test_parts():
    assert parse_parts("all") == PARTS
    assert parse_parts("language, vision") == ("vision", "language")
    with pytest.raises(ValueError, match="unknown part"):
        parse_parts("vision,text")
    assert part_of("model.visual.merger.linear_fc1.weight") == "merger"
    assert part_of("model.visual.deepstack_merger_list.1.norm.bias") == "merger"
    assert part_of("model.visual.blocks.0.attn.qkv.weight") == "vision"
    assert part_of("model.visual.patch_embed.proj.weight") == "vision"
    assert part_of("lm_head.weight") == "language"
    model = random_model("debug")
    names = set_trainable(model, ["merger"])
    assert names and all(part_of(n) == "merger" for n in names)
    assert {part_of(n) for n in set_trainable(model, PARTS)} == set(PARTS)


def test_warmup_cosine_and_weight_decay_groups():
    s = WarmupCosine(warmup_steps=4, total_steps=14, min_ratio=0.1)
    assert [round(s(i), 3) for i in range(4)] == [0.2, 0.4, 0.6, 0.8]
    assert s(4) == 1.0 and s(9) == pytest.approx(0.55) and s(14) == pytest.approx(0.1) and s(100) == pytest.approx(0.1)
    assert all(s(i) >= s(i + 1) for i in range(4, 20))
    model = random_model("debug")
    opt = build_optimizer(model, lr=1e-3, weight_decay=0.1)
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.1 and all(p.ndim >= 2 for p in decay["params"])
    assert no_decay["weight_decay"] == 0.0 and all(p.ndim == 1 for p in no_decay["params"])
