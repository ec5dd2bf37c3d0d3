"""Scoring the demo tasks: one rule per task, and `evaluate`, which runs a model over fresh synthetic scenes.

| task        | a prediction is right when                                                               |
|-------------|------------------------------------------------------------------------------------------|
| color_shape | it equals the answer after lower-casing and dropping punctuation (`"Red."` == `"red"`)   |
| count       | its first integer (digits, or a number word up to ten) equals the count                  |
| grounding   | a box parsed from it (0..1000 coordinates) has IoU >= 0.5 with the drawn object's box    |
| ocr         | it equals the text exactly, case included, after trimming spaces, quotes and a final "." |
| video_time  | its first time (`3.0`, `3 seconds`, `00:03.0`) is within 1.0 s of the event              |

Grounding uses the project's `qwen3vl.tasks.parse_grounding(text, width, height)` when it exists (imported lazily,
expected to return boxes in pixels of a width x height image), or a parser passed in, or the small one here.
"""

from __future__ import annotations

import itertools
import json
import logging
import re
from collections.abc import Callable, Sequence

from qwen3vl.train.synthetic import TASKS, TIME_TOLERANCE_S, Example, SyntheticConfig, iter_examples
from qwen3vl.train.synthetic_scenes import to_pixels

log = logging.getLogger(__name__)

IOU_THRESHOLD = 0.5

GroundingParser = Callable[[str, int, int], object]

