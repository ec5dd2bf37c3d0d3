"""Denser supervision for the from-scratch demo model: one synthetic scene, several questions.

A synthetic example's answer is one to a few tokens, while its image costs 256 patches in the ViT. Training on one
question per image therefore spends most of its compute on vision passes that each teach one token. `MultiTurnSource`
keeps each example's own question, in exactly the format the scorer asks, and adds up to `extra_turns` further
user/assistant turns about the same scene (the image is shown once), none with the own question's answer (which would
only repeat it). The own question is the first turn, or, with probability `shuffle_turns`, a random later one: with
it always first, only OCR scenes hold text, so the model learned that a picture with text means the first question is
OCR, and answered "How many squares are there?" about a picture with a word in it with OCR-like garbage (the same
question asked after an OCR turn got "1"). Their answers are read off the example's truth:

* still images: the colour of each shape that occurs once, the shape of each colour that occurs once, counts by shape
  and by colour (of kinds present), and grounding of each colour+shape label that occurs once;
* videos: when each *other* changing object appears or disappears (the skill the task tests: bind the label to its
  change); with `video_steps`, also the task in parts (`video_step_questions`): what changes at a given second, and
  whether a changing object is visible at a given second. A clip's own question then always stays first.

Questions use the generator's own phrasings (`synthetic.QUESTIONS`) and answer formats (`format_grounding`,
`format_seconds`). Example i depends only on (seed, i), so the stream stays resumable. The extra turns come from
their own generator, so the own question and answer are exactly `synthetic.iter_examples(seed, tasks)`'s example i.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np

from qwen3vl.train.data import Conversation
from qwen3vl.train.synthetic import (QUESTIONS, TASKS, SyntheticConfig, example_rng, format_grounding, format_seconds,
                                     make_example)
from qwen3vl.train.synthetic_scenes import PLURALS, to_relative


VIDEO_STEPS: dict[str, tuple[str, ...]] = {  # the video task in parts (`scene_questions(..., video_steps=True)`)
    "at": ("What happens at {t} seconds?", "What changes at {t} seconds?"),
    "visible": ("Is the {label} visible at {t} seconds?", "Can you see the {label} at {t} seconds?"),
}
VIDEO_NOTHING = "Nothing changes."


def shown_at(event: str, time: float, second: float) -> bool:
    """Whether an object that appears (`event` "appear") or disappears at `time` is visible at `second`."""
    return (second >= time) == (event == "appear")


def video_step_questions(truth: dict, ask) -> list[tuple[str, str]]:
    """The parts of "when does X change?": what changes at a given second (each event's, and one second where
    nothing does), and whether an object that changes is visible at a given second (the second before its change,
    the second of it, and the first and last second). Times are whole seconds, written as the answers write them."""
    events = [(truth["label"], truth["event"], truth["time"])] + [
        (e["label"], e["event"], e["time"]) for e in truth.get("other_events", [])]
    last = int(truth["num_frames"] / truth["fps"]) - 1  # the last whole second of the clip
    out: list[tuple[str, str]] = []
    for label, event, time in events:
        verb = "appears" if event == "appear" else "disappears"
        out.append((ask("at", t=f"{time:.1f}"), f"The {label} {verb}."))
    quiet = [s for s in range(last + 1) if all(abs(s - time) > 0.5 for _, _, time in events)]
    if quiet:
        out.append((ask("at", t=f"{quiet[len(quiet) // 2]:.1f}"), VIDEO_NOTHING))
    for label, event, time in events:
        for s in sorted({0, int(time) - 1, int(time), last}):
            if 0 <= s <= last:
                out.append((ask("visible", label=label, t=f"{s:.1f}"), "yes" if shown_at(event, time, s) else "no"))
    return out


def scene_questions(task: str, truth: dict, image_size: int,
                    rng: np.random.Generator | None = None, video_steps: bool = False) -> list[tuple[str, str]]:
    """Every (question, answer) the truth settles, in a fixed order; `rng` picks among the phrasings."""

    def ask(key: str, **fields: str) -> str:
        options = QUESTIONS[key] if key in QUESTIONS else VIDEO_STEPS[key]
        return options[int(rng.integers(len(options))) if rng is not None else 0].format(**fields)

    if task == "video_time":
        out = [(ask(e["event"], label=e["label"]), format_seconds(e["time"])) for e in truth.get("other_events", [])]
        return out + (video_step_questions(truth, ask) if video_steps else [])
    objects = truth.get("objects", [])
    shapes = Counter(o["shape"] for o in objects)
    colors = Counter(o["color"] for o in objects)
    labels = Counter((o["color"], o["shape"]) for o in objects)
    out: list[tuple[str, str]] = []
    for o in objects:
        if shapes[o["shape"]] == 1:
            out.append((ask("color", shape=o["shape"]), o["color"]))
        if colors[o["color"]] == 1:
            out.append((ask("shape", color=o["color"]), o["shape"]))
        if labels[(o["color"], o["shape"])] == 1:
            label = f"{o['color']} {o['shape']}"
            box = to_relative(tuple(o["box_px"]), image_size, image_size)
            out.append((ask("grounding", label=label), format_grounding([(box, label)])))
    for shape, n in sorted(shapes.items()):
        out.append((ask("count_shape", plural=PLURALS[shape]), str(n)))
    for color, n in sorted(colors.items()):
        out.append((ask("count_color", color=color), str(n)))
    return out


class MultiTurnSource:
    """Endless source: synthetic example i of `seed`, plus up to `extra_turns` questions about the same scene."""

    num_examples = None

    def __init__(self, seed: int, tasks: Sequence[str] = TASKS, config: SyntheticConfig | None = None,
                 extra_turns: int = 4, shuffle_turns: float = 0.0, video_steps: bool = False):
        self.seed, self.tasks, self.extra_turns = seed, tuple(tasks), extra_turns
        self.shuffle_turns, self.video_steps = shuffle_turns, video_steps
        self.config = config or SyntheticConfig()

    def __getitem__(self, index: int) -> Conversation:
        task = self.tasks[index % len(self.tasks)]
        ex = make_example(task, example_rng(self.seed, index), self.config)
        rng = np.random.default_rng([self.seed, index, 1])
        # drop the example's own question in other phrasings (and the rare other question with the same answer)
        pool = [qa for qa in scene_questions(task, ex.truth, self.config.image_size, rng, self.video_steps)
                if qa[1] != ex.answer]
        picked = [pool[int(i)] for i in rng.permutation(len(pool))[:self.extra_turns]]
        first_user, first_answer = ex.messages
        media, own = first_user["content"][:-1], first_user["content"][-1]["text"]
        turns = [(own, first_answer["content"])] + picked
        move = np.random.default_rng([self.seed, index, 2])
        # to a later turn (the media stay in the first); never past the video steps, whose "what changes at t"
        # turns would give the answer away in text
        steps = self.video_steps and task == "video_time"
        if len(turns) > 1 and not steps and move.random() < self.shuffle_turns:
            turns.insert(int(move.integers(1, len(turns))), turns.pop(0))
        messages: list[dict] = []
        for k, (question, answer) in enumerate(turns):  # the first turn shows the media, with its question
            content = media + [{"type": "text", "text": question}] if k == 0 else question
            messages += [{"role": "user", "content": content}, {"role": "assistant", "content": answer}]
        return Conversation(messages)
