"""Images: decode any source, convert any mode to RGB, smart-resize, normalise and patchify.

Defaults reproduce transformers' `Qwen2VLImageProcessorPil` with the checkpoint's min/max pixels (PIL bicubic on
uint8, float64 rescale, float32 normalise). Per-item `min_pixels`/`max_pixels`/`resized_height`/`resized_width`
behave as in qwen-vl-utils' `fetch_image`.

Mode conversion, beyond PIL's `convert("RGB")`: alpha (RGBA, LA, PA, palette transparency) is composited onto
white as transformers does; 16-bit images ("I;16*", and "I" with values above 255) are scaled by 255/65535 instead
of being clipped; float images ("F") in [0, 1] are scaled by 255. EXIF orientation is applied.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps

from qwen3vl.processing import sources
from qwen3vl.processing.errors import MediaError
from qwen3vl.processing.media import ProcessedImage
from qwen3vl.processing.pixels import Normalization, patchify_frames
from qwen3vl.processing.preprocessor_config import ImageConfig
from qwen3vl.processing.resize import check_aspect_ratio, smart_resize

# Pillow's own default bomb threshold (~179 Mpx). Checked on the header, before any pixel is decoded.
DEFAULT_MAX_IMAGE_PIXELS = 178_956_970

# qwen-vl-utils' image defaults, used with its per-item overrides (4 and 16384 tokens of 32x32 pixels).
QVU_IMAGE_MIN_TOKENS = 4
QVU_IMAGE_MAX_TOKENS = 16384

_ALPHA_MODES = {"RGBA", "LA", "PA", "RGBa", "La"}


@dataclass(frozen=True)
class ImageSize:
    """Per-item size overrides (qwen-vl-utils keys)."""

    min_pixels: int | None = None
    max_pixels: int | None = None
    resized_height: int | None = None
    resized_width: int | None = None

    @classmethod
    def from_item(cls, item: dict[str, Any]) -> ImageSize:
        values = {}
        for key in ("min_pixels", "max_pixels", "resized_height", "resized_width"):
            value = item.get(key)
            if value is not None:
                if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                    raise MediaError(f"{key} must be a positive number, got {value!r}")
                values[key] = int(value)
        if ("resized_height" in values) != ("resized_width" in values):
            raise MediaError("resized_height and resized_width must be given together")
        return cls(**values)

    @property
    def is_default(self) -> bool:
        return self == ImageSize()


def target_size(height: int, width: int, cfg: ImageConfig, size: ImageSize) -> tuple[int, int]:
    """(height, width) the image is resized to."""
    f = cfg.factor
    if size.resized_height is not None and size.resized_width is not None:
        return smart_resize(
            size.resized_height,
            size.resized_width,
            f,
            QVU_IMAGE_MIN_TOKENS * f * f,
            QVU_IMAGE_MAX_TOKENS * f * f,
            rule="qwen-vl-utils",
        )
    if size.is_default:
        return smart_resize(height, width, f, cfg.min_pixels, cfg.max_pixels, rule="hf")
    lo = size.min_pixels if size.min_pixels is not None else cfg.min_pixels
    hi = size.max_pixels if size.max_pixels is not None else cfg.max_pixels
    return smart_resize(height, width, f, lo, hi, rule="qwen-vl-utils")


def load_image(
    src: Any, opts: sources.FetchOptions | None = None, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
) -> Image.Image:
    """Any supported source (path, file://, data URI, URL, bytes, PIL image, ndarray/tensor) -> RGB PIL image."""
    opts = opts or sources.FetchOptions()
    if isinstance(src, Image.Image):
        _check_pixels(src.size, max_pixels)
        return to_rgb(_upright(src))
    if isinstance(src, (np.ndarray, torch.Tensor)):
        return array_to_image(src, max_pixels)
    data = sources.resolve(src, opts)
    return to_rgb(_open(data, max_pixels))


def _check_pixels(size: tuple[int, int], max_pixels: int) -> None:
    width, height = size
    if width <= 0 or height <= 0:
        raise MediaError(f"image is {width}x{height} pixels (width x height); it has no pixels")
    if width * height > max_pixels:
        raise MediaError(
            f"image declares {width}x{height} = {width * height} pixels, above the limit of {max_pixels} "
            "(decompression bomb guard; raise max_image_pixels to allow it)"
        )


def _open(data: bytes | Path, max_pixels: int) -> Image.Image:
    stream = io.BytesIO(data) if isinstance(data, bytes) else data
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(stream)
            _check_pixels(img.size, max_pixels)  # header only: nothing decoded yet
            img.load()
    except MediaError:
        raise
    except Image.DecompressionBombError as e:
        raise MediaError(f"image is too large to decode safely: {e}") from None
    except Image.UnidentifiedImageError:
        raise MediaError("not a recognised image format (corrupt or not an image)") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise MediaError(f"image is corrupt or truncated: {e}") from None
    return _upright(img)


def _upright(img: Image.Image) -> Image.Image:
    """Apply the EXIF orientation tag, if any (a no-op, without a copy, for the common untagged image)."""
    if img.getexif().get(0x0112, 1) in (0, 1):
        return img
    return ImageOps.exif_transpose(img)


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode -> RGB (see module docstring for the non-obvious cases)."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode.startswith("I;16") or mode in ("I", "F"):
        return Image.fromarray(_high_depth_to_uint8(np.asarray(img)), mode="L").convert("RGB")
    if mode in _ALPHA_MODES or "transparency" in img.info:
        rgba = (img.convert("LA") if mode == "La" else img).convert("RGBA")  # Pillow has no La -> RGBA
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    try:
        return img.convert("RGB")
    except (ValueError, OSError) as e:
        raise MediaError(f"cannot convert image mode {mode!r} to RGB: {e}") from None


def _high_depth_to_uint8(a: np.ndarray) -> np.ndarray:
    if np.issubdtype(a.dtype, np.floating):
        a = np.nan_to_num(a.astype(np.float64))
        scale = 255.0 if a.size and a.max() <= 1.0 else 1.0
        return np.clip(np.rint(a * scale), 0, 255).astype(np.uint8)
    sixteen_bit = a.dtype.itemsize == 2 or bool(a.size and a.max() > 255)
    a = a.astype(np.int64)
    if sixteen_bit:
        return np.rint(np.clip(a, 0, 65535) / 257.0).astype(np.uint8)
    return np.clip(a, 0, 255).astype(np.uint8)


def array_to_image(arr: np.ndarray | torch.Tensor, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> Image.Image:
    """(H, W), (H, W, C) or (C, H, W) array, C in {1, 3, 4}; uint8, uint16, bool, or float in [0, 1] / [0, 255]."""
    a = arr.detach().cpu().numpy() if isinstance(arr, torch.Tensor) else np.asarray(arr)
    if a.ndim == 3 and a.shape[-1] not in (1, 3, 4) and a.shape[0] in (1, 3, 4):
        a = a.transpose(1, 2, 0)
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[-1] not in (3, 4)):
        raise MediaError(f"image array must be (H, W), (H, W, C) or (C, H, W) with C in 1/3/4, got {a.shape}")
    _check_pixels((a.shape[1], a.shape[0]), max_pixels)
    if a.dtype == np.bool_:
        a = a.astype(np.uint8) * 255
    elif a.dtype == np.uint16:
        a = np.rint(a / 257.0).astype(np.uint8)
    elif np.issubdtype(a.dtype, np.floating):
        a = np.nan_to_num(a.astype(np.float64))
        a = np.clip(np.rint(a * (255.0 if a.size and a.max() <= 1.0 else 1.0)), 0, 255).astype(np.uint8)
    elif a.dtype != np.uint8:
        a = np.clip(a, 0, 255).astype(np.uint8)
    return to_rgb(Image.fromarray(np.ascontiguousarray(a)))


def resize_rgb(img: Image.Image, height: int, width: int) -> np.ndarray:
    """PIL bicubic on uint8, as transformers' PIL backend and qwen-vl-utils do. -> (H, W, 3) uint8."""
    return np.asarray(img.resize((width, height), resample=Image.Resampling.BICUBIC))


def process_image(img: Image.Image, cfg: ImageConfig, size: ImageSize = ImageSize()) -> ProcessedImage:
    """RGB PIL image -> ProcessedImage."""
    width, height = img.size
    check_aspect_ratio(height, width)
    h, w = target_size(height, width, cfg, size)
    frames = resize_rgb(img, h, w)[None]  # (1, H, W, 3)
    norm = Normalization(cfg.image_mean, cfg.image_std, cfg.rescale_factor)
    pixel_values, grid, digest = patchify_frames(
        "image", frames, norm, cfg.patch_size, cfg.merge_size, cfg.temporal_patch_size
    )
    return ProcessedImage(pixel_values, grid, digest, cfg.merge_size)
