"""Document parsing outputs: "qwenvl html", "qwenvl markdown" and OCR text spotting.

* qwenvl html (prompt "qwenvl html"): HTML whose elements carry `data-bbox="x1 y1 x2 y2"` on the 0..1000
  grid of the page image. Parsed with the standard library's HTMLParser, which tolerates unclosed and
  stray tags; elements still open at the end of a truncated reply are closed and reported.
* qwenvl markdown (prompt "qwenvl markdown"): Markdown in which tables (LaTeX) and images are preceded
  or replaced by comments `<!-- Table (x1, y1, x2, y2) -->` / `<!-- Image (x1, y1, x2, y2) -->`.
* OCR spotting: a grounding-style JSON list of `{"bbox_2d": [...], "text_content": "..."}`.

The `clean_*` functions export what a reader wants: the same document with the boxes stripped.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from html.parser import HTMLParser
from typing import TYPE_CHECKING, Any, Sequence

from qwen3vl.tasks.coords import REL_SCALE, box_rel_to_px
from qwen3vl.tasks.grounding import parse_grounding_output

if TYPE_CHECKING:
    from PIL import Image

HTML_PROMPT = "qwenvl html"
MARKDOWN_PROMPT = "qwenvl markdown"
OCR_SPOTTING_PROMPT = ("Spotting all the text in the image with line-level, and output in JSON format as "
                       "[{'bbox_2d': [x1, y1, x2, y2], 'text_content': 'text'}, ...].")

# tags whose boundaries do not separate words; every other tag boundary adds a space to the text
_INLINE = {"a", "abbr", "b", "code", "em", "font", "i", "mark", "s", "small", "span", "strong", "sub", "sup", "u"}
_VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}
_FENCED = re.compile(r"```[ \t]*(?:html|markdown|md)?[ \t]*\n(.*?)(?:```|\Z)", re.S | re.I)
_BOX_ATTR = re.compile(r"""\s+data-(?:bbox|polygon)\s*=\s*(?:"[^"]*"|'[^']*'|[^\s>]+)""", re.I)
_MD_BOX = re.compile(
    r"<!--\s*([A-Za-z][\w ./-]*?)\s*\(\s*(-?[\d.]+)\s*,\s*(-?[\d.]+)\s*,\s*(-?[\d.]+)\s*,\s*(-?[\d.]+)\s*\)\s*-->")


@dataclass
class DocElement:
    """One element with a box: its tag (or Markdown kind), class, text and box (relative and pixels)."""

    tag: str
    text: str
    rel: tuple[float, float, float, float]
    bbox: tuple[float, float, float, float] | None = None  # pixels, when the page size was given
    cls: str = ""
    attrs: dict[str, str] = field(default_factory=dict)
    parent: int | None = None  # index of the nearest enclosing element that has a box
    flags: list[str] = field(default_factory=list)

    @property
    def kind(self) -> str:
        return self.cls or self.tag

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"tag": self.tag, "kind": self.kind, "text": self.text, "rel": list(self.rel)}
        if self.bbox is not None:
            out["bbox"] = [round(v, 2) for v in self.bbox]
        if self.flags:
            out["flags"] = list(self.flags)
        return out


@dataclass
class DocParse:
    elements: list[DocElement] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    truncated: bool = False


def strip_fence(text: str) -> str:
    """The body of the first ```html / ```markdown fence, or the text itself when there is none."""
    m = _FENCED.search(text)
    return m.group(1) if m else text


def _box(raw: str, scale: float, flags: list[str]) -> tuple[float, float, float, float] | None:
    nums = re.findall(r"-?\d+(?:\.\d+)?", raw)
    if len(nums) != 4:
        return None
    x1, y1, x2, y2 = (float(v) for v in nums)
    clamped = [min(max(v, 0.0), scale) for v in (x1, y1, x2, y2)]
    if clamped != [x1, y1, x2, y2]:
        flags.append(f"box {raw.strip()!r} outside 0..{scale:g}, clamped")
    x1, y1, x2, y2 = clamped
    if x1 > x2 or y1 > y2:
        flags.append("corners swapped")
    return (min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2))


class _HtmlCollector(HTMLParser):
    def __init__(self, scale: float):
        super().__init__(convert_charrefs=True)
        self.scale = scale
        self.elements: list[DocElement] = []
        self.problems: list[str] = []
        # open elements: (tag, index into elements or None, text pieces)
        self.stack: list[tuple[str, int | None, list[str]]] = []

    def _nearest_boxed(self) -> int | None:
        return next((idx for _, idx, _ in reversed(self.stack) if idx is not None), None)

    def _open(self, tag: str, attrs: list[tuple[str, str | None]]) -> int | None:
        a = {k: (v or "") for k, v in attrs}
        if "data-bbox" not in a:
            return None
        flags: list[str] = []
        rel = _box(a["data-bbox"], self.scale, flags)
        if rel is None:
            self.problems.append(f"<{tag}> has data-bbox {a['data-bbox']!r}, expected 4 numbers; ignored")
            return None
        self.elements.append(DocElement(tag=tag, text="", rel=rel, cls=a.get("class", ""),
                                        attrs={k: v for k, v in a.items() if k != "data-bbox"},
                                        parent=self._nearest_boxed(), flags=flags))
        return len(self.elements) - 1

    def _boundary(self, tag: str) -> None:
        if tag not in _INLINE:
            self.handle_data(" ")

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._boundary(tag)
        idx = self._open(tag, attrs)
        if tag in _VOID:
            if idx is not None and tag == "img":
                self.elements[idx].text = dict(attrs).get("alt") or ""
            return
        self.stack.append((tag, idx, []))

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._boundary(tag)
        idx = self._open(tag, attrs)
        if idx is not None and tag == "img":
            self.elements[idx].text = dict(attrs).get("alt") or ""

    def handle_data(self, data: str) -> None:
        for _, _, pieces in self.stack:
            pieces.append(data)

    def _close_top(self) -> None:
        tag, idx, pieces = self.stack.pop()
        if idx is not None:
            self.elements[idx].text = " ".join("".join(pieces).split())

    def handle_endtag(self, tag: str) -> None:
        self._boundary(tag)
        if tag in _VOID:
            return
        if not any(t == tag for t, _, _ in self.stack):
            self.problems.append(f"stray </{tag}> ignored")
            return
        while self.stack and self.stack[-1][0] != tag:
            self.problems.append(f"<{self.stack[-1][0]}> not closed before </{tag}>")
            self._close_top()
        self._close_top()

    def finish(self) -> bool:
        self.close()
        cut = bool([t for t, idx, _ in self.stack if t not in ("html", "body")])
        while self.stack:
            self._close_top()
        return cut


