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


def write_tiny_model(folder: str | Path, kind: str = "dense", seed: int = 0, chat_template: str | None = "instruct",
                     sharpen: float = 1.0) -> Path:
    """A complete tiny checkpoint folder — byte-level tokenizer with every Qwen special token, preprocessor
    configs, chat template, generation config and random weights of the `debug` shape whose vocabulary and
    vision token ids match the tokenizer. `kind` is "dense" or "moe"; `sharpen` scales the weight matrices so
    greedy choices are decisive."""
    from qwen3vl.config import RopeConfig
    from qwen3vl.processing.testing import write_tiny_checkpoint

    folder = Path(folder)
    ids = write_tiny_checkpoint(folder, chat_template=chat_template)
    cfg = preset("debug")
    cfg.text_config.vocab_size = max(ids.values()) + 1
    cfg.image_token_id, cfg.video_token_id = ids["<|image_pad|>"], ids["<|video_pad|>"]
    cfg.vision_start_token_id, cfg.vision_end_token_id = ids["<|vision_start|>"], ids["<|vision_end|>"]
    cfg.text_config.rope = RopeConfig(rope_theta=5e6, mrope_section=[2, 3, 3])
    if kind == "moe":
        cfg.model_type = "qwen3_vl_moe"
        t = cfg.text_config
        t.num_experts, t.num_experts_per_tok, t.moe_intermediate_size = 8, 2, 24
    elif kind != "dense":
        raise ValueError(f"kind must be 'dense' or 'moe', got {kind!r}")
    cfg.validate()
    model = random_model(cfg, seed=seed)
    if sharpen != 1.0:
        with torch.no_grad():
            for p in model.parameters():
                if p.dim() > 1:
                    p.mul_(sharpen)
    from qwen3vl.weights.export import save_checkpoint

    save_checkpoint(model, folder)
    return folder
