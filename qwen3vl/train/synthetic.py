"""Synthetic training and evaluation data for the demo model: five tasks a tiny Qwen3-VL can learn on a CPU.

Each example is an OpenAI-style conversation (a user turn holding one image or video plus a question, then the
assistant's answer) with the ground truth the scorer needs. Examples are pure functions of (seed, index): the
index picks the task round-robin from `tasks` and seeds its own generator, so any slice of a dataset can be
rebuilt alone, and a different seed gives unrelated scenes. Docs with examples: docs/DEMO_DATA.md.

| task        | question (one of a few phrasings)                                   | answer                  |
|-------------|---------------------------------------------------------------------|-------------------------|
| color_shape | What color is the circle? / What shape is the red object?           | `red` / `circle`        |
| count       | How many triangles are there? / How many blue objects are there?    | `3`                     |
| grounding   | Locate the blue square, output its bbox coordinates using JSON ...   | ```json [{"bbox_2d"...  |
| ocr         | What is the word written in the image? / Read the text.             | `FROG` / `407`          |
| video_time  | When does the green circle appear?                                  | `At 3.0 seconds.`       |
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from qwen3vl.train.synthetic_scenes import COLORS, PLURALS, SHAPES, Scene, draw_scene, to_relative
from qwen3vl.train.synthetic_video import EVENTS, make_clip

TIME_TOLERANCE_S = 1.0  # a video_time answer counts when within this many seconds of the event

TASKS: tuple[str, ...] = ("color_shape", "count", "grounding", "ocr", "video_time")

# Capitals only, 3-5 letters, no colour or shape names (they would blur the other tasks' answers).
OCR_WORDS: tuple[str, ...] = (
    "CAT", "DOG", "SUN", "MOON", "TREE", "BOOK", "FISH", "BIRD", "CAKE", "RAIN", "SNOW", "LAMP", "SHIP", "KING",
    "ROSE", "WIND", "FIRE", "LEAF", "MILK", "DOOR", "BELL", "COIN", "DUCK", "FROG", "HAT", "KEY", "BOX", "CUP",
    "MAP", "BUS", "HOUSE", "APPLE", "CLOUD", "RIVER", "TIGER", "PIANO", "ROBOT", "TRAIN", "LEMON", "HORSE",
)

QUESTIONS: dict[str, tuple[str, ...]] = {
    "color": ("What color is the {shape}?", "Which color is the {shape}?"),
    "shape": ("What shape is the {color} object?", "Which shape is {color}?"),
    "count_shape": ("How many {plural} are there?", "Count the {plural}."),
    "count_color": ("How many {color} objects are there?",),
    "grounding": (
        "Locate the {label}, output its bbox coordinates using JSON format.",
        "Locate the {label} in the image, output its bbox coordinates using JSON format.",
    ),
    "ocr_word": ("What is the word written in the image?", "Read the text."),
    "ocr_number": ("What number is written in the image?", "Read the text."),
    "appear": ("When does the {label} appear?", "At what time does the {label} appear?"),
    "disappear": ("When does the {label} disappear?", "At what time does the {label} disappear?"),
}


@dataclass(frozen=True)
class SyntheticConfig:
    """Sizes of the generated media. Sides are multiples of 32, so Qwen3-VL's resize leaves them alone."""

    image_size: int = 256  # still images: (image_size / 32)**2 visual tokens; 256 -> 64, which is also HF's min_pixels
    video_size: int = 96  # video frames: (video_size / 32)**2 tokens per pair of frames; 96 -> 9
    fps: float = 2.0  # frames per second of the clips (Qwen3-VL samples video at 2 fps)
    min_seconds: int = 8  # clip length range, whole seconds; long enough that one guessed time rarely lands
    max_seconds: int = 16  # within the 1 s tolerance (about 3 of the 7..15 possible event times)
    second_event_p: float = 0.5  # chance that a second object also changes (> 1 s away), so the label matters
    max_count: int = 5  # largest answer of the count task

    def __post_init__(self):
        for name in ("image_size", "video_size"):
            value = getattr(self, name)
            if value < 64 or value % 32:
                raise ValueError(f"{name}={value}: use a multiple of 32, at least 64")
        if self.fps <= 0:
            raise ValueError(f"fps={self.fps}: must be positive")
        if not 2 <= self.min_seconds <= self.max_seconds:
            raise ValueError(f"min_seconds={self.min_seconds}, max_seconds={self.max_seconds}: need 2 <= min <= max")
        if not 0.0 <= self.second_event_p <= 1.0:
            raise ValueError(f"second_event_p={self.second_event_p}: must be a probability")
        if not 1 <= self.max_count <= 9:
            raise ValueError(f"max_count={self.max_count}: use 1..9 (answers are one digit)")