def _to_px(elements: list[DocElement], width: int | None, height: int | None, scale: float) -> None:
    if width and height:
        for el in elements:
            el.bbox = box_rel_to_px(el.rel, width, height, scale)


def parse_qwenvl_html(text: str, width: int | None = None, height: int | None = None, *,
                      scale: float = REL_SCALE) -> DocParse:
    """Elements with `data-bbox` in document order; pixel boxes too when the page size is given."""
    body = strip_fence(text)
    collector = _HtmlCollector(scale)
    collector.feed(body)
    cut = collector.finish()
    result = DocParse(collector.elements, collector.problems, truncated=cut)
    if cut:
        result.problems.append("HTML ends with elements still open (output truncated?); they were closed")
    _to_px(result.elements, width, height, scale)
    return result


def clean_html(text: str) -> str:
    """The reply's HTML with the fence and every data-bbox / data-polygon attribute removed."""
    return _BOX_ATTR.sub("", strip_fence(text)).strip() + "\n"


def parse_qwenvl_markdown(text: str, width: int | None = None, height: int | None = None, *,
                          scale: float = REL_SCALE) -> DocParse:
    """Boxed blocks of qwenvl markdown: `<!-- Kind (x1, y1, x2, y2) -->` and the block that follows it."""
    body = strip_fence(text)
    result = DocParse()
    matches = list(_MD_BOX.finditer(body))
    for i, m in enumerate(matches):
        flags: list[str] = []
        rel = _box(",".join(m.groups()[1:]), scale, flags)
        assert rel is not None
        end = matches[i + 1].start() if i + 1 < len(matches) else len(body)
        block = body[m.end():end].lstrip("\n")
        block = block.split("\n\n", 1)[0].strip()
        kind = m.group(1).strip()
        result.elements.append(DocElement(tag=kind.lower(), text="" if kind.lower() == "image" else block,
                                          rel=rel, cls=kind, flags=flags))
    _to_px(result.elements, width, height, scale)
    return result


def clean_markdown(text: str) -> str:
    """The reply's Markdown with the fence and the box comments removed (lines left empty are dropped)."""
    body = strip_fence(text)
    lines = []
    for line in body.splitlines():
        stripped = _MD_BOX.sub("", line)
        if stripped.strip() or not line.strip():
            lines.append(stripped.rstrip())
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip() + "\n"


@dataclass
class TextSpot:
    text: str
    bbox: tuple[float, float, float, float]  # pixels
    rel: tuple[float, float, float, float]
    flags: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"text": self.text, "bbox": [round(v, 2) for v in self.bbox]}
        if self.flags:
            out["flags"] = list(self.flags)
        return out


def parse_ocr_spotting(text: str, width: int, height: int, *, scale: float = REL_SCALE) -> tuple[list[TextSpot], list[str]]:
    """Text lines/words with boxes from a spotting reply (`text_content`, falling back to `text`/`label`)."""
    parsed = parse_grounding_output(text, width, height, scale=scale)
    spots = []
    for box in parsed.boxes:
        content = box.extra.get("text_content", box.extra.get("text", box.label))
        spots.append(TextSpot(str(content), box.xyxy, box.rel, box.flags))
    return spots, parsed.problems


def draw_document(image: "Image.Image", elements: Sequence[DocElement], *, skip_containers: bool = True,
                  show_labels: bool = True) -> "Image.Image":
    """Element boxes over the page (pixel boxes recomputed for this image's size), labelled by kind.

    List containers (<ol>/<ul>) whose items have their own boxes are skipped, as in the cookbook.
    """
    from qwen3vl.tasks.draw import draw_boxes

    w, h = image.size
    has_child = {el.parent for el in elements if el.parent is not None}
    chosen = [el for i, el in enumerate(elements)
              if not (skip_containers and el.tag in ("ol", "ul") and i in has_child)]
    boxes = [box_rel_to_px(el.rel, w, h) for el in chosen]
    labels = [el.kind for el in chosen] if show_labels else None
    return draw_boxes(image, boxes, labels)


def draw_ocr(image: "Image.Image", spots: Sequence[TextSpot], *, show_text: bool = True) -> "Image.Image":
    """Spotted text boxes, each with its text on a tab below the box."""
    from qwen3vl.tasks.draw import draw_boxes

    return draw_boxes(image, [s.bbox for s in spots], [s.text for s in spots] if show_text else None,
                      label_below=True)
