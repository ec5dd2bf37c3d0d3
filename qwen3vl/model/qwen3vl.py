"""Glue: vision encoder + decoder + LM head, with the reference's module tree (`model.visual`,
`model.language_model`, `lm_head`) so checkpoint names map one to one.

Two ways in:
  * `forward(input_ids, attention_mask, pixel_values, image_grid_thw, pixel_values_videos, video_grid_thw)`:
    the transformers-style call on (left-padded) batches, returning `.logits` (B, S, V). No cache.
  * the pieces the engine and trainer compose themselves: `encode_vision`, `embed`, `decode`, `logits`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from qwen3vl.config import Qwen3VLConfig
from qwen3vl.model.cpu_threads import warm_cpu_threads
from qwen3vl.model.positions import get_rope_index
from qwen3vl.model.text import AttentionBackend, CausalAttention, TextModel
from qwen3vl.model.vision import VisionModel


@dataclass
class VisionFeatures:
    """Merged tokens (N, D) for a set of items and their DeepStack features, one (N, D) per level."""

    embeds: torch.Tensor
    deepstack: list[torch.Tensor]


@dataclass
class ModelOutput:
    logits: torch.Tensor
    hidden_states: torch.Tensor | None = None


class Qwen3VLModel(nn.Module):
    def __init__(self, cfg: Qwen3VLConfig):
        super().__init__()
        self.visual = VisionModel(cfg.vision_config)
        self.language_model = TextModel(cfg.text_config)


class Qwen3VLForConditionalGeneration(nn.Module):
    def __init__(self, cfg: Qwen3VLConfig):
        super().__init__()
        self.config = cfg
        self.model = Qwen3VLModel(cfg)
        self.lm_head = nn.Linear(cfg.text_config.hidden_size, cfg.text_config.vocab_size, bias=False)
        if cfg.tie_word_embeddings:
            self.lm_head.weight = self.model.language_model.embed_tokens.weight

    # ---------------------------------------------------------------------------------- pieces
    @property
    def dtype(self) -> torch.dtype:
        return self.model.language_model.embed_tokens.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.model.language_model.embed_tokens.weight.device

    def encode_vision(self, pixel_values: torch.Tensor, grid_thw: torch.Tensor | list) -> VisionFeatures:
        """Run the ViT over images or videos (grids (n, 3)); rows in the order their pad tokens appear."""
        visual = self.model.visual
        warm_cpu_threads(self.device)
        embeds, deep = visual(pixel_values.to(device=self.device, dtype=visual.dtype), grid_thw)
        return VisionFeatures(embeds, deep)

    def embed(self, input_ids: torch.Tensor, vision: VisionFeatures | None = None,
              visual_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Token embeddings with visual features written into the pad positions (`visual_mask`)."""
        x = self.model.language_model.embed_tokens(input_ids)
        if vision is not None:
            n = int(visual_mask.sum())
            if n != vision.embeds.shape[0]:
                raise ValueError(
                    f"the prompt has {n} image/video pad tokens but the vision encoder produced "
                    f"{vision.embeds.shape[0]} features")
            x = x.masked_scatter(visual_mask[..., None], vision.embeds.to(x.dtype))
        return x

    def decode(self, inputs_embeds: torch.Tensor, positions: torch.Tensor, backend: AttentionBackend,
               visual_mask: torch.Tensor | None = None, deepstack: list[torch.Tensor] | None = None) -> torch.Tensor:
        warm_cpu_threads(inputs_embeds.device)
        return self.model.language_model(inputs_embeds, positions, backend, visual_mask, deepstack)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm_head(hidden)

    # ---------------------------------------------------------------------------------- full forward
    def visual_inputs(self, input_ids: torch.Tensor, pixel_values=None, image_grid_thw=None,
                      pixel_values_videos=None, video_grid_thw=None) -> tuple[VisionFeatures | None, torch.Tensor | None]:
        """Encode images and videos and interleave their features in sequence order of their pad tokens."""
        cfg = self.config
        image_mask = input_ids == cfg.image_token_id
        video_mask = input_ids == cfg.video_token_id
        parts = []
        if pixel_values is not None:
            if image_grid_thw is None:
                raise ValueError("pixel_values given without image_grid_thw")
            parts.append((image_mask, self.encode_vision(pixel_values, image_grid_thw)))
        if pixel_values_videos is not None:
            if video_grid_thw is None:
                raise ValueError("pixel_values_videos given without video_grid_thw")
            parts.append((video_mask, self.encode_vision(pixel_values_videos, video_grid_thw)))
        if not parts:
            if image_mask.any() or video_mask.any():
                raise ValueError("input_ids contain image/video pad tokens but no pixel values were given")
            return None, None
        visual_mask = image_mask | video_mask
        if len(parts) == 1:
            mask, feats = parts[0]
            if not torch.equal(mask, visual_mask):
                kind = "video" if mask is image_mask else "image"
                raise ValueError(f"input_ids contain {kind} pad tokens but no {kind} pixel values were given")
            return feats, visual_mask
        # both: place each modality's rows where its pad tokens sit among all visual positions
        n = int(visual_mask.sum())
        sel = [m[visual_mask] for m, _ in parts]

        def joint(get):
            first = get(parts[0][1])
            out = first.new_zeros(n, first.shape[-1])
            for s, (_, f) in zip(sel, parts):
                out[s] = get(f).to(out.dtype)
            return out

        levels = len(parts[0][1].deepstack)
        return VisionFeatures(joint(lambda f: f.embeds),
                              [joint(lambda f, i=i: f.deepstack[i]) for i in range(levels)]), visual_mask

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                pixel_values: torch.Tensor | None = None, image_grid_thw: torch.Tensor | None = None,
                pixel_values_videos: torch.Tensor | None = None, video_grid_thw: torch.Tensor | None = None,
                ) -> ModelOutput:
        cfg = self.config
        input_ids = input_ids.to(self.device)
        if attention_mask is not None:
            attention_mask = attention_mask.to(self.device)
        vision, visual_mask = self.visual_inputs(input_ids, pixel_values, image_grid_thw, pixel_values_videos,
                                                 video_grid_thw)
        x = self.embed(input_ids, vision, visual_mask)
        positions, _ = get_rope_index(input_ids, attention_mask, image_grid_thw, video_grid_thw, cfg.image_token_id,
                                      cfg.video_token_id, cfg.vision_config.spatial_merge_size)
        hidden = self.decode(x, positions, CausalAttention(attention_mask), visual_mask,
                             vision.deepstack if vision is not None else None)
        return ModelOutput(logits=self.logits(hidden))


def load_model(path: str | Path, dtype: torch.dtype | str | None = None, device: str | torch.device = "cpu",
               revision: str | None = None, progress: bool = False) -> Qwen3VLForConditionalGeneration:
    """Load a Qwen3-VL checkpoint (a local folder or a Hugging Face hub id) into an eval-mode model.

    `dtype` defaults to the checkpoint's own (`torch_dtype`/`dtype` in config.json), else float32.
    Weights are read lazily tensor by tensor, so peak memory stays near one copy of the weights.
    """
    from qwen3vl.weights.loader import load_checkpoint

    return load_checkpoint(path, dtype=dtype, device=device, revision=revision, progress=progress)
