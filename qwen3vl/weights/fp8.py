"""Reading quantized and per-expert checkpoints: block-wise FP8 (Qwen's own `-FP8` releases) and unfused MoE experts.

**FP8.** Qwen publishes every Qwen3-VL size also as `Qwen/Qwen3-VL-<size>-FP8`: "fine-grained" FP8, the DeepSeek-V3
scheme. Its `config.json` carries

    "quantization_config": {"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic",
                            "weight_block_size": [128, 128], "modules_to_not_convert": [...]}

and each quantized linear layer's `X.weight` is stored as float8_e4m3fn next to `X.weight_scale_inv`, a float32 grid
of one scale per 128x128 block: weight[i, j] = fp8[i, j] * scale_inv[i // 128, j // 128] (a grid of
ceil(rows / 128) x ceil(cols / 128), so a last, partial block has a scale too). Layers in `modules_to_not_convert`
are plain tensors without a scale. We dequantize on load, to the dtype asked for (bf16 by default), so an FP8
checkpoint runs everywhere a bf16 one does, and gives the same logits as transformers, which dequantizes the same
way when it has no FP8-capable GPU. `-q int8` then brings the decoder back to one byte a weight. "Dynamic"
activation scales are not stored; static ones (`activation_scale` / `input_scale` tensors) are read past, since
we compute activations in the model's dtype.

**Unfused experts.** The published Qwen3-VL MoE checkpoints store each layer's experts fused,
`mlp.experts.gate_up_proj` (E, D, 2I) and `mlp.experts.down_proj` (E, I, D). A checkpoint can also hold them one
linear layer per expert, `mlp.experts.{e}.gate_proj.weight` (I, D), `up_proj.weight` (I, D) and `down_proj.weight`
(D, I) (FP8 blocks are per 2-D matrix, so quantized MoE files are written this way); those are put together here.

Any other `quant_method` (AWQ, GPTQ, bitsandbytes, compressed-tensors) is refused with an error naming it.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch

log = logging.getLogger(__name__)

FP8_DTYPES = (torch.float8_e4m3fn,)
SCALE_SUFFIX = "_scale_inv"  # X.weight -> X.weight_scale_inv
ACTIVATION_SUFFIXES = (".activation_scale", ".input_scale")
_PER_EXPERT = re.compile(r"^(model\.language_model\.layers\.\d+\.mlp\.experts)\.(\d+)\.(gate|up|down)_proj\.weight$")
_FUSED = re.compile(r"^(model\.language_model\.layers\.\d+\.mlp\.experts)\.(gate_up_proj|down_proj)$")


class QuantizationError(ValueError):
    """A checkpoint's quantization is one we cannot read, or its quantized tensors do not fit together."""


@dataclass(frozen=True)
class Fp8Scheme:
    block: tuple[int, int] | None  # (rows, cols) of a scale block; None: per-tensor scales


def read_scheme(quantization_config: dict | None) -> Fp8Scheme | None:
    """The checkpoint's FP8 scheme from config.json's `quantization_config`; None for an unquantized checkpoint.
    Raise QuantizationError for a method we do not read."""
    if not quantization_config:
        return None
    method = str(quantization_config.get("quant_method", "")).lower()
    if method != "fp8":
        raise QuantizationError(
            f"config.json says quant_method {method or '(none)'!r}; qwen3vl reads unquantized checkpoints and "
            "block-wise FP8 ones (quant_method 'fp8', Qwen's -FP8 releases). Use the bf16 checkpoint, and "
            "`--quantization int8` to quantize it on load")
    fmt = str(quantization_config.get("fmt", "e4m3")).lower()
    if fmt != "e4m3":
        raise QuantizationError(f"FP8 format {fmt!r} is not supported; only e4m3 (float8_e4m3fn)")
    block = quantization_config.get("weight_block_size")
    if block is None:
        return Fp8Scheme(None)
    if len(block) != 2 or not all(isinstance(b, int) and b > 0 for b in block):
        raise QuantizationError(f"quantization_config.weight_block_size {block!r} must be two positive integers")
    return Fp8Scheme((block[0], block[1]))


