"""Tiny base checkpoints for training tests and examples: the debug architecture (DeepStack on two levels,
interleaved MRoPE) with its vocabulary and vision token ids taken from a tokenizer, so a processor and a model
built from the same folder agree."""

from __future__ import annotations

import json
from pathlib import Path

from qwen3vl.config import Qwen3VLConfig, preset


def config_for_tokenizer(folder: str | Path, base: Qwen3VLConfig | None = None) -> Qwen3VLConfig:
    """`base` (default: the debug preset) with vocab_size and the vision token ids read from `tokenizer.json`."""
    from tokenizers import Tokenizer

    tk = Tokenizer.from_file(str(Path(folder) / "tokenizer.json"))
    cfg = base or preset("debug")

    def tid(token: str) -> int:
        i = tk.token_to_id(token)
        if i is None:
            raise ValueError(f"{folder}/tokenizer.json has no {token}")
        return i

    cfg.text_config.vocab_size = tk.get_vocab_size(with_added_tokens=True)
    cfg.image_token_id, cfg.video_token_id = tid("<|image_pad|>"), tid("<|video_pad|>")
    cfg.vision_start_token_id, cfg.vision_end_token_id = tid("<|vision_start|>"), tid("<|vision_end|>")
    cfg.validate()
    return cfg


def write_tiny_base(folder: str | Path, seed: int = 0) -> Path:
    """Byte-level tiny tokenizer + preprocessor configs + chat template + random debug-size weights."""
    from qwen3vl.model.testing import write_random_checkpoint
    from qwen3vl.processing.testing import write_tiny_checkpoint

    folder = Path(folder)
    write_tiny_checkpoint(folder)
    cfg = config_for_tokenizer(folder)
    write_random_checkpoint(folder, cfg, seed=seed)  # rewrites config.json with the full config
    gen = json.loads((folder / "generation_config.json").read_text())
    gen.update(do_sample=False)
    (folder / "generation_config.json").write_text(json.dumps(gen, indent=2))
    return folder


def tiny_synthetic_config():
    """Small synthetic media (64 px images: 4 visual tokens; 2-3 s clips of 64 px frames) for fast tests."""
    from qwen3vl.train.synthetic import SyntheticConfig

    return SyntheticConfig(image_size=64, video_size=64, min_seconds=2, max_seconds=3)


def write_tiny_jsonl(path: str | Path, seed: int, n: int) -> Path:
    """n synthetic conversations (all five tasks, small media) as JSONL + media folder."""
    from qwen3vl.train.synthetic import make_dataset
    from qwen3vl.train.synthetic_io import write_jsonl

    return write_jsonl(make_dataset(seed, n, config=tiny_synthetic_config()), path, progress=False)
