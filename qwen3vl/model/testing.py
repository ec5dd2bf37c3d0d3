"""Small random checkpoints in the official format, for tests, benchmarks and the no-weights demo path."""

from __future__ import annotations

from pathlib import Path

import torch

from qwen3vl.config import Qwen3VLConfig, preset


def random_model(cfg: Qwen3VLConfig | str = "debug", seed: int = 0, dtype: torch.dtype = torch.float32):
    """A model with `init_weights` random weights (built on meta first, so large shapes cost one copy)."""
    from qwen3vl.model.init import init_weights
    from qwen3vl.model.qwen3vl import Qwen3VLForConditionalGeneration

    if isinstance(cfg, str):
        cfg = preset(cfg)
    with torch.device("meta"):
        model = Qwen3VLForConditionalGeneration(cfg)
    init_weights(model, seed=seed)
    if cfg.tie_word_embeddings:
        model.lm_head.weight = model.model.language_model.embed_tokens.weight
    return model.to(dtype).eval()


def write_random_checkpoint(folder: str | Path, cfg: Qwen3VLConfig | str = "debug", seed: int = 0,
                            dtype: torch.dtype = torch.float32) -> Path:
    from qwen3vl.weights.export import save_checkpoint

    return save_checkpoint(random_model(cfg, seed, dtype), folder)
