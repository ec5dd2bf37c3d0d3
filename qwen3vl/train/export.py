"""Write a fine-tuned model as an ordinary checkpoint folder: LoRA merged into the weights, activation
checkpointing removed, the official safetensors layout (`weights.export.save_checkpoint`), and the base folder's
tokenizer, preprocessor, chat-template and generation files copied next to it, so both `qwen3vl.load_model` /
`qwen3vl.LLM` and transformers' `from_pretrained` load it."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
from torch import nn

# Everything in a Qwen3-VL folder that is not weights or config.json.
SIDE_FILES: tuple[str, ...] = (
    "tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt", "special_tokens_map.json",
    "added_tokens.json", "preprocessor_config.json", "video_preprocessor_config.json", "chat_template.json",
    "chat_template.jinja", "generation_config.json",
)


def copy_side_files(base: str | Path, out: str | Path) -> list[str]:
    """Copy the side files of `base` (a folder, or a hub id: its cached snapshot) into `out`."""
    from qwen3vl.weights.hub import resolve_checkpoint

    base, out = resolve_checkpoint(base), Path(out)
    copied = []
    for name in SIDE_FILES:
        if (base / name).is_file() and (base / name).resolve() != (out / name).resolve():
            shutil.copyfile(base / name, out / name)
            copied.append(name)
    return copied


def export_model(model: nn.Module, out_dir: str | Path, base_folder: str | Path | None = None,
                 dtype: torch.dtype | None = None) -> Path:
    """Merge adapters (in place: the model is a plain one afterwards), save, copy the side files; returns the folder."""
    from qwen3vl.train.checkpointing import remove_activation_checkpointing
    from qwen3vl.train.lora import merge_lora
    from qwen3vl.weights.export import save_checkpoint

    merge_lora(model)
    remove_activation_checkpointing(model)
    out = save_checkpoint(model, out_dir, dtype=dtype)
    if base_folder is not None:
        copy_side_files(base_folder, out)
    return out
