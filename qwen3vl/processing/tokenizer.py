"""The checkpoint's tokenizer (`tokenizer.json` through the `tokenizers` library) and streaming detokenization.

Special-token ids come from the checkpoint: the vision ids from config.json's top level (`image_token_id`,
`video_token_id`, `vision_start_token_id`, `vision_end_token_id`), the chat tokens (`<|im_start|>`, `<|im_end|>`)
and pad/eos from the tokenizer files. Nothing is hard-coded, so the tiny test tokenizer (ids 256...) works too.

`IncrementalDecoder` streams text without ever splitting a multi-byte UTF-8 character: for byte-level BPE it feeds
each token's bytes to Python's incremental UTF-8 decoder, which holds back an incomplete character until the next
token completes it.
"""

from __future__ import annotations

import codecs
import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from tokenizers import AddedToken
from tokenizers import Tokenizer as HFTokenizer

logger = logging.getLogger(__name__)

IM_START, IM_END, ENDOFTEXT = "<|im_start|>", "<|im_end|>", "<|endoftext|>"
VISION_TOKEN_KEYS = {
    "image_token_id": "<|image_pad|>",
    "video_token_id": "<|video_pad|>",
    "vision_start_token_id": "<|vision_start|>",
    "vision_end_token_id": "<|vision_end|>",
}

# (content, special) in Qwen3's id order, starting at 151643.
QWEN_ADDED_TOKENS: tuple[tuple[str, bool], ...] = (
    ("<|endoftext|>", True),
    ("<|im_start|>", True),
    ("<|im_end|>", True),
    ("<|object_ref_start|>", True),
    ("<|object_ref_end|>", True),
    ("<|box_start|>", True),
    ("<|box_end|>", True),
    ("<|quad_start|>", True),
    ("<|quad_end|>", True),
    ("<|vision_start|>", True),
    ("<|vision_end|>", True),
    ("<|vision_pad|>", True),
    ("<|image_pad|>", True),
    ("<|video_pad|>", True),
    ("<tool_call>", False),
    ("</tool_call>", False),
    ("<|fim_prefix|>", False),
    ("<|fim_middle|>", False),
    ("<|fim_suffix|>", False),
    ("<|fim_pad|>", False),
    ("<|repo_name|>", False),
    ("<|file_sep|>", False),
    ("<tool_response>", False),
    ("</tool_response>", False),
    ("<think>", False),
    ("</think>", False),
)


@dataclass(frozen=True)
class SpecialTokens:
    """Ids the processor needs; all read from the checkpoint files."""

    image: int
    video: int
    vision_start: int
    vision_end: int
    im_start: int
    im_end: int
    pad: int
    eos: int
    stop: tuple[int, ...]


