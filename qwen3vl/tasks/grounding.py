"""2-D grounding: prompts in the official style and parsing of `bbox_2d` / `point_2d` answers.

Answers are JSON lists of `{"bbox_2d": [x1, y1, x2, y2], "label": ...}` or `{"point_2d": [x, y], ...}`
with coordinates on a 0..1000 grid of the original image (spec §10.1), often inside a ```json fence,
sometimes with extra keys ("color", "type", "text_content"). Real replies are messy, so parsing goes
through `jsonish.extract_json` and every repair is reported:

* coordinates outside 0..1000 are clamped and the item is flagged;
* x1 > x2 (or y1 > y2) is swapped and flagged;
* a truncated list keeps its complete items and reports the unfinished one.

`parse_grounding(text, width, height)` is the stable public entry point and returns plain dicts.
Pillow is not imported here; drawing lives in `draw.py`.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

from qwen3vl.tasks.coords import REL_SCALE, rel_to_px
from qwen3vl.tasks.jsonish import extract_json

BOX_KEYS = ("bbox_2d", "bbox", "box_2d", "box")
POINT_KEYS = ("point_2d", "point")
# keys of the typed result that a model's own extra keys must not overwrite in `to_dict`
_RESERVED = {"label", "bbox", "point", "flags"}


@dataclass
class Box2D:
    """A box in pixels of the original image (x1 <= x2, y1 <= y2) and the relative box it came from."""

    x1: float
    y1: float
    x2: float
    y2: float
    label: str = ""
    rel: tuple[float, float, float, float] = (0, 0, 0, 0)  # after clamping/swapping, 0..scale
    extra: dict[str, Any] = field(default_factory=dict)
    flags: list[str] = field(default_factory=list)

    @property
    def xyxy(self) -> tuple[float, float, float, float]:
        return (self.x1, self.y1, self.x2, self.y2)

    def to_dict(self, ndigits: int | None = 2) -> dict[str, Any]:
        r = (lambda v: round(v, ndigits)) if ndigits is not None else (lambda v: v)
        out: dict[str, Any] = {"label": self.label, "bbox": [r(v) for v in self.xyxy]}
        out.update(_extras(self.extra))
        if self.flags:
            out["flags"] = list(self.flags)
        return out


@dataclass
class Point2D:
    """A point in pixels of the original image and the relative point it came from."""

    x: float
    y: float
    label: str = ""
    rel: tuple[float, float] = (0, 0)
    extra: dict[str, Any] = field(default_factory=dict)
    flags: list[str] = field(default_factory=list)

    def to_dict(self, ndigits: int | None = 2) -> dict[str, Any]:
        r = (lambda v: round(v, ndigits)) if ndigits is not None else (lambda v: v)
        out: dict[str, Any] = {"label": self.label, "point": [r(self.x), r(self.y)]}
        out.update(_extras(self.extra))
        if self.flags:
            out["flags"] = list(self.flags)
        return out


Grounded = Box2D | Point2D


@dataclass
class GroundingParse:
    """Everything read from one reply: the items, what was wrong with the reply, and whether it was cut."""

    items: list[Grounded] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    truncated: bool = False

    @property
    def boxes(self) -> list[Box2D]:
        return [i for i in self.items if isinstance(i, Box2D)]

    @property
    def points(self) -> list[Point2D]:
        return [i for i in self.items if isinstance(i, Point2D)]

    def to_dicts(self, ndigits: int | None = 2) -> list[dict[str, Any]]:
        return [i.to_dict(ndigits) for i in self.items]


def _extras(extra: dict[str, Any]) -> dict[str, Any]:
    return {(f"model_{k}" if k in _RESERVED else k): v for k, v in extra.items()}


# ---------------------------------------------------------------------------------------------- prompts

def detect_prompt(categories: Sequence[str] | str) -> str:
    """Every instance of some categories, as boxes (the cookbook's detection prompt)."""
    cats = categories if isinstance(categories, str) else ", ".join(categories)
    return f'Locate every instance that belongs to the following categories: "{cats}". Report bbox coordinates in JSON format.'


def refer_prompt(description: str) -> str:
    """Objects matching a referring expression, as boxes (the report's referring-grounding prompt)."""
    return f'Locate every object that matches the description "{description}" in the image. Report bbox coordinates in JSON format.'


def point_prompt(description: str) -> str:
    """Points for a description, with the example format the official point prompts give."""
    return (f'Point to {description} in the image. Output the point coordinates in JSON format. '
            'For example: [{"point_2d": [x, y], "label": "point_1"}]')


def attribute_prompt(description: str, keys: Sequence[str]) -> str:
    """Boxes with extra per-object keys (e.g. "color", "type"), as the cookbook's attribute examples do."""
    fields = ", ".join(f'"{k}": "..."' for k in keys)
    example = f'[{{"bbox_2d": [x1, y1, x2, y2], "label": "...", {fields}}}]' if keys else '[{"bbox_2d": [x1, y1, x2, y2], "label": "..."}]'
    return f'Locate every {description} in the image and report bbox coordinates in JSON format, like {example}.'


def format_grounding(items: Iterable[Grounded], *, fenced: bool = True) -> str:
    """Render items back into the model's answer format (relative coordinates), e.g. for training data."""
    rows = []
    for it in items:
        if isinstance(it, Box2D):
            row: dict[str, Any] = {"bbox_2d": [int(round(v)) for v in it.rel], "label": it.label}
        else:
            row = {"point_2d": [int(round(v)) for v in it.rel], "label": it.label}
        row.update(it.extra)
        rows.append(row)
    body = "[\n" + ",\n".join("\t" + json.dumps(r, ensure_ascii=False) for r in rows) + "\n]"
    return f"```json\n{body}\n```" if fenced else body


# ---------------------------------------------------------------------------------------------- parsing

def _numbers(raw: Any, want: int) -> list[float] | str:
    """Coordinates as floats, or a reason they cannot be used. Accepts [[x1, y1], [x2, y2]] and numeric strings."""
    if isinstance(raw, str):
        parts = raw.replace(",", " ").split()
        raw = parts
    if isinstance(raw, (list, tuple)) and raw and all(isinstance(v, (list, tuple)) for v in raw):
        raw = [v for pair in raw for v in pair]
    if not isinstance(raw, (list, tuple)):
        return f"is {type(raw).__name__}, expected a list of {want} numbers"
    vals: list[float] = []
    for v in raw:
        try:
            f = float(v)
        except (TypeError, ValueError):
            return f"has a non-number {v!r}"
        if not math.isfinite(f):
            return f"has a non-finite value {v!r}"
        vals.append(f)
    if len(vals) != want:
        return f"has {len(vals)} numbers, expected {want}"
    return vals


def _clamp(vals: list[float], names: Sequence[str], scale: float, flags: list[str]) -> list[float]:
    out = []
    for name, v in zip(names, vals):
        c = min(max(v, 0.0), scale)
        if c != v:
            flags.append(f"{name}={_fmt(v)} outside 0..{_fmt(scale)}, clamped to {_fmt(c)}")
        out.append(c)
    return out


def _fmt(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else f"{v:g}"


def _candidates(values: Iterable[Any]) -> Iterable[dict[str, Any]]:
    """Objects that may carry coordinates: list items, top-level objects, and one level of wrapping
    (e.g. {"objects": [...]})."""
    for v in values:
        if isinstance(v, list):
            yield from _candidates(v)
        elif isinstance(v, dict):
            if any(k in v for k in BOX_KEYS + POINT_KEYS):
                yield v
            else:
                for inner in v.values():
                    if isinstance(inner, list):
                        yield from _candidates(inner)


def parse_grounding_output(text: str, width: int, height: int, *, scale: float = REL_SCALE) -> GroundingParse:
    """Parse a grounding reply into typed boxes/points in pixels of a `width` x `height` image."""
    if width <= 0 or height <= 0:
        raise ValueError(f"image size {width}x{height} is empty; pass the original image's width and height")
    ext = extract_json(text)
    result = GroundingParse(problems=list(ext.problems), truncated=ext.truncated)
    for n, obj in enumerate(_candidates(ext.values), start=1):
        box_key = next((k for k in BOX_KEYS if k in obj), None)
        point_key = next((k for k in POINT_KEYS if k in obj), None)
        label = obj.get("label", "")
        label = label if isinstance(label, str) else json.dumps(label, ensure_ascii=False)
        extra = {k: v for k, v in obj.items() if k not in (box_key, point_key, "label")}
        flags: list[str] = []
        if box_key is not None:
            vals = _numbers(obj[box_key], 4)
            if isinstance(vals, str):
                result.problems.append(f"item {n}: {box_key} {vals}; skipped")
                continue
            x1, y1, x2, y2 = _clamp(vals, ("x1", "y1", "x2", "y2"), scale, flags)
            if x1 > x2:
                flags.append(f"x1 > x2 ({_fmt(x1)} > {_fmt(x2)}), swapped")
                x1, x2 = x2, x1
            if y1 > y2:
                flags.append(f"y1 > y2 ({_fmt(y1)} > {_fmt(y2)}), swapped")
                y1, y2 = y2, y1
            if x1 == x2 or y1 == y2:
                flags.append("box has zero area")
            result.items.append(Box2D(
                rel_to_px(x1, width, scale), rel_to_px(y1, height, scale),
                rel_to_px(x2, width, scale), rel_to_px(y2, height, scale),
                label=label, rel=(x1, y1, x2, y2), extra=extra, flags=flags))
        else:
            assert point_key is not None
            vals = _numbers(obj[point_key], 2)
            if isinstance(vals, str):
                result.problems.append(f"item {n}: {point_key} {vals}; skipped")
                continue
            x, y = _clamp(vals, ("x", "y"), scale, flags)
            result.items.append(Point2D(rel_to_px(x, width, scale), rel_to_px(y, height, scale),
                                        label=label, rel=(x, y), extra=extra, flags=flags))
    if not result.items and not result.problems:
        result.problems.append("no bbox_2d or point_2d objects in the reply")
    return result


def parse_grounding(text: str, width: int, height: int, *, scale: float = REL_SCALE) -> list[dict[str, Any]]:
    """Boxes and points from a grounding reply, as dicts in pixels of the original image.

    Each dict has `label` and either `bbox` ([x1, y1, x2, y2], x1 <= x2, y1 <= y2) or `point` ([x, y]),
    plus the model's extra keys (a model key that collides with ours is renamed `model_<key>`), plus
    `flags` (list of strings) only when a coordinate was clamped or swapped. Values are rounded to 2
    decimals. For the problems of the reply as a whole use `parse_grounding_output`.
    """
    return parse_grounding_output(text, width, height, scale=scale).to_dicts()
