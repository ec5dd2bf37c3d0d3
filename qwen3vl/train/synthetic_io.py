"""Synthetic examples on disk: one JSONL file plus a media folder beside it, for the training CLI.

Layout for `write_jsonl(examples, "data/train.jsonl")`:

    data/train.jsonl                       one example per line: {"id", "task", "messages", "answer", "truth"}
    data/train_media/000000.png            an image
    data/train_media/000004/000.png ...    a video as a list of frames (default), or
    data/train_media/000004.mp4            a video as an mp4 (video_format="mp4"; lossless H.264 RGB)

In `messages` the image/video values become paths, relative to the JSONL file's folder unless
`absolute_paths=True`; every other key of a content part is kept as is. `read_jsonl` reverses this.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from fractions import Fraction
from pathlib import Path

from PIL import Image

from qwen3vl.jsonl import iter_jsonl
from qwen3vl.train.synthetic import Example

log = logging.getLogger(__name__)

VIDEO_FORMATS = ("frames", "mp4")


def write_mp4(frames: list[Image.Image], path: str | Path, fps: float) -> Path:
    """Encode RGB frames losslessly (libx264rgb, crf 0) so decoding gives back the exact pixels."""
    import av  # the [video] dependency, only needed here

    path = Path(path)
    rate = Fraction(fps).limit_denominator(1000)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264rgb", rate=rate)
        stream.width, stream.height = frames[0].size
        stream.pix_fmt = "rgb24"
        stream.options = {"crf": "0", "preset": "veryfast"}
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_image(frame.convert("RGB"))):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def read_mp4(path: str | Path) -> tuple[list[Image.Image], float]:
    """Decode every frame of a video; returns (frames, fps)."""
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        fps = float(stream.average_rate or stream.base_rate)
        frames = [frame.to_image() for frame in container.decode(stream)]
    return frames, fps


def _store_part(part: dict, index: int, media_dir: Path, root: Path, video_format: str, absolute: bool) -> dict:
    def ref(p: Path) -> str:
        return str(p.resolve()) if absolute else p.relative_to(root).as_posix()

    out = dict(part)
    if part["type"] == "image" and isinstance(part["image"], Image.Image):
        target = media_dir / f"{index:06d}.png"
        part["image"].save(target)
        out["image"] = ref(target)
    elif part["type"] == "video" and isinstance(part["video"], list):
        if video_format == "mp4":
            target = write_mp4(part["video"], media_dir / f"{index:06d}.mp4", part.get("sample_fps", 2.0))
            out["video"] = ref(target)
            out.pop("sample_fps", None)  # a file is sampled at "fps"; sample_fps describes frame lists only
        else:
            frame_dir = media_dir / f"{index:06d}"
            frame_dir.mkdir(exist_ok=True)
            paths = []
            for j, frame in enumerate(part["video"]):
                frame.save(frame_dir / f"{j:03d}.png")
                paths.append(ref(frame_dir / f"{j:03d}.png"))
            out["video"] = paths
    return out


def write_jsonl(
    examples: Iterable[Example],
    path: str | Path,
    *,
    video_format: str = "frames",
    absolute_paths: bool = False,
    progress: bool = True,
) -> Path:
    """Write examples to `path` (JSONL) and their media to `<stem>_media/` next to it; returns `path`."""
    if video_format not in VIDEO_FORMATS:
        raise ValueError(f"video_format={video_format!r}; expected one of {VIDEO_FORMATS}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    media_dir = path.parent / f"{path.stem}_media"
    media_dir.mkdir(exist_ok=True)
    root = path.parent
    if progress:
        from tqdm import tqdm

        examples = tqdm(examples, desc=f"writing {path.name}", unit="ex")
    count = 0
    with path.open("w", encoding="utf-8") as f:
        for index, ex in enumerate(examples):
            messages = []
            for message in ex.messages:
                content = message["content"]
                if isinstance(content, list):
                    content = [_store_part(p, index, media_dir, root, video_format, absolute_paths) for p in content]
                messages.append({**message, "content": content})
            record = {"id": index, "task": ex.task, "messages": messages, "answer": ex.answer, "truth": ex.truth}
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
            count += 1
    log.info("wrote %d examples to %s (media in %s)", count, path, media_dir)
    return path


def _load_part(part: dict, root: Path) -> dict:
    out = dict(part)
    if part["type"] == "image" and isinstance(part["image"], str):
        with Image.open(root / part["image"]) as im:
            out["image"] = im.convert("RGB")
    elif part["type"] == "video" and isinstance(part["video"], list):
        frames = []
        for p in part["video"]:
            with Image.open(root / p) as im:
                frames.append(im.convert("RGB"))
        out["video"] = frames
    elif part["type"] == "video" and isinstance(part["video"], str):
        out["video"], fps = read_mp4(root / part["video"])
        out["sample_fps"] = part.get("fps", fps)
    return out


def _load_message(message: dict, root: Path) -> dict:
    if not isinstance(message["content"], list):
        return message
    return {**message, "content": [_load_part(p, root) for p in message["content"]]}


def read_jsonl(path: str | Path, *, load_media: bool = True) -> list[Example]:
    """Read a file written by `write_jsonl`; with `load_media` the paths become PIL images / frame lists again."""
    path = Path(path)
    root = path.parent
    examples = []
    for _, record in iter_jsonl(path):
        messages = record["messages"]
        if load_media:
            messages = [_load_message(m, root) for m in messages]
        examples.append(Example(record["task"], messages, record["answer"], record.get("truth", {})))
    return examples
