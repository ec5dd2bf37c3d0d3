"""Metrics: ANLS, box IoU and Acc@IoU, point-in-box, temporal IoU and R@k, numeric match, validity rates.

All are plain functions on Python values, each defined the way its benchmark family reports it:

* ANLS (DocVQA / InfoVQA): per question, the best over the reference answers of `1 - NL` where
  `NL = levenshtein(pred, ref) / max(len(pred), len(ref))` after lowercasing and collapsing whitespace,
  and 0 when `NL >= 0.5`.
* IoU on (x1, y1, x2, y2) boxes in continuous coordinates (no "+1" pixel convention); Acc@0.5 is the
  share of predictions with IoU >= 0.5 (RefCOCO style).
* Point in box (ScreenSpot): the predicted click lies inside the target box, edges included.
* Temporal IoU of [start, end] intervals; R@m is the share with tIoU >= m, mIoU the mean.
"""

from __future__ import annotations

from typing import Iterable, Sequence

from qwen3vl.tasks.jsonish import strict_json_values
from qwen3vl.tasks.toolcalls import TOOL_OPEN, parse_tool_calls
from qwen3vl.tasks.video_time import temporal_iou

__all__ = ["levenshtein", "anls", "iou", "acc_at_iou", "point_in_box", "temporal_iou", "recall_at",
           "numeric_match", "json_valid", "tool_call_valid", "normalize_text"]


def normalize_text(s: str) -> str:
    return " ".join(str(s).lower().split())


def levenshtein(a: str, b: str) -> int:
    """Edit distance (insert, delete, substitute all cost 1)."""
    if len(a) < len(b):
        a, b = b, a
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, start=1):
        cur = [i]
        for j, cb in enumerate(b, start=1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def anls(prediction: str, references: Sequence[str] | str, threshold: float = 0.5) -> float:
    refs = [references] if isinstance(references, str) else list(references)
    if not refs:
        raise ValueError("ANLS needs at least one reference answer")
    p = normalize_text(prediction)
    best = 0.0
    for r in refs:
        g = normalize_text(r)
        longest = max(len(p), len(g))
        nl = levenshtein(p, g) / longest if longest else 0.0
        best = max(best, 1.0 - nl if nl < threshold else 0.0)
    return best


def iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two (x1, y1, x2, y2) boxes; 0 when the union has no area."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    area_a = max(0.0, a[2] - a[0]) * max(0.0, a[3] - a[1])
    area_b = max(0.0, b[2] - b[0]) * max(0.0, b[3] - b[1])
    union = area_a + area_b - inter
    return inter / union if union > 0 else 0.0


def acc_at_iou(ious: Iterable[float], threshold: float = 0.5) -> float:
    vals = list(ious)
    return sum(v >= threshold for v in vals) / len(vals) if vals else 0.0


def point_in_box(point: Sequence[float], box: Sequence[float]) -> bool:
    x, y = point
    return box[0] <= x <= box[2] and box[1] <= y <= box[3]


def recall_at(tious: Iterable[float], thresholds: Sequence[float] = (0.3, 0.5, 0.7)) -> dict[str, float]:
    """{"R@0.3": .., "R@0.5": .., "R@0.7": .., "mIoU": ..} over temporal IoUs."""
    vals = list(tious)
    n = len(vals) or 1
    out = {f"R@{t:g}": sum(v >= t for v in vals) / n for t in thresholds}
    out["mIoU"] = sum(vals) / n
    return out


def numeric_match(pred: float | None, ref: float, *, rel_tol: float = 0.0, abs_tol: float = 1e-9) -> bool:
    """pred equals ref within a relative tolerance (ChartQA's relaxed accuracy uses rel_tol=0.05)."""
    if pred is None:
        return False
    return abs(pred - ref) <= max(abs_tol, rel_tol * abs(ref))


def json_valid(text: str) -> bool:
    """The reply's JSON (fenced or whole) parses with the standard library, with no repairs."""
    return strict_json_values(text) is not None


def tool_call_valid(text: str, required: dict[str, Sequence[str]] | None = None) -> bool:
    """At least one <tool_call>, all well-formed as written; with `required` ({tool: [arg, ...]}), every
    call names a known tool and carries its required arguments."""
    parsed = parse_tool_calls(text)
    if not parsed.calls or parsed.invalid or not parsed.strict or TOOL_OPEN not in text:
        return False
    if required is not None:
        for c in parsed.calls:
            if c.name not in required or any(k not in c.arguments for k in required[c.name]):
                return False
    return True
