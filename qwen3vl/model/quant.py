"""Weight-only int8 quantization of the language model (`LLM(quantization="int8")`, `--quantization int8`).

Each quantized linear layer keeps its weight as int8 with one scale per output row: w ~ q * s, where s is
max|w_row| / 127 rounded up to the model's dtype and q = round(w / s) (symmetric, per channel; each weight is off by
at most s / 2). Activations stay in the model's dtype. Decoding reads the weights once per token, so halving their
bytes (bf16 -> int8) is what speeds it up on a memory-bound machine:

* on CPU, in bfloat16, for up to 16 rows (decode steps of small batches) the layer calls PyTorch's int8 x bf16 matrix
  kernel (`torch._weight_int8pack_mm`), which reads the int8 weight directly;
* otherwise (prefill, large batches, float32, other devices) it converts the int8 weight to the activation dtype
  and runs an ordinary matmul: the same numbers, with the memory saving but no speed-up.

What is quantized: the decoder's attention and dense MLP projections, the MoE experts (each expert's projections,
per output row), and the LM head. Not quantized: the vision encoder and merger (compute-bound, and small next to the
decoder), embeddings (a tied head gets an int8 copy; the embedding table stays as it is), norms and the MoE router.
The quantized model's logits are close to, not equal to, the original's (tests/test_quant.py and BENCHMARKS.md
measure how close).
"""

from __future__ import annotations

import re

import torch
import torch.nn.functional as F
from torch import nn

from qwen3vl.model.text import Experts, mix_experts

METHODS = ("int8",)
# decoder projections and the LM head, by module name
TARGETS = re.compile(r"^(model\.language_model\.layers\.\d+\.(self_attn\.(q|k|v|o)_proj|mlp\.(gate|up|down)_proj)"
                     r"|lm_head)$")
SMALL_M = 16  # rows up to which the int8 kernel beats converting the weight (CPU, bfloat16; BENCHMARKS.md)
EXPERTS = re.compile(r"^model\.language_model\.layers\.\d+\.mlp\.experts$")
_CHUNK = 8192  # rows quantized at a time (bounds the float32 temporary)


