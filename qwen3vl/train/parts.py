"""Which parts of Qwen3-VL train: `vision` (patch embedding, position table, ViT blocks), `merger` (the final
`model.visual.merger` and the DeepStack `deepstack_merger_list`) and `language` (embeddings, decoder, final norm,
LM head). Everything outside the chosen parts is frozen; with LoRA the chosen parts get adapters instead.
"""

from __future__ import annotations

from collections.abc import Iterable

from torch import nn

PARTS: tuple[str, ...] = ("vision", "merger", "language")

# name prefix -> part; first match wins, so the mergers are claimed before the rest of model.visual
_PREFIXES: tuple[tuple[str, str], ...] = (
    ("model.visual.merger.", "merger"),
    ("model.visual.deepstack_merger_list.", "merger"),
    ("model.visual.", "vision"),
    ("model.language_model.", "language"),
    ("lm_head.", "language"),
)

# module-name prefixes per part, for restricting LoRA to the chosen parts
MODULE_PREFIXES: dict[str, tuple[str, ...]] = {
    "vision": ("model.visual.blocks",),
    "merger": ("model.visual.merger", "model.visual.deepstack_merger_list"),
    "language": ("model.language_model", "lm_head"),
}


def parse_parts(spec: str | Iterable[str]) -> tuple[str, ...]:
    """"vision,merger" or ["vision", "merger"] -> ("vision", "merger"); "all" means every part."""
    items = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec) if s.strip()]
    if items == ["all"]:
        return PARTS
    bad = [s for s in items if s not in PARTS]
    if bad or not items:
        raise ValueError(f"unknown part(s) {bad or items!r} to train; choose from {', '.join(PARTS)} (or 'all')")
    return tuple(p for p in PARTS if p in items)


def part_of(param_name: str) -> str:
    for prefix, part in _PREFIXES:
        if param_name.startswith(prefix):
            return part
    raise ValueError(f"parameter {param_name} belongs to no known part")


def set_trainable(model: nn.Module, parts: Iterable[str]) -> list[str]:
    """requires_grad = (parameter's part in `parts`); returns the trainable names. A tied LM head follows the
    embeddings (both are `language`)."""
    chosen = set(parse_parts(list(parts)))
    names = []
    for name, p in model.named_parameters():
        p.requires_grad_(part_of(name) in chosen)
        if p.requires_grad:
            names.append(name)
    return names
