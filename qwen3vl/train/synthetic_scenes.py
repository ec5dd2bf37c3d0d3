"""Drawing for the demo data: coloured shapes and printed text on a light, faintly noisy background.

Every random choice comes from the `numpy.random.Generator` passed in, so a seed fixes every pixel. Shapes are
pasted through a binary mask (no anti-aliasing) and each object's truth box is read back from its own mask,
so a box is exactly the drawn pixels, never the geometry that was asked for. Boxes are pixel boxes
`(x1, y1, x2, y2)` with x2/y2 exclusive, the convention of `PIL.Image.getbbox`.

The font is Pillow's built-in one (`ImageFont.load_default(size)`: a bundled TrueType face when Pillow >= 10.1
has FreeType), so no system font is needed. Without FreeType the fixed bitmap font is drawn small and scaled up.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFont

PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (20, 160, 40),
    "blue": (30, 80, 230),
    "yellow": (245, 205, 0),
    "purple": (140, 40, 180),
    "orange": (250, 130, 0),
}
COLORS: tuple[str, ...] = tuple(PALETTE)
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "diamond")
PLURALS: dict[str, str] = {s: s + "s" for s in SHAPES}
TEXT_COLORS: tuple[tuple[int, int, int], ...] = ((15, 15, 15), (20, 30, 90), (60, 20, 20))

Box = tuple[int, int, int, int]


@dataclass(frozen=True)
class SceneObject:
    shape: str
    color: str
    box: Box  # drawn pixels, (x1, y1, x2, y2), x2/y2 exclusive

    @property
    def label(self) -> str:
        return f"{self.color} {self.shape}"

    def to_json(self) -> dict:
        return {"shape": self.shape, "color": self.color, "box_px": list(self.box)}


@dataclass
class Scene:
    image: Image.Image
    objects: list[SceneObject]
    text: str | None = None
    text_box: Box | None = None


# ----------------------------------------------------------------------------------------------------------------
# Coordinates


def to_relative(box: Box, width: int, height: int) -> list[int]:
    """Pixel box -> Qwen3-VL's relative integers in 0..1000 (spec §10.1)."""
    x1, y1, x2, y2 = box
    return [round(x1 * 1000 / width), round(y1 * 1000 / height), round(x2 * 1000 / width), round(y2 * 1000 / height)]


def to_pixels(rel: list[float] | tuple[float, ...], width: int, height: int) -> tuple[float, float, float, float]:
    """Relative 0..1000 box -> pixel box on a width x height image (`x_px = x / 1000 * W`)."""
    x1, y1, x2, y2 = rel
    return (x1 / 1000 * width, y1 / 1000 * height, x2 / 1000 * width, y2 / 1000 * height)


# ----------------------------------------------------------------------------------------------------------------
# Rendering primitives


