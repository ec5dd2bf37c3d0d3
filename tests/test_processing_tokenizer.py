"""Tokenizer loading, special ids from the checkpoint files, and streaming detokenization."""

from __future__ import annotations

import json

import numpy as np
import pytest

from qwen3vl.processing.testing import tiny_token_ids, write_tiny_checkpoint, write_tiny_tokenizer
from qwen3vl.processing.tokenizer import Tokenizer

TEXTS = [
    "hello world",
    "naïve café 你好 😀👍🏽",
    "<|im_start|>user\nhi<|im_end|>\n",
    "<think>\nx\n</think>\n\n",
    "  spaces\t\ttabs\n\n",
    "ÀÉÎ€\u200d🏳️‍🌈",
]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ckpt")
    write_tiny_checkpoint(folder)
    return folder


@pytest.fixture(scope="module")
def tok(folder):
    return Tokenizer.from_folder(folder)


def test_matches_transformers_tokenizer(folder, tok):
    from fixtures.processing.references import hf_tokenizer

    ref = hf_tokenizer(folder)
    for text in TEXTS:
        ids = tok.encode(text)
        assert ids == ref(text, add_special_tokens=False)["input_ids"]
        assert tok.decode(ids) == ref.decode(ids) == text
        assert tok.decode(ids, skip_special_tokens=True) == ref.decode(ids, skip_special_tokens=True)


def test_special_ids_come_from_the_files(tok):
    ids = tiny_token_ids()
    sp = tok.special
    assert (sp.image, sp.video, sp.vision_start, sp.vision_end) == (
        ids["<|image_pad|>"],
        ids["<|video_pad|>"],
        ids["<|vision_start|>"],
        ids["<|vision_end|>"],
    )
    assert sp.pad == ids["<|endoftext|>"] and sp.eos == ids["<|im_end|>"]
    assert sp.stop == (ids["<|im_end|>"], ids["<|endoftext|>"])  # generation_config.json
    assert tok.decode([ids["<think>"], ids["<|im_end|>"]], skip_special_tokens=True) == "<think>"  # not special


def test_added_tokens_from_tokenizer_config(tmp_path):
    write_tiny_tokenizer(tmp_path)
    cfg = json.loads((tmp_path / "tokenizer_config.json").read_text())
    new_id = str(256 + 26)
    cfg["added_tokens_decoder"][new_id] = {"content": "<|extra|>", "special": True}
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(cfg))
    tok = Tokenizer.from_folder(tmp_path, config={})
    assert tok.token_to_id("<|extra|>") == int(new_id)
    assert tok.encode("a<|extra|>") == [tok.encode("a")[0], int(new_id)]


def _stream(tok, ids, skip=False):
    dec = tok.incremental_decoder(skip_special_tokens=skip)
    deltas = [dec.add(i) for i in ids]
    deltas.append(dec.flush())
    return deltas


@pytest.mark.parametrize("text", TEXTS)
def test_incremental_decoder_never_splits_a_character(tok, text):
    ids = tok.encode(text)  # byte-level: multi-byte characters span several tokens
    deltas = _stream(tok, ids)
    assert "".join(deltas) == tok.decode(ids)
    assert all("\ufffd" not in d for d in deltas)
    assert "".join(_stream(tok, ids, skip=True)) == tok.decode(ids, skip_special_tokens=True)


def test_incremental_decoder_random_streams(tok):
    rng = np.random.default_rng(0)
    valid = tok.encode("a😀é中")
    for _ in range(50):
        ids = [int(v) for v in rng.choice(valid + list(range(280)), size=40)]
        dec = tok.incremental_decoder()
        pieces = [dec.add(ids[k : k + 3]) for k in range(0, len(ids), 3)] + [dec.flush()]
        assert "".join(pieces) == dec.text == tok.decode(ids)


def test_incremental_decoder_holds_back_then_completes(tok):
    ids = tok.encode("😀")
    assert len(ids) == 4
    dec = tok.incremental_decoder()
    assert [dec.add(i) for i in ids] == ["", "", "", "😀"]


def test_fallback_for_non_byte_level_tokenizer():
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import models, pre_tokenizers

    from qwen3vl.processing.tokenizer import IncrementalDecoder, SpecialTokens

    vocab = {w: i for i, w in enumerate(["[UNK]", "hello", "world", "é"])}
    hf = HFTokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    hf.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = Tokenizer(hf, SpecialTokens(0, 0, 0, 0, 0, 0, 0, 0, (0,)))
    assert not tok.is_byte_level
    dec = IncrementalDecoder(tok)
    out = "".join(dec.add(i) for i in [1, 2, 3]) + dec.flush()
    assert out == tok.decode([1, 2, 3])
