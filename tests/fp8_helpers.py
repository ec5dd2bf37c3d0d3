"""A reference block-FP8 quantizer for tests, and a writer of FP8 copies of checkpoints in the released layout."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

BLOCK = 16
LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", ".qkv.", ".proj.",
          "linear_fc1", "linear_fc2")


def quantize_blocks(w: torch.Tensor, block: int = BLOCK) -> tuple[torch.Tensor, torch.Tensor]:
    """A block at a time: (float8 weight, float32 scale grid with ceil-sized edges), scale = absmax / 448."""
    rows, cols = w.shape
    grid = torch.empty(math.ceil(rows / block), math.ceil(cols / block))
    q = torch.empty(rows, cols, dtype=torch.float8_e4m3fn)
    for i in range(grid.shape[0]):
        for j in range(grid.shape[1]):
            tile = w[i * block:(i + 1) * block, j * block:(j + 1) * block].float()
            scale = tile.abs().max().clamp(min=1e-12) / 448.0
            grid[i, j] = scale
            q[i * block:(i + 1) * block, j * block:(j + 1) * block] = (tile / scale).to(torch.float8_e4m3fn)
    return q, grid


def dequantize_blocks(q: torch.Tensor, grid: torch.Tensor, block: int = BLOCK) -> torch.Tensor:
    out = q.float()
    for i in range(grid.shape[0]):
        for j in range(grid.shape[1]):
            out[i * block:(i + 1) * block, j * block:(j + 1) * block] *= grid[i, j]
    return out


def is_linear(name: str, t: torch.Tensor) -> bool:
    return t.dim() == 2 and name.endswith(".weight") and any(k in name for k in LINEAR) and (
        "language_model.layers" in name or "visual.blocks" in name)


def write_fp8_config(src: Path, dst: Path, not_converted: list[str]) -> None:
    cfg = json.loads((src / "config.json").read_text())
    cfg["quantization_config"] = {"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic",
                                  "weight_block_size": [BLOCK, BLOCK], "modules_to_not_convert": not_converted}
    (dst / "config.json").write_text(json.dumps(cfg))


def write_fp8_copy(src: Path, dst: Path) -> Path:
    """`src` (one model.safetensors, experts fused in the published (E, D, 2I) / (E, I, D) layout) as an FP8
    checkpoint: block-quantized linears, and experts one quantized linear per expert."""
    shutil.copytree(src, dst)
    out = {}
    for name, t in load_file(src / "model.safetensors").items():
        if name.endswith("mlp.experts.gate_up_proj"):
            stem, inner = name.removesuffix(".gate_up_proj"), t.shape[2] // 2
            for e in range(t.shape[0]):
                for part, w in (("gate", t[e, :, :inner].T), ("up", t[e, :, inner:].T)):
                    out[f"{stem}.{e}.{part}_proj.weight"], out[f"{stem}.{e}.{part}_proj.weight_scale_inv"] = \
                        quantize_blocks(w)
        elif name.endswith("mlp.experts.down_proj"):
            stem = name.removesuffix(".down_proj")
            for e in range(t.shape[0]):
                out[f"{stem}.{e}.down_proj.weight"], out[f"{stem}.{e}.down_proj.weight_scale_inv"] = \
                    quantize_blocks(t[e].T)
        elif is_linear(name, t):
            out[name], out[name + "_scale_inv"] = quantize_blocks(t)
        else:
            out[name] = t
    save_file(out, dst / "model.safetensors", metadata={"format": "pt"})
    write_fp8_config(src, dst, ["lm_head"])
    return dst
