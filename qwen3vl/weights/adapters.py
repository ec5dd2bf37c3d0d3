"""LoRA adapters in peft's format (`adapter_config.json` + `adapter_model.safetensors`): read, merge, write.

An adapter trained with peft on transformers' `Qwen3VLForConditionalGeneration` (directly, or through tools built on
it) names its tensors `base_model.model.<module>.lora_A.weight` / `.lora_B.weight`. Its module names are the
official checkpoint's, which are ours, so an adapter maps onto our model name for name; nothing is translated.

`merge_adapter(model, path)` folds each pair into the weight it targets, W += s * B @ A (in float32, cast back to the
weight's dtype), with s = lora_alpha / r, or lora_alpha / sqrt(r) for rsLoRA, and `rank_pattern` / `alpha_pattern`
honoured per module. Embedding adapters (`lora_embedding_A/B`), LoRA biases (`lora_bias`), and whole tensors the
adapter carries (`modules_to_save`, or the base `lm_head`/`embed_tokens` peft saves next to their adapters) are
handled. What changes the model in ways a merge cannot express (DoRA, adapters on raw parameters such as fused MoE
experts, layer replication, trainable token indices, PiSSA/OLoRA/CorDA/LoRA-GA/LoftQ initialisations that also
rewrite the base weights, other peft methods) is refused with an `AdapterError` naming the setting, never merged
approximately.

A tied LM head is untied before either side of it changes, so an adapter on `embed_tokens` does not leak into the
output projection (or the other way round): the merged model computes what peft's unmerged adapter computes.

Legend: r rank, I in_features, O out_features, V vocabulary rows, D embedding width.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
PREFIX = "base_model.model."
# Config keys whose non-empty values mean something a merge into the base weights cannot reproduce.
UNSUPPORTED = {"use_dora": "DoRA (use_dora)", "target_parameters": "LoRA on raw parameters (target_parameters)",
               "layer_replication": "layer_replication", "trainable_token_indices": "trainable_token_indices",
               "use_qalora": "QA-LoRA (use_qalora)", "use_bdlora": "use_bdlora", "alora_invocation_tokens":
               "activated LoRA (alora_invocation_tokens)"}


class AdapterError(ValueError):
    """An adapter folder that cannot be read, or that does not fit the model."""


@dataclass
class LoRAPair:
    """One module's low-rank update: delta = scale * B @ A, shaped like the module's weight."""

    module: str
    A: torch.Tensor  # (r, I); (r, V) for an embedding
    B: torch.Tensor  # (O, r); (D, r) for an embedding
    scale: float
    bias: torch.Tensor | None = None  # (O,) with lora_bias: the bias becomes b + scale * bias
    embedding: bool = False

    @property
    def rank(self) -> int:
        return self.A.shape[0]

    def delta(self) -> torch.Tensor:
        d = (self.B.float() @ self.A.float()) * self.scale  # (O, I), or (D, V) for an embedding
        return d.T if self.embedding else d


@dataclass
class Adapter:
    folder: Path
    config: dict[str, Any]
    pairs: list[LoRAPair] = field(default_factory=list)
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)  # parameter name -> whole replacement value
    metadata: dict[str, str] = field(default_factory=dict)


def resolve_adapter(path: str | Path, revision: str | None = None) -> Path:
    """A local adapter folder as is, or a hub id downloaded through `huggingface_hub`."""
    from qwen3vl.weights.hub import resolve_checkpoint

    return resolve_checkpoint(path, revision=revision, marker=ADAPTER_CONFIG, what="LoRA adapter")


def _pattern_value(patterns: dict[str, Any], module: str, default: Any) -> Any:
    """peft's per-module override rule: a key matches the module's full name or a dotted suffix of it (as a regex)."""
    for key, value in patterns.items():
        if key == module or re.match(rf"(.*\.)?({key})$", module):
            return value
    return default


def _check_config(config: dict[str, Any], source: Path) -> None:
    kind = config.get("peft_type", "LORA")
    if str(kind).upper() != "LORA":
        raise AdapterError(f"{source}: peft_type {kind!r} is not supported; only LoRA adapters can be merged")
    for key, what in UNSUPPORTED.items():
        if config.get(key):
            raise AdapterError(f"{source}: {what} is not supported: it cannot be folded into the base weights")
    init = config.get("init_lora_weights")
    if isinstance(init, str) and (init.startswith("pissa") or init in ("olora", "corda", "lora_ga", "loftq")):
        raise AdapterError(f"{source}: init_lora_weights={init!r} changes the base weights as well as adding the "
                           "adapter; convert the adapter first (peft's path_initial_model_for_weight_conversion) "
                           "so it applies to the original base")
    for key in ("r", "lora_alpha"):
        if not isinstance(config.get(key), (int, float)) or config[key] <= 0:
            raise AdapterError(f"{source}: {key} must be a positive number, got {config.get(key)!r}")


def read_adapter(path: str | Path, revision: str | None = None) -> Adapter:
    """Read a peft LoRA adapter folder (or hub id) into `LoRAPair`s and whole tensors; checks shapes pair by pair."""
    from safetensors import SafetensorError, safe_open

    folder = resolve_adapter(path, revision)
    config_path = folder / ADAPTER_CONFIG
    try:
        config = json.loads(config_path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise AdapterError(f"{config_path} is not readable JSON: {e}") from e
    if not isinstance(config, dict):
        raise AdapterError(f"{config_path} must hold a JSON object")
    _check_config(config, config_path)
    weights = folder / ADAPTER_WEIGHTS
    if not weights.is_file():
        hint = " (adapter_model.bin is a pickle: convert it to safetensors)" if (folder / "adapter_model.bin").exists() \
            else ""
        raise AdapterError(f"{folder} has no {ADAPTER_WEIGHTS}{hint}")
    raw: dict[str, torch.Tensor] = {}
    try:
        with safe_open(weights, framework="pt") as h:
            metadata = dict(h.metadata() or {})
            for k in h.keys():
                raw[k.removeprefix(PREFIX)] = h.get_tensor(k)
    except (SafetensorError, OSError) as e:
        raise AdapterError(f"{weights} is not a readable safetensors file: {e}") from e

    if any(k.endswith("lora_magnitude_vector") or ".lora_magnitude_vector." in k for k in raw):
        raise AdapterError(f"{weights}: DoRA magnitude vectors found; DoRA is not supported")
    r, alpha = config["r"], config["lora_alpha"]
    rank_pattern, alpha_pattern = config.get("rank_pattern") or {}, config.get("alpha_pattern") or {}
    # fan_in_fan_out only concerns GPT-2-style Conv1D layers, which Qwen3-VL has none of (peft turns it off for
    # nn.Linear targets and keeps A (r, I), B (O, r) either way), so it is ignored like peft ignores it
    rslora = bool(config.get("use_rslora"))
    adapter = Adapter(folder=folder, config=config, metadata=metadata)
    used: set[str] = set()
    for key in sorted(raw):
        for a_suffix, b_suffix, embedding in ((".lora_A.weight", ".lora_B.weight", False),
                                              (".lora_embedding_A", ".lora_embedding_B", True)):
            if not key.endswith(a_suffix):
                continue
            module = key[: -len(a_suffix)]
            b_key = module + b_suffix
            if b_key not in raw:
                raise AdapterError(f"{weights}: {PREFIX}{key} has no matching {PREFIX}{b_key}")
            A, B = raw[key], raw[b_key]
            if A.dim() != 2 or B.dim() != 2 or A.shape[0] != B.shape[1]:
                raise AdapterError(f"{weights}: {module}: lora_A {tuple(A.shape)} and lora_B {tuple(B.shape)} are not "
                                   "a rank-r pair")
            rank = _pattern_value(rank_pattern, module, r)
            if A.shape[0] != rank:
                raise AdapterError(f"{weights}: {module} has rank {A.shape[0]}, but the config says r={rank}")
            a = _pattern_value(alpha_pattern, module, alpha)
            scale = a / math.sqrt(rank) if rslora else a / rank
            bias = raw.get(module + ".lora_B.bias")
            adapter.pairs.append(LoRAPair(module, A, B, scale, bias, embedding))
            used.update({key, b_key} | ({module + ".lora_B.bias"} if bias is not None else set()))
    for key, t in raw.items():
        if key in used:
            continue
        if ".lora_" in key:
            raise AdapterError(f"{weights}: tensor {PREFIX}{key} is of a kind this merge does not know")
        # modules_to_save copies and the base layers peft saves whole: a parameter's new value
        name = key.replace(".base_layer.", ".").replace(".modules_to_save.default.", ".")
        name = name.replace(".modules_to_save.", ".").replace(".original_module.", ".")
        adapter.tensors[name] = t
    if not adapter.pairs and not adapter.tensors:
        raise AdapterError(f"{weights} holds no LoRA tensors")
    return adapter


def _untie_head(model: nn.Module) -> None:
    """Give the LM head its own copy of the weight it shares with the token embedding (the config follows)."""
    head = model.get_submodule("lm_head")
    embed = model.get_submodule("model.language_model.embed_tokens")
    if head.weight is embed.weight:
        head.weight = nn.Parameter(embed.weight.detach().clone(), requires_grad=embed.weight.requires_grad)
        model.config.tie_word_embeddings = False


def _target(model: nn.Module, name: str, source: Path) -> nn.Module:
    try:
        return model.get_submodule(name)
    except AttributeError:
        raise AdapterError(f"adapter {source} targets {name}, which this model does not have (was it trained for "
                           "another model size or architecture?)") from None


@torch.no_grad()
def merge_adapter(model: nn.Module, adapter: Adapter | str | Path, revision: str | None = None) -> list[str]:
    """Fold a peft LoRA adapter into `model`'s weights in place; returns the names of the parameters it changed.

    Every shape is checked before anything changes, so a mismatched adapter leaves the model as it was.
    """
    if not isinstance(adapter, Adapter):
        adapter = read_adapter(adapter, revision)
    params = dict(model.named_parameters(remove_duplicate=False))
    # whole tensors first: peft saves a targeted lm_head's base weight next to its adapter, and the delta goes on top
    plan: list[tuple[str, LoRAPair | torch.Tensor]] = []
    for name, t in adapter.tensors.items():
        if name not in params:
            _target(model, name.rpartition(".")[0], adapter.folder)
            raise AdapterError(f"adapter {adapter.folder} carries {name}, which this model does not have")
        if params[name].shape != t.shape:
            raise AdapterError(f"adapter {adapter.folder}: {name} is {tuple(t.shape)}, the model's is "
                               f"{tuple(params[name].shape)}")
        plan.append((name, t))
    for pair in adapter.pairs:
        module = _target(model, pair.module, adapter.folder)
        weight = getattr(module, "weight", None)
        want = tuple(weight.shape) if isinstance(weight, torch.Tensor) else None
        got = (pair.A.shape[1], pair.B.shape[0]) if pair.embedding else (pair.B.shape[0], pair.A.shape[1])
        if want != got:
            raise AdapterError(f"adapter {adapter.folder}: the update for {pair.module} is {got[0]}x{got[1]}, but "
                               f"the model's weight is {'x'.join(map(str, want)) if want else 'absent'}")
        if pair.bias is not None and (getattr(module, "bias", None) is None or module.bias.shape != pair.bias.shape):
            raise AdapterError(f"adapter {adapter.folder}: {pair.module} has a LoRA bias but the layer has no bias of "
                               f"shape {tuple(pair.bias.shape)}")
        plan.append((pair.module + ".weight", pair))
    head_names = {"lm_head.weight", "model.language_model.embed_tokens.weight"}
    if any(name in head_names for name, _ in plan):
        _untie_head(model)
        params = dict(model.named_parameters(remove_duplicate=False))
    changed = []
    for name, item in plan:
        p = params[name]
        if isinstance(item, LoRAPair):
            p.copy_((p.float() + item.delta().to(p.device)).to(p.dtype))
            if item.bias is not None:
                b = params[item.module + ".bias"]
                b.copy_((b.float() + item.scale * item.bias.float().to(b.device)).to(b.dtype))
                changed.append(item.module + ".bias")
        else:
            p.copy_(item.to(device=p.device, dtype=p.dtype))
        changed.append(name)
    return changed


def write_adapter(folder: str | Path, pairs: dict[str, tuple[torch.Tensor, torch.Tensor]], *, rank: int,
                  alpha: float, dropout: float = 0.0, base_model: str | None = None,
                  metadata: dict[str, str] | None = None) -> Path:
    """Write `{module: (A (r, I), B (O, r))}` as a peft LoRA adapter that `PeftModel.from_pretrained` loads onto
    transformers' Qwen3-VL. `target_modules` lists the exact module names, so peft wraps exactly these."""
    from safetensors.torch import save_file

    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    state: dict[str, torch.Tensor] = {}
    for module, (A, B) in sorted(pairs.items()):
        state[f"{PREFIX}{module}.lora_A.weight"] = A.detach().cpu().contiguous()
        state[f"{PREFIX}{module}.lora_B.weight"] = B.detach().cpu().contiguous()
    save_file(state, out / ADAPTER_WEIGHTS, metadata={"format": "pt", **(metadata or {})})
    config = {"peft_type": "LORA", "task_type": None, "base_model_name_or_path": base_model, "r": rank,
              "lora_alpha": alpha, "lora_dropout": dropout, "target_modules": sorted(pairs), "bias": "none",
              "use_rslora": False, "use_dora": False, "fan_in_fan_out": False, "modules_to_save": None,
              "init_lora_weights": True, "rank_pattern": {}, "alpha_pattern": {}, "layers_to_transform": None,
              "layers_pattern": None, "inference_mode": True, "revision": None}
    (out / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2) + "\n")
    return out