_NUMBER_WORDS = {w: i for i, w in enumerate(
    ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"])}
_FOUR = r"\s*,\s*".join([r"(-?\d+(?:\.\d+)?)"] * 4)  # x1, y1, x2, y2
_BBOX_RE = re.compile(r'"bbox_2d"\s*:\s*\[\s*' + _FOUR + r"\s*\]")
_QUAD_RE = re.compile(r"[\[(]\s*" + _FOUR + r"\s*[\])]")
_LABEL_RE = re.compile(r'"label"\s*:\s*"((?:[^"\\]|\\.)*)"')
_CLOCK_RE = re.compile(r"(?<![\d.])(?:(\d+):)?(\d{1,2}):(\d{1,2}(?:\.\d+)?)")


# ----------------------------------------------------------------------------------------------------------------
# Parsers


def normalize_answer(text: str) -> str:
    """Lower-case, punctuation to spaces, single spaces: `" Red! "` -> `"red"`."""
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


def parse_int(text: str) -> int | None:
    """The first whole number in `text` (digits, or a number word zero..ten), else None."""
    match = re.search(r"\d+|\b(?:" + "|".join(_NUMBER_WORDS) + r")\b", text.lower())
    if match is None:
        return None
    token = match.group(0)
    return int(token) if token.isdigit() else _NUMBER_WORDS[token]


def parse_seconds(text: str) -> float | None:
    """The first time in `text`, in seconds: `"At 3.0 seconds."` -> 3.0, `"00:03.5"` -> 3.5, else None."""
    clock = _CLOCK_RE.search(text)
    number = re.search(r"\d+(?:\.\d+)?", text)
    if clock is not None and (number is None or clock.start() <= number.start()):
        hours, minutes, seconds = clock.groups()
        return int(hours or 0) * 3600 + int(minutes) * 60 + float(seconds)
    return float(number.group(0)) if number is not None else None


def parse_boxes(text: str) -> list[tuple[list[float], str | None]]:
    """Boxes in a grounding answer, as (0..1000 box, label or None). Tolerant of broken JSON.

    Reads each `{...}` object holding `"bbox_2d": [x1, y1, x2, y2]` (and its "label"); failing that, any
    `"bbox_2d"` list; failing that, any bracketed group of four numbers.
    """
    boxes = []
    for chunk in re.findall(r"\{[^{}]*\}", text):
        box = _BBOX_RE.search(chunk)
        if box is not None:
            label = _LABEL_RE.search(chunk)
            boxes.append(([float(v) for v in box.groups()], _unescape(label.group(1)) if label else None))
    if not boxes:
        boxes = [([float(v) for v in m.groups()], None) for m in _BBOX_RE.finditer(text)]
    if not boxes:
        boxes = [([float(v) for v in m.groups()], None) for m in _QUAD_RE.finditer(text)]
    return boxes


def _unescape(s: str) -> str:
    try:
        return json.loads(f'"{s}"')
    except json.JSONDecodeError:
        return s


def parse_grounding_builtin(text: str, width: int, height: int) -> list[dict]:
    """The fallback grounding parser: `[{"bbox": pixel box, "label": str | None}, ...]` for a width x height image."""
    return [{"bbox": to_pixels(box, width, height), "label": label} for box, label in parse_boxes(text)]


def _project_parser() -> GroundingParser | None:
    try:
        from qwen3vl.tasks import parse_grounding
    except (ImportError, AttributeError):
        return None
    return parse_grounding


def _as_boxes(result: object) -> list[tuple[tuple[float, ...], str | None]]:
    """Read (pixel box, label) pairs out of whatever a grounding parser returned (dicts, objects, or bare boxes)."""
    if result is None:
        return []
    if isinstance(result, dict) or not isinstance(result, Sequence) or (
            len(result) == 4 and all(isinstance(v, (int, float)) for v in result)):
        result = [result]
    boxes = []
    for item in result:
        if isinstance(item, dict):
            box = next((item[k] for k in ("bbox", "bbox_2d", "box") if item.get(k) is not None), None)
            label = item.get("label")
        elif isinstance(item, Sequence) and len(item) == 4 and not isinstance(item, str):
            box, label = item, None
        else:
            box = next((getattr(item, k) for k in ("bbox", "bbox_2d", "box") if getattr(item, k, None) is not None),
                       None)
            label = getattr(item, "label", None)
        if box is not None and len(box) == 4:
            boxes.append((tuple(float(v) for v in box), label))
    return boxes


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two (x1, y1, x2, y2) boxes; corners may come in either order."""
    ax1, ax2 = sorted((a[0], a[2]))
    ay1, ay2 = sorted((a[1], a[3]))
    bx1, bx2 = sorted((b[0], b[2]))
    by1, by2 = sorted((b[1], b[3]))
    inter = max(0.0, min(ax2, bx2) - max(ax1, bx1)) * max(0.0, min(ay2, by2) - max(ay1, by1))
    union = (ax2 - ax1) * (ay2 - ay1) + (bx2 - bx1) * (by2 - by1) - inter
    return inter / union if union > 0 else 0.0


# ----------------------------------------------------------------------------------------------------------------
# Scoring


def _strip_ocr(text: str) -> str:
    text = text.strip().strip("\"'`“”‘’").strip()
    return text[:-1].rstrip() if text.endswith(".") else text


def predicted_box(prediction: str, example: Example,
                  parser: GroundingParser | None = None) -> tuple[float, ...] | None:
    """The pixel box a grounding answer is scored by: the first box labelled as asked, else the first box; None when
    there is none (or the parser rejected the answer)."""
    truth = example.truth
    width, height = truth["width"], truth["height"]
    parser = parser or _project_parser()
    boxes = None
    if parser is not None:
        try:
            boxes = _as_boxes(parser(prediction, width, height))
        except TypeError as e:  # a parser with another signature: do not let it zero the metric silently
            log.warning("grounding parser %r failed (%s); using the built-in parser", parser, e)
        except Exception:  # the parser rejected a malformed answer
            return None
    if boxes is None:
        boxes = _as_boxes(parse_grounding_builtin(prediction, width, height))
    if not boxes:
        return None
    wanted = normalize_answer(truth["label"])
    return next((b for b, label in boxes if label is not None and normalize_answer(str(label)) == wanted), boxes[0][0])


def _score_grounding(prediction: str, example: Example, parser: GroundingParser | None) -> bool:
    box = predicted_box(prediction, example, parser)
    return box is not None and box_iou(box, example.truth["box_px"]) >= IOU_THRESHOLD


def score(task: str, prediction: str, example: Example, *, parse_grounding: GroundingParser | None = None) -> bool:
    """Whether `prediction` answers `example` (a `task` example) correctly; rules in the module docstring."""
    if task != example.task:
        raise ValueError(f"scoring a {example.task!r} example as {task!r}")
    if task == "color_shape":
        return normalize_answer(prediction) == normalize_answer(example.answer)
    if task == "count":
        return parse_int(prediction) == example.truth["count"]
    if task == "grounding":
        return _score_grounding(prediction, example, parse_grounding)
    if task == "ocr":
        return _strip_ocr(prediction) == example.truth["text"]
    if task == "video_time":
        seconds = parse_seconds(prediction)
        return seconds is not None and abs(seconds - example.truth["time"]) <= TIME_TOLERANCE_S
    raise ValueError(f"unknown task {task!r}; expected one of {TASKS}")


GREY = (128, 128, 128)


def grey_out(messages: list[dict]) -> list[dict]:
    """The same conversation with every picture and video frame replaced by a flat grey one of its size.

    Asked this way, a model can answer only from the text: its scores are the answer priors it learnt, the floor a
    model that reads the pictures must clear (`qwen3vl eval synthetic --blind`). The messages given are not changed.
    """
    from PIL import Image

    def grey(picture):
        if not isinstance(picture, Image.Image):
            raise TypeError(f"grey_out needs PIL images in the messages, not {type(picture).__name__}")
        return Image.new("RGB", picture.size, GREY)

    out = []
    for message in messages:
        content = message["content"]
        if isinstance(content, list):
            content = [{**part, "image": grey(part["image"])} if part.get("type") == "image" else
                       {**part, "video": [grey(f) for f in part["video"]]} if part.get("type") == "video" else part
                       for part in content]
        out.append({**message, "content": content})
    return out


def evaluate(
    generate_fn: Callable[[list[dict]], str],
    seed: int,
    n: int,
    *,
    tasks: Sequence[str] = TASKS,
    config: SyntheticConfig | None = None,
    parse_grounding: GroundingParser | None = None,
    records: list | None = None,
    progress: bool = True,
) -> dict[str, float]:
    """Accuracy per task over n fresh examples of seed `seed` (tasks round-robin, so n is split evenly).

    `generate_fn(messages) -> str` gets the user turn only (`Example.prompt`). Pass a list as `records` to collect
    one dict per example (index, task, question, answer, prediction, correct) for error analysis.
    """
    if n < len(tasks):
        raise ValueError(f"n={n} is smaller than the number of tasks ({len(tasks)}); every task needs an example")
    hits = dict.fromkeys(tasks, 0)
    totals = dict.fromkeys(tasks, 0)
    stream = itertools.islice(iter_examples(seed, tasks, config), n)
    if progress:
        from tqdm import tqdm

        stream = tqdm(stream, total=n, desc="evaluating", unit="ex")
    for index, example in enumerate(stream):
        prediction = generate_fn(example.prompt)
        correct = score(example.task, prediction, example, parse_grounding=parse_grounding)
        hits[example.task] += correct
        totals[example.task] += 1
        if records is not None:
            records.append({"index": index, "task": example.task, "question": example.question,
                            "answer": example.answer, "prediction": prediction, "correct": correct})
    return {task: hits[task] / totals[task] for task in tasks}