@cache
def _byte_decoder() -> dict[str, int]:
    """Inverse of GPT-2's bytes_to_unicode: the printable stand-in character -> the byte it encodes."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    mapping, extra = {}, 0
    for b in range(256):
        if b in printable:
            mapping[chr(b)] = b
        else:
            mapping[chr(256 + extra)] = b
            extra += 1
    return mapping


def _bpe_bytes(token: str) -> bytes:
    """A byte-level BPE vocabulary entry back to the bytes it stands for."""
    table = _byte_decoder()
    return b"".join(bytes([table[c]]) if c in table else c.encode() for c in token)


def _token_text(value: Any) -> str | None:
    if isinstance(value, dict):
        return value.get("content")
    return value if isinstance(value, str) else None


class Tokenizer:
    """Encode/decode with a checkpoint's tokenizer. Text is encoded WITHOUT adding bos/eos (Qwen adds none)."""

    def __init__(self, tk: HFTokenizer, special: SpecialTokens):
        self._tk = tk
        self.special = special
        added = tk.get_added_tokens_decoder()
        self._added_text = {i: t.content for i, t in added.items()}
        self._special_ids = frozenset(i for i, t in added.items() if t.special)
        decoder = json.loads(tk.to_str()).get("decoder") or {}
        self.is_byte_level = decoder.get("type") == "ByteLevel"

    @classmethod
    def from_folder(cls, folder: str | Path, config: dict[str, Any] | None = None) -> Tokenizer:
        """Load tokenizer.json (+ tokenizer_config.json's added tokens and pad/eos; generation_config.json's eos)."""
        folder = Path(folder)
        path = folder / "tokenizer.json"
        if not path.is_file():
            raise FileNotFoundError(f"{folder} has no tokenizer.json")
        tk = HFTokenizer.from_file(str(path))
        tok_cfg = _read_json(folder / "tokenizer_config.json")
        _add_missing_tokens(tk, tok_cfg.get("added_tokens_decoder") or {})
        config = config if config is not None else _read_json(folder / "config.json")
        gen_cfg = _read_json(folder / "generation_config.json")
        return cls(tk, _special_tokens(tk, tok_cfg, config, gen_cfg))

    # -- encoding -------------------------------------------------------------------------------------------------
    def encode(self, text: str) -> list[int]:
        return self._tk.encode(text, add_special_tokens=False).ids

    def encode_with_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        """Ids and each token's (start, end) character span in `text`."""
        enc = self._tk.encode(text, add_special_tokens=False)
        return enc.ids, enc.offsets

    def token_to_id(self, token: str) -> int | None:
        return self._tk.token_to_id(token)

    def id_to_token(self, token_id: int) -> str | None:
        return self._tk.id_to_token(token_id)

    @property
    def vocab_size(self) -> int:
        """Number of ids the tokenizer knows (with added tokens); the model's embedding may have padding rows."""
        return self._tk.get_vocab_size(with_added_tokens=True)

    # -- decoding -------------------------------------------------------------------------------------------------
    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        return self._tk.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def is_special(self, token_id: int) -> bool:
        return token_id in self._special_ids

    def token_bytes(self, token_id: int) -> bytes:
        """The exact bytes a token stands for (byte-level BPE); added tokens are their UTF-8 content."""
        if token_id in self._added_text:
            return self._added_text[token_id].encode()
        token = self._tk.id_to_token(token_id)
        if token is None:
            raise ValueError(f"token id {token_id} is not in the vocabulary (size {self.vocab_size})")
        return _bpe_bytes(token)

    def text_bytes(self, token_id: int) -> bytes | None:
        """A token's bytes if it is ordinary text; None for added (special, tool, think) tokens and unknown ids."""
        token = None if token_id in self._added_text else self._tk.id_to_token(token_id)
        return None if token is None else _bpe_bytes(token)

    def incremental_decoder(self, skip_special_tokens: bool = False) -> IncrementalDecoder:
        return IncrementalDecoder(self, skip_special_tokens)


