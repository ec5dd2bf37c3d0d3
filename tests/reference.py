"""Reference (transformers 5.23) tiny models and hand-built multimodal inputs for parity tests.

Inputs are built directly as token ids (no tokenizer needed): random text ids, and for each image or video
the pad-token layout the processor would produce, so the model math is tested on its own.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

VOCAB = 300
IMG, VID, VS, VE = 290, 291, 288, 289
ROPE = {"rope_type": "default", "rope_theta": 5e6, "mrope_section": [2, 3, 3], "mrope_interleaved": True}
TEXT = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
            num_key_value_heads=2, head_dim=16, rope_parameters=ROPE, max_position_embeddings=4096,
            initializer_range=0.1)  # larger than the default 0.02 so logits are O(1) and 1e-4 means something
VISION = dict(depth=3, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64,
              num_position_embeddings=64, deepstack_visual_indexes=[0, 1], initializer_range=0.1)
IDS = dict(image_token_id=IMG, video_token_id=VID, vision_start_token_id=VS, vision_end_token_id=VE)
MOE = dict(moe_intermediate_size=24, num_experts=8, num_experts_per_tok=2)


def reference_model(kind: str, seed: int = 0, tie: bool = False, text_overrides: dict | None = None):
    """A random transformers Qwen3-VL ('dense' or 'moe') in fp32 eval mode."""
    from transformers import (Qwen3VLConfig, Qwen3VLForConditionalGeneration, Qwen3VLMoeConfig,
                              Qwen3VLMoeForConditionalGeneration)

    torch.manual_seed(seed)
    text = dict(TEXT, **(text_overrides or {}))
    if kind == "dense":
        cfg = Qwen3VLConfig(text_config=text, vision_config=VISION, tie_word_embeddings=tie, **IDS)
        model = Qwen3VLForConditionalGeneration(cfg)
    elif kind == "moe":
        cfg = Qwen3VLMoeConfig(text_config=dict(text, **MOE), vision_config=VISION, tie_word_embeddings=tie, **IDS)
        model = Qwen3VLMoeForConditionalGeneration(cfg)
    else:
        raise ValueError(kind)
    # transformers initialises norms to ones and biases to zeros; perturb them so a mixed-up norm or bias shows
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith("bias"):
                p.add_(torch.randn_like(p) * 0.1)
    return model.eval()


@dataclass
class Inputs:
    input_ids: list[int] = field(default_factory=list)
    image_grids: list[list[int]] = field(default_factory=list)
    video_grids: list[list[int]] = field(default_factory=list)

    def text(self, n: int, gen: torch.Generator) -> "Inputs":
        self.input_ids += torch.randint(0, 280, (n,), generator=gen).tolist()
        return self

    def image(self, h: int, w: int) -> "Inputs":
        self.input_ids += [VS] + [IMG] * (h * w // 4) + [VE]
        self.image_grids.append([1, h, w])
        return self

    def video(self, t: int, h: int, w: int, gen: torch.Generator, outer: bool = False) -> "Inputs":
        """Per temporal patch: timestamp text, then vision_start, pads, vision_end (4.57 layout; 5.23 with outer)."""
        if outer:
            self.input_ids.append(VS)
        for _ in range(t):
            self.text(3, gen)
            self.input_ids += [VS] + [VID] * (h * w // 4) + [VE]
        if outer:
            self.input_ids.append(VE)
        self.video_grids.append([t, h, w])
        return self


def pixels(grids: list[list[int]], gen: torch.Generator) -> torch.Tensor | None:
    if not grids:
        return None
    n = sum(t * h * w for t, h, w in grids)
    return torch.randn(n, 3 * 2 * 16 * 16, generator=gen)


def batch(rows: list[Inputs], gen: torch.Generator) -> dict[str, torch.Tensor]:
    """Left-padded model inputs plus `mm_token_type_ids` (which only the reference needs)."""
    s = max(len(r.input_ids) for r in rows)
    ids = torch.zeros(len(rows), s, dtype=torch.long)
    mask = torch.zeros(len(rows), s, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, s - len(r.input_ids):] = torch.tensor(r.input_ids)
        mask[i, s - len(r.input_ids):] = 1
    images = [g for r in rows for g in r.image_grids]
    videos = [g for r in rows for g in r.video_grids]
    out = {"input_ids": ids, "attention_mask": mask}
    if images:
        out["pixel_values"] = pixels(images, gen)
        out["image_grid_thw"] = torch.tensor(images)
    if videos:
        out["pixel_values_videos"] = pixels(videos, gen)
        out["video_grid_thw"] = torch.tensor(videos)
    mm = torch.zeros_like(ids)
    mm[ids == IMG] = 1
    mm[ids == VID] = 2
    out["mm_token_type_ids"] = mm
    return out


def ours_kwargs(inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in inputs.items() if k != "mm_token_type_ids"}


def random_lora(base, folder, seed: int, **config):
    """A random (non-identity) peft LoRA on transformers' model of the checkpoint `base`, saved to `folder`."""
    import peft
    from transformers import Qwen3VLForConditionalGeneration

    torch.manual_seed(seed)
    hf = Qwen3VLForConditionalGeneration.from_pretrained(base)
    model = peft.get_peft_model(hf, peft.LoraConfig(init_lora_weights=False, **config))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.2)  # large enough to change greedy tokens
    model.save_pretrained(folder)
    return folder
