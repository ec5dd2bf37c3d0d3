"""A small byte-level BPE tokenizer for the demo model, trained on the synthetic data's text.

It is built like Qwen's: NFC normaliser, the Qwen2/3 split regex (every digit its own piece, which helps counting
and coordinates), byte-level BPE, and the Qwen added tokens in Qwen's order right after the learned vocabulary,
so `id - first_added_id == qwen_id - 151643` for every one of them (the FIM/repo tokens, 151659-151664, are kept
to hold that layout). `<tool_call>` ... `</think>` are plain (non-special) added tokens, as in Qwen.

The output folder has `tokenizer.json` and `tokenizer_config.json` in the Hugging Face layout, loadable with
`tokenizers.Tokenizer.from_file` and `transformers.PreTrainedTokenizerFast.from_pretrained`.
"""

from __future__ import annotations

import itertools
import json
import logging
import re
from collections.abc import Iterator
from pathlib import Path

from qwen3vl.processing.tokenizer import QWEN_ADDED_TOKENS
from qwen3vl.train.synthetic import OCR_WORDS, TASKS, SyntheticConfig, iter_examples
from qwen3vl.train.synthetic_scenes import COLORS, PLURALS, SHAPES

log = logging.getLogger(__name__)

# Qwen lists the chat and vision markers (not <|endoftext|>) as additional special tokens.
ADDITIONAL_SPECIAL_TOKENS = tuple(t for t, special in QWEN_ADDED_TOKENS[1:14] if special)

# The Qwen2/Qwen3 pre-tokenizer regex: contractions, letter runs, single digits, punctuation runs, whitespace.
QWEN_SPLIT_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

_SPECIAL_RE = re.compile("|".join(re.escape(t) for t, _ in QWEN_ADDED_TOKENS))


def render_chat(messages: list[dict], fps: float = 2.0) -> str:
    """The Instruct chat format (spec §9.1) of a conversation, with one placeholder per medium.

    Videos are written as the processor expands them (spec §4): `<t seconds>` per pair of frames, one pad each.
    Only used to give the tokenizer the surrounding text; the model's renderer lives in qwen3vl.processing.
    """
    out = []
    for message in messages:
        content = message["content"]
        if isinstance(content, str):
            body = content
        else:
            parts = []
            for part in content:
                if part["type"] == "image":
                    parts.append("<|vision_start|><|image_pad|><|vision_end|>")
                elif part["type"] == "video":
                    n_pairs = (len(part["video"]) + 1) // 2 if isinstance(part["video"], list) else 1
                    rate = part.get("sample_fps", fps)
                    stamps = "".join(
                        f"<{format((2 * k + 0.5) / rate, '.1f')} seconds><|vision_start|><|video_pad|><|vision_end|>"
                        for k in range(n_pairs))
                    parts.append(f"<|vision_start|>{stamps}<|vision_end|>")
                else:
                    parts.append(part["text"])
            body = "".join(parts)
        out.append(f"<|im_start|>{message['role']}\n{body}<|im_end|>\n")
    return "".join(out)


def corpus(seed: int = 0, n: int = 3000, config: SyntheticConfig | None = None) -> Iterator[str]:
    """Training text: n rendered synthetic conversations plus the task vocabulary, cut at the special tokens."""
    texts = [render_chat(ex.messages) for ex in itertools.islice(iter_examples(seed, TASKS, config), n)]
    texts.append("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n")
    texts.append("<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>")
    texts.append("<think>\nLet me look at the image.\n</think>\n\n")
    vocabulary = [*COLORS, *SHAPES, *PLURALS.values(), *OCR_WORDS, *(w.lower() for w in OCR_WORDS)]
    texts.append(" ".join(vocabulary) + "\n" + " ".join(w.capitalize() for w in vocabulary))
    for text in texts:
        for piece in _SPECIAL_RE.split(text):
            if piece:
                yield piece


def _tokenizer_config(added: list[tuple[int, str, bool]], model_max_length: int) -> dict:
    return {
        "add_bos_token": False,
        "add_prefix_space": False,
        "added_tokens_decoder": {
            str(i): {"content": t, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False,
                     "special": special}
            for i, t, special in added
        },
        "additional_special_tokens": list(ADDITIONAL_SPECIAL_TOKENS),
        "bos_token": None,
        "clean_up_tokenization_spaces": False,
        "eos_token": "<|im_end|>",
        "errors": "replace",
        "model_max_length": model_max_length,
        "pad_token": "<|endoftext|>",
        "split_special_tokens": False,
        "tokenizer_class": "Qwen2Tokenizer",
        "unk_token": None,
    }


def train_tokenizer(
    out_dir: str | Path,
    seed: int = 0,
    vocab_size: int = 1024,
    *,
    n_examples: int = 3000,
    min_frequency: int = 2,
    model_max_length: int = 4096,
    config: SyntheticConfig | None = None,
) -> Path:
    """Train the BPE on `corpus(seed, n_examples)` and write the tokenizer files to `out_dir`; returns `out_dir`.

    `vocab_size` counts the learned vocabulary (256 bytes + merges); the 26 added tokens come on top. The
    synthetic text is narrow, so training may stop below `vocab_size` once every frequent pair is merged.
    """
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    if vocab_size < 256:
        raise ValueError(f"vocab_size={vocab_size}: a byte-level BPE needs at least the 256 byte symbols")
    tok = Tokenizer(models.BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN_SPLIT_PATTERN), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    tok.post_processor = None
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
        show_progress=False,
    )
    tok.train_from_iterator(corpus(seed, n_examples, config), trainer=trainer)
    base = tok.get_vocab_size(with_added_tokens=False)
    for content, special in QWEN_ADDED_TOKENS:  # one at a time: ids follow Qwen's order, special or not
        token = AddedToken(content, special=special, normalized=False, lstrip=False, rstrip=False, single_word=False)
        if special:
            tok.add_special_tokens([token])
        else:
            tok.add_tokens([token])
    added = [(tok.token_to_id(t), t, special) for t, special in QWEN_ADDED_TOKENS]
    expected = list(range(base, base + len(QWEN_ADDED_TOKENS)))
    if [i for i, _, _ in added] != expected:
        raise RuntimeError(f"added token ids {[i for i, _, _ in added]} are not the contiguous range {expected}")

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok.save(str(out / "tokenizer.json"))
    config_json = _tokenizer_config(added, model_max_length)
    (out / "tokenizer_config.json").write_text(json.dumps(config_json, indent=2, ensure_ascii=False) + "\n")
    log.info("tokenizer: %d learned tokens + %d added (ids %d..%d) -> %s", base, len(added), base,
             base + len(added) - 1, out)
    return out