class IncrementalDecoder:
    """Streaming detokenizer: `add(ids)` returns only complete characters; `flush()` returns the rest.

    The concatenation of everything returned equals `tokenizer.decode(all_ids)` (for byte-level BPE; other
    tokenizers fall back to decoding a sliding window and holding back a trailing U+FFFD).
    """

    def __init__(self, tokenizer: Tokenizer, skip_special_tokens: bool = False):
        self._tok = tokenizer
        self._skip = skip_special_tokens
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._ids: list[int] = []
        self._prefix = self._read = 0  # fallback path: window [prefix, read) already emitted
        self.text = ""

    def add(self, token_ids: int | Iterable[int]) -> str:
        ids = [token_ids] if isinstance(token_ids, int) else list(token_ids)
        if self._skip:
            ids = [i for i in ids if not self._tok.is_special(i)]
        if self._tok.is_byte_level:
            delta = self._utf8.decode(b"".join(self._tok.token_bytes(i) for i in ids))
        else:
            delta = self._add_fallback(ids)
        self.text += delta
        return delta

    def flush(self) -> str:
        """Text held back (an incomplete character at the very end becomes U+FFFD)."""
        if self._tok.is_byte_level:
            delta = self._utf8.decode(b"", final=True)
        else:
            done = len(self._tok.decode(self._ids[self._prefix : self._read]))
            delta = self._tok.decode(self._ids[self._prefix :])[done:]
            self._prefix = self._read = len(self._ids)
        self.text += delta
        return delta

    def _add_fallback(self, ids: list[int]) -> str:
        self._ids.extend(ids)
        prefix_text = self._tok.decode(self._ids[self._prefix : self._read])
        new_text = self._tok.decode(self._ids[self._prefix :])
        if len(new_text) > len(prefix_text) and not new_text.endswith("\ufffd"):
            self._prefix, self._read = self._read, len(self._ids)
            return new_text[len(prefix_text) :]
        return ""


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _add_missing_tokens(tk: HFTokenizer, added_tokens_decoder: dict[str, Any]) -> None:
    """tokenizer_config.json can declare added tokens that tokenizer.json lacks; add them (in id order)."""
    for key in sorted(added_tokens_decoder, key=int):
        spec = added_tokens_decoder[key]
        content = spec.get("content")
        if not content or tk.token_to_id(content) is not None:
            continue
        token = AddedToken(
            content,
            single_word=spec.get("single_word", False),
            lstrip=spec.get("lstrip", False),
            rstrip=spec.get("rstrip", False),
            normalized=spec.get("normalized", False),
            special=spec.get("special", False),
        )
        (tk.add_special_tokens if token.special else tk.add_tokens)([token])
        got = tk.token_to_id(content)
        if got != int(key):
            logger.warning("added token %r got id %d, tokenizer_config.json declares %s", content, got, key)


def _special_tokens(
    tk: HFTokenizer, tok_cfg: dict[str, Any], config: dict[str, Any], gen_cfg: dict[str, Any]
) -> SpecialTokens:
    def by_text(text: str, what: str) -> int:
        token_id = tk.token_to_id(text)
        if token_id is None:
            raise ValueError(f"the tokenizer has no {text!r} token ({what})")
        return token_id

    vision = {}
    for key, text in VISION_TOKEN_KEYS.items():
        from_cfg = config.get(key)
        from_tok = tk.token_to_id(text)
        if from_cfg is None:
            vision[key] = by_text(text, f"config.json has no {key}")
            continue
        if from_tok is not None and from_tok != from_cfg:
            raise ValueError(f"config.json {key}={from_cfg} but the tokenizer maps {text!r} to {from_tok}")
        if tk.id_to_token(from_cfg) is None:
            raise ValueError(f"config.json {key}={from_cfg} is not a token id of tokenizer.json")
        vision[key] = int(from_cfg)
    im_end = by_text(IM_END, "chat turn end")
    eos_text = _token_text(tok_cfg.get("eos_token"))
    eos = tk.token_to_id(eos_text) if eos_text else None
    eos = eos if eos is not None else im_end
    pad_text = _token_text(tok_cfg.get("pad_token"))
    pad = tk.token_to_id(pad_text) if pad_text else None
    if pad is None:
        pad = config.get("pad_token_id", (config.get("text_config") or {}).get("pad_token_id"))
    if pad is None:
        pad = tk.token_to_id(ENDOFTEXT)
    stop = gen_cfg.get("eos_token_id")
    if stop is None:
        stop = [i for i in (im_end, tk.token_to_id(ENDOFTEXT)) if i is not None]
    stop = (stop,) if isinstance(stop, int) else tuple(int(s) for s in stop)
    return SpecialTokens(
        image=vision["image_token_id"],
        video=vision["video_token_id"],
        vision_start=vision["vision_start_token_id"],
        vision_end=vision["vision_end_token_id"],
        im_start=by_text(IM_START, "chat turn start"),
        im_end=im_end,
        pad=int(pad if pad is not None else eos),
        eos=eos,
        stop=stop,
    )
