"""The SFT objective: next-token cross-entropy on the assistant's tokens only.

The model's own pieces (`visual_inputs`, `embed`, `decode`) give the final hidden states; only the positions whose
*next* token is a target go through the LM head, so the (B, S, V) logits tensor is never built (with a 151k vocab
it would dominate memory). Losses are returned as a sum with the target count, so gradient accumulation can divide
by the number of targets of the whole optimizer step.

Legend: B batch, S tokens, D width, V vocab, N target positions.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from qwen3vl.model.positions import get_rope_index
from qwen3vl.model.text import CausalAttention
from qwen3vl.train.data import Batch


def hidden_states(model, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """What `model.forward` computes before the LM head: final-normed hidden states (B, S, D)."""
    cfg = model.config
    ids = inputs["input_ids"].to(model.device)
    mask = inputs["attention_mask"].to(model.device)
    vision, visual_mask = model.visual_inputs(ids, inputs.get("pixel_values"), inputs.get("image_grid_thw"),
                                              inputs.get("pixel_values_videos"), inputs.get("video_grid_thw"))
    x = model.embed(ids, vision, visual_mask)  # (B, S, D)
    positions, _ = get_rope_index(ids, mask, inputs.get("image_grid_thw"), inputs.get("video_grid_thw"),
                                  cfg.image_token_id, cfg.video_token_id, cfg.vision_config.spatial_merge_size)
    return model.decode(x, positions, CausalAttention(mask), visual_mask,
                        vision.deepstack if vision is not None else None)


def loss_sum(model, batch: Batch) -> tuple[torch.Tensor, int]:
    """(sum of target-token cross-entropies in float32, number of targets)."""
    hidden = hidden_states(model, batch.inputs)  # (B, S, D)
    ids = batch.inputs["input_ids"].to(hidden.device)
    select = batch.loss_mask[:, 1:].to(hidden.device).bool()  # position t predicts token t+1
    n = int(select.sum())
    if n == 0:
        return hidden.sum() * 0.0, 0  # keeps the graph (and DDP-style hooks) happy without adding anything
    h = hidden[:, :-1][select]  # (N, D)
    logits = model.logits(h).float()  # (N, V)
    return F.cross_entropy(logits, ids[:, 1:][select], reduction="sum"), n
