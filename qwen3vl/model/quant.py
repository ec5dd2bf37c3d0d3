"""Weight-only int8 quantization of the language model (`LLM(quantization="int8")`, `--quantization int8`).

Each quantized linear layer keeps its weight as int8 with one scale per output row: w ~ q * s, s = max|w_row| / 127,
q = round(w / s) (symmetric, per channel; the error of each weight is at most s / 2). Activations stay in the
model's dtype. Decoding reads the weights once per token, so halving their bytes (bf16 -> int8) is what speeds it
up on a memory-bound machine:

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

METHODS = ("int8",)
# decoder projections and the LM head, by module name
TARGETS = re.compile(r"^(model\.language_model\.layers\.\d+\.(self_attn\.(q|k|v|o)_proj|mlp\.(gate|up|down)_proj)"
                     r"|lm_head)$")
SMALL_M = 16  # rows up to which the int8 kernel beats converting the weight (CPU, bfloat16; BENCHMARKS.md)
EXPERTS = re.compile(r"^model\.language_model\.layers\.\d+\.mlp\.experts$")
_CHUNK = 8192  # rows quantized at a time (bounds the float32 temporary)


class Int8Linear(nn.Module):
    """A linear layer whose weight is int8 (out, in) with a scale per output row (`quantize_weight`)."""

    def __init__(self, qweight: torch.Tensor, scales: torch.Tensor, bias: torch.Tensor | None):
        super().__init__()
        self.out_features, self.in_features = qweight.shape
        self.register_buffer("qweight", qweight)
        self.register_buffer("scales", scales)
        self.bias = None if bias is None else nn.Parameter(bias, requires_grad=False)

    @classmethod
    def from_linear(cls, layer: nn.Linear) -> Int8Linear:
        q, s = quantize_weight(layer.weight.detach())
        return cls(q, s.to(layer.weight.dtype), None if layer.bias is None else layer.bias.detach())

    @property
    def dtype(self) -> torch.dtype:
        return self.scales.dtype

    def dequantized(self) -> torch.Tensor:
        """The weight this layer computes with, (out, in) in the scales' dtype."""
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

    def __init__(self, experts: nn.Module):
        super().__init__()
        dtype = experts.gate_up_proj.dtype
        # published layout: gate_up (E, D, 2I), down (E, I, D), used as x @ W; stored here transposed, (E, out, in)
        for name in ("gate_up_proj", "down_proj"):
            w = getattr(experts, name).detach()
            q, s = quantize_weight(w.transpose(1, 2).reshape(-1, w.shape[1]))
            self.register_buffer(f"{name}_q", q.view(w.shape[0], w.shape[2], w.shape[1]))
            self.register_buffer(f"{name}_scales", s.to(dtype).view(w.shape[0], w.shape[2]))

    def dequantized(self, name: str) -> torch.Tensor:
        """An expert tensor in the published layout, as this module computes with it."""
        q, s = getattr(self, f"{name}_q"), getattr(self, f"{name}_scales")
        return (q.to(s.dtype) * s[..., None]).transpose(1, 2)

    def forward(self, x_TD: torch.Tensor, idx_Tk: torch.Tensor, w_Tk: torch.Tensor) -> torch.Tensor:
        t, k = idx_Tk.shape
        flat = idx_Tk.reshape(-1)
        order = flat.argsort(stable=True)
        counts = torch.bincount(flat, minlength=self.gate_up_proj_q.shape[0]).tolist()
        token_of = order // k
        out = torch.zeros_like(x_TD)
        start = 0
        for e, n in enumerate(counts):
            if n == 0:
                continue
            sel = order[start:start + n]
            rows = token_of[start:start + n]
            start += n
            gate, up = int8_matmul(x_TD[rows], self.gate_up_proj_q[e], self.gate_up_proj_scales[e]).chunk(2, dim=-1)
            y = int8_matmul(F.silu(gate) * up, self.down_proj_q[e], self.down_proj_scales[e])
            out.index_add_(0, rows, y * w_Tk.reshape(-1)[sel, None])
        return out


def int8_matmul(x: torch.Tensor, q: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """x (M, in) @ (q * scales)^T for an int8 weight q (out, in): the int8 kernel for a few bfloat16 rows on CPU,
    else the weight converted to x's dtype. The kernel (torch 2.13) reads `in` in blocks of 16: with any other
    `in` it returned garbage or crashed in our probes, so those layers always take the converted path."""
    if (x.device.type == "cpu" and x.dtype == torch.bfloat16 == scales.dtype and x.shape[0] <= SMALL_M
            and q.shape[1] % 16 == 0):
        return torch._weight_int8pack_mm(x.contiguous(), q, scales)
    return F.linear(x, q.to(x.dtype)) * scales.to(x.dtype)


def quantize_weight(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(out, in) float weight -> (int8 (out, in), float32 scales (out,)), symmetric per output row."""
    q = torch.empty(w.shape, dtype=torch.int8, device=w.device)
    scales = torch.empty(w.shape[0], dtype=torch.float32, device=w.device)
    for start in range(0, w.shape[0], _CHUNK):
        rows = w[start:start + _CHUNK].float()
        s = (rows.abs().amax(dim=1) / 127.0).clamp_min(torch.finfo(torch.float32).tiny)
        q[start:start + _CHUNK] = torch.round(rows / s[:, None]).clamp_(-127, 127).to(torch.int8)
        scales[start:start + _CHUNK] = s
    return q, scales


def quantize_model(model: nn.Module, method: str = "int8") -> list[str]:
    """Replace the target linear layers of `model` in place; returns their names. The old float weights are freed
    (a tied LM head's weight stays, as the embedding table)."""
    if method not in METHODS:
        raise ValueError(f"unknown quantization {method!r}; choose one of {', '.join(METHODS)}")
    done = []
    for name, module in list(model.named_modules()):
        if EXPERTS.match(name) and type(module).__name__ == "Experts":
            _replace(model, name, Int8Experts(module))
            done.append(name)
            continue
        if not TARGETS.match(name) or isinstance(module, Int8Linear):
            continue
        if type(module) is not nn.Linear:
            raise ValueError(f"cannot quantize {name}: a {type(module).__name__}, not a plain linear layer")
        _replace(model, name, Int8Linear.from_linear(module))
        done.append(name)
    if not done:
        raise ValueError("nothing to quantize: the model has no decoder projections or LM head by the usual names")
    return done


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, attr, new)
