"""Lazy checkpoint loading: a folder of safetensors (one file, or shards with an index) into a built model.

The model is built on the meta device (no memory), then each tensor is read from its file, put into our layout,
cast and moved, and becomes the parameter — one tensor at a time, so peak memory stays near one copy of the
weights. Every missing, unexpected or misshaped tensor is an error that names the tensor and the file.
"""

from __future__ import annotations

import json
import logging
from contextlib import ExitStack
from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn

from qwen3vl.config import Qwen3VLConfig, load_config
from qwen3vl.weights import fp8
from qwen3vl.weights.hub import resolve_checkpoint
from qwen3vl.weights.layout import to_model_layout

log = logging.getLogger(__name__)


class CheckpointError(ValueError):
    """A checkpoint's files do not match the model its config describes."""


def parse_dtype(dtype: torch.dtype | str | None, default: torch.dtype | None = None) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype if dtype is not None else default
    names = {"float32": torch.float32, "fp32": torch.float32, "float": torch.float32,
             "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
             "float16": torch.float16, "fp16": torch.float16, "half": torch.float16, "auto": default}
    if dtype not in names:
        raise ValueError(f"unknown dtype {dtype!r}; use one of {', '.join(k for k in names if k != 'auto')}")
    return names[dtype]


def tensor_index(folder: Path) -> dict[str, str]:
    """Tensor name -> file name, from `model.safetensors.index.json` or the safetensors files themselves."""
    index = folder / "model.safetensors.index.json"
    if index.exists():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError) as e:
            raise CheckpointError(f"{index} is not a valid safetensors index: {e}") from e
        for file in sorted(set(weight_map.values())):
            if not (folder / file).exists():
                raise CheckpointError(f"{index} lists shard {file}, which is not in {folder}")
        return dict(weight_map)
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise CheckpointError(f"no *.safetensors files in {folder}")
    out: dict[str, str] = {}
    for f in files:
        with safe_open(f, framework="pt") as h:
            for k in h.keys():
                if k in out:
                    raise CheckpointError(f"tensor {k} appears in both {out[k]} and {f.name}")
                out[k] = f.name
    return out


def file_says_transformers5(folder: Path, cfg: Qwen3VLConfig) -> bool:
    version = cfg.transformers_version or ""
    return version[:1].isdigit() and int(version.split(".")[0]) >= 5


def build_empty(cfg: Qwen3VLConfig):
    from qwen3vl.model.qwen3vl import Qwen3VLForConditionalGeneration

    with torch.device("meta"):
        return Qwen3VLForConditionalGeneration(cfg)


def _set_param(model: nn.Module, name: str, value: torch.Tensor) -> None:
    module_name, _, leaf = name.rpartition(".")
    module = model.get_submodule(module_name)
    module._parameters[leaf] = nn.Parameter(value, requires_grad=False)


def load_checkpoint(path: str | Path, dtype: torch.dtype | str | None = None, device: str | torch.device = "cpu",
                    revision: str | None = None, progress: bool = False):
    folder = resolve_checkpoint(path, revision=revision)
    cfg = load_config(folder)
    target = parse_dtype(dtype, default=parse_dtype(cfg.dtype) if cfg.dtype else torch.float32) or torch.float32
    model = build_empty(cfg)
    load_weights(model, folder, dtype=target, device=torch.device(device), progress=progress)
    return model.eval()


def plan_checkpoint(folder: Path, cfg: Qwen3VLConfig, index: dict[str, str], expected: dict[str, torch.Size],
                    tied_head_optional: bool = True) -> tuple[fp8.Fp8Scheme | None, dict[str, fp8.Source]]:
    """Which checkpoint tensors fill each expected parameter (of the full, unsplit shape), and the FP8 scheme; a
    missing or unexpected tensor, or a quantization we cannot read, is a CheckpointError naming it. A tied head's
    `lm_head.weight` may always be in the file, and may be absent unless `tied_head_optional` is False."""
    tied = cfg.tie_word_embeddings
    try:
        scheme = fp8.read_scheme(cfg.quantization_config)
        sources, unclaimed = fp8.plan_sources(index, expected)
    except fp8.QuantizationError as e:
        raise CheckpointError(f"checkpoint {folder}: {e}") from e
    missing = [n for n in expected if n not in sources and not (tied and tied_head_optional and n == "lm_head.weight")]
    if missing:
        raise CheckpointError(
            f"checkpoint {folder} is missing tensor {missing[0]}"
            + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    unexpected = [n for n in unclaimed if not (n == "lm_head.weight" and tied)]
    if unexpected:
        raise CheckpointError(
            f"checkpoint file {index[unexpected[0]]} has unexpected tensor {unexpected[0]}"
            + (f" (and {len(unexpected) - 1} more)" if len(unexpected) > 1 else ""))
    return scheme, sources


def load_weights(model, folder: Path, dtype: torch.dtype, device: torch.device, progress: bool = False) -> None:
    """Fill a meta-device model's parameters from the checkpoint folder (FP8 and per-expert files too: fp8.py)."""
    cfg: Qwen3VLConfig = model.config
    index = tensor_index(folder)
    expected = {n: p.shape for n, p in model.named_parameters(remove_duplicate=True)}
    scheme, sources = plan_checkpoint(folder, cfg, index, expected)
    if scheme is not None:
        log.info("dequantizing the FP8 weights of %s to %s", folder, dtype)
    prefer_transposed = file_says_transformers5(folder, cfg)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(sources), desc="loading weights", unit="tensor")
    handles: dict[str, tuple[object, set[str]]] = {}

    def get(name: str) -> torch.Tensor:
        file = index[name]
        if file not in handles:
            h = stack.enter_context(safe_open(folder / file, framework="pt"))
            handles[file] = (h, set(h.keys()))
        h, present = handles[file]
        if name not in present:
            raise CheckpointError(f"shard {file} is missing tensor {name} (the index says it is there)")
        return h.get_tensor(name)

    with ExitStack() as stack:
        # in file order of each parameter's first tensor, so shards are opened (and paged in) one after another
        for name, source in sorted(sources.items(), key=lambda kv: (index[kv[1].names[0]], kv[0])):
            try:
                t = fp8.read_param(source, get, index.__contains__, scheme, dtype)
                # experts put together from per-expert pieces are in the published layout whatever wrote the file
                t = to_model_layout(name, t, expected[name], prefer_transposed and source.kind == "plain")
            except (ValueError, RuntimeError) as e:
                if isinstance(e, CheckpointError):
                    raise
                raise CheckpointError(f"{index[source.names[0]]}: {e}") from e
            _set_param(model, name, t.to(device=device, dtype=dtype))
            if bar is not None:
                bar.update(1)
    if bar is not None:
        bar.close()
    finish_load(model, folder)


def finish_load(model, folder: Path) -> None:
    """Tie the LM head if the config says so, and check that no parameter was left on the meta device."""
    if model.config.tie_word_embeddings:
        model.lm_head.weight = model.model.language_model.embed_tokens.weight
    left = [n for n, p in model.named_parameters() if p.is_meta]
    if left:  # pragma: no cover - guarded by the missing check above
        raise CheckpointError(f"checkpoint {folder} left tensor {left[0]} unset")