@dataclass
class Example:
    """One conversation and its truth. `truth` is JSON-serialisable; media live in `messages`."""

    task: str
    messages: list[dict]  # [user turn with media + question, assistant turn with `answer`]
    answer: str
    truth: dict = field(default_factory=dict)

    @property
    def prompt(self) -> list[dict]:
        """The conversation without the assistant's answer: what a model is asked."""
        return self.messages[:-1]

    @property
    def question(self) -> str:
        return next(p["text"] for p in self.messages[0]["content"] if p["type"] == "text")


# ----------------------------------------------------------------------------------------------------------------
# Answer formats


def format_grounding(boxes: Sequence[tuple[Sequence[int], str]]) -> str:
    """Official Qwen3-VL grounding output: a ```json fenced list, one tab-indented object per line (spec §10.1)."""
    lines = [
        "\t" + json.dumps({"bbox_2d": [int(v) for v in box], "label": label}, ensure_ascii=False)
        for box, label in boxes
    ]
    return "```json\n[\n" + ",\n".join(lines) + "\n]\n```"


def format_seconds(seconds: float) -> str:
    return f"At {seconds:.1f} seconds."


# ----------------------------------------------------------------------------------------------------------------
# Task builders: (rng, config) -> Example


def _pick(rng: np.random.Generator, items: Sequence):
    return items[int(rng.integers(len(items)))]


def _sample(rng: np.random.Generator, items: Sequence, k: int) -> list:
    return [items[int(i)] for i in rng.permutation(len(items))[:k]]


def _sizes(rng: np.random.Generator, side: int, lo: float, hi: float, n: int) -> list[int]:
    return [int(v) for v in rng.integers(round(lo * side), round(hi * side) + 1, size=n)]


def _image_part(scene: Scene) -> dict:
    w, h = scene.image.size
    return {"type": "image", "image": scene.image, "resized_height": h, "resized_width": w}


def _conversation(media: dict, question: str, answer: str) -> list[dict]:
    return [
        {"role": "user", "content": [media, {"type": "text", "text": question}]},
        {"role": "assistant", "content": answer},
    ]


def _distinct_pairs(rng: np.random.Generator, n: int) -> list[tuple[str, str]]:
    """n different (shape, color) pairs; shapes and colours may repeat, so names must be bound to each other."""
    pairs = [(s, c) for s in SHAPES for c in COLORS]
    return _sample(rng, pairs, n)


def _color_shape(rng: np.random.Generator, cfg: SyntheticConfig) -> Example:
    side = cfg.image_size
    n = int(rng.integers(1, 5))
    shapes, colors = _sample(rng, SHAPES, n), _sample(rng, COLORS, n)  # all different: every question is unique
    specs = list(zip(shapes, colors, _sizes(rng, side, 0.17, 0.3, n)))
    scene = draw_scene(rng, side, side, specs)
    target = scene.objects[int(rng.integers(n))]
    if rng.random() < 0.5:
        asked, question, answer = "color", _pick(rng, QUESTIONS["color"]).format(shape=target.shape), target.color
    else:
        asked, question, answer = "shape", _pick(rng, QUESTIONS["shape"]).format(color=target.color), target.shape
    truth = {"asked": asked, "shape": target.shape, "color": target.color,
             "objects": [o.to_json() for o in scene.objects]}
    return Example("color_shape", _conversation(_image_part(scene), question, answer), answer, truth)


