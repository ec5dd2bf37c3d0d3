"""LoRA adapters chosen per request, applied unmerged: one base model, any number of adapters, mixed in one batch.

`LLM(lora=...)` folds adapters into the weights, which serves one fine-tune per process. Here the base weights stay
as they are; each adapted linear layer of the language model gets a forward hook that adds, for the rows (tokens) of
each adapter present in the step, scale * (x A^T) B^T. A step's rows are grouped
by adapter once (`begin`), so a batch holding base-model requests and requests of several adapters costs one base
matmul per layer plus two thin matmuls per adapter present. Outside an engine step (no `begin`), the hooks add
nothing.

What can be served this way: LoRA pairs on `nn.Linear` layers of the language model's decoder (attention and MLP
projections: what peft targets by default and what `qwen3vl train --lora` writes). Adapters on the vision encoder
(whose features are cached by content, shared by every request), on embeddings or the LM head, or carrying whole
tensors (`modules_to_save`) are refused with an AdapterError that says to merge them at load instead
(`LLM(lora=...)`); LoRA biases (`lora_bias`) are refused too.
The prefix cache keys blocks by the adapter's load (BlockManager.block_hashes: an adapter changes the keys and
values, and ids are never reused, so an adapter removed and loaded again under its name never meets the old one's
blocks). A request keeps the id of the load it started with. Removing an adapter takes its name away at once (new
requests cannot pick it); its weights stay until the last request running with it has finished (`release`). The
set itself is not thread-safe: a server changes it on its engine thread (`/v1/load_lora_adapter`).

Legend: T tokens in the step, I in_features, O out_features, r rank.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from qwen3vl.model.quant import Int8Linear
from qwen3vl.weights.adapters import Adapter, AdapterError, _target, read_adapter

DECODER = "model.language_model.layers."


class UnknownAdapterError(AdapterError):
    """A request or a removal names an adapter that is not loaded."""


class AdapterSet:
    """The adapters an engine can apply per request, by name; ids start at 1 (0 is the base model)."""

    def __init__(self, model: nn.Module):
        self.model = model
        self.ids: dict[str, int] = {}
        self.folders: dict[str, Path] = {}
        # module name -> adapter id -> (A (r, I), B (O, r) with the scale folded in)
        self.weights: dict[str, dict[int, tuple[torch.Tensor, torch.Tensor]]] = {}
        self._next_id = 1  # ids are never reused
        self._hooks: dict[str, Any] = {}
        self._groups: list[tuple[int, torch.Tensor | None]] = []  # this step's (adapter id, token rows; None: all)
        self.retiring: set[int] = set()  # removed by name, still used by running requests

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
        staged = {}
        for pair in adapter.pairs:
            where = pair.module
            if pair.embedding or not where.startswith(DECODER):
                raise AdapterError(f"adapter {src} adapts {where}; only the language model's decoder layers can be "
                                   "adapted per request: merge this adapter at load instead (LLM(lora=...), --lora)")
            module = _target(self.model, where, src)
            if not isinstance(module, (nn.Linear, Int8Linear)):
                raise AdapterError(f"adapter {src} targets {where}, a {type(module).__name__}, not a linear layer")
            if (pair.B.shape[0], pair.A.shape[1]) != (module.out_features, module.in_features):
                raise AdapterError(f"adapter {src}: the update for {where} is {pair.B.shape[0]}x{pair.A.shape[1]}, "
                                   f"the layer is {module.out_features}x{module.in_features}")
            if pair.bias is not None:
                raise AdapterError(f"adapter {src} has a LoRA bias on {where} (lora_bias), which is not supported")
            w = module.qweight if isinstance(module, Int8Linear) else module.weight
            dtype = module.dtype if isinstance(module, Int8Linear) else w.dtype
            staged[where] = (pair.A.to(device=w.device, dtype=dtype),
                             (pair.B.float() * pair.scale).to(device=w.device, dtype=dtype))
        aid = self._next_id
        self._next_id += 1
        for where, w in staged.items():  # weights and hooks first, the name last: a request can only find it whole
            self.weights.setdefault(where, {})[aid] = w
            if where not in self._hooks:
                self._hooks[where] = self.model.get_submodule(where).register_forward_hook(self._hook(where))
        self.folders[name] = Path(src)
        self.ids[name] = aid
        return aid

    def remove(self, name: str, in_use: set[int] | frozenset = frozenset()) -> None:
        """Unload `name`. Its weights go now, or, while a request in `in_use` (adapter ids of the requests still
        running) uses this load, once `release` finds it unused."""
        aid = self.ids.pop(name, None)
        if aid is None:
            raise UnknownAdapterError(f"no adapter named {name!r} is loaded")
        self.folders.pop(name, None)
        if aid in in_use:
            self.retiring.add(aid)
        else:
            self._drop(aid)

    def release(self, in_use: set[int]) -> None:
        """Free the weights of removed adapters that no request in `in_use` still runs with."""
        for aid in self.retiring - in_use:
            self.retiring.discard(aid)
            self._drop(aid)

    def _drop(self, aid: int) -> None:
        for where in list(self.weights):
            self.weights[where].pop(aid, None)
            if not self.weights[where]:
                del self.weights[where]
                self._hooks.pop(where).remove()

    def loaded(self, aid: int) -> bool:
        return aid in self.retiring or aid in self.ids.values()

    def id_of(self, name: str | None) -> int:
        if name is None:
            return 0
        aid = self.ids.get(name)
        if aid is None:
            have = ", ".join(self.ids) or "none"
            raise UnknownAdapterError(f"no LoRA adapter named {name!r} is loaded (loaded: {have})")
        return aid

    # ------------------------------------------------------------------ one step
    def begin(self, token_adapters: torch.Tensor | None, device: torch.device) -> None:
        """Group this step's token rows by adapter (`token_adapters`: (T,) ids, 0 for the base model)."""
        self._groups = []
        if token_adapters is None:
            return
        present = torch.unique(token_adapters).tolist()
        for aid in present:
            if not aid:
                continue
            if not self.loaded(aid):
                raise RuntimeError(f"LoRA adapter id {aid} was removed while a request still used it")
            rows = None if len(present) == 1 else torch.nonzero(token_adapters == aid).flatten().to(device)
            self._groups.append((aid, rows))

    def end(self) -> None:
        self._groups = []

    def _hook(self, where: str):
        def add_updates(module: nn.Module, inputs: tuple, out: torch.Tensor) -> torch.Tensor | None:
            if not self._groups:
                return None
            per_adapter = self.weights.get(where, {})
            x = inputs[0].reshape(-1, inputs[0].shape[-1])  # (T, I)
            y = out.view(-1, out.shape[-1])  # (T, O): the layer's fresh output, added to in place
            for aid, rows in self._groups:
                w = per_adapter.get(aid)
                if w is None:
                    continue
                A, B = w
                if rows is None:  # every token of the step
                    y.addmm_(x @ A.T, B.T)
                else:
                    y.index_add_(0, rows, (x.index_select(0, rows) @ A.T) @ B.T)
            return out

        return add_updates
