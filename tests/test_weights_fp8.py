"""FP8 (block-wise, Qwen's -FP8 releases) and per-expert checkpoints: same logits as transformers, clear errors.

The FP8 files are written here by a quantizer of the test's own (one scale per block, absmax / 448), in the layout
of the official releases: `X.weight` as float8_e4m3fn, `X.weight_scale_inv` as a float32 grid, and a
`quantization_config` in config.json. transformers 5.23 on a machine without an FP8 GPU dequantizes such a file on
load, which is the oracle for the dense model; it reads MoE experts only fused, so the per-expert MoE file is
checked against the reference model holding the test's own dequantized weights.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

import qwen3vl
from qwen3vl.weights.fp8 import dequantize
from qwen3vl.weights.loader import CheckpointError
from fp8_helpers import BLOCK, dequantize_blocks, is_linear, quantize_blocks, write_fp8_config
from reference import Inputs, batch, ours_kwargs, reference_model

def _logits(model, inputs):
    with torch.no_grad():
        return model(**inputs).logits


@pytest.fixture(scope="module")
def inputs():
    gen = torch.Generator().manual_seed(0)
    return batch([Inputs().text(5, gen).image(8, 12).text(4, gen)], gen)


@pytest.fixture(scope="module")
def dense_fp8(tmp_path_factory):
    ref = reference_model("dense", seed=5)
    src = tmp_path_factory.mktemp("dense_bf")
    ref.save_pretrained(src)
    dst = tmp_path_factory.mktemp("dense_fp8")
    tensors = load_file(src / "model.safetensors")
    out, kept = {}, []
    for name, t in tensors.items():
        if is_linear(name, t):
            out[name], out[name + "_scale_inv"] = quantize_blocks(t)
        else:
            out[name] = t
            if name.endswith(".weight") and t.dim() == 2:
                kept.append(name.removesuffix(".weight"))
    save_file(out, dst / "model.safetensors", metadata={"format": "pt"})
    write_fp8_config(src, dst, kept)
    return ref, dst, out


def test_fp8_checkpoint_matches_transformers(dense_fp8, inputs):
    ref, folder, files = dense_fp8
    quantized = [n for n in files if n.endswith("_scale_inv")]
    assert len(quantized) >= 3 * 7 + 3 * 4  # every decoder and ViT block linear
    from transformers import Qwen3VLForConditionalGeneration

    hf = Qwen3VLForConditionalGeneration.from_pretrained(folder, dtype=torch.float32).eval()
    ours = qwen3vl.load_model(folder, dtype="float32")
    expected = _logits(hf, inputs)
    assert (_logits(ours, ours_kwargs(inputs)) - expected).abs().max() <= 1e-4
    # the weights really went through FP8: off from the originals by the rounding, equal to the test's dequantization
    name = "model.language_model.layers.1.mlp.down_proj.weight"
    got = ours.get_parameter(name)
    original = ref.get_parameter(name)
    assert (got - original).abs().max() > 0
    assert torch.equal(got, dequantize_blocks(files[name], files[name + "_scale_inv"]))
    assert (_logits(ref, inputs) - expected).abs().max() > 1e-4  # so the comparison above can tell them apart


def test_fp8_checkpoint_loads_in_bf16_and_exports_dequantized(dense_fp8, inputs, tmp_path):
    _, folder, files = dense_fp8
    ours = qwen3vl.load_model(folder, dtype="bfloat16")
    name = "model.visual.blocks.0.attn.qkv.weight"
    assert ours.get_parameter(name).dtype == torch.bfloat16
    want = dequantize_blocks(files[name], files[name + "_scale_inv"]).to(torch.bfloat16)
    assert torch.equal(ours.get_parameter(name), want)
    from qwen3vl.weights.export import save_checkpoint

    f32 = qwen3vl.load_model(folder, dtype="float32")
    save_checkpoint(f32, tmp_path / "out")
    cfg = json.loads((tmp_path / "out" / "config.json").read_text())
    assert "quantization_config" not in cfg  # the export holds plain weights
    again = qwen3vl.load_model(tmp_path / "out", dtype="float32")
    assert torch.equal(_logits(again, ours_kwargs(inputs)), _logits(f32, ours_kwargs(inputs)))


def test_dequantize_partial_edge_blocks():
    gen = torch.Generator().manual_seed(1)
    w = torch.randn(37, 50, generator=gen)
    q, grid = quantize_blocks(w)
    assert grid.shape == (3, 4)
    got = dequantize(q, grid, (BLOCK, BLOCK), "w", torch.float32)
    assert torch.equal(got, dequantize_blocks(q, grid))
    assert (got - w).abs().max() <= w.abs().max() / 16  # e4m3 keeps 3 mantissa bits
    # without a block size in the config, the grid's shape gives it where it divides the weight
    w2 = torch.randn(48, 64, generator=gen)
    q2, grid2 = quantize_blocks(w2)
    assert torch.equal(dequantize(q2, grid2, None, "w2", torch.float32), dequantize_blocks(q2, grid2))
    with pytest.raises(ValueError, match=r"w_scale_inv has shape \(3, 4\), which does not divide"):
        dequantize(q, grid, None, "w", torch.float32)
    # one scale for the whole tensor
    scale = w.abs().max() / 448
    q1 = (w / scale).to(torch.float8_e4m3fn)
    assert torch.equal(dequantize(q1, scale.reshape(1), None, "w", torch.float32), q1.float() * scale)


@pytest.mark.parametrize("inner", [24, 32])  # 32: D == 2I, where a file's layout cannot be told from its shapes
def test_per_expert_fp8_moe_matches_reference(tmp_path, inputs, inner):
    ref = reference_model("moe", seed=6, text_overrides={"moe_intermediate_size": inner})
    src = tmp_path / "moe"
    ref.save_pretrained(src)
    tensors = load_file(src / "model.safetensors")
    out, fused = {}, {}
    for name, t in tensors.items():
        if name.endswith("mlp.experts.gate_up_proj") or name.endswith("mlp.experts.down_proj"):
            stem, kind = name.rsplit(".", 1)
            layer_ref = ref.get_parameter(name)  # transformers 5.x in memory: gate_up (E, 2I, D), down (E, D, I)
            deq = torch.empty_like(layer_ref)
            for e in range(layer_ref.shape[0]):
                if kind == "gate_up_proj":
                    inner = layer_ref.shape[1] // 2
                    for part, rows in (("gate", slice(0, inner)), ("up", slice(inner, 2 * inner))):
                        q, g = quantize_blocks(layer_ref[e, rows])  # (I, D), an nn.Linear's (out, in)
                        out[f"{stem}.{e}.{part}_proj.weight"], out[f"{stem}.{e}.{part}_proj.weight_scale_inv"] = q, g
                        deq[e, rows] = dequantize_blocks(q, g)
                else:
                    q, g = quantize_blocks(layer_ref[e])  # (D, I)
                    out[f"{stem}.{e}.down_proj.weight"], out[f"{stem}.{e}.down_proj.weight_scale_inv"] = q, g
                    deq[e] = dequantize_blocks(q, g)
            fused[name] = deq
        else:
            out[name] = t
    dst = tmp_path / "moe_fp8"
    dst.mkdir()
    save_file(out, dst / "model.safetensors", metadata={"format": "pt"})
    write_fp8_config(src, dst, [])
    before = _logits(ref, inputs)
    with torch.no_grad():
        for name, value in fused.items():
            ref.get_parameter(name).copy_(value)
    expected = _logits(ref, inputs)
    assert (expected - before).abs().max() > 1e-4
    ours = qwen3vl.load_model(dst, dtype="float32")
    assert (_logits(ours, ours_kwargs(inputs)) - expected).abs().max() <= 1e-4

    # a missing expert piece is named
    del out["model.language_model.layers.1.mlp.experts.3.up_proj.weight"]
    del out["model.language_model.layers.1.mlp.experts.3.up_proj.weight_scale_inv"]
    save_file(out, dst / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match=r"layers\.1\.mlp\.experts\.3\.up_proj\.weight"):
        qwen3vl.load_model(dst)


def _edit(folder, tmp_path, change_files=None, change_config=None):
    dst = tmp_path / "edited"
    shutil.copytree(folder, dst)
    if change_files:
        files = load_file(dst / "model.safetensors")
        change_files(files)
        save_file(files, dst / "model.safetensors", metadata={"format": "pt"})
    if change_config:
        cfg = json.loads((dst / "config.json").read_text())
        change_config(cfg)
        (dst / "config.json").write_text(json.dumps(cfg))
    return dst


NAME = "model.language_model.layers.0.self_attn.o_proj.weight"


@pytest.mark.parametrize("case, match", [
    ("awq", r"quant_method 'awq'.*bf16 checkpoint"),
    ("no_scale", rf"{NAME} is stored as torch.float8_e4m3fn without {NAME}_scale_inv"),
    ("bad_grid", rf"{NAME}_scale_inv has shape \(2, 4\); a \(64, 64\) weight in 16x16 blocks needs \(4, 4\)"),
    ("scale_on_float", rf"{NAME} has a {NAME}_scale_inv but is stored as torch.float32"),
    ("e5m2", r"FP8 format 'e5m2' is not supported"),
])
def test_bad_fp8_checkpoints_are_named(dense_fp8, tmp_path, case, match):
    _, folder, files = dense_fp8

    def quant(cfg, **kw):
        cfg["quantization_config"].update(kw)

    edits = {
        "awq": dict(change_config=lambda c: c.update(quantization_config={"quant_method": "awq", "bits": 4})),
        "no_scale": dict(change_files=lambda f: f.pop(NAME + "_scale_inv")),
        "bad_grid": dict(change_files=lambda f: f.update({NAME + "_scale_inv": f[NAME + "_scale_inv"][:2]})),
        "scale_on_float": dict(change_files=lambda f: f.update({NAME: f[NAME].float()})),
        "e5m2": dict(change_config=lambda c: quant(c, fmt="e5m2")),
    }
    dst = _edit(folder, tmp_path, **edits[case])
    with pytest.raises(CheckpointError, match=match):
        qwen3vl.load_model(dst)
