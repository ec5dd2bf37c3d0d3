"""Evaluation over JSONL datasets against any ChatBackend (local model, endpoint, scripted).

One record per line:

    {"id": "q1", "task": "docvqa", "image": "page.png", "question": "What is the total?", "answer": ["$12.50"]}

Fields: `task` (see TASKS), `question` (sent as written, after the media), `answer`, media as `image`
(path or list), `images`, or `video` (+ optional `fps`); relative paths are resolved against the JSONL
file's folder. Optional: `id`, `options` (letters for multiple choice, default "ABCDEFGHIJ"),
`tolerance` (relative, numeric tasks), `box_format` ("xyxy" pixels, default; "xywh" pixels; "rel1000"),
`image_size` ([w, h], when a box task has no image file), `tools` (for tool_call tasks, passed to the
backend). Box answers are in pixels of the original image, prediction coordinates are read on the
0..1000 grid and mapped with the image's size.

Scores per record go to an optional results JSONL; the summary is one row per task with its metrics.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from qwen3vl.jsonl import iter_jsonl
from qwen3vl.tasks.coords import box_rel_to_px, point_rel_to_px
from qwen3vl.tasks.eval import answers, metrics
from qwen3vl.tasks.toolcalls import TOOL_OPEN, format_tool_call
from qwen3vl.tasks.video_time import parse_time_range, parse_timestamp

if TYPE_CHECKING:
    from qwen3vl.tasks.backends import ChatBackend, ChatReply

log = logging.getLogger(__name__)

# task name -> scoring family
TASKS = {
    "anls": "anls", "docvqa": "anls", "infovqa": "anls", "ocrvqa": "anls",
    "vqa": "exact", "exact": "exact",
    "mc": "choice", "multiple_choice": "choice", "choice": "choice",
    "numeric": "numeric", "math": "numeric", "count": "numeric", "chartqa": "numeric",
    "grounding": "box", "refcoco": "box", "box": "box",
    "point": "point", "screenspot": "point",
    "temporal": "temporal", "moment": "temporal", "temporal_grounding": "temporal",
    "json": "json",
    "tool_call": "tool_call", "function_call": "tool_call",
}


@dataclass
class EvalRecord:
    id: str
    task: str
    question: str
    answer: Any
    media: list[dict[str, Any]] = field(default_factory=list)
    raw: dict[str, Any] = field(default_factory=dict)

    @property
    def family(self) -> str:
        return TASKS[self.task]

    def messages(self) -> list[dict[str, Any]]:
        return [{"role": "user", "content": [*self.media, {"type": "text", "text": self.question}]}]


def load_dataset(path: str | Path, *, limit: int | None = None) -> list[EvalRecord]:
    """Records of a JSONL file; errors name the line and the field."""
    path = Path(path)
    base = path.parent
    out: list[EvalRecord] = []
    for n, row in iter_jsonl(path):
        task = str(row.get("task", "")).lower()
        if task not in TASKS:
            raise ValueError(f"{path}:{n} has task {row.get('task')!r}; expected one of {', '.join(sorted(TASKS))}")
        if "question" not in row:
            raise ValueError(f"{path}:{n} has no 'question'")
        if TASKS[task] not in ("json", "tool_call") and "answer" not in row:
            raise ValueError(f"{path}:{n} ({task}) has no 'answer'")
        media: list[dict[str, Any]] = []
        images = row.get("images", row.get("image", []))
        for img in [images] if isinstance(images, str) else images:
            media.append({"type": "image", "image": _resolve(base, img)})
        if "video" in row:
            part = {"type": "video", "video": _resolve(base, row["video"])}
            if "fps" in row:
                part["fps"] = row["fps"]
            media.append(part)
        out.append(EvalRecord(str(row.get("id", n)), task, row["question"], row.get("answer"), media, row))
        if limit is not None and len(out) >= limit:
            break
    return out


def _resolve(base: Path, p: str) -> str:
    if p.startswith(("http://", "https://", "data:")):
        return p
    q = Path(p)
    return str(q if q.is_absolute() else base / q)


def _image_size(rec: EvalRecord) -> tuple[int, int]:
    if "image_size" in rec.raw:
        w, h = rec.raw["image_size"]
        return int(w), int(h)
    img = next((m["image"] for m in rec.media if m["type"] == "image"), None)
    if img is None:
        raise ValueError(f"record {rec.id}: a {rec.task} task needs an image or image_size to map coordinates")
    from PIL import Image

    with Image.open(img) as im:
        return im.size


def _answer_box(rec: EvalRecord, size: tuple[int, int]) -> tuple[float, float, float, float]:
    box = [float(v) for v in rec.answer]
    fmt = rec.raw.get("box_format", "xyxy")
    if fmt == "xywh":
        return box[0], box[1], box[0] + box[2], box[1] + box[3]
    if fmt == "rel1000":
        return box_rel_to_px(box, *size)
    if fmt != "xyxy":
        raise ValueError(f"record {rec.id}: box_format {fmt!r} unknown; expected xyxy, xywh or rel1000")
    return box[0], box[1], box[2], box[3]


def score(rec: EvalRecord, reply: "ChatReply") -> dict[str, float]:
    """Metric values for one reply (means over records give the task's summary)."""
    text, fam = reply.text, rec.family
    if fam == "anls":
        refs = rec.answer if isinstance(rec.answer, list) else [str(rec.answer)]
        return {"anls": metrics.anls(answers.final_text(text), refs)}
    if fam == "exact":
        refs = rec.answer if isinstance(rec.answer, list) else [rec.answer]
        pred = metrics.normalize_text(answers.final_text(text)).rstrip(".")
        return {"accuracy": float(any(pred == metrics.normalize_text(str(r)) for r in refs))}
    if fam == "choice":
        pred = answers.extract_choice(text, rec.raw.get("options", "ABCDEFGHIJ"))
        return {"accuracy": float(pred is not None and pred == str(rec.answer).strip().upper())}
    if fam == "numeric":
        pred = answers.extract_number(text)
        ok = metrics.numeric_match(pred, float(rec.answer), rel_tol=float(rec.raw.get("tolerance", 0.0)))
        return {"accuracy": float(ok)}
    if fam == "box":
        from qwen3vl.tasks.grounding import parse_grounding_output

        size = _image_size(rec)
        boxes = parse_grounding_output(answers.final_text(text), *size).boxes
        v = metrics.iou(boxes[0].xyxy, _answer_box(rec, size)) if boxes else 0.0
        return {"iou": v, "acc@0.5": float(v >= 0.5)}
    if fam == "point":
        size = _image_size(rec)
        p = answers.extract_point(text, reply.tool_calls)
        hit = p is not None and metrics.point_in_box(point_rel_to_px(p, *size), _answer_box(rec, size))
        return {"accuracy": float(hit)}
    if fam == "temporal":
        r = parse_time_range(answers.final_text(text))
        ref = (parse_timestamp(rec.answer[0]), parse_timestamp(rec.answer[1]))
        t = metrics.temporal_iou((r.start, r.end), ref) if r else 0.0
        return {"tIoU": t, "R@0.3": float(t >= 0.3), "R@0.5": float(t >= 0.5), "R@0.7": float(t >= 0.7)}
    if fam == "json":
        return {"valid": float(metrics.json_valid(answers.final_text(text)))}
    if fam == "tool_call":
        # judge what the model wrote: the raw output when the backend kept it; calls an endpoint parsed
        # out of the text (not recoverable as written) are re-serialised and count as well-formed
        written = reply.raw_text if reply.raw_text and TOOL_OPEN in reply.raw_text else text
        if TOOL_OPEN not in written and reply.tool_calls:
            written += "".join("\n" + format_tool_call(c) for c in reply.tool_calls)
        return {"valid": float(metrics.tool_call_valid(written))}
    raise AssertionError(fam)


@dataclass
class EvalReport:
    rows: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, dict[str, float]] = field(default_factory=dict)  # task -> {"n": .., metric: mean}

    def table(self) -> str:
        return format_table(self.summary)


