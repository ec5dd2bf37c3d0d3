"""Rotary position math as pure functions: interleaved MRoPE for the decoder, axial 2-D RoPE for the ViT.

Legend: S tokens, H heads, Dh head dim, N patches.

Interleaved MRoPE (spec §7): each of the Dh/2 frequencies belongs to one axis. Frequency k is height if
k % 3 == 1 and k < 3*sec_h, width if k % 3 == 2 and k < 3*sec_w, time otherwise. Qwen2/2.5-VL used
contiguous blocks instead; getting this pattern wrong still "works" but gives wrong logits.

Numerics follow the reference: angles and cos/sin in float32; text cos/sin are cast to the model dtype
before use, vision rotation happens in float32 and is cast back.
"""

from __future__ import annotations

import math

import torch

from qwen3vl.config import RopeConfig


def text_inv_freq(rope: RopeConfig, head_dim: int, max_position_embeddings: int) -> tuple[torch.Tensor, float]:
    """Inverse frequencies (Dh/2,) float32 and the cos/sin scale for the decoder's rotary embedding."""
    base = rope.rope_theta
    exponents = torch.arange(0, head_dim, 2, dtype=torch.int64, device="cpu").to(torch.float32) / head_dim
    inv_freq = 1.0 / (base ** exponents)
    if rope.rope_type == "default":
        return inv_freq, 1.0
    if rope.rope_type == "linear":
        return inv_freq / rope.factor, 1.0
    if rope.rope_type == "yarn":
        return _yarn(rope, head_dim, max_position_embeddings)
    raise ValueError(f"unsupported rope_type {rope.rope_type!r}")


def _yarn(rope: RopeConfig, dim: int, max_position_embeddings: int) -> tuple[torch.Tensor, float]:
    """YaRN (arXiv:2309.00071): interpolate low frequencies, keep high ones, blend with a linear ramp."""
    base, factor = rope.rope_theta, rope.factor
    original = rope.original_max_position_embeddings or max_position_embeddings

    def mscale(scale: float, m: float = 1.0) -> float:
        return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

    attention = rope.attention_factor
    if attention is None:
        if rope.mscale and rope.mscale_all_dim:
            attention = float(mscale(factor, rope.mscale) / mscale(factor, rope.mscale_all_dim))
        else:
            attention = mscale(factor)
    beta_fast, beta_slow = rope.beta_fast or 32, rope.beta_slow or 1

    def correction_dim(rotations: float) -> float:
        return (dim * math.log(original / (rotations * 2 * math.pi))) / (2 * math.log(base))

    low, high = correction_dim(beta_fast), correction_dim(beta_slow)
    if rope.truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001
    ramp = ((torch.arange(dim // 2, dtype=torch.float32, device="cpu") - low) / (high - low)).clamp(0, 1)
    extrapolation = 1 - ramp
    pos_freqs = base ** (torch.arange(0, dim, 2, dtype=torch.int64, device="cpu").to(torch.float32) / dim)
    inv_freq = (1.0 / (factor * pos_freqs)) * (1 - extrapolation) + (1.0 / pos_freqs) * extrapolation
    return inv_freq, float(attention)


def mrope_axis_map(half_dim: int, mrope_section: list[int]) -> torch.Tensor:
    """(Dh/2,) int64: which position stream (0 t, 1 h, 2 w) drives each frequency."""
    axis = torch.zeros(half_dim, dtype=torch.int64, device="cpu")
    k = torch.arange(half_dim, device="cpu")
    axis[(k % 3 == 1) & (k < 3 * mrope_section[1])] = 1
    axis[(k % 3 == 2) & (k < 3 * mrope_section[2])] = 2
    return axis


def mrope_cos_sin(positions: torch.Tensor, inv_freq: torch.Tensor, axis_map: torch.Tensor, scaling: float,
                  dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin (..., S, Dh) in `dtype` for positions (3, ..., S) (t, h, w streams)."""
    pos = positions.to(torch.float32)
    # pick, per frequency, the stream that drives it: (..., S, Dh/2)
    chosen = pos.movedim(0, -1)[..., axis_map.to(pos.device)]
    freqs = chosen * inv_freq.to(pos.device)
    emb = torch.cat((freqs, freqs), dim=-1)
    return (emb.cos() * scaling).to(dtype), (emb.sin() * scaling).to(dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x (..., S, H, Dh), cos/sin (..., S, Dh) broadcast over heads."""
    cos, sin = cos.unsqueeze(-2), sin.unsqueeze(-2)
    return x * cos + rotate_half(x) * sin


def vision_inv_freq(head_dim: int, theta: float) -> torch.Tensor:
    """(Dh_v/4,) float32: the axial frequencies shared by the row and column halves."""
    spatial = head_dim // 2
    return 1.0 / (theta ** (torch.arange(0, spatial, 2, dtype=torch.int64).to(torch.float32) / spatial))


def vision_cos_sin(rows: torch.Tensor, cols: torch.Tensor, inv_freq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin (N, Dh_v) float32 for patch coordinates; first half rows, second half cols, repeated twice."""
    f_r = rows.to(torch.float32)[:, None] * inv_freq
    f_c = cols.to(torch.float32)[:, None] * inv_freq
    emb = torch.cat((f_r, f_c, f_r, f_c), dim=-1)
    return emb.cos(), emb.sin()


def apply_rotary_vision(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x (N, H, Dh_v); rotation in float32, result in x's dtype."""
    out = apply_rotary(x.float(), cos.float(), sin.float())
    return out.to(x.dtype)
