"""Reading the final answer out of free-form replies: choice letters, numbers, points, boxes, ranges.

Reasoning text is dropped first (everything up to `</think>`). Letter extraction looks, in order, for an
explicit "answer is X" / "Answer: X", a reply that *starts* with the letter ("C. window"), a bold or
bracketed letter (the last one wins: models restate the options before concluding), and finally a single
distinct standalone capital among the options. "A" and "I" followed by a lowercase word are English,
not option letters.
"""

from __future__ import annotations

import re
from typing import Any, Sequence

from qwen3vl.tasks.toolcalls import parse_tool_calls, split_reasoning

_NUM = r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|[-+]?\.\d+"


def final_text(text: str) -> str:
    return split_reasoning(text)[1].strip()


def extract_choice(text: str, options: str = "ABCDEFGHIJ") -> str | None:
    """The chosen option letter, or None."""
    t = final_text(text)
    letters = re.escape(options)
    pats = [
        rf"answer\s*(?:is|:|：)?\s*(?:option\s*)?[\*\(\[\s]*([{letters}])(?![A-Za-z])",
        rf"^[\s\*\(\[]*([{letters}])(?:[\.\)\]:,]|\s*$|\s+[-–])",
        rf"\*\*\s*\(?([{letters}])\)?[\.\):]?(?:\s|\*\*)",
        rf"[\(\[]([{letters}])[\)\]]",
    ]
    for i, p in enumerate(pats):
        found = re.findall(p, t, re.I | re.M)
        if found:
            return found[-1].upper() if i != 1 else found[0].upper()
    standalone = set(re.findall(rf"(?<![A-Za-z])([{letters}])(?![A-Za-z'])", t))
    for word in ("A", "I"):  # "A red car", "I think": English words, not options A / I
        if re.search(rf"(?<![A-Za-z]){word}\s+[a-z]", t):
            standalone.discard(word)
    return standalone.pop() if len(standalone) == 1 else None


def _to_float(s: str) -> float | None:
    try:
        return float(s.replace(",", ""))
    except ValueError:
        return None


def extract_number(text: str) -> float | None:
    """The final numeric answer: \\boxed{..}, then "answer is/:", then the last number in the reply."""
    t = final_text(text)
    m = re.findall(r"\\boxed\{([^{}]*(?:\{[^{}]*\}[^{}]*)*)\}", t)
    if m:
        box = m[-1]
        frac = re.search(r"\\d?frac\{(" + _NUM + r")\}\{(" + _NUM + r")\}", box)
        if frac:
            num, den = _to_float(frac.group(1)), _to_float(frac.group(2))
            if num is not None and den:
                return num / den
        nums = re.findall(_NUM, box)
        if nums:
            return _to_float(nums[-1])
    m = re.findall(rf"answer\s*(?:is|:|=)\s*\**\s*\$?({_NUM})", t, re.I)
    if m:
        return _to_float(m[-1])
    nums = re.findall(_NUM, t)
    return _to_float(nums[-1]) if nums else None


def extract_point(text: str, tool_calls: Sequence[dict[str, Any]] | None = None) -> tuple[float, float] | None:
    """A click point on the 0..1000 grid: a tool call's coordinate, a point_2d, a bbox centre, or "(x, y)"."""
    calls = list(tool_calls or []) or [c.to_dict() for c in parse_tool_calls(text).calls]
    for c in calls:
        coord = (c.get("arguments") or {}).get("coordinate")
        if isinstance(coord, (list, tuple)) and len(coord) == 2:
            try:
                return float(coord[0]), float(coord[1])
            except (TypeError, ValueError):
                pass
    from qwen3vl.tasks.grounding import parse_grounding_output

    parsed = parse_grounding_output(final_text(text), 1000, 1000)
    if parsed.points:
        p = parsed.points[0]
        return p.rel
    if parsed.boxes:
        x1, y1, x2, y2 = parsed.boxes[0].rel
        return (x1 + x2) / 2, (y1 + y2) / 2
    m = re.search(rf"[\(\[]\s*({_NUM})\s*,\s*({_NUM})\s*[\)\]]", final_text(text))
    if m:
        return float(m.group(1)), float(m.group(2))
    return None
