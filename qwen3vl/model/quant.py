"""Weight-only int8 quantization of the language model (`LLM(quantization="int8")`, `--quantization int8`).

Each quantized linear layer keeps its weight as int8 with one scale per output row: w ~ q * s, s = max|w_row| / 127,
q = round(w / s) (symmetric, per channel; the error of each weight is at most s / 2). Activations stay in the
model's dtype. Decoding reads the weights once per token, so halving their bytes (bf16 -> int8) is what speeds it
up on a memory-bound machine:

* on CPU, in bfloat16, for up to 16 rows (decode steps of small batches) the layer calls PyTorch's int8 x bf16 matrix
  kernel (`torch._weight_int8pack_mm`), which reads the int8 weight directly;
* otherwise (prefill, large batches, float32, other devices) it converts the int8 weight to the activation dtype
  and runs an ordinary matmul: the same numbers, with the memory saving but no speed-up.

What is quantized: the decoder's attention and dense MLP projections and the LM head. Not quantized: the vision
encoder and merger (compute-bound, and small next to the decoder), embeddings (a tied head gets an int8 copy; the
embedding table stays as it is), norms, the MoE router and MoE expert tensors (stacked parameters; not done yet).
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
        x2 = x.reshape(-1, shape[-1])
        if x2.device.type == "cpu" and x2.dtype == torch.bfloat16 == self.scales.dtype and x2.shape[0] <= SMALL_M:
            y = torch._weight_int8pack_mm(x2.contiguous(), self.qweight, self.scales)
        else:
            y = F.linear(x2, self.qweight.to(x2.dtype)) * self.scales.to(x2.dtype)
        if self.bias is not None:
            y = y + self.bias
        return y.view(*shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 per-row scales"


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
        if not TARGETS.match(name) or isinstance(module, Int8Linear):
            continue
        if type(module) is not nn.Linear:
            raise ValueError(f"cannot quantize {name}: a {type(module).__name__}, not a plain linear layer")
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, attr, Int8Linear.from_linear(module))
        done.append(name)
    if not done:
        raise ValueError("nothing to quantize: the model has no decoder projections or LM head by the usual names")
    return done
