"""LoRA, applied to a built model from outside: `apply_lora(model, LoRAConfig(...))` swaps matching `nn.Linear`
modules for `LoRALinear`, which *is* an `nn.Linear` holding the very same `weight`/`bias` Parameters plus `lora_A`
(r, in) and `lora_B` (out, r). Parameter names therefore stay the checkpoint's (`...q_proj.weight`), the adapter adds
`...q_proj.lora_A` / `...q_proj.lora_B`, and `merge_lora` folds `W += (alpha / r) * B @ A` back into the weight and
restores plain `nn.Linear`s, so the merged model exports in the official layout.

Why not peft: it is a heavy dependency built around transformers' model classes; our model is not one, and all we
need is ~100 lines: wrap linears by name pattern, train A and B, merge. The saved adapters are in peft's format,
though (`save_adapter`, read by `qwen3vl.weights.adapters`), so they move both ways between the two.

Legend: N rows of input, I in_features, O out_features, r rank.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

# The decoder's attention and MLP projections. Vision blocks use `qkv`, `proj`, `linear_fc1`, `linear_fc2`.
LANGUAGE_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
VISION_TARGETS = ("qkv", "proj", "linear_fc1", "linear_fc2")
CONFIG_METADATA = "qwen3vl_lora_config"  # our LoRAConfig, as JSON, in the adapter file's safetensors metadata


@dataclass
class LoRAConfig:
    """`targets`: a module matches when its last name component equals a target, or its full name fullmatches the
    target as a regular expression. `prefixes` (optional) restrict matching to modules under these names."""

    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    targets: tuple[str, ...] = LANGUAGE_TARGETS
    prefixes: tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self):
        if self.rank <= 0:
            raise ValueError(f"LoRA rank must be positive, got {self.rank}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"LoRA dropout must be in [0, 1), got {self.dropout}")
        self.targets = tuple(self.targets)
        self.prefixes = tuple(self.prefixes)

    @property
    def scaling(self) -> float:
        return self.alpha / self.rank


class LoRALinear(nn.Linear):
    """y = x W^T + b + (alpha/r) * dropout(x) A^T B^T. Shares `weight`/`bias` with the linear it replaces."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float = 0.0):
        nn.Module.__init__(self)  # skip nn.Linear.__init__: the weight and bias are the base's own Parameters
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight = base.weight
        self.bias = base.bias
        w = base.weight
        self.lora_A = nn.Parameter(torch.empty(rank, self.in_features, dtype=w.dtype, device=w.device))  # (r, I)
        self.lora_B = nn.Parameter(torch.zeros(self.out_features, rank, dtype=w.dtype, device=w.device))  # (O, r)
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # as peft: B = 0, so the wrapped model starts unchanged
        self.scaling = alpha / rank
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.linear(x, self.weight, self.bias)
        return y + F.linear(F.linear(self.dropout(x), self.lora_A), self.lora_B) * self.scaling

    @torch.no_grad()
    def merged_weight(self) -> torch.Tensor:
        delta = (self.lora_B.float() @ self.lora_A.float()) * self.scaling  # (O, I)
        return (self.weight.float() + delta).to(self.weight.dtype)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, rank={self.lora_A.shape[0]}, scaling={self.scaling:g}"


def _matches(name: str, cfg: LoRAConfig) -> bool:
    if cfg.prefixes and not any(name == p or name.startswith(p + ".") for p in cfg.prefixes):
        return False
    leaf = name.rsplit(".", 1)[-1]
    return any(leaf == t or re.fullmatch(t, name) for t in cfg.targets)


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, module)


def apply_lora(model: nn.Module, cfg: LoRAConfig) -> list[str]:
    """Wrap every matching `nn.Linear` (in place); only `lora_A`/`lora_B` require grad afterwards.

    Returns the wrapped module names. Raises if nothing matches, since that is always a typo in `targets`.
    """
    names = [n for n, m in model.named_modules() if type(m) is nn.Linear and _matches(n, cfg)]
    if not names:
        raise ValueError(
            f"LoRA targets {list(cfg.targets)} (prefixes {list(cfg.prefixes)}) match no nn.Linear module of the model")
    for p in model.parameters():
        p.requires_grad_(False)
    for n in names:
        _set_module(model, n, LoRALinear(model.get_submodule(n), cfg.rank, cfg.alpha, cfg.dropout))
    return names


def lora_modules(model: nn.Module) -> list[tuple[str, LoRALinear]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, LoRALinear)]


