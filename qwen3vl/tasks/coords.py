"""Relative (0-1000) <-> pixel coordinates on the *original* image.

Qwen3-VL answers in relative integers on a 0..1000 grid, independent of how the processor resized the
image (spec §10.1): `x_px = x / 1000 * W`. Qwen2.5-VL used absolute pixels of the resized image; code
ported from it gets this wrong. Some cookbooks (mobile agent, OCR spotting copies) divide by 999
instead, so every function takes `scale`.

Pixel values stay floats: on a 333-pixel-wide image three relative units share one pixel, so rounding
to int would break the round trip relative -> pixel -> relative.
"""

from __future__ import annotations

from typing import Sequence

REL_SCALE = 1000.0


def rel_to_px(value: float, size: int, scale: float = REL_SCALE) -> float:
    """One relative coordinate to pixels along an axis of `size` pixels."""
    return float(value) / scale * size


def px_to_rel(value: float, size: int, scale: float = REL_SCALE) -> int:
    """One pixel coordinate to the nearest relative integer, clamped to 0..scale."""
    if size <= 0:
        raise ValueError(f"image axis has {size} pixels; expected a positive size")
    rel = round(float(value) / size * scale)
    return int(min(max(rel, 0), scale))


def box_rel_to_px(box: Sequence[float], width: int, height: int, scale: float = REL_SCALE) -> tuple[float, float, float, float]:
    """(x1, y1, x2, y2) relative -> pixels of a `width` x `height` image."""
    x1, y1, x2, y2 = box
    return (rel_to_px(x1, width, scale), rel_to_px(y1, height, scale),
            rel_to_px(x2, width, scale), rel_to_px(y2, height, scale))


def box_px_to_rel(box: Sequence[float], width: int, height: int, scale: float = REL_SCALE) -> tuple[int, int, int, int]:
    """(x1, y1, x2, y2) pixels -> relative integers (what a model would have to answer)."""
    x1, y1, x2, y2 = box
    return (px_to_rel(x1, width, scale), px_to_rel(y1, height, scale),
            px_to_rel(x2, width, scale), px_to_rel(y2, height, scale))


def point_rel_to_px(point: Sequence[float], width: int, height: int, scale: float = REL_SCALE) -> tuple[float, float]:
    x, y = point
    return rel_to_px(x, width, scale), rel_to_px(y, height, scale)


def point_px_to_rel(point: Sequence[float], width: int, height: int, scale: float = REL_SCALE) -> tuple[int, int]:
    x, y = point
    return px_to_rel(x, width, scale), px_to_rel(y, height, scale)
