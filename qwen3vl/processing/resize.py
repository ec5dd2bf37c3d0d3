"""Target sizes for images and video frames: `smart_resize` (2-D, two rule variants) and `smart_resize_video` (3-D).

Pure integer arithmetic, no pixels. Two 2-D rules exist because the two references differ in corner cases:

* "hf" (transformers' image processor, used for images with the checkpoint's min/max pixels): no clamp after
  rounding, `max(factor, .)` after shrinking.
* "qwen-vl-utils" (its `smart_resize`, used for per-item overrides and video frames): clamp to >= factor after
  rounding, no clamp after shrinking.

They differ only for sides below factor/2 or extreme shrinking; see spec §3.2 and §3.5.
"""

from __future__ import annotations

import math
from typing import Literal

from qwen3vl.processing.errors import MediaError

MAX_ASPECT_RATIO = 200

ResizeRule = Literal["hf", "qwen-vl-utils"]


def check_aspect_ratio(height: int, width: int) -> None:
    if height <= 0 or width <= 0:
        raise MediaError(f"image is {width}x{height} pixels (width x height); both sides must be at least 1")
    ratio = max(height, width) / min(height, width)
    if ratio > MAX_ASPECT_RATIO:
        raise MediaError(
            f"aspect ratio {ratio:.1f} of a {width}x{height} image is above the model's limit of {MAX_ASPECT_RATIO}"
        )


def smart_resize(
    height: int,
    width: int,
    factor: int = 32,
    min_pixels: int = 65536,
    max_pixels: int = 16777216,
    rule: ResizeRule = "hf",
) -> tuple[int, int]:
    """(height, width) rounded to multiples of `factor` with area in [min_pixels, max_pixels], aspect kept."""
    if min_pixels > max_pixels:
        raise MediaError(f"min_pixels ({min_pixels}) must not exceed max_pixels ({max_pixels})")
    check_aspect_ratio(height, width)
    h_bar = round(height / factor) * factor  # Python round: ties to even, as in both references
    w_bar = round(width / factor) * factor
    if rule == "qwen-vl-utils":
        h_bar, w_bar = max(factor, h_bar), max(factor, w_bar)
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h_bar = math.floor(height / beta / factor) * factor
        w_bar = math.floor(width / beta / factor) * factor
        if rule == "hf":
            h_bar, w_bar = max(factor, h_bar), max(factor, w_bar)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    if h_bar <= 0 or w_bar <= 0:
        raise MediaError(f"a {width}x{height} image cannot be resized under max_pixels={max_pixels}")
    return h_bar, w_bar


def smart_resize_video(
    num_frames: int,
    height: int,
    width: int,
    factor: int = 32,
    temporal_factor: int = 2,
    min_pixels: int = 4096,
    max_pixels: int = 25165824,
) -> tuple[int, int]:
    """transformers 5.23's 3-D rule: the [min, max] budget covers all frames together (spec §3.4 step 2)."""
    if num_frames < temporal_factor:
        raise MediaError(f"a video needs at least {temporal_factor} frames here, got {num_frames}")
    if height < factor or width < factor:
        scale = max(factor / height, factor / width)
        height, width = int(height * scale), int(width * scale)
    check_aspect_ratio(height, width)
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    t_bar = round(num_frames / temporal_factor) * temporal_factor
    if t_bar * h_bar * w_bar > max_pixels:
        beta = math.sqrt(num_frames * height * width / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif t_bar * h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (num_frames * height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar
