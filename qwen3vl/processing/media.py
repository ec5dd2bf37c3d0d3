"""Processed media handed to the model: pixels in the vision tower's row layout plus what the engine needs."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class ProcessedImage:
    """One image. `pixel_values` is (gh*gw, 3*Tp*P*P) float32 in §3.3 row order; `grid_thw` is (1, gh, gw).

    `content_hash` (sha256 hex) is equal for equal processed pixels, so it can key a vision-embedding cache.
    """

    pixel_values: torch.Tensor
    grid_thw: tuple[int, int, int]
    content_hash: str
    merge_size: int = 2

    @property
    def num_tokens(self) -> int:
        """How many `<|image_pad|>` tokens (LLM positions) this image takes."""
        t, h, w = self.grid_thw
        return t * h * w // (self.merge_size**2)


@dataclass(frozen=True)
class ProcessedVideo:
    """One video. `pixel_values` is (gt*gh*gw, 3*Tp*P*P); `grid_thw` is (gt, gh, gw).

    `frame_indices` are the source frames used (before temporal padding), `video_fps` the rate that turns them into
    seconds, and `timestamps` the seconds of each of the gt temporal patches, as written into the prompt.
    """

    pixel_values: torch.Tensor
    grid_thw: tuple[int, int, int]
    content_hash: str
    timestamps: tuple[float, ...]
    frame_indices: tuple[int, ...]
    video_fps: float
    merge_size: int = 2

    @property
    def tokens_per_frame(self) -> int:
        """`<|video_pad|>` tokens in each temporal patch."""
        _, h, w = self.grid_thw
        return h * w // (self.merge_size**2)

    @property
    def num_tokens(self) -> int:
        return self.grid_thw[0] * self.tokens_per_frame