def _count(rng: np.random.Generator, cfg: SyntheticConfig) -> Example:
    side = cfg.image_size
    k = int(rng.integers(1, cfg.max_count + 1))
    n_distract = int(rng.integers(0, 3))
    if rng.random() < 0.7:
        by, value = "shape", _pick(rng, SHAPES)
        others = [s for s in SHAPES if s != value]
        shapes = [value] * k + [_pick(rng, others) for _ in range(n_distract)]
        colors = [_pick(rng, COLORS) for _ in shapes]
        question = _pick(rng, QUESTIONS["count_shape"]).format(plural=PLURALS[value])
    else:
        by, value = "color", _pick(rng, COLORS)
        others = [c for c in COLORS if c != value]
        colors = [value] * k + [_pick(rng, others) for _ in range(n_distract)]
        shapes = [_pick(rng, SHAPES) for _ in colors]
        question = _pick(rng, QUESTIONS["count_color"]).format(color=value)
    order = rng.permutation(len(shapes))  # targets and distractors interleaved in drawing order
    sizes = _sizes(rng, side, 0.13, 0.2, len(shapes))
    specs = [(shapes[i], colors[i], sizes[j]) for j, i in enumerate(order)]
    scene = draw_scene(rng, side, side, specs)
    truth = {"count": k, "by": by, "value": value, "objects": [o.to_json() for o in scene.objects]}
    return Example("count", _conversation(_image_part(scene), question, str(k)), str(k), truth)


def _grounding(rng: np.random.Generator, cfg: SyntheticConfig) -> Example:
    side = cfg.image_size
    n = int(rng.integers(1, 5))
    pairs = _distinct_pairs(rng, n)
    specs = [(s, c, size) for (s, c), size in zip(pairs, _sizes(rng, side, 0.15, 0.3, n))]
    scene = draw_scene(rng, side, side, specs)
    target = scene.objects[int(rng.integers(n))]
    rel = to_relative(target.box, side, side)
    answer = format_grounding([(rel, target.label)])
    question = _pick(rng, QUESTIONS["grounding"]).format(label=target.label)
    truth = {"bbox_2d": rel, "box_px": list(target.box), "label": target.label, "width": side, "height": side,
             "objects": [o.to_json() for o in scene.objects]}
    return Example("grounding", _conversation(_image_part(scene), question, answer), answer, truth)


def _ocr_text(rng: np.random.Generator) -> tuple[str, str]:
    if rng.random() < 0.6:
        return "word", _pick(rng, OCR_WORDS)
    digits = int(rng.choice([1, 2, 3], p=[0.2, 0.4, 0.4]))
    first = str(int(rng.integers(0 if digits == 1 else 1, 10)))
    return "number", first + "".join(str(int(d)) for d in rng.integers(0, 10, size=digits - 1))


def _ocr(rng: np.random.Generator, cfg: SyntheticConfig) -> Example:
    side = cfg.image_size
    kind, text = _ocr_text(rng)
    text_size = int(rng.integers(round(0.125 * side), round(0.16 * side) + 1))
    n = int(rng.integers(0, 3))
    specs = list(zip(_sample(rng, SHAPES, n), _sample(rng, COLORS, n), _sizes(rng, side, 0.12, 0.18, n)))
    scene = draw_scene(rng, side, side, specs, text=text, text_size=text_size)
    question = _pick(rng, QUESTIONS[f"ocr_{kind}"])
    truth = {"text": text, "kind": kind, "box_px": list(scene.text_box),
             "objects": [o.to_json() for o in scene.objects]}
    return Example("ocr", _conversation(_image_part(scene), question, text), text, truth)


