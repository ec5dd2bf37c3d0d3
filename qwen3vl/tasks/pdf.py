"""PDF pages -> page images, each inside a pixel budget, with pypdfium2 (the `[pdf]` extra).

A page is rendered at `dpi` (default 144), then the scale is lowered or raised so that the rendered
size lies within [min_pixels, max_pixels]. The defaults are the document-parsing cookbook's image budget
(512·32² .. 2048·32²), so a page is not downscaled a second time by the processor. pypdfium2 rounds
sizes up (`ceil(size * scale)`), so the scale is nudged down until the ceiled size fits.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Iterable

if TYPE_CHECKING:
    from PIL import Image

MIN_PIXELS = 512 * 32 * 32
MAX_PIXELS = 2048 * 32 * 32
POINTS_PER_INCH = 72.0


def page_scale(width_pt: float, height_pt: float, *, dpi: float = 144.0, min_pixels: int | None = None,
               max_pixels: int = MAX_PIXELS) -> float:
    """Render scale (pixels per PDF point) for one page inside the pixel budget.

    `min_pixels` defaults to MIN_PIXELS, lowered to `max_pixels` when only the ceiling was made smaller.
    """
    if min_pixels is None:
        min_pixels = min(MIN_PIXELS, max_pixels)
    if width_pt <= 0 or height_pt <= 0:
        raise ValueError(f"page is {width_pt}x{height_pt} points; expected a positive size")
    if min_pixels > max_pixels:
        raise ValueError(f"min_pixels {min_pixels} > max_pixels {max_pixels}")
    area = width_pt * height_pt
    s = dpi / POINTS_PER_INCH
    if area * s * s > max_pixels:
        s = math.sqrt(max_pixels / area)
    elif area * s * s < min_pixels:
        s = math.sqrt(min_pixels / area)
    while math.ceil(width_pt * s) * math.ceil(height_pt * s) > max_pixels and s > 1e-6:
        s *= 0.999
    return s


def render_pdf(path: str | Path, *, pages: Iterable[int] | None = None, dpi: float = 144.0,
               min_pixels: int | None = None, max_pixels: int = MAX_PIXELS) -> list["Image.Image"]:
    """RGB images of the chosen pages (0-based; all by default), each within the pixel budget."""
    try:
        import pypdfium2 as pdfium
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("PDF input needs pypdfium2: pip install 'qwen3vl[pdf]'") from e
    doc = pdfium.PdfDocument(str(path))
    try:
        n = len(doc)
        chosen = list(range(n)) if pages is None else list(pages)
        bad = [p for p in chosen if not 0 <= p < n]
        if bad:
            raise ValueError(f"{path} has {n} pages (0..{n - 1}); pages {bad} do not exist")
        out = []
        for i in chosen:
            page = doc[i]
            w, h = page.get_size()
            s = page_scale(w, h, dpi=dpi, min_pixels=min_pixels, max_pixels=max_pixels)
            out.append(page.render(scale=s).to_pil().convert("RGB"))
            page.close()
        return out
    finally:
        doc.close()


def load_pages(path: str | Path, **kwargs) -> list["Image.Image"]:
    """A PDF's pages, or a single image file as one page."""
    if str(path).lower().endswith(".pdf"):
        return render_pdf(path, **kwargs)
    from PIL import Image

    with Image.open(path) as im:
        return [im.convert("RGB")]
