"""LoRA from outside: which modules get wrapped, names kept, merge == unmerged adapter, adapter round trip."""

from __future__ import annotations

import pytest
import torch

from qwen3vl.model.testing import random_model
from qwen3vl.train.lora import (LANGUAGE_TARGETS, VISION_TARGETS, LoRAConfig, LoRALinear, apply_lora, load_adapter,
                                lora_modules, merge_lora, save_adapter)
from qwen3vl.weights.export import state_for_export


def _inputs(cfg, seed: int = 0) -> dict[str, torch.Tensor]:
    """Two left-padded rows: text + a 4x6-patch image + text, and a shorter text-only row."""
    gen = torch.Generator().manual_seed(seed)
    n_img = 4 * 6 // 4

    def text(n: int) -> list[int]:
        return torch.randint(0, 250, (n,), generator=gen).tolist()

    row0 = text(5) + [cfg.vision_start_token_id] + [cfg.image_token_id] * n_img + [cfg.vision_end_token_id] + text(4)
    row1 = text(9)
    s = len(row0)
    ids = torch.zeros(2, s, dtype=torch.long)
    mask = torch.zeros(2, s, dtype=torch.long)
    for i, r in enumerate((row0, row1)):
        ids[i, s - len(r):] = torch.tensor(r)
        mask[i, s - len(r):] = 1
    return {"input_ids": ids, "attention_mask": mask, "pixel_values": torch.randn(24, 3 * 2 * 16 * 16, generator=gen),
            "image_grid_thw": torch.tensor([[1, 4, 6]])}


def _randomize_b(model, seed: int = 1) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, m in lora_modules(model):
            m.lora_B.copy_(torch.randn(m.lora_B.shape, generator=gen) * 0.05)


def test_apply_lora_wraps_matching_linears_and_keeps_names():
    model = random_model("debug")
    names_before = {n for n, _ in model.named_parameters()}
    wrapped = apply_lora(model, LoRAConfig(rank=4, targets=LANGUAGE_TARGETS))
    assert len(wrapped) == 7 * model.config.text_config.num_hidden_layers
    assert all(n.startswith("model.language_model.layers.") for n in wrapped)
    names_after = {n for n, _ in model.named_parameters()}
    assert names_before <= names_after
    assert {n.rsplit(".", 1)[0] for n in names_after - names_before} == set(wrapped)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == names_after - names_before
    assert all(n.endswith((".lora_A", ".lora_B")) for n in trainable)


def test_prefixes_and_regex_targets():
    model = random_model("debug")
    wrapped = apply_lora(model, LoRAConfig(targets=VISION_TARGETS, prefixes=("model.visual.blocks",)))
    assert wrapped and all(n.startswith("model.visual.blocks.") for n in wrapped)
    model = random_model("debug")
    wrapped = apply_lora(model, LoRAConfig(targets=(r"model\.language_model\.layers\.0\.self_attn\.[qv]_proj",)))
    attn = "model.language_model.layers.0.self_attn"
    assert wrapped == [f"{attn}.q_proj", f"{attn}.v_proj"]
    with pytest.raises(ValueError, match="match no nn.Linear"):
        apply_lora(random_model("debug"), LoRAConfig(targets=("nope",)))


def test_fresh_adapter_is_the_identity():
    model = random_model("debug")
    inputs = _inputs(model.config)
    with torch.no_grad():
        before = model(**inputs).logits
        apply_lora(model, LoRAConfig(rank=4, targets=LANGUAGE_TARGETS + VISION_TARGETS))
        after = model(**inputs).logits
    assert torch.equal(before, after)


def test_merged_equals_unmerged_adapter():
    model = random_model("debug")
    base_state = state_for_export(model)
    apply_lora(model, LoRAConfig(rank=4, alpha=8, dropout=0.1,
                                 targets=LANGUAGE_TARGETS + VISION_TARGETS))  # dropout is off in eval mode
    _randomize_b(model)
    inputs = _inputs(model.config)
    model.eval()
    with torch.no_grad():
        unmerged = model(**inputs).logits
        merge_lora(model)
        merged = model(**inputs).logits
    keep = inputs["attention_mask"].bool()
    assert (merged - unmerged)[keep].abs().max() <= 1e-5
    assert not lora_modules(model)
    assert not any(isinstance(m, LoRALinear) for m in model.modules())
    merged_state = state_for_export(model)
    assert merged_state.keys() == base_state.keys()  # exports exactly the official tensor names
    assert not torch.equal(merged_state["model.language_model.layers.0.self_attn.q_proj.weight"],
                           base_state["model.language_model.layers.0.self_attn.q_proj.weight"])


def test_lora_gradients_reach_only_the_adapters():
    model = random_model("debug").train()
    apply_lora(model, LoRAConfig(rank=2, targets=("q_proj", "v_proj")))
    _randomize_b(model)
    model(**_inputs(model.config)).logits.square().mean().backward()
    for n, p in model.named_parameters():
        assert (p.grad is not None) == n.endswith((".lora_A", ".lora_B")), n


def test_adapter_save_and_load(tmp_path):
    cfg = LoRAConfig(rank=3, alpha=6, targets=("q_proj", "down_proj"))
    model = random_model("debug")
    apply_lora(model, cfg)
    _randomize_b(model)
    save_adapter(model, tmp_path / "adapter", cfg)
    inputs = _inputs(model.config)
    fresh = random_model("debug")
    assert load_adapter(fresh, tmp_path / "adapter") == cfg
    with torch.no_grad():
        assert torch.equal(model.eval()(**inputs).logits, fresh.eval()(**inputs).logits)
