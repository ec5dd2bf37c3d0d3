"""Checkpoint loading and export: shards, both MoE expert layouts, tied heads, round trips, and clear errors."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import qwen3vl
from qwen3vl.weights.export import save_checkpoint
from qwen3vl.weights.hub import ModelNotFoundError
from qwen3vl.weights.loader import CheckpointError
from reference import Inputs, batch, ours_kwargs, reference_model


def _logits(model, inputs):
    with torch.no_grad():
        return model(**inputs).logits


@pytest.fixture(scope="module")
def moe_ckpt(tmp_path_factory):
    ref = reference_model("moe", seed=3)
    folder = tmp_path_factory.mktemp("moe_hf5")
    ref.save_pretrained(folder)  # transformers 5.x writes experts as (E, 2I, D) / (E, D, I)
    gen = torch.Generator().manual_seed(0)
    inputs = batch([Inputs().text(5, gen).image(8, 12).text(4, gen)], gen)
    return ref, folder, inputs


def _file_tensors(folder):
    out = {}
    for f in sorted(folder.glob("*.safetensors")):
        with safe_open(f, framework="pt") as h:
            out.update({k: h.get_tensor(k) for k in h.keys()})
    return out


def test_moe_export_is_published_layout_and_loads_everywhere(moe_ckpt, tmp_path):
    ref, folder, inputs = moe_ckpt
    expected = _logits(ref, inputs)
    ours = qwen3vl.load_model(folder)
    e = ours.model.language_model.layers[0].mlp.experts
    num_experts, d, two_i = e.gate_up_proj.shape
    save_checkpoint(ours, tmp_path / "published")
    files = _file_tensors(tmp_path / "published")
    assert files["model.language_model.layers.0.mlp.experts.gate_up_proj"].shape == (num_experts, d, two_i)
    assert files["model.language_model.layers.0.mlp.experts.down_proj"].shape == (num_experts, two_i // 2, d)
    # the published layout loads in ours and in transformers with the same logits
    again = qwen3vl.load_model(tmp_path / "published")
    assert (_logits(again, ours_kwargs(inputs)) - expected).abs().max() <= 1e-4
    hf = type(ref).from_pretrained(tmp_path / "published").eval()
    assert (_logits(hf, inputs) - expected).abs().max() <= 1e-4


def test_round_trip_gives_identical_tensors(moe_ckpt, tmp_path):
    _, folder, _ = moe_ckpt
    first = save_checkpoint(qwen3vl.load_model(folder), tmp_path / "a")
    second = save_checkpoint(qwen3vl.load_model(first), tmp_path / "b")
    a, b = _file_tensors(first), _file_tensors(second)
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k
    assert json.loads((first / "config.json").read_text()) == json.loads((second / "config.json").read_text())


def test_dense_export_matches_reference_files(tmp_path):
    ref = reference_model("dense", seed=4)
    ref.save_pretrained(tmp_path / "hf")
    save_checkpoint(qwen3vl.load_model(tmp_path / "hf"), tmp_path / "ours")
    a, b = _file_tensors(tmp_path / "hf"), _file_tensors(tmp_path / "ours")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_sharded_checkpoint_loads(moe_ckpt, tmp_path):
    ref, folder, inputs = moe_ckpt
    save_checkpoint(qwen3vl.load_model(folder), tmp_path, max_shard_bytes=64 * 1024)
    shards = sorted(tmp_path.glob("model-*.safetensors"))
    assert len(shards) > 2 and (tmp_path / "model.safetensors.index.json").exists()
    ours = qwen3vl.load_model(tmp_path)
    assert (_logits(ours, ours_kwargs(inputs)) - _logits(ref, inputs)).abs().max() <= 1e-4


def test_tied_embeddings(tmp_path):
    ref = reference_model("dense", seed=5, tie=True)
    ref.save_pretrained(tmp_path)
    ours = qwen3vl.load_model(tmp_path)
    assert ours.lm_head.weight is ours.model.language_model.embed_tokens.weight
    gen = torch.Generator().manual_seed(1)
    inputs = batch([Inputs().text(9, gen)], gen)
    assert (_logits(ours, ours_kwargs(inputs)) - _logits(ref, inputs)).abs().max() <= 1e-4


def test_dtype_cast(moe_ckpt):
    _, folder, _ = moe_ckpt
    model = qwen3vl.load_model(folder, dtype="bfloat16")
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}


# ----------------------------------------------------------------------------------------------- errors
@pytest.fixture()
def dense_folder(tmp_path):
    reference_model("dense", seed=6).save_pretrained(tmp_path)
    return tmp_path


def _edit(folder, fn):
    path = folder / "model.safetensors"
    state = load_file(path)
    fn(state)
    save_file(state, path, metadata={"format": "pt"})


def test_missing_tensor_is_named(dense_folder):
    name = "model.language_model.layers.2.mlp.up_proj.weight"
    _edit(dense_folder, lambda s: s.pop(name))
    with pytest.raises(CheckpointError, match=f"missing tensor {name}"):
        qwen3vl.load_model(dense_folder)


def test_unexpected_tensor_is_named(dense_folder):
    _edit(dense_folder, lambda s: s.__setitem__("model.language_model.layers.9.extra.weight", torch.zeros(2)))
    with pytest.raises(CheckpointError, match=r"model.safetensors has unexpected tensor model.language_model.layers.9"):
        qwen3vl.load_model(dense_folder)


def test_misshaped_tensor_is_named(dense_folder):
    name = "model.visual.blocks.1.attn.qkv.weight"
    _edit(dense_folder, lambda s: s.__setitem__(name, torch.zeros(5, 5)))
    with pytest.raises(CheckpointError, match=rf"model.safetensors: tensor {name} has shape \(5, 5\)"):
        qwen3vl.load_model(dense_folder)


def test_index_naming_a_missing_shard(moe_ckpt, tmp_path):
    _, folder, _ = moe_ckpt
    save_checkpoint(qwen3vl.load_model(folder), tmp_path, max_shard_bytes=64 * 1024)
    next(iter(sorted(tmp_path.glob("model-*.safetensors")))).unlink()
    with pytest.raises(CheckpointError, match=r"lists shard model-00001-of-\d+.safetensors, which is not in"):
        qwen3vl.load_model(tmp_path)


def test_shard_without_the_tensor_the_index_promises(moe_ckpt, tmp_path):
    _, folder, _ = moe_ckpt
    save_checkpoint(qwen3vl.load_model(folder), tmp_path, max_shard_bytes=64 * 1024)
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    name, shard = next(iter(index["weight_map"].items()))
    state = load_file(tmp_path / shard)
    state.pop(name)
    save_file(state, tmp_path / shard, metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match=f"shard {shard} is missing tensor {name}"):
        qwen3vl.load_model(tmp_path)


def test_not_a_checkpoint(tmp_path, monkeypatch):
    with pytest.raises(ModelNotFoundError, match="no config.json"):
        qwen3vl.load_model(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotFoundError, match="not in the local cache"):
        qwen3vl.load_model("Qwen/Qwen3-VL-2B-Instruct-not-cached-here")