def summarize(rows: Sequence[dict[str, Any]]) -> dict[str, dict[str, float]]:
    acc: dict[str, dict[str, list[float]]] = {}
    for row in rows:
        per = acc.setdefault(row["task"], {})
        for k, v in row["scores"].items():
            per.setdefault(k, []).append(v)
        per.setdefault("_n", []).append(1.0)
    return {task: {"n": len(m.pop("_n")), **{k: sum(v) / len(v) for k, v in m.items()}} for task, m in acc.items()}


def format_table(summary: dict[str, dict[str, float]]) -> str:
    """A fixed-width table: task, n, then each metric (percent for rates, 4 decimals for IoU-like)."""
    lines = [("task", "n", "metric", "value")]
    for task, vals in summary.items():
        for k, v in vals.items():
            if k == "n":
                continue
            lines.append((task, str(int(vals["n"])), k, f"{100 * v:.2f}" if k not in ("anls", "iou", "tIoU") else f"{v:.4f}"))
    widths = [max(len(r[i]) for r in lines) for i in range(4)]

    def fmt(row: tuple[str, ...]) -> str:
        return "  ".join(c.ljust(w) if i < 3 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))

    return "\n".join([fmt(lines[0]), "  ".join("-" * w for w in widths), *map(fmt, lines[1:])])


def evaluate(records: Sequence[EvalRecord], backend: "ChatBackend", *, max_tokens: int = 1024,
             temperature: float = 0.0, out_path: str | Path | None = None, progress: bool = True) -> EvalReport:
    """Ask the backend each question, score the replies, write per-record rows, summarise per task.

    A backend error on one record is logged and scored as a failed reply (empty text), not raised.
    """
    from tqdm.auto import tqdm

    from qwen3vl.tasks.backends import ChatReply

    report = EvalReport()
    out = open(out_path, "w", encoding="utf-8") if out_path else None
    try:
        for rec in tqdm(records, desc="eval", unit="q", disable=not progress):
            error = None
            try:
                reply = backend.chat(rec.messages(), max_tokens=max_tokens, temperature=temperature,
                                     tools=rec.raw.get("tools"))
            except Exception as e:
                error = f"{type(e).__name__}: {e}"
                log.error("record %s: backend failed: %s", rec.id, error)
                reply = ChatReply("")
            row = {"id": rec.id, "task": rec.task, "prediction": reply.text, "scores": score(rec, reply)}
            if error:
                row["error"] = error
            report.rows.append(row)
            if out is not None:
                out.write(json.dumps(row, ensure_ascii=False) + "\n")
    finally:
        if out is not None:
            out.close()
    report.summary = summarize(report.rows)
    return report
