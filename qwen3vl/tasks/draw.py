"""Drawing boxes, points, polylines and labels on images with Pillow.

All functions return a new RGB image and leave the input untouched. Colours come from a fixed palette
indexed by item (or chosen by the caller) so tests can read pixels back. Labels sit above a box (inside
it when there is no room above), on a filled tab of the box's colour.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterable, Sequence

if TYPE_CHECKING:
    from PIL import Image

    from qwen3vl.tasks.grounding import Grounded

RGB = tuple[int, int, int]

PALETTE: tuple[RGB, ...] = (
    (230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240),
    (240, 50, 230), (210, 245, 60), (0, 128, 128), (170, 110, 40), (128, 0, 0), (0, 0, 128),
)


def color_for(i: int) -> RGB:
    return PALETTE[i % len(PALETTE)]


def load_font(size: int):
    """A scalable default font when FreeType is available, else Pillow's bitmap font."""
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def _auto_width(img: "Image.Image") -> int:
    return max(2, round(min(img.size) / 200))


def _text_color(bg: RGB) -> RGB:
    return (0, 0, 0) if 0.299 * bg[0] + 0.587 * bg[1] + 0.114 * bg[2] > 150 else (255, 255, 255)


def draw_label(draw, xy: tuple[float, float], text: str, color: RGB, font, *, image_size: tuple[int, int],
               below: bool = False) -> None:
    """A filled tab with `text`, its bottom-left at `xy` (top-left if `below`), kept inside the image."""
    if not text:
        return
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    tw, th = right - left + 6, bottom - top + 4
    x, y = xy
    y0 = y if below else y - th
    if y0 < 0:
        y0 = y
    x0 = min(max(0, x), max(0, image_size[0] - tw))
    draw.rectangle([x0, y0, x0 + tw - 1, y0 + th - 1], fill=color)
    draw.text((x0 + 3 - left, y0 + 2 - top), text, fill=_text_color(color), font=font)


def draw_box(draw, box: Sequence[float], color: RGB, width: int, image_size: tuple[int, int]) -> None:
    """Outline of a pixel box; the outline's outer edge lies on the box (clipped to the image)."""
    w, h = image_size
    x1, y1, x2, y2 = (round(v) for v in box)
    x1, x2 = min(max(x1, 0), w - 1), min(max(x2, 0), w - 1)
    y1, y2 = min(max(y1, 0), h - 1), min(max(y2, 0), h - 1)
    draw.rectangle([x1, y1, x2, y2], outline=color, width=width)


def draw_point(draw, xy: Sequence[float], color: RGB, radius: int) -> None:
    x, y = xy
    draw.ellipse([x - radius, y - radius, x + radius, y + radius], fill=color, outline=(255, 255, 255),
                 width=max(1, radius // 4))


def draw_polyline(draw, points: Sequence[tuple[float, float]], color: RGB, width: int) -> None:
    draw.line([tuple(p) for p in points], fill=color, width=width)


def draw_grounding(image: "Image.Image", items: Iterable["Grounded"], *, colors: Sequence[RGB] | None = None,
                   line_width: int | None = None, show_labels: bool = True) -> "Image.Image":
    """Boxes and points (from `grounding.parse_grounding_output`) drawn on a copy of `image`."""
    from PIL import ImageDraw

    from qwen3vl.tasks.grounding import Box2D

    out = image.convert("RGB")
    draw = ImageDraw.Draw(out)
    lw = line_width or _auto_width(out)
    font = load_font(max(10, lw * 6))
    for i, it in enumerate(items):
        color = tuple(colors[i % len(colors)]) if colors else color_for(i)
        if isinstance(it, Box2D):
            draw_box(draw, it.xyxy, color, lw, out.size)
            if show_labels:
                draw_label(draw, (it.x1, it.y1), it.label, color, font, image_size=out.size)
        else:
            r = max(3, lw * 2)
            draw_point(draw, (it.x, it.y), color, r)
            if show_labels:
                draw_label(draw, (it.x + r + 2, it.y - r), it.label, color, font, image_size=out.size)
    return out


def draw_boxes(image: "Image.Image", boxes: Sequence[Sequence[float]], labels: Sequence[str] | None = None, *,
               colors: Sequence[RGB] | None = None, line_width: int | None = None,
               label_below: bool = False) -> "Image.Image":
    """Plain pixel boxes with optional labels (documents, OCR) on a copy of `image`."""
    from PIL import ImageDraw

    out = image.convert("RGB")
    draw = ImageDraw.Draw(out)
    lw = line_width or _auto_width(out)
    font = load_font(max(10, lw * 6))
    for i, box in enumerate(boxes):
        color = tuple(colors[i % len(colors)]) if colors else color_for(i)
        draw_box(draw, box, color, lw, out.size)
        if labels and labels[i]:
            anchor = (box[0], box[3]) if label_below else (box[0], box[1])
            draw_label(draw, anchor, labels[i], color, font, image_size=out.size, below=label_below)
    return out
