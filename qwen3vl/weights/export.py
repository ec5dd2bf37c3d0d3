"""Export a model to the official checkpoint layout: config.json plus safetensors shards (and an index when
there is more than one), experts in the published (E, D, 2I) / (E, I, D) layout, a tied LM head not stored.

Loading an official checkpoint and exporting it gives files whose tensors are identical, name for name.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file


def state_for_export(model, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    from qwen3vl.model.quant import Int8Experts, Int8Linear

    quantized = [n for n, m in model.named_modules() if isinstance(m, (Int8Linear, Int8Experts))]
    if quantized:  # their int8 buffers have no place in the official layout; leaving them out would lose layers
        raise ValueError(f"cannot export a model quantized in memory ({quantized[0]} and {len(quantized) - 1} more "
                         "layers are int8): export the unquantized model and quantize at load (--quantization)")
    state: dict[str, torch.Tensor] = {}
    for name, p in model.named_parameters(remove_duplicate=True):
        if model.config.tie_word_embeddings and name == "lm_head.weight":
            continue
        t = p.detach()
        if dtype is not None:
            t = t.to(dtype)
        state[name] = t.to("cpu").contiguous()
    return state


def save_checkpoint(model, folder: str | Path, dtype: torch.dtype | None = None,
                    max_shard_bytes: int = 5 * 1024**3) -> Path:
    """Write `model` to `folder` in the official layout; returns the folder."""
    state = state_for_export(model, dtype)
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    cfg = model.config
    if dtype is not None:
        cfg.dtype = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}[dtype]
    cfg.save(out)
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, t in state.items():
        nbytes = t.numel() * t.element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = t
        size += nbytes
    meta = {"format": "pt"}
    if len(shards) == 1:
        save_file(shards[0], out / "model.safetensors", metadata=meta)
        return out
    weight_map = {}
    total = len(shards)
    for i, shard in enumerate(shards, 1):
        fname = f"model-{i:05d}-of-{total:05d}.safetensors"
        save_file(shard, out / fname, metadata=meta)
        weight_map.update({k: fname for k in shard})
    index = {"metadata": {"total_size": sum(t.numel() * t.element_size() for t in state.values())},
             "weight_map": dict(sorted(weight_map.items()))}
    (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    return out