def dequantize(weight: torch.Tensor, scale_inv: torch.Tensor, block: tuple[int, int] | None, name: str,
               dtype: torch.dtype) -> torch.Tensor:
    """fp8 (..., R, C) times its scale grid (..., ceil(R / br), ceil(C / bc)) (or one scale), as `dtype`."""
    if weight.dtype not in FP8_DTYPES:
        raise QuantizationError(f"tensor {name} has a {name}{SCALE_SUFFIX} but is stored as {weight.dtype}, "
                                "not float8_e4m3fn")
    w = weight.to(torch.float32)
    s = scale_inv.to(torch.float32)
    if s.numel() == 1:
        return (w * s.reshape(())).to(dtype)
    rows, cols = w.shape[-2:]
    if block is None:  # no block size in the config: the grid's shape says it, if it divides the weight
        if s.dim() < 2 or rows % s.shape[-2] or cols % s.shape[-1]:
            raise QuantizationError(
                f"tensor {name}{SCALE_SUFFIX} has shape {tuple(s.shape)}, which does not divide the "
                f"{tuple(w.shape)} weight into equal blocks, and config.json gives no weight_block_size")
        block = (rows // s.shape[-2], cols // s.shape[-1])
    grid = tuple(w.shape[:-2]) + (math.ceil(rows / block[0]), math.ceil(cols / block[1]))
    if tuple(s.shape) != grid:
        raise QuantizationError(
            f"tensor {name}{SCALE_SUFFIX} has shape {tuple(s.shape)}; a {tuple(w.shape)} weight in "
            f"{block[0]}x{block[1]} blocks needs {grid}")
    if rows % block[0] == 0 and cols % block[1] == 0:  # whole blocks: scale each in place, no expanded grid
        blocks = w.view(*w.shape[:-2], grid[-2], block[0], grid[-1], block[1])
        blocks.mul_(s.unsqueeze(-1).unsqueeze(-3))
        return w.to(dtype)
    s = s.repeat_interleave(block[0], dim=-2)[..., :rows, :].repeat_interleave(block[1], dim=-1)[..., :cols]
    return (w * s).to(dtype)


@dataclass
class Source:
    """Where one model parameter comes from: one checkpoint tensor, or (fused experts) one per expert."""
    names: list[str]  # checkpoint tensors; for fused experts gate (or down) per expert, then up per expert
    kind: str = "plain"  # "plain" | "gate_up" | "down"


def plan_sources(index: Iterable[str], expected: dict[str, torch.Size]) -> tuple[dict[str, Source], list[str]]:
    """Map each expected parameter to its checkpoint tensors. Returns (sources, names nothing claims); scales and
    activation scales are claimed by their weights and never listed themselves."""
    names = set(index)
    sources: dict[str, Source] = {}
    claimed: set[str] = set()
    per_expert: dict[str, dict[tuple[int, str], str]] = {}
    for n in names:
        m = _PER_EXPERT.match(n)
        if m:
            per_expert.setdefault(m.group(1), {})[(int(m.group(2)), m.group(3))] = n
    for param, shape in expected.items():
        if param in names:
            sources[param] = Source([param])
            claimed.add(param)
            continue
        m = _FUSED.match(param)
        if not m or m.group(1) not in per_expert:
            continue
        pieces, experts = per_expert[m.group(1)], shape[0]
        parts = ("gate", "up") if m.group(2) == "gate_up_proj" else ("down",)
        wanted = [(e, p) for p in parts for e in range(experts)]
        lacking = [f"{m.group(1)}.{e}.{p}_proj.weight" for e, p in wanted if (e, p) not in pieces]
        if lacking:
            raise QuantizationError(
                f"checkpoint holds {m.group(1)} one expert at a time but lacks {lacking[0]}"
                + (f" (and {len(lacking) - 1} more)" if len(lacking) > 1 else ""))
        sources[param] = Source([pieces[w] for w in wanted], "gate_up" if len(parts) == 2 else "down")
        claimed.update(sources[param].names)
    for n in list(claimed):
        if n + SCALE_SUFFIX in names:
            claimed.add(n + SCALE_SUFFIX)
        stem = n.removesuffix(".weight")
        claimed.update(stem + s for s in ACTIVATION_SUFFIXES if stem + s in names)
    return sources, sorted(names - claimed)


def require_scale(name: str, t: torch.Tensor) -> None:
    """A tensor read without a scale must not be FP8: its bytes alone are not the weight."""
    if t.dtype in FP8_DTYPES:
        raise QuantizationError(
            f"tensor {name} is stored as {t.dtype} without {name}{SCALE_SUFFIX}; an FP8 weight needs its scales")


def read_param(source: Source, get: Callable[[str], torch.Tensor], has: Callable[[str], bool],
               scheme: Fp8Scheme | None, dtype: torch.dtype) -> torch.Tensor:
    """One parameter's value: its tensors read with `get`, dequantized where they have a scale, and fused experts
    put together in the published layout (gate_up (E, D, 2I), down (E, I, D)). Float tensors keep their own dtype
    (the loader casts); dequantized ones come back as float32 when `dtype` is float32, else as `dtype`."""
    out = []
    for name in source.names:
        t = get(name)
        if has(name + SCALE_SUFFIX):
            block = scheme.block if scheme is not None else None
            t = dequantize(t, get(name + SCALE_SUFFIX), block, name, dtype)
        else:
            require_scale(name, t)
        out.append(t)
    if source.kind == "plain":
        return out[0]
    if any(t.dim() != 2 for t in out):
        raise QuantizationError(f"per-expert tensor {source.names[0]} has shape {tuple(out[0].shape)}; expected 2-D")
    if source.kind == "down":  # each (D, I) -> (I, D)
        return torch.stack([t.t() for t in out])
    half = len(out) // 2  # gate (I, D) and up (I, D) -> (D, 2I)
    return torch.stack([torch.cat([g.t(), u.t()], dim=1) for g, u in zip(out[:half], out[half:])])
