"""The checkpoint key table: our parameter names <-> checkpoint tensor names, and per-tensor layout changes.

Our modules keep the Hugging Face names, so every name maps to itself; the table exists to say so in one
place and to hold the one layout quirk: MoE experts. The published Qwen3-VL MoE files store
`mlp.experts.gate_up_proj` as (E, D, 2I) and `mlp.experts.down_proj` as (E, I, D) (applied as `x @ W`, which is
also how we hold them), while transformers 5.x `save_pretrained` writes them transposed, (E, 2I, D) and (E, D, I).
We accept both on load and always export the published layout.
"""

from __future__ import annotations

import re
import torch

_EXPERT_RE = re.compile(r"^model\.language_model\.layers\.\d+\.mlp\.experts\.(gate_up_proj|down_proj)$")


def expert_kind(name: str) -> str | None:
    m = _EXPERT_RE.match(name)
    return m.group(1) if m else None


def to_model_layout(name: str, tensor: torch.Tensor, expected: torch.Size, prefer_transposed: bool) -> torch.Tensor:
    """Bring a checkpoint tensor into our layout; raise ValueError (naming the tensor) if it cannot fit.

    For experts both layouts are accepted. When D == 2I the two cannot be told apart by shape; then
    `prefer_transposed` (the file was written by transformers >= 5) decides.
    """
    if expert_kind(name) is None or tensor.dim() != 3:
        if tensor.shape != expected:
            raise ValueError(f"tensor {name} has shape {tuple(tensor.shape)}, expected {tuple(expected)}")
        return tensor
    swapped = tensor.transpose(1, 2)
    fits_as_is, fits_swapped = tensor.shape == expected, swapped.shape == expected
    if fits_as_is and fits_swapped:
        return swapped.contiguous() if prefer_transposed else tensor
    if fits_as_is:
        return tensor
    if fits_swapped:
        return swapped.contiguous()
    raise ValueError(
        f"tensor {name} has shape {tuple(tensor.shape)}, expected {tuple(expected)} (published layout) or "
        f"{tuple(expected[0:1]) + (expected[2], expected[1])} (transformers 5.x layout)")