def background(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    """A light, slightly tinted background with faint per-pixel noise (std <= 4 grey levels)."""
    base = rng.integers(200, 236) + rng.integers(-8, 9, size=3)
    amplitude = rng.uniform(0.0, 4.0)
    noise = rng.normal(0.0, 1.0, size=(height, width, 1)) * amplitude
    pixels = np.clip(base[None, None, :] + noise, 0, 255).astype(np.uint8)  # (H, W, 3)
    return Image.fromarray(pixels, "RGB")


@functools.lru_cache(maxsize=1024)
def shape_mask(shape: str, size: int) -> Image.Image:
    """A size x size binary mask (mode "L", 0/255) of one shape, centred and upright."""
    if shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")
    if size < 8:
        raise ValueError(f"shape size {size} px is too small to draw; use at least 8")
    mask = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(mask)
    s = size - 1
    c = s / 2
    if shape == "circle":
        draw.ellipse((0, 0, s, s), fill=255)
    elif shape == "square":
        inset = round(0.08 * size)  # a square filling its cell looks bigger than the other shapes
        draw.rectangle((inset, inset, s - inset, s - inset), fill=255)
    elif shape == "triangle":
        draw.polygon([(c, 0), (s, s), (0, s)], fill=255)
    elif shape == "diamond":
        draw.polygon([(c, 0), (s, c), (c, s), (0, c)], fill=255)
    else:  # star: five points, fat enough to survive 16-px patches
        outer, inner = c, 0.5 * c
        points = []
        for k in range(10):
            r = outer if k % 2 == 0 else inner
            a = -math.pi / 2 + k * math.pi / 5
            points.append((c + r * math.cos(a), c + r * math.sin(a)))
        draw.polygon(points, fill=255)
    return mask


@functools.lru_cache(maxsize=64)
def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: no size argument, bitmap font only
        return ImageFont.load_default()


@functools.lru_cache(maxsize=4096)
def text_mask(text: str, size: int) -> Image.Image:
    """A tight binary mask (mode "L", 0/255) of `text` printed `size` px high, slightly bold."""
    font = _font(size)
    if isinstance(font, ImageFont.FreeTypeFont):
        x1, y1, x2, y2 = font.getbbox(text, stroke_width=1)
        mask = Image.new("L", (x2 - x1, y2 - y1), 0)
        ImageDraw.Draw(mask).text((-x1, -y1), text, fill=255, font=font, stroke_width=1, stroke_fill=255)
    else:  # fixed ~11-px bitmap font: draw, then scale up with nearest neighbour
        x1, y1, x2, y2 = font.getbbox(text)
        small = Image.new("L", (x2 - x1, y2 - y1), 0)
        ImageDraw.Draw(small).text((-x1, -y1), text, fill=255, font=font)
        scale = max(1, round(size / 11))
        mask = small.resize((small.width * scale, small.height * scale), Image.NEAREST)
    mask = mask.point(lambda v: 255 if v >= 128 else 0)
    bbox = mask.getbbox()
    if bbox is None:
        raise ValueError(f"text {text!r} rendered no pixels at size {size}")
    return mask.crop(bbox)


def placed_box(mask: Image.Image, xy: tuple[int, int]) -> Box:
    """The pixel box `mask` covers when pasted at `xy`."""
    x1, y1, x2, y2 = mask.getbbox()
    return (xy[0] + x1, xy[1] + y1, xy[0] + x2, xy[1] + y2)


def paste(image: Image.Image, mask: Image.Image, xy: tuple[int, int], color: tuple[int, int, int]) -> Box:
    """Paint `color` through `mask` at `xy`; returns the pixel box that was painted."""
    image.paste(color, (xy[0], xy[1], xy[0] + mask.width, xy[1] + mask.height), mask)
    return placed_box(mask, xy)


# ----------------------------------------------------------------------------------------------------------------
# Layout


def _overlaps(a: Box, b: Box, gap: int) -> bool:
    return a[0] < b[2] + gap and b[0] < a[2] + gap and a[1] < b[3] + gap and b[1] < a[3] + gap


def place(
    rng: np.random.Generator,
    width: int,
    height: int,
    sizes: list[tuple[int, int]],
    *,
    gap: int = 4,
    avoid: tuple[Box, ...] = (),
) -> list[tuple[int, int]]:
    """Top-left corners for non-overlapping (w, h) cells inside the image, at least `gap` px apart."""
    for _ in range(50):
        cells: list[Box] = list(avoid)
        corners: list[tuple[int, int]] = []
        for w, h in sizes:
            if w + 2 * gap > width or h + 2 * gap > height:
                raise ValueError(f"a {w}x{h} cell does not fit a {width}x{height} image")
            for _ in range(100):
                x = int(rng.integers(gap, width - w - gap + 1))
                y = int(rng.integers(gap, height - h - gap + 1))
                cell = (x, y, x + w, y + h)
                if not any(_overlaps(cell, other, gap) for other in cells):
                    break
            else:
                break  # this layout is stuck: start over
            cells.append(cell)
            corners.append((x, y))
        if len(corners) == len(sizes):
            return corners
    raise RuntimeError(f"could not place cells {sizes} without overlap in a {width}x{height} image")


def draw_scene(
    rng: np.random.Generator,
    width: int,
    height: int,
    specs: list[tuple[str, str, int]],
    *,
    text: str | None = None,
    text_size: int = 32,
) -> Scene:
    """Render (shape, color, size) specs, and optionally one line of text, on a fresh background."""
    image = background(rng, width, height)
    text_box = None
    avoid: tuple[Box, ...] = ()
    if text is not None:
        mask = text_mask(text, text_size)
        (corner,) = place(rng, width, height, [mask.size], gap=4)
        text_color = TEXT_COLORS[int(rng.integers(len(TEXT_COLORS)))]
        text_box = paste(image, mask, corner, text_color)
        avoid = (text_box,)
    corners = place(rng, width, height, [(size, size) for _, _, size in specs], gap=max(3, width // 64), avoid=avoid)
    objects = []
    for (shape, color, size), corner in zip(specs, corners):
        box = paste(image, shape_mask(shape, size), corner, PALETTE[color])
        objects.append(SceneObject(shape, color, box))
    return Scene(image, objects, text, text_box)