class Int8Linear(nn.Module):
    """A linear layer whose weight is int8 (out, in) with a scale per output row (`quantize_weight`)."""

    def __init__(self, qweight: torch.Tensor, scales: torch.Tensor, bias: torch.Tensor | None,
                 dtype: torch.dtype | None = None):
        super().__init__()
        self.out_features, self.in_features = qweight.shape
        self.compute_dtype = dtype or scales.dtype  # the float layer's dtype (scales may be wider: scale_dtype_for)
        self.register_buffer("qweight", qweight)
        self.register_buffer("scales", scales)
        self.bias = None if bias is None else nn.Parameter(bias, requires_grad=False)

    @classmethod
    def from_linear(cls, layer: nn.Linear) -> Int8Linear:
        q, s = quantize_weight(layer.weight.detach())
        return cls(q, s, None if layer.bias is None else layer.bias.detach(), layer.weight.dtype)

    @property
    def dtype(self) -> torch.dtype:
        return self.compute_dtype

    def dequantized(self) -> torch.Tensor:
        """The weight this layer computes with, (out, in), in the scales' dtype (before any cast to the input's)."""
        return self.qweight.to(self.scales.dtype) * self.scales[:, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        y = int8_matmul(x.reshape(-1, shape[-1]), self.qweight, self.scales)
        if self.bias is not None:
            y = y + self.bias
        return y.view(*shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 per-row scales"


class Int8Experts(nn.Module):
    """MoE experts (`text.Experts`) with int8 weights: each expert's projections stored (out, in) with a scale per
    output row, as `Int8Linear` stores one layer."""

    def __init__(self, experts: Experts):
        super().__init__()
        # published layout: gate_up (E, D, 2I), down (E, I, D), used as x @ W; stored here transposed, (E, out, in)
        for name in ("gate_up_proj", "down_proj"):
            w = getattr(experts, name).detach()
            q, s = quantize_weight(w.transpose(1, 2).reshape(-1, w.shape[1]))
            self.register_buffer(f"{name}_q", q.view(w.shape[0], w.shape[2], w.shape[1]))
            self.register_buffer(f"{name}_scales", s.view(w.shape[0], w.shape[2]))

    def dequantized(self, name: str) -> torch.Tensor:
        """An expert tensor in the published layout, as this module computes with it."""
        q, s = getattr(self, f"{name}_q"), getattr(self, f"{name}_scales")
        return (q.to(s.dtype) * s[..., None]).transpose(1, 2)

    def forward(self, x_TD: torch.Tensor, idx_Tk: torch.Tensor, w_Tk: torch.Tensor) -> torch.Tensor:
        return mix_experts(x_TD, idx_Tk, w_Tk, self.gate_up_proj_q.shape[0], self.expert)

    def expert(self, e: int, x_nD: torch.Tensor) -> torch.Tensor:
        gate, up = int8_matmul(x_nD, self.gate_up_proj_q[e], self.gate_up_proj_scales[e]).chunk(2, dim=-1)
        return int8_matmul(F.silu(gate) * up, self.down_proj_q[e], self.down_proj_scales[e])


def int8_matmul(x: torch.Tensor, q: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """x (M, in) @ (q * scales)^T for an int8 weight q (out, in): the int8 kernel for a few bfloat16 rows on CPU,
    else the weight converted to x's dtype. The kernel (torch 2.13) reads `in` in blocks of 16: with any other
    `in` it returned garbage or crashed in our probes, so those layers always take the converted path."""
    if (x.device.type == "cpu" and x.dtype == torch.bfloat16 == scales.dtype and x.shape[0] <= SMALL_M
            and q.shape[1] % 16 == 0):
        return torch._weight_int8pack_mm(x.contiguous(), q.contiguous(), scales.contiguous())
    # scaled before the matmul: the unscaled sums are ~127 / max|w_row| times the output and overflow float16
    if scales.dtype == x.dtype:
        return F.linear(x, q.to(x.dtype).mul_(scales[:, None]))
    return F.linear(x, (q.to(scales.dtype) * scales[:, None]).to(x.dtype))


def scale_dtype_for(dtype: torch.dtype) -> torch.dtype:
    """Scales are kept in the model's dtype (the CPU kernel wants bfloat16 scales for bfloat16), except for float16,
    whose narrow exponent would make the scales of rows of small weights subnormal and coarse: float32 there."""
    return torch.float32 if dtype == torch.float16 else dtype


def quantize_weight(w: torch.Tensor, scale_dtype: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(out, in) float weight -> (int8 (out, in), scales (out,) in `scale_dtype`, default w's dtype), symmetric per
    output row. Each scale is rounded up to `scale_dtype` (default `scale_dtype_for(w.dtype)`) before q is computed,
    so q * s is within s / 2 of w with the scale the layer computes with."""
    scale_dtype = scale_dtype or scale_dtype_for(w.dtype)
    q = torch.empty(w.shape, dtype=torch.int8, device=w.device)
    scales = torch.empty(w.shape[0], dtype=scale_dtype, device=w.device)
    tiny = torch.finfo(scale_dtype).tiny
    for start in range(0, w.shape[0], _CHUNK):
        rows = w[start:start + _CHUNK].float()
        exact = (rows.abs().amax(dim=1) / 127.0).clamp_min(tiny)
        s = exact.to(scale_dtype)
        s = torch.where(s.float() < exact, torch.nextafter(s, torch.full_like(s, float("inf"))), s)
        q[start:start + _CHUNK] = torch.round(rows / s.float()[:, None]).clamp_(-127, 127).to(torch.int8)
        scales[start:start + _CHUNK] = s
    return q, scales


def quantize_model(model: nn.Module, method: str = "int8") -> list[str]:
    """Replace the target linear layers of `model` in place; returns their names. The old float weights are freed
    (a tied LM head's weight stays, as the embedding table)."""
    if method not in METHODS:
        raise ValueError(f"unknown quantization {method!r}; choose one of {', '.join(METHODS)}")
    done = []
    # names first, each module fetched in turn: a list of the modules would keep every float layer alive to the end
    for name in [n for n, _ in model.named_modules() if EXPERTS.match(n) or TARGETS.match(n)]:
        module = model.get_submodule(name)
        if type(module) is Experts:  # (only EXPERTS names hold these)
            new: nn.Module = Int8Experts(module)
        elif type(module) is nn.Linear:  # (only TARGETS names hold linear layers here)
            new = Int8Linear.from_linear(module)
        elif isinstance(module, (Int8Linear, Int8Experts)):
            continue
        else:
            raise ValueError(f"cannot quantize {name}: a {type(module).__name__}, not a plain linear layer")
        del module
        _replace(model, name, new)
        del new
        done.append(name)
    if not done:
        raise ValueError("nothing to quantize: the model has no decoder projections or LM head by the usual names")
    return done


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, attr, new)
