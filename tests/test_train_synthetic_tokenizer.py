"""The demo tokenizer: Qwen's added tokens as single ids in Qwen's order, digit splitting, lossless round trips,
and loading through both `tokenizers` and transformers."""

from __future__ import annotations

import json

import pytest

from qwen3vl.train.synthetic import make_dataset
from qwen3vl.train.tokenizer_train import QWEN_ADDED_TOKENS, render_chat, train_tokenizer

tokenizers = pytest.importorskip("tokenizers")

QWEN_IDS = {
    "<|endoftext|>": 151643, "<|im_start|>": 151644, "<|im_end|>": 151645, "<|object_ref_start|>": 151646,
    "<|object_ref_end|>": 151647, "<|box_start|>": 151648, "<|box_end|>": 151649, "<|quad_start|>": 151650,
    "<|quad_end|>": 151651, "<|vision_start|>": 151652, "<|vision_end|>": 151653, "<|vision_pad|>": 151654,
    "<|image_pad|>": 151655, "<|video_pad|>": 151656, "<tool_call>": 151657, "</tool_call>": 151658,
    "<tool_response>": 151665, "</tool_response>": 151666, "<think>": 151667, "</think>": 151668,
}


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    return train_tokenizer(tmp_path_factory.mktemp("tok"), seed=0, vocab_size=1024, n_examples=600)


@pytest.fixture(scope="module")
def tok(tok_dir):
    return tokenizers.Tokenizer.from_file(str(tok_dir / "tokenizer.json"))


def test_files_and_config(tok_dir, tok):
    config = json.loads((tok_dir / "tokenizer_config.json").read_text())
    assert config["eos_token"] == "<|im_end|>" and config["pad_token"] == "<|endoftext|>"
    assert config["model_max_length"] == 4096 and config["bos_token"] is None
    decoder = config["added_tokens_decoder"]
    assert len(decoder) == len(QWEN_ADDED_TOKENS)
    for content, special in QWEN_ADDED_TOKENS:
        entry = decoder[str(tok.token_to_id(content))]
        assert entry["content"] == content and entry["special"] is special
    assert decoder[str(tok.token_to_id("<tool_call>"))]["special"] is False
    assert decoder[str(tok.token_to_id("<|image_pad|>"))]["special"] is True
    assert 256 < tok.get_vocab_size(with_added_tokens=False) <= 1024


def test_special_tokens_are_single_ids_in_qwen_order(tok):
    base = tok.token_to_id("<|endoftext|>")
    assert base == tok.get_vocab_size(with_added_tokens=False)
    for content, qwen_id in QWEN_IDS.items():
        assert tok.token_to_id(content) - base == qwen_id - 151643, content
        assert tok.encode(f"a{content}b").tokens == ["a", content, "b"]
    ids = [tok.token_to_id(c) for c in QWEN_IDS]
    assert len(set(ids)) == len(ids)


def test_round_trip_and_digit_split(tok):
    texts = [render_chat(ex.messages) for ex in make_dataset(99, 10)]
    texts += ["héllo wörld, 世界 🙂\n\ttabs  and  spaces", "x = [12, 345]; <not_special> </think>"]
    for text in texts:
        assert tok.decode(tok.encode(text).ids, skip_special_tokens=False) == text
    assert tok.encode("12345").tokens == ["1", "2", "3", "4", "5"]
    assert tok.encode("[651, 80]").tokens.count("5") == 1  # digits never merge with neighbours


def test_deterministic(tok_dir, tmp_path):
    again = train_tokenizer(tmp_path / "again", seed=0, vocab_size=1024, n_examples=600)
    assert (again / "tokenizer.json").read_text() == (tok_dir / "tokenizer.json").read_text()


def test_loads_in_transformers(tok_dir, tok):
    transformers = pytest.importorskip("transformers")
    hf = transformers.PreTrainedTokenizerFast.from_pretrained(str(tok_dir))
    assert len(hf) == tok.get_vocab_size(with_added_tokens=True)
    assert hf.eos_token == "<|im_end|>" and hf.eos_token_id == tok.token_to_id("<|im_end|>")
    assert hf.pad_token_id == tok.token_to_id("<|endoftext|>") and hf.model_max_length == 4096
    text = render_chat(make_dataset(1, 5)[4].messages)  # a video conversation: timestamps and pads
    ids = hf(text)["input_ids"]
    assert ids == tok.encode(text).ids and hf.decode(ids) == text
    assert "<|im_start|>" not in hf.decode(ids, skip_special_tokens=True)
    assert "<think>" in hf.decode(hf("<think>x</think>")["input_ids"], skip_special_tokens=True)
