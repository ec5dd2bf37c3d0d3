"""LoRA adapters chosen per request, applied unmerged: one base model, any number of adapters, mixed in one batch.

`LLM(lora=...)` folds adapters into the weights, which serves one fine-tune per process. Here the base weights stay
as they are; each adapted linear layer of the language model gets a forward hook that adds, for the rows (tokens) of
each adapter present in the step, scale * (x A^T) B^T. A step's rows are grouped
by adapter once (`begin`), so a batch holding base-model requests and requests of several adapters costs one base
matmul per layer plus two thin matmuls per adapter present. Outside an engine step (no `begin`), the hooks add
nothing.

What can be served this way: LoRA pairs on `nn.Linear` layers of the language model's decoder (attention and MLP
projections: what peft targets by default and what `qwen3vl train --lora` writes). Adapters on the vision encoder
(whose features are cached by content, shared by every request), on embeddings or the LM head, with LoRA biases
(`lora_bias`), or carrying whole tensors (`modules_to_save`) are refused with an AdapterError that says to merge
them instead (`LLM(lora=...)`; a LoRA bias needs a layer bias to merge into, which Qwen3-VL's decoder layers lack).
The prefix cache keys blocks by adapter (BlockManager.block_hashes), since an adapter changes the keys and values.

Legend: T tokens in the step, I in_features, O out_features, r rank.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from qwen3vl.weights.adapters import Adapter, AdapterError, read_adapter

DECODER = "model.language_model.layers."


class AdapterSet:
    """The adapters an engine can apply per request, by name; ids start at 1 (0 is the base model)."""

    def __init__(self, model: nn.Module):
        self.model = model
        self.ids: dict[str, int] = {}
        self.folders: dict[str, Path] = {}
        # module name -> adapter id -> (A (r, I), B (O, r), scale)
        self.weights: dict[str, dict[int, tuple[torch.Tensor, torch.Tensor, float]]] = {}
        self._hooks: dict[str, Any] = {}
        self._groups: list[tuple[int, torch.Tensor]] = []  # this step's (adapter id, token rows)

    def __contains__(self, name: object) -> bool:
        return name in self.ids

    def names(self) -> list[str]:
        return list(self.ids)

    def add(self, name: str, adapter: Adapter | str | Path, revision: str | None = None) -> int:
        """Load a peft LoRA adapter under `name`; every check runs before anything is kept."""
        if not isinstance(name, str) or not name:
            raise AdapterError(f"an adapter needs a non-empty name, got {name!r}")
        if name in self.ids:
            raise AdapterError(f"an adapter named {name!r} is already loaded")
        if not isinstance(adapter, Adapter):
            adapter = read_adapter(adapter, revision)
        src = adapter.folder
        if adapter.tensors:
            raise AdapterError(f"adapter {src} carries whole tensors ({', '.join(sorted(adapter.tensors)[:3])}): "
                               "it cannot be applied per request; merge it at load instead (LLM(lora=...), --lora)")
        if not adapter.pairs:
            raise AdapterError(f"adapter {src} holds no LoRA pairs")
        device, dtype = _device_dtype(self.model)
        staged = {}
        for pair in adapter.pairs:
            where = pair.module
            if pair.embedding or not where.startswith(DECODER):
                raise AdapterError(f"adapter {src} adapts {where}; only the language model's decoder layers can be "
                                   "adapted per request: merge this adapter at load instead (LLM(lora=...), --lora)")
            try:
                module = self.model.get_submodule(where)
            except AttributeError:
                raise AdapterError(f"adapter {src} targets {where}, which this model does not have (was it trained "
                                   "for another model size?)") from None
            if not isinstance(module, nn.Linear):
                raise AdapterError(f"adapter {src} targets {where}, a {type(module).__name__}, not a linear layer")
            if (pair.B.shape[0], pair.A.shape[1]) != (module.out_features, module.in_features):
                raise AdapterError(f"adapter {src}: the update for {where} is {pair.B.shape[0]}x{pair.A.shape[1]}, "
                                   f"the layer is {module.out_features}x{module.in_features}")
            if pair.bias is not None:
                raise AdapterError(f"adapter {src} has a LoRA bias on {where} (lora_bias): not supported per request; "
                                   "merge this adapter at load instead (LLM(lora=...), --lora)")
            staged[where] = (pair.A.to(device=device, dtype=dtype), pair.B.to(device=device, dtype=dtype),
                             float(pair.scale))
        aid = max(self.ids.values(), default=0) + 1
        self.ids[name] = aid
        self.folders[name] = Path(src)
        for where, w in staged.items():
            self.weights.setdefault(where, {})[aid] = w
            if where not in self._hooks:
                self._hooks[where] = self.model.get_submodule(where).register_forward_hook(self._hook(where))
        return aid

    def remove(self, name: str) -> None:
        aid = self.ids.pop(name, None)
        if aid is None:
            raise AdapterError(f"no adapter named {name!r} is loaded")
        self.folders.pop(name, None)
        for where in list(self.weights):
            self.weights[where].pop(aid, None)
            if not self.weights[where]:
                del self.weights[where]
                self._hooks.pop(where).remove()

    def id_of(self, name: str | None) -> int:
        if name is None:
            return 0
        aid = self.ids.get(name)
        if aid is None:
            have = ", ".join(self.ids) or "none"
            raise ValueError(f"no LoRA adapter named {name!r} is loaded (loaded: {have})")
        return aid

    # ------------------------------------------------------------------ one step
    def begin(self, token_adapters: torch.Tensor | None, device: torch.device) -> None:
        """Group this step's token rows by adapter (`token_adapters`: (T,) ids, 0 for the base model)."""
        self._groups = []
        if token_adapters is None:
            return
        for aid in torch.unique(token_adapters).tolist():
            if aid:
                self._groups.append((aid, torch.nonzero(token_adapters == aid).flatten().to(device)))

    def end(self) -> None:
        self._groups = []

    def _hook(self, where: str):
        def add_updates(module: nn.Module, inputs: tuple, out: torch.Tensor) -> torch.Tensor | None:
            if not self._groups:
                return None
            per_adapter = self.weights.get(where, {})
            x = inputs[0].reshape(-1, inputs[0].shape[-1])  # (T, I)
            y = out.reshape(-1, out.shape[-1])  # (T, O)
            for aid, rows in self._groups:
                w = per_adapter.get(aid)
                if w is None:
                    continue
                A, B, scale = w
                delta = (x.index_select(0, rows) @ A.T) @ B.T * scale  # (rows, O)
                y = y.index_add(0, rows, delta.to(y.dtype))
            return y.view_as(out)

        return add_updates


def _device_dtype(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    p = next(model.parameters())
    return p.device, p.dtype
