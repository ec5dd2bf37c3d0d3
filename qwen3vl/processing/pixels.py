"""Pixel arithmetic shared by images and videos: normalise, patchify into the model's row layout, hash.

Legend: T frames, H/W pixel height/width, C channels (3), Tp temporal patch (2), P patch (16), m merge (2),
gt/gh/gw the patch grid (T/Tp, H/P, W/P), N = gt*gh*gw rows, D = C*Tp*P*P = 1536 values per row.

Row order (spec §3.3/§3.4): (gt, bh, bw, ih, iw), i.e. time, then 2x2 merge blocks in raster order, then the
4 patches of a block; inside a row: (c, t, py, px). Every m*m consecutive rows are one LLM token.

`PatchWriter` takes frames one at a time and writes each temporal patch into the preallocated output as soon as
it is complete, so a video never needs its frames and its pixel_values in memory at the same time.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class Normalization:
    """`x = (x_uint8 * rescale - mean) / std`, in the same float64->float32 order as transformers' PIL backend.

    Applied through a per-channel table of the 256 possible values, which is exact (the op is elementwise)."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    rescale: float = 1 / 255

    def table(self) -> np.ndarray:
        """(3, 256) float32: the normalised value of every uint8 level per channel."""
        levels = (np.arange(256, dtype=np.float64) * self.rescale).astype(np.float32)
        mean = np.asarray(self.mean, dtype=np.float32)[:, None]
        std = np.asarray(self.std, dtype=np.float32)[:, None]
        return (levels[None, :] - mean) / std


class PatchWriter:
    """Streams uint8 frames (H, W, C) into `pixel_values` (N, D) and a sha256 `content_hash`.

    The hash covers the kind, shape, grid, normalisation and the resized uint8 pixels: `pixel_values` is a pure
    function of exactly these, so this names it without hashing 4x more float bytes.
    """

    def __init__(
        self,
        kind: str,
        num_frames: int,
        height: int,
        width: int,
        norm: Normalization,
        patch_size: int,
        merge_size: int,
        temporal_patch_size: int,
    ):
        P, m, Tp = patch_size, merge_size, temporal_patch_size
        if num_frames < 1 or height % (P * m) or width % (P * m):
            raise ValueError(f"cannot patchify {num_frames} frames of {height}x{width} with patch*merge = {P * m}")
        self.grid = (-(-num_frames // Tp), height // P, width // P)
        self._shape = (num_frames, height, width)
        self._lut, self._P, self._m, self._Tp = norm.table(), P, m, Tp
        gt, gh, gw = self.grid
        self.pixel_values = torch.empty((gt * gh * gw, 3 * Tp * P * P), dtype=torch.float32)  # (N, D)
        self._hash = hashlib.sha256(f"{kind}|{(num_frames, height, width, 3)}|{self.grid}|{norm}".encode())
        self._pending: list[np.ndarray] = []
        self._written = 0  # frames consumed

    def add(self, frame_HWC: np.ndarray) -> None:
        if frame_HWC.shape != (*self._shape[1:], 3) or frame_HWC.dtype != np.uint8:
            raise ValueError(
                f"expected a uint8 frame of {(*self._shape[1:], 3)}, got {frame_HWC.dtype} {frame_HWC.shape}"
            )
        if self._written >= self._shape[0]:
            raise ValueError(f"more than the {self._shape[0]} frames announced")
        self._hash.update(np.ascontiguousarray(frame_HWC).data)
        self._pending.append(frame_HWC)
        self._written += 1
        if len(self._pending) == self._Tp or self._written == self._shape[0]:
            self._flush()

    def _flush(self) -> None:
        group = self._pending + [self._pending[-1]] * (self._Tp - len(self._pending))  # pad T by the last frame
        self._pending = []
        t = (self._written - 1) // self._Tp
        _, gh, gw = self.grid
        P, m, Tp = self._P, self._m, self._Tp
        rows = gh * gw
        out = self.pixel_values.numpy()[t * rows : (t + 1) * rows]
        out = out.reshape(gh // m, gw // m, m, m, 3, Tp, P, P)  # (bh, bw, ih, iw, C, Tp, py, px): a view
        for k, frame in enumerate(group):
            for c in range(3):
                plane_HW = self._lut[c][frame[..., c]]
                out[:, :, :, :, c, k] = plane_HW.reshape(gh // m, m, P, gw // m, m, P).transpose(0, 3, 1, 4, 2, 5)

    def finish(self) -> tuple[torch.Tensor, tuple[int, int, int], str]:
        """(pixel_values, grid_thw, content_hash) once every announced frame was added."""
        if self._written != self._shape[0]:
            raise ValueError(f"got {self._written} of {self._shape[0]} frames")
        return self.pixel_values, self.grid, self._hash.hexdigest()


def patchify_frames(
    kind: str, frames_THWC: np.ndarray, norm: Normalization, patch_size: int, merge_size: int, temporal_patch_size: int
) -> tuple[torch.Tensor, tuple[int, int, int], str]:
    """All frames at once (a still image is T=1 and fills both temporal slots). -> (pixel_values, grid, hash)."""
    T, H, W, _ = frames_THWC.shape
    writer = PatchWriter(kind, T, H, W, norm, patch_size, merge_size, temporal_patch_size)
    for frame in frames_THWC:
        writer.add(frame)
    return writer.finish()
