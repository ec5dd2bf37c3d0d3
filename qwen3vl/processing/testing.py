"""Tiny checkpoint files for tests (no hub access needed): a byte-level tokenizer with every Qwen special token,
plus config.json, preprocessor configs and an optional chat template.

The tokenizer follows spec §13.2: the 256 byte-level symbols as the vocabulary (ids 0-255, no merges, so every byte
is a token), then the Qwen3 added tokens in their real order, so `<|endoftext|>` is 256 where the real one is 151643
(id = 256 + real_id - 151643). Tool/think/FIM tokens are added tokens that are not "special", as in Qwen3's
tokenizer_config.json, so `decode(..., skip_special_tokens=True)` keeps them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from qwen3vl.processing.tokenizer import QWEN_ADDED_TOKENS

QWEN_FIRST_ADDED_ID = 151643
TINY_FIRST_ADDED_ID = 256


def tiny_token_ids() -> dict[str, int]:
    """Token string -> id in the tiny tokenizer."""
    return {content: TINY_FIRST_ADDED_ID + k for k, (content, _) in enumerate(QWEN_ADDED_TOKENS)}


def write_tiny_tokenizer(folder: str | Path) -> dict[str, int]:
    """Write tokenizer.json + tokenizer_config.json into `folder`; returns the added tokens' ids."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    symbols = sorted(pre_tokenizers.ByteLevel.alphabet())
    tk = Tokenizer(models.BPE(vocab={s: i for i, s in enumerate(symbols)}, merges=[]))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    for content, special in QWEN_ADDED_TOKENS:
        token = AddedToken(content, special=special, normalized=False)
        (tk.add_special_tokens if special else tk.add_tokens)([token])
    ids = tiny_token_ids()
    assert all(tk.token_to_id(c) == i for c, i in ids.items()), "tiny tokenizer ids drifted"
    tk.save(str(folder / "tokenizer.json"))
    added = {
        str(ids[c]): {
            "content": c,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": special,
        }
        for c, special in QWEN_ADDED_TOKENS
    }
    tok_cfg = {
        "added_tokens_decoder": added,
        "bos_token": None,
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "model_max_length": 262144,
        "tokenizer_class": "Qwen2Tokenizer",
        "errors": "replace",
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(tok_cfg, indent=2))
    return ids


def write_tiny_checkpoint(
    folder: str | Path,
    chat_template: Literal["instruct", "thinking"] | None = "instruct",
    config: dict[str, Any] | None = None,
    template_file: Literal["json", "jinja"] = "json",
) -> dict[str, int]:
    """Tokenizer + config.json (vision token ids at the top level, merged with `config`) + preprocessor configs with
    the Qwen3-VL shipped values + (optionally) the official chat template. Returns the added tokens' ids."""
    from qwen3vl.processing.chat_template import builtin_template

    folder = Path(folder)
    ids = write_tiny_tokenizer(folder)
    base = {
        "model_type": "qwen3_vl",
        "image_token_id": ids["<|image_pad|>"],
        "video_token_id": ids["<|video_pad|>"],
        "vision_start_token_id": ids["<|vision_start|>"],
        "vision_end_token_id": ids["<|vision_end|>"],
        "text_config": {
            "vocab_size": TINY_FIRST_ADDED_ID + len(QWEN_ADDED_TOKENS),
            "pad_token_id": None,
            "eos_token_id": ids["<|im_end|>"],
        },
    }
    (folder / "config.json").write_text(json.dumps({**base, **(config or {})}, indent=2))
    common = {
        "patch_size": 16,
        "temporal_patch_size": 2,
        "merge_size": 2,
        "image_mean": [0.5] * 3,
        "image_std": [0.5] * 3,
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "do_convert_rgb": True,
        "resample": 3,
    }
    image = {
        **common,
        "size": {"shortest_edge": 65536, "longest_edge": 16777216},
        "image_processor_type": "Qwen2VLImageProcessorFast",
        "processor_class": "Qwen3VLProcessor",
    }
    video = {
        **common,
        "size": {"shortest_edge": 4096, "longest_edge": 25165824},
        "fps": 2,
        "min_frames": 4,
        "max_frames": 768,
        "do_sample_frames": True,
        "video_processor_type": "Qwen3VLVideoProcessor",
        "processor_class": "Qwen3VLProcessor",
    }
    (folder / "preprocessor_config.json").write_text(json.dumps(image, indent=2))
    (folder / "video_preprocessor_config.json").write_text(json.dumps(video, indent=2))
    gen = {
        "bos_token_id": ids["<|endoftext|>"],
        "eos_token_id": [ids["<|im_end|>"], ids["<|endoftext|>"]],
        "pad_token_id": ids["<|endoftext|>"],
        "do_sample": True,
        "temperature": 0.7,
        "top_k": 20,
        "top_p": 0.8,
    }
    (folder / "generation_config.json").write_text(json.dumps(gen, indent=2))
    if chat_template is not None:
        text = builtin_template(chat_template)
        if template_file == "json":
            (folder / "chat_template.json").write_text(json.dumps({"chat_template": text}, indent=2))
        else:
            (folder / "chat_template.jinja").write_text(text)
    return ids
