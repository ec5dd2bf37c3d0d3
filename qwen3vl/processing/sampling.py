"""Video frame sampling: how many frames, which ones, at what size, and their timestamps. Pure functions.

Two rules, selected by `VideoRule`:

* "qwen-vl-utils" (default; the official recipe, qwen-vl-utils 0.0.14 with the decord/torchcodec readers):
  frame count `total / video_fps * fps`, clamped to [ceil_even(min_frames), floor_even(max_frames)] and floored to an
  even number; indices `round(linspace(start, end, n))` in float32 (torch.linspace); every frame gets the same size
  from a per-frame budget `max(min(768 tokens, total_pixels / n * 2), 1.05 * min_pixels)`.
* "hf" (transformers 5.23 `Qwen3VLVideoProcessor`): `int(total / video_fps * fps)` clamped to
  [min_frames, min(max_frames, total)], not forced even; indices `round(linspace(0, total - 1, n))` in float64; the
  size comes from the 3-D `smart_resize_video`, a budget over all frames together.

Timestamps follow transformers' `_calculate_timestamps`: pad the index list to a multiple of the temporal patch by
repeating the last index, convert to seconds with the source fps, and average each pair.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import torch

from qwen3vl.processing.errors import MediaError
from qwen3vl.processing.resize import smart_resize

VideoRule = Literal["qwen-vl-utils", "hf"]
FRAME_FACTOR = 2


def _ceil_even(x: float) -> int:
    return math.ceil(x / FRAME_FACTOR) * FRAME_FACTOR


def _floor_even(x: float) -> int:
    return math.floor(x / FRAME_FACTOR) * FRAME_FACTOR


def frame_range(
    total_frames: int, video_fps: float, video_start: float | None = None, video_end: float | None = None
) -> tuple[int, int]:
    """Inclusive (first, last) frame index for an optional [video_start, video_end] window in seconds.

    Same arithmetic as qwen-vl-utils' `calculate_video_frame_range`: start rounds up, end rounds down.
    """
    if total_frames <= 0:
        raise MediaError("video has no frames")
    if video_fps <= 0:
        raise MediaError(f"video frame rate must be positive, got {video_fps}")
    if video_start is None and video_end is None:
        return 0, total_frames - 1
    duration = total_frames / video_fps
    start = 0 if video_start is None else math.ceil(max(0.0, min(video_start, duration)) * video_fps)
    end = total_frames - 1
    if video_end is not None:
        end = min(math.floor(max(0.0, min(video_end, duration)) * video_fps), total_frames - 1)
    if start >= end:
        raise MediaError(
            f"video_start={video_start} / video_end={video_end} select no frames of a {duration:.2f} s video "
            f"({total_frames} frames at {video_fps:g} fps)"
        )
    return start, end


def num_frames_qwen_vl_utils(
    total_frames: int,
    video_fps: float,
    fps: float,
    min_frames: int,
    max_frames: int | None,
    nframes: int | None = None,
) -> int:
    """qwen-vl-utils' `smart_nframes` (its default `max_frames` is min(768, total); None here means `total_frames`)."""
    if nframes is not None:
        n = round(nframes / FRAME_FACTOR) * FRAME_FACTOR
    else:
        lo = _ceil_even(min_frames)
        hi = _floor_even(max_frames if max_frames is not None else total_frames)
        n = total_frames / video_fps * fps
        n = _floor_even(min(min(max(n, lo), hi), total_frames))
    if not FRAME_FACTOR <= n <= total_frames:
        raise MediaError(f"cannot sample {n} frames from a video of {total_frames} frames (need 2..{total_frames})")
    return n


def num_frames_hf(
    total_frames: int,
    video_fps: float,
    fps: float,
    min_frames: int,
    max_frames: int,
    nframes: int | None = None,
) -> int:
    """transformers' `Qwen3VLVideoProcessor.sample_frames` frame count."""
    if nframes is not None:
        return int(nframes)
    n = int(total_frames / video_fps * fps)
    return min(max(n, min_frames), max_frames, total_frames)


def sample_indices(first: int, last: int, n: int, rule: VideoRule) -> list[int]:
    """`n` evenly spaced frame indices in [first, last], rounded half to even as each reference does it."""
    if rule == "qwen-vl-utils":
        # qwen-vl-utils uses torch.linspace (float32); float64 rounds some ties differently.
        return torch.linspace(first, last, n).round().long().tolist()
    return np.linspace(first, last, n).round().astype(np.int64).tolist()


def pad_indices(indices: list[int], multiple: int) -> list[int]:
    """Repeat the last index until the length is a multiple of `multiple` (the temporal patch)."""
    pad = -len(indices) % multiple
    return list(indices) + [indices[-1]] * pad


def frame_timestamps(indices: list[int], video_fps: float, temporal_patch_size: int = 2) -> list[float]:
    """Seconds of each temporal patch: the mean time of its first and last frame (transformers' rule)."""
    padded = pad_indices(indices, temporal_patch_size)
    seconds = [i / video_fps for i in padded]
    k = temporal_patch_size
    return [(seconds[i] + seconds[i + k - 1]) / 2 for i in range(0, len(seconds), k)]


def frame_size_qwen_vl_utils(
    height: int,
    width: int,
    num_frames: int,
    factor: int,
    min_tokens_per_frame: int,
    max_tokens_per_frame: int,
    total_pixels: float,
    min_pixels: int | None = None,
    max_pixels: int | None = None,
) -> tuple[int, int]:
    """qwen-vl-utils `fetch_video`'s per-frame size: a user `max_pixels` can only lower the budget."""
    lo = min_pixels if min_pixels is not None else min_tokens_per_frame * factor * factor
    hi = max(min(max_tokens_per_frame * factor * factor, total_pixels / num_frames * FRAME_FACTOR), int(lo * 1.05))
    if max_pixels is not None:
        hi = min(max_pixels, hi)
    return smart_resize(height, width, factor, lo, hi, rule="qwen-vl-utils")
