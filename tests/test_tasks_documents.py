"""Documents: qwenvl html / markdown, OCR spotting, clean exports, drawings, PDF pages within budgets."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from PIL import Image

from qwen3vl.tasks.documents import (
    clean_html,
    clean_markdown,
    draw_document,
    draw_ocr,
    parse_ocr_spotting,
    parse_qwenvl_html,
    parse_qwenvl_markdown,
)
from qwen3vl.tasks.draw import PALETTE
from qwen3vl.tasks.pdf import page_scale, render_pdf

FIX = Path(__file__).parent / "fixtures" / "tasks"


def fixture(name: str) -> str:
    return (FIX / name).read_text(encoding="utf-8")


def test_qwenvl_html_elements_boxes_text_and_truncation():
    res = parse_qwenvl_html(fixture("qwenvl_html_page.txt"), 800, 1000)
    tags = [e.tag for e in res.elements]
    assert tags == ["h1", "p", "ol", "li", "li", "div", "img", "div", "table", "td", "td"]
    h1, p, ol, li1 = res.elements[:4]
    assert h1.text == "Quarterly Report" and h1.rel == (93, 59, 905, 97)
    # 93/1000*800 = 74.4, 905/1000*800 = 724
    assert h1.bbox == pytest.approx((74.4, 59.0, 724.0, 97.0))
    assert p.text == "Revenue grew by 12% while costs fell & margins improved."
    assert li1.parent == 2 and li1.text == "First finding"
    assert ol.text == "First finding Second finding"
    assert res.elements[7].kind == "formula.machine_printed" and res.elements[7].text == "$$E = mc^2$$"
    assert "North 1,200" in res.elements[8].text
    # the reply stops inside the table
    assert res.truncated and any("truncated" in x for x in res.problems)


def test_clean_html_strips_boxes_and_keeps_the_rest():
    clean = clean_html(fixture("qwenvl_html_page.txt"))
    assert "data-bbox" not in clean and "```" not in clean
    assert "<h1>Quarterly Report</h1>" in clean
    assert '<div class="image"><img /></div>' in clean


def test_qwenvl_markdown_blocks_and_clean_export():
    md = fixture("qwenvl_markdown_page.txt")
    res = parse_qwenvl_markdown(md, 800, 1000)
    table, image = res.elements
    assert table.kind == "Table" and table.rel == (80, 620, 920, 900)
    assert table.text.startswith("\\begin{tabular}") and table.text.endswith("\\end{tabular}")
    assert image.kind == "Image" and image.text == "" and image.bbox == pytest.approx((80.0, 320.0, 400.0, 600.0))
    clean = clean_markdown(md)
    assert "<!--" not in clean and "```" not in clean
    assert clean.startswith("# Quarterly Report\n") and "North & 1,200" in clean and "Figures are unaudited." in clean
    assert "\n\n\n" not in clean


def test_ocr_spotting_parse():
    spots, problems = parse_ocr_spotting(fixture("ocr_spotting.txt"), 640, 480)
    assert [s.text for s in spots] == ["GRAND OPENING", "Saturday, 10 am - 6 pm", "50% off"]
    # 52/1000*640 = 33.28, 41/1000*480 = 19.68, 610/1000*640 = 390.4, 98/1000*480 = 47.04
    assert spots[0].bbox == pytest.approx((33.28, 19.68, 390.4, 47.04))
    assert problems == []


def test_document_drawing_read_back():
    page = Image.new("RGB", (800, 1000), (255, 255, 255))
    res = parse_qwenvl_html(fixture("qwenvl_html_page.txt"), 800, 1000)
    out = draw_document(page, res.elements)
    lw = max(2, round(800 / 200))  # the automatic line width: 4 px
    # h1 box (74.4, 59, 724, 97): left edge at x = 74, first colour of the palette
    assert out.getpixel((74, 78)) == PALETTE[0]
    assert out.getpixel((74 + lw, 78)) == (255, 255, 255)
    # the <ol> container is skipped because its <li> have boxes; its own left edge x = 72 stays white
    assert out.getpixel((72, 280)) == (255, 255, 255)
    assert out.getpixel((790, 990)) == (255, 255, 255)


def test_ocr_drawing_read_back():
    img = Image.new("RGB", (640, 480), (255, 255, 255))
    spots, _ = parse_ocr_spotting(fixture("ocr_spotting.txt"), 640, 480)
    out = draw_ocr(img, spots, show_text=False)
    # third spot (55, 200, 300, 235) -> x1 = 35.2 -> 35, y between 96 and 112.8
    assert out.getpixel((35, 104)) == PALETTE[2]
    assert out.getpixel((600, 400)) == (255, 255, 255)


def make_pdf(path: Path, colors: list[tuple[int, int, int]], size=(600, 800)) -> None:
    """A PDF whose pages are `size` points (an image saved at 72 dpi) with a black square at 100..200."""
    pages = []
    for c in colors:
        im = Image.new("RGB", size, c)
        im.paste((0, 0, 0), (100, 100, 200, 200))
        pages.append(im)
    pages[0].save(path, save_all=True, append_images=pages[1:], resolution=72.0)


def test_page_scale_budget_by_hand():
    # US letter at 144 dpi: scale 2 -> 1224 x 1584 = 1,938,816 px, inside the default 2,097,152 budget
    assert page_scale(612, 792) == 2.0
    # budget 100,000 px for 600 x 800 pt: sqrt(100000 / 480000) = 0.4564; ceil sizes must fit
    s = page_scale(600, 800, max_pixels=100_000)
    assert math.ceil(600 * s) * math.ceil(800 * s) <= 100_000
    assert s == pytest.approx(math.sqrt(100_000 / 480_000), rel=0.01)
    # a floor raises small pages: 100 x 100 pt at 72 dpi would be 10,000 px < 40,000
    assert page_scale(100, 100, dpi=72, min_pixels=40_000) == pytest.approx(2.0)


def test_render_pdf_pages_within_budget(tmp_path):
    pdf = tmp_path / "doc.pdf"
    make_pdf(pdf, [(255, 0, 0), (0, 0, 255)])
    pages = render_pdf(pdf, max_pixels=100_000, min_pixels=10_000)
    assert len(pages) == 2
    for pg in pages:
        w, h = pg.size
        assert w * h <= 100_000 and w * h >= 95_000
        assert abs(w / h - 600 / 800) < 0.01
    s = pages[0].width / 600
    r, g, b = pages[0].getpixel((int(400 * s), int(600 * s)))
    assert r > 200 and g < 60 and b < 60  # red page
    assert max(pages[0].getpixel((int(150 * s), int(150 * s)))) < 60  # the black square
    only_second = render_pdf(pdf, pages=[1], max_pixels=100_000)
    assert len(only_second) == 1 and only_second[0].getpixel((5, 5))[2] > 200
    with pytest.raises(ValueError, match="has 2 pages"):
        render_pdf(pdf, pages=[2])
