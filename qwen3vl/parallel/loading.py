"""Load each rank's shard straight from the checkpoint, so no rank ever holds a whole model.

`load_parallel(folder, group)` builds the model on the meta device, `parallelize`s it (meta shapes become shard
shapes) and reads every parameter's slice with safetensors' `get_slice`. Each tensor is read through its own
`safe_open`: the memory map is closed right after the copy, because pages a map has touched count in the process's
resident set until it is closed (a column slice touches every row of its tensor), so holding one map over a whole
file would make a rank's peak look like the whole file. Peak memory is then the rank's shard plus one tensor.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn

from qwen3vl.config import load_config
from qwen3vl.parallel.plan import Shard
from qwen3vl.parallel.tensor_parallel import ShardPlan, parallelize
from qwen3vl.weights import fp8
from qwen3vl.weights.layout import expert_kind, to_model_layout
from qwen3vl.weights.loader import (CheckpointError, build_empty, file_says_transformers5, finish_load, parse_dtype,
                                    plan_checkpoint, tensor_index)

log = logging.getLogger(__name__)


def load_parallel(path: str | Path, group=None, dtype: torch.dtype | str | None = None,
                  device: str | torch.device = "cpu", progress: bool = False):
    """This rank's shard of the checkpoint folder `path`, in eval mode."""
    folder = Path(path)
    cfg = load_config(folder)
    target = parse_dtype(dtype, default=parse_dtype(cfg.dtype) if cfg.dtype else torch.float32) or torch.float32
    model = build_empty(cfg)
    plan = parallelize(model, group)
    load_shard(model, folder, plan, target, torch.device(device), progress=progress)
    return model.eval()


def _read(handle, name: str, shard: Shard | None, file: str) -> torch.Tensor:
    try:
        sl = handle.get_slice(name)
    except Exception as e:  # safetensors' own error type is not importable by a stable name
        raise CheckpointError(f"shard {file} is missing tensor {name} (the index says it is there)") from e
    if shard is None:
        return sl[:]
    full = tuple(sl.get_shape())
    # experts may be stored transposed (transformers 5.x); they are split along dim 0 (experts), which both
    # layouts share, and `to_model_layout` sorts out the rest
    same = full[0] == shard.full_shape[0] if expert_kind(name) else full == shard.full_shape
    if not same:
        raise CheckpointError(f"{file}: tensor {name} has shape {full}, expected {shard.full_shape}")
    parts = [sl[shard.index(a, b)] for a, b in shard.ranges]
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=shard.dim)


def load_shard(model, folder: Path, plan: ShardPlan, dtype: torch.dtype, device: torch.device,
               progress: bool = False) -> None:
    """Fill a parallelized meta-device model's parameters: slices for the names in `plan`, whole tensors for the
    rest. Missing, unexpected and misshaped tensors are errors naming the tensor and file."""
    cfg = model.config
    index = tensor_index(folder)
    params = dict(model.named_parameters(remove_duplicate=True))
    full = {n: torch.Size(plan[n].full_shape) if plan.get(n) is not None else p.shape for n, p in params.items()}
    scheme, sources = plan_checkpoint(folder, cfg, index, full, tied_head_optional=False)
    prefer_transposed = file_says_transformers5(folder, cfg)
    names = sorted(params, key=lambda n: (index[sources[n].names[0]], n))
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(names), desc="loading shard", unit="tensor")
    for name in names:
        source = sources[name]
        file = index[source.names[0]]
        if source.kind == "plain" and name + fp8.SCALE_SUFFIX not in index:
            with safe_open(folder / file, framework="pt") as h:
                t = _read(h, name, plan.get(name), file)
                try:
                    fp8.require_scale(name, t)
                    t = to_model_layout(name, t, params[name].shape, prefer_transposed)
                except ValueError as e:
                    raise CheckpointError(f"{file}: {e}") from e
                # a copy that owns its memory: the map behind `t` is closed when the `with` ends
                value = t.to(device=device, dtype=dtype, copy=True).contiguous()
                del t
        else:  # FP8 blocks or per-expert pieces: the whole tensor, dequantized and put together, then this rank's part
            shard = plan.get(name)
            full = shard.full_shape if shard is not None else params[name].shape
            value = _read_whole(folder, index, name, source, shard, full, scheme, dtype, prefer_transposed)
            value = value.to(device=device, dtype=dtype).contiguous()
        module_name, _, leaf = name.rpartition(".")
        model.get_submodule(module_name)._parameters[leaf] = nn.Parameter(value, requires_grad=False)
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    finish_load(model, folder)


def _read_whole(folder: Path, index: dict[str, str], name: str, source, shard: Shard | None, full_shape, scheme,
                dtype, prefer_transposed: bool) -> torch.Tensor:
    def get(tensor: str) -> torch.Tensor:
        with safe_open(folder / index[tensor], framework="pt") as h:
            return h.get_tensor(tensor).clone()

    file = index[source.names[0]]
    try:
        t = fp8.read_param(source, get, index.__contains__, scheme, dtype)
        t = to_model_layout(name, t, torch.Size(full_shape), prefer_transposed and source.kind == "plain")
    except ValueError as e:
        raise CheckpointError(f"{file}: {e}") from e
    if shard is None:
        return t
    parts = [t[shard.index(a, b)] for a, b in shard.ranges]
    return (parts[0] if len(parts) == 1 else torch.cat(parts, dim=shard.dim)).clone()