def _video_time(rng: np.random.Generator, cfg: SyntheticConfig) -> Example:
    side = cfg.video_size
    seconds = int(rng.integers(cfg.min_seconds, cfg.max_seconds + 1))
    num_frames = 2 * max(2, round(seconds * cfg.fps / 2))  # even: whole temporal patches, nothing padded
    n_pairs = num_frames // 2
    target_pair = int(rng.integers(1, n_pairs))  # events start a pair, never the first one
    n_events = 1
    if rng.random() < cfg.second_event_p:  # another object changes too, at a time that cannot pass for this one
        far = [p for p in range(1, n_pairs) if abs(p - target_pair) * 2 / cfg.fps > TIME_TOLERANCE_S]
        n_events = 2 if far else 1
    n_static = int(rng.integers(0, 3))
    pairs = _distinct_pairs(rng, n_events + n_static)
    sizes = _sizes(rng, side, 0.22, 0.32, len(pairs))
    specs = [(s, c, size) for (s, c), size in zip(pairs, sizes)]
    events = [(specs[0], _pick(rng, EVENTS), 2 * target_pair)]
    if n_events == 2:
        events.append((specs[1], _pick(rng, EVENTS), 2 * _pick(rng, far)))
    clip = make_clip(rng, side, side, num_frames=num_frames, fps=cfg.fps, events=events, statics=specs[n_events:])
    media = {"type": "video", "video": clip.frames, "fps": cfg.fps, "sample_fps": cfg.fps,
             "resized_height": side, "resized_width": side}
    target, others = clip.events[0], clip.events[1:]
    question = _pick(rng, QUESTIONS[target.event]).format(label=target.obj.label)
    answer = format_seconds(clip.time(target))
    truth = {"time": clip.time(target), "event": target.event, "event_frame": target.frame,
             "num_frames": num_frames, "fps": cfg.fps, "label": target.obj.label, "box_px": list(target.obj.box),
             "other_events": [{"label": e.obj.label, "event": e.event, "time": clip.time(e), "event_frame": e.frame,
                               "box_px": list(e.obj.box)} for e in others],
             "objects": [o.to_json() for o in clip.statics]}
    return Example("video_time", _conversation(media, question, answer), answer, truth)


_BUILDERS = {
    "color_shape": _color_shape,
    "count": _count,
    "grounding": _grounding,
    "ocr": _ocr,
    "video_time": _video_time,
}


# ----------------------------------------------------------------------------------------------------------------
# Public entry points


def make_example(task: str, rng: np.random.Generator, config: SyntheticConfig | None = None) -> Example:
    """One fresh example of `task` drawn from `rng`."""
    builder = _BUILDERS.get(task)
    if builder is None:
        raise ValueError(f"unknown task {task!r}; expected one of {TASKS}")
    return builder(rng, config or SyntheticConfig())


def example_rng(seed: int, index: int) -> np.random.Generator:
    """The generator of example `index` of dataset `seed`; independent of how many examples are made."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(index,)))


def iter_examples(
    seed: int,
    tasks: Sequence[str] = TASKS,
    config: SyntheticConfig | None = None,
    start: int = 0,
) -> Iterator[Example]:
    """Endless stream: example i has task `tasks[i % len(tasks)]` (repeat a task in `tasks` to weight it)."""
    if not tasks:
        raise ValueError("tasks is empty; pass at least one of " + ", ".join(TASKS))
    for task in tasks:
        if task not in _BUILDERS:
            raise ValueError(f"unknown task {task!r}; expected one of {TASKS}")
    config = config or SyntheticConfig()
    for i in itertools.count(start):
        yield make_example(tasks[i % len(tasks)], example_rng(seed, i), config)


def make_dataset(
    seed: int,
    n: int,
    tasks: Sequence[str] = TASKS,
    config: SyntheticConfig | None = None,
) -> list[Example]:
    """The first n examples of `iter_examples(seed, tasks, config)`: tasks round-robin, so evenly mixed."""
    if n < 0:
        raise ValueError(f"n={n}: must be >= 0")
    return list(itertools.islice(iter_examples(seed, tasks, config), n))