@torch.no_grad()
def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every adapter into its base weight and put plain `nn.Linear`s back (in place); returns `model`."""
    for name, m in lora_modules(model):
        linear = nn.Linear(m.in_features, m.out_features, bias=m.bias is not None, device="meta")
        linear.weight = nn.Parameter(m.merged_weight(), requires_grad=m.weight.requires_grad)
        linear.bias = m.bias
        _set_module(model, name, linear)
    return model


def save_adapter(model: nn.Module, folder: str | Path, cfg: LoRAConfig, base_model: str | None = None) -> Path:
    """The adapters alone, in peft's format (`adapter_model.safetensors` + `adapter_config.json`): peft's
    `PeftModel.from_pretrained` loads them onto transformers' Qwen3-VL, and `qwen3vl run --lora` merges them.

    `target_modules` lists the exact wrapped module names; our own `LoRAConfig` rides along in the safetensors
    metadata so `load_adapter` gives back the very config (peft ignores it).
    """
    from qwen3vl.weights.adapters import write_adapter

    pairs = {name: (m.lora_A, m.lora_B) for name, m in lora_modules(model)}
    if not pairs:
        raise ValueError("the model has no LoRA modules to save (apply_lora first)")
    return write_adapter(folder, pairs, rank=cfg.rank, alpha=cfg.alpha, dropout=cfg.dropout, base_model=base_model,
                         metadata={CONFIG_METADATA: json.dumps(asdict(cfg))})


def load_adapter(model: nn.Module, folder: str | Path) -> LoRAConfig:
    """Wrap `model` as a saved adapter describes and load its A/B weights (in place), to go on training it.

    Any peft LoRA adapter on linear layers with one rank and one scale for all its modules works (rsLoRA too); to
    use an adapter for inference, `qwen3vl.weights.adapters.merge_adapter` folds it in instead.
    """
    from qwen3vl.weights.adapters import AdapterError, read_adapter

    adapter = read_adapter(folder)
    if adapter.tensors or any(p.embedding or p.bias is not None for p in adapter.pairs):
        raise AdapterError(f"{folder}: the adapter changes more than linear layers (whole tensors, embeddings or "
                           "LoRA biases); it can be merged (merge_adapter) but not trained further here")
    if CONFIG_METADATA in adapter.metadata:
        cfg = LoRAConfig(**json.loads(adapter.metadata[CONFIG_METADATA]))
    else:  # a peft adapter: one rank and one scale for all modules (rsLoRA's alpha/sqrt(r) becomes alpha' = s * r)
        ranks, scales = {p.rank for p in adapter.pairs}, {p.scale for p in adapter.pairs}
        if len(ranks) != 1 or max(scales) - min(scales) > 1e-9 * max(scales):
            raise AdapterError(f"{folder}: per-module ranks or scales (rank_pattern/alpha_pattern) cannot be trained "
                               "further here; merge the adapter instead (merge_adapter)")
        rank, scale = ranks.pop(), scales.pop()
        cfg = LoRAConfig(rank=rank, alpha=scale * rank, dropout=float(adapter.config.get("lora_dropout") or 0.0),
                         targets=tuple(re.escape(p.module) for p in adapter.pairs))
    if not lora_modules(model):
        apply_lora(model, cfg)
    wrapped = dict(lora_modules(model))
    by_module = {p.module: p for p in adapter.pairs}
    if set(by_module) != set(wrapped):
        missing, extra = sorted(set(wrapped) - set(by_module)), sorted(set(by_module) - set(wrapped))
        raise AdapterError(f"adapter in {folder} does not fit the model: no weights for {missing[:3]}, weights for "
                           f"unwrapped modules {extra[:3]}")
    with torch.no_grad():
        for name, m in wrapped.items():
            pair = by_module[name]
            if pair.A.shape != m.lora_A.shape or pair.B.shape != m.lora_B.shape:
                raise AdapterError(f"adapter in {folder}: {name} is rank {pair.rank} {tuple(pair.B.shape)}x"
                                   f"{tuple(pair.A.shape)}, the model's adapter {tuple(m.lora_B.shape)}x"
                                   f"{tuple(m.lora_A.shape)}")
            if not math.isclose(pair.scale, m.scaling, rel_tol=1e-6):
                raise AdapterError(f"adapter in {folder}: {name} has scale {pair.scale:g}, the model's adapter "
                                   f"{m.scaling:g}")
            m.lora_A.copy_(pair.A)
            m.lora_B.copy_(pair.B)
    return cfg
