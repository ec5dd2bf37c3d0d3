"""Short synthetic clips for the video-time task: a still scene in which shapes appear or disappear.

Frames are a list of PIL images sampled at `fps` (2 by default, the rate Qwen3-VL samples video at). The model
groups frames in pairs (temporal patch 2) and labels each pair `<t seconds>` with the mean time of the pair
(spec §4), so events are put on the first frame of a pair: at fps 2 an event time is a whole second and both
frames of the pair that shows the change agree. Nothing moves; the only changes are the events.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from qwen3vl.train.synthetic_scenes import PALETTE, SceneObject, background, paste, place, placed_box, shape_mask

EVENTS: tuple[str, ...] = ("appear", "disappear")

Spec = tuple[str, str, int]  # (shape, color, size in px)


@dataclass(frozen=True)
class ClipEvent:
    obj: SceneObject  # where it happens (the shape never moves)
    event: str  # "appear": absent before `frame`, present from it; "disappear": the reverse
    frame: int

    def visible(self, frame: int) -> bool:
        """Whether the object is drawn in frame `frame`."""
        after = frame >= self.frame
        return after if self.event == "appear" else not after


@dataclass
class Clip:
    frames: list[Image.Image]
    fps: float
    events: list[ClipEvent]  # events[0] is the one asked about
    statics: list[SceneObject]  # visible in every frame

    def time(self, event: ClipEvent) -> float:
        return event.frame / self.fps


def make_clip(
    rng: np.random.Generator,
    width: int,
    height: int,
    *,
    num_frames: int,
    fps: float,
    events: Sequence[tuple[Spec, str, int]],
    statics: Sequence[Spec] = (),
) -> Clip:
    """Render a clip of `num_frames` frames; `events` are (spec, "appear"|"disappear", frame) triples."""
    for _, event, frame in events:
        if event not in EVENTS:
            raise ValueError(f"unknown event {event!r}; expected one of {EVENTS}")
        if not 0 < frame < num_frames:
            raise ValueError(f"event frame {frame} must be inside the clip (1..{num_frames - 1})")
    specs = [spec for spec, _, _ in events] + list(statics)
    corners = place(rng, width, height, [(size, size) for _, _, size in specs], gap=max(3, width // 64))
    base = background(rng, width, height)
    masks = [shape_mask(shape, size) for shape, _, size in specs]
    boxes = [placed_box(mask, corner) for mask, corner in zip(masks, corners)]
    objects = [SceneObject(shape, color, box) for (shape, color, _), box in zip(specs, boxes)]
    for k in range(len(events), len(specs)):
        paste(base, masks[k], corners[k], PALETTE[specs[k][1]])
    clip_events = [ClipEvent(objects[k], event, frame) for k, (_, event, frame) in enumerate(events)]

    rendered: dict[tuple[bool, ...], Image.Image] = {}  # one image per visibility pattern
    frames = []
    for i in range(num_frames):
        pattern = tuple(e.visible(i) for e in clip_events)
        if pattern not in rendered:
            image = base.copy()
            for k, shown in enumerate(pattern):
                if shown:
                    paste(image, masks[k], corners[k], PALETTE[specs[k][1]])
            rendered[pattern] = image
        frames.append(rendered[pattern].copy())
    return Clip(frames, fps, clip_events, objects[len(events):])
