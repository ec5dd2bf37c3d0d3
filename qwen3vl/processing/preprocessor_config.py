"""Image and video preprocessing settings, read from a checkpoint's `preprocessor_config.json` and
`video_preprocessor_config.json`.

Field defaults are the values the Qwen3-VL checkpoints ship (spec §3.1), not the transformers class defaults, which
are Qwen2-VL's (patch 14, CLIP mean/std) and silently wrong for Qwen3-VL. Unknown keys are ignored.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# qwen-vl-utils 0.0.14 constants for the per-frame video budget (the official recipe, spec §3.5).
VIDEO_MIN_TOKENS_PER_FRAME = 128
VIDEO_MAX_TOKENS_PER_FRAME = 768
MODEL_SEQ_LEN = 128000


@dataclass(frozen=True)
class ImageConfig:
    """Images: `min_pixels`/`max_pixels` bound the resized area (size.shortest_edge / size.longest_edge)."""

    min_pixels: int = 65536
    max_pixels: int = 16777216
    patch_size: int = 16
    temporal_patch_size: int = 2
    merge_size: int = 2
    image_mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    image_std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    rescale_factor: float = 1 / 255

    @property
    def factor(self) -> int:
        """Side lengths are multiples of this: one merged token covers factor x factor pixels."""
        return self.patch_size * self.merge_size

    def __post_init__(self) -> None:
        _check_common(self, "preprocessor_config.json")
        if not 0 < self.min_pixels <= self.max_pixels:
            raise ValueError(
                f"preprocessor_config.json: need 0 < min_pixels ({self.min_pixels}) <= max_pixels ({self.max_pixels})"
            )


@dataclass(frozen=True)
class VideoConfig:
    """Videos. `min_pixels`/`max_pixels` are transformers' budget over ALL frames (the "hf" sampling rule);
    the qwen-vl-utils rule uses the per-frame token bounds and `total_pixels` instead."""

    min_pixels: int = 4096
    max_pixels: int = 25165824
    patch_size: int = 16
    temporal_patch_size: int = 2
    merge_size: int = 2
    image_mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    image_std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    rescale_factor: float = 1 / 255
    fps: float = 2.0
    min_frames: int = 4
    max_frames: int = 768
    min_tokens_per_frame: int = VIDEO_MIN_TOKENS_PER_FRAME
    max_tokens_per_frame: int = VIDEO_MAX_TOKENS_PER_FRAME
    total_pixels: float = MODEL_SEQ_LEN * 32 * 32 * 0.9

    @property
    def factor(self) -> int:
        return self.patch_size * self.merge_size

    def __post_init__(self) -> None:
        _check_common(self, "video_preprocessor_config.json")
        if self.fps <= 0 or not 1 <= self.min_frames <= self.max_frames:
            raise ValueError(
                "video_preprocessor_config.json: need fps > 0 and 1 <= min_frames <= max_frames, got "
                f"fps={self.fps}, min_frames={self.min_frames}, max_frames={self.max_frames}"
            )


def _check_common(cfg: ImageConfig | VideoConfig, source: str) -> None:
    if cfg.patch_size <= 0 or cfg.merge_size <= 0 or cfg.temporal_patch_size <= 0:
        raise ValueError(f"{source}: patch_size, merge_size and temporal_patch_size must be positive")
    if len(cfg.image_mean) != 3 or len(cfg.image_std) != 3 or any(s == 0 for s in cfg.image_std):
        raise ValueError(f"{source}: image_mean/image_std need 3 values and std must be non-zero")


def _common_fields(raw: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    size = raw.get("size") or {}
    # Two spellings exist in the wild: size.{shortest,longest}_edge (transformers >= 4.5x) and top-level min/max_pixels.
    for ours, keys in (("min_pixels", ("shortest_edge", "min_pixels")), ("max_pixels", ("longest_edge", "max_pixels"))):
        for key in keys:
            if key in size:
                out[ours] = int(size[key])
                break
        if ours in raw and raw[ours] is not None:
            out[ours] = int(raw[ours])
    for key in ("patch_size", "temporal_patch_size", "merge_size"):
        if raw.get(key) is not None:
            out[key] = int(raw[key])
    for key in ("image_mean", "image_std"):
        if raw.get(key) is not None:
            value = raw[key]
            out[key] = tuple(float(v) for v in (value if isinstance(value, (list, tuple)) else [value] * 3))
    if raw.get("rescale_factor") is not None:
        out["rescale_factor"] = float(raw["rescale_factor"])
    return out


def image_config_from_dict(raw: dict[str, Any]) -> ImageConfig:
    return ImageConfig(**_common_fields(raw))


def video_config_from_dict(raw: dict[str, Any]) -> VideoConfig:
    out = _common_fields(raw)
    for key, cast in (("fps", float), ("min_frames", int), ("max_frames", int)):
        if raw.get(key) is not None:
            out[key] = cast(raw[key])
    return VideoConfig(**out)


def _read_json(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def load_preprocessor_configs(folder: str | Path) -> tuple[ImageConfig, VideoConfig]:
    """Read both configs from a checkpoint folder; a missing file means the shipped Qwen3-VL values.

    When only `preprocessor_config.json` exists, the video config inherits its patch/merge/mean/std (older checkpoints
    kept both in one file) but keeps the video pixel budget and sampling defaults.
    """
    folder = Path(folder)
    image_raw = _read_json(folder / "preprocessor_config.json") or {}
    video_raw = _read_json(folder / "video_preprocessor_config.json")
    image_cfg = image_config_from_dict(image_raw)
    if video_raw is None:
        inherited = {k: v for k, v in _common_fields(image_raw).items() if k not in ("min_pixels", "max_pixels")}
        return image_cfg, VideoConfig(**inherited)
    return image_cfg, video_config_from_dict(video_raw)
