"""Videos: decode with PyAV keeping only the sampled frames, resize each as it is kept, then patchify.

Memory stays bounded by the output: frames that are not sampled are dropped without RGB conversion, each sampled
frame is resized at once and streamed into the preallocated `pixel_values` one temporal patch at a time
(`PatchWriter`), and decoding stops after the last sampled frame. A 10-minute 1080p video therefore costs its
`pixel_values` plus a few frames, never its 18 000 full-size frames.

Frame k is the k-th frame the decoder puts out, as in the references (which decode every frame and index them).
Where the sampled frames lie more than a keyframe interval apart (a long video, a low `fps`), decoding the frames in
between is wasted: `iter_frames` then reads the packets' timestamps and keyframe flags first (demuxing only, no
decoding), and seeks to the keyframe before each sampled frame. Frame k is the packet with the k-th smallest
presentation timestamp; a seeked decode must meet every sampled timestamp exactly, or the rest of the video is
decoded in order after all. Packets without timestamps, repeated timestamps, or a packet count that disagrees with
the header mean decoding in order from the start.

Frames are resized with bicubic + antialias on uint8 through torch (`F.interpolate`, round, clamp), which is what the
torchvision resize in both references (qwen-vl-utils, transformers' video processor) does. Sampling rules and sizes
are in `sampling.py`. A list of frames (images) is accepted as a video too, with a given `sample_fps`.
"""

from __future__ import annotations

import io
import logging
from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from qwen3vl.processing import sources
from qwen3vl.processing.errors import MediaError
from qwen3vl.processing.image import DEFAULT_MAX_IMAGE_PIXELS, QVU_IMAGE_MAX_TOKENS, QVU_IMAGE_MIN_TOKENS, load_image
from qwen3vl.processing.media import ProcessedVideo
from qwen3vl.processing.pixels import Normalization, PatchWriter
from qwen3vl.processing.preprocessor_config import VideoConfig
from qwen3vl.processing.resize import smart_resize, smart_resize_video
from qwen3vl.processing.sampling import (
    VideoRule,
    frame_range,
    frame_size_qwen_vl_utils,
    frame_timestamps,
    num_frames_hf,
    num_frames_qwen_vl_utils,
    pad_indices,
    sample_indices,
)

logger = logging.getLogger(__name__)

_FLOAT_KEYS = ("fps", "video_start", "video_end", "total_pixels", "sample_fps", "raw_fps")
_INT_KEYS = ("nframes", "min_frames", "max_frames", "min_pixels", "max_pixels", "resized_height", "resized_width")


@dataclass(frozen=True)
class VideoOptions:
    """Per-item video keys (qwen-vl-utils names). None means "use the checkpoint/rule default"."""

    fps: float | None = None
    nframes: int | None = None
    min_frames: int | None = None
    max_frames: int | None = None
    video_start: float | None = None
    video_end: float | None = None
    min_pixels: int | None = None
    max_pixels: int | None = None
    total_pixels: float | None = None
    resized_height: int | None = None
    resized_width: int | None = None
    sample_fps: float | None = None  # frame lists: the rate the frames were taken at
    raw_fps: float | None = None  # frame lists: the source video's rate (qwen-vl-utils metadata quirk)

    @classmethod
    def from_item(cls, item: dict[str, Any]) -> VideoOptions:
        values: dict[str, Any] = {}
        for key in _FLOAT_KEYS + _INT_KEYS:
            value = item.get(key)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise MediaError(f"{key} must be a number, got {value!r}")
            if value < 0 or (value == 0 and key not in ("video_start", "video_end")):
                raise MediaError(f"{key} must be positive, got {value!r}")
            values[key] = float(value) if key in _FLOAT_KEYS else int(value)
        if values.get("fps") is not None and values.get("nframes") is not None:
            raise MediaError("give either fps or nframes for a video, not both")
        if ("resized_height" in values) != ("resized_width" in values):
            raise MediaError("resized_height and resized_width must be given together")
        return cls(**values)


@dataclass(frozen=True)
class _Plan:
    indices: list[int]  # source frames to keep, in output order
    height: int
    width: int


def resize_frame(frame_HWC: np.ndarray, height: int, width: int) -> np.ndarray:
    """uint8 (H, W, 3) -> uint8 (height, width, 3): bicubic with antialias, rounded and clamped like torchvision.

    Only the interpolation runs in torch; the casts run in NumPy, which is much faster than torch's thread pool
    for these small element-wise steps on a busy few-core machine.
    """
    if frame_HWC.shape[:2] == (height, width):
        return frame_HWC
    x_13HW = torch.from_numpy(np.ascontiguousarray(frame_HWC.transpose(2, 0, 1), dtype=np.float32))[None]
    y_3HW = F.interpolate(x_13HW, size=(height, width), mode="bicubic", align_corners=False, antialias=True)[0]
    y = np.clip(np.rint(y_3HW.numpy()), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(y.transpose(1, 2, 0))


def _plan_file(
    total: int, video_fps: float, src_h: int, src_w: int, cfg: VideoConfig, o: VideoOptions, rule: VideoRule
) -> _Plan:
    first, last = frame_range(total, video_fps, o.video_start, o.video_end)
    count = last - first + 1
    fps = o.fps if o.fps is not None else cfg.fps
    min_frames = o.min_frames if o.min_frames is not None else cfg.min_frames
    if count == 1:  # a single-frame video (e.g. a one-frame GIF): keep it, temporal padding doubles it
        n = 1
    elif rule == "qwen-vl-utils":
        max_frames = o.max_frames if o.max_frames is not None else min(cfg.max_frames, count)
        n = num_frames_qwen_vl_utils(count, video_fps, fps, min_frames, max_frames, o.nframes)
    else:
        max_frames = o.max_frames if o.max_frames is not None else cfg.max_frames
        n = num_frames_hf(count, video_fps, fps, min_frames, max_frames, o.nframes)
    indices = sample_indices(first, last, n, rule)
    height, width = _frame_size(src_h, src_w, len(indices), cfg, o, rule)
    return _Plan(indices, height, width)


def _frame_size(h: int, w: int, n: int, cfg: VideoConfig, o: VideoOptions, rule: VideoRule) -> tuple[int, int]:
    f = cfg.factor
    if o.resized_height is not None and o.resized_width is not None:
        lo, hi = QVU_IMAGE_MIN_TOKENS * f * f, QVU_IMAGE_MAX_TOKENS * f * f
        return smart_resize(o.resized_height, o.resized_width, f, lo, hi, rule="qwen-vl-utils")
    if rule == "hf":
        lo = o.min_pixels if o.min_pixels is not None else cfg.min_pixels
        hi = o.max_pixels if o.max_pixels is not None else cfg.max_pixels
        return smart_resize_video(max(n, cfg.temporal_patch_size), h, w, f, cfg.temporal_patch_size, lo, hi)
    n_even = max(n + (-n % cfg.temporal_patch_size), cfg.temporal_patch_size)
    return frame_size_qwen_vl_utils(
        h,
        w,
        n_even,
        f,
        cfg.min_tokens_per_frame,
        cfg.max_tokens_per_frame,
        o.total_pixels if o.total_pixels is not None else cfg.total_pixels,
        o.min_pixels,
        o.max_pixels,
    )


def _open(data: bytes | Path):
    import av  # optional heavy dependency: imported where used

    try:
        container = av.open(io.BytesIO(data) if isinstance(data, bytes) else str(data), mode="r")
    except (av.FFmpegError, OSError, ValueError) as e:
        raise MediaError(f"cannot read video: {e}") from None
    if not container.streams.video:
        container.close()
        raise MediaError("video has no frames: the file holds no video stream")
    return container


def probe(data: bytes | Path) -> tuple[int, float, int, int]:
    """(total_frames, fps, height, width) from the container; frames are counted from packets when the header
    does not say (webm/mkv/gif), which reads the file but decodes nothing."""
    import av

    container = _open(data)
    try:
        stream = container.streams.video[0]
        height, width = stream.codec_context.height, stream.codec_context.width
        total = stream.frames
        if not total:
            total = sum(1 for packet in container.demux(stream) if packet.size)
        rate = stream.average_rate or stream.guessed_rate
        fps = float(rate) if rate else 0.0
        if fps <= 0 and stream.duration and stream.time_base:
            fps = total / float(stream.duration * stream.time_base)
    except av.FFmpegError as e:
        raise MediaError(f"cannot read video: {e}") from None
    finally:
        container.close()
    if total <= 0:
        raise MediaError("video has no frames")
    if fps <= 0:
        raise MediaError("video frame rate is unknown")
    if height <= 0 or width <= 0:
        raise MediaError(f"video frames are {width}x{height} pixels")
    return total, fps, height, width


# A seek is worth it when it skips at least this many frames (flushing the decoder and starting again at a keyframe
# costs a few frames' decoding of its own).
SEEK_MIN_SKIP = 16


# How far a packet's place in decode order may be from its frame's place in presentation order (B-frame reordering
# stays well within this); further apart means timestamps that restart or jump (concatenated clips): no seeking.
MAX_REORDER = 16
# Demuxers that find a seek target by presentation timestamp; the others (MPEG-TS, AVI, ...) by decode timestamp.
_SEEK_BY_PTS = ("mov", "mp4", "matroska", "webm")


@dataclass(frozen=True)
class _Step:
    target: int  # the sampled frame's presentation timestamp
    seek_to: int | None  # the timestamp to seek to first; None: go on decoding from the previous sampled frame
    key: int  # the presentation timestamp of the keyframe the seek must land on (or before)


def _seek_plan(data: bytes | Path, indices: Sequence[int]) -> list[_Step] | None:
    """How to reach each distinct index in `indices` by seeking; None when no seek would pay or the packets
    cannot be trusted to number the frames as the decoder does (then everything is decoded in order)."""
    import av

    distinct = sorted(set(indices))
    if max(b - a for a, b in zip([-1, *distinct], distinct)) - 1 < SEEK_MIN_SKIP:
        return None  # no gap wide enough for a seek to pay: spare the demuxing pass
    container = _open(data)
    try:
        stream = container.streams.video[0]
        by_pts = any(name in _SEEK_BY_PTS for name in container.format.name.split(","))
        declared = stream.frames
        pts: list[int] = []
        keys: list[tuple[int, int]] = []  # (pts, the timestamp to seek to for it)
        first = True
        for packet in container.demux(stream):
            if not packet.size:
                continue
            if first and not packet.is_keyframe:
                return None  # starts mid-GOP: the decoder drops frames the packets would count
            first = False
            if packet.is_discard:
                continue
            if packet.pts is None:
                return None
            pts.append(packet.pts)
            if packet.is_keyframe:
                keys.append((packet.pts, packet.pts if by_pts or packet.dts is None else packet.dts))
    except av.FFmpegError:
        return None
    finally:
        container.close()
    order = sorted(pts)
    if not keys or len(set(order)) != len(order) or (declared and declared != len(order)) or indices[-1] >= len(order):
        return None
    if order[0] != min(k for k, _ in keys):
        return None  # frames shown before the first keyframe (leading pictures): the decoder may drop them
    rank = {t: k for k, t in enumerate(order)}
    if any(abs(rank[t] - k) > MAX_REORDER for k, t in enumerate(pts)):
        return None  # timestamps that restart or jump: sorting them does not number the frames
    keys.sort()
    key_pts = [k for k, _ in keys]
    plan: list[_Step] = []
    done = -1  # frames up to this index are behind the decoder
    for index in distinct:
        target = order[index]
        j = bisect_right(key_pts, target) - 1
        key = bisect_left(order, key_pts[j])  # the keyframe's frame index (j >= 0: order[0] is a keyframe)
        seek = key - done - 1 >= SEEK_MIN_SKIP
        plan.append(_Step(target, keys[j][1] if seek else None, key_pts[j]))
        done = index
    return plan if any(step.seek_to is not None for step in plan) else None


class _SeekMissed(Exception):
    """A seek did not land where the plan said: the rest is decoded in order."""


def _decode_to(frames: Iterator, pts: int):
    """Decode on to the frame with presentation timestamp `pts`; raises _SeekMissed if the stream passes or ends
    before it."""
    for frame in frames:
        if frame.pts is None or frame.pts >= pts:
            if frame.pts != pts:
                break
            return frame
    raise _SeekMissed


def _frames_seeking(data: bytes | Path, plan: list[_Step], height: int, width: int) -> Iterator[np.ndarray]:
    """The planned frames, resized, one by one; raises _SeekMissed when a seek does not land on (or before) its
    keyframe, the frame there is not a keyframe (a container that flags frames wrongly), or a planned timestamp is
    not met."""
    import av

    container = _open(data)
    try:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        frames = None
        for step in plan:
            if frames is None or step.seek_to is not None:
                if step.seek_to is not None:
                    container.seek(step.seek_to, stream=stream, backward=True, any_frame=False)
                frames = container.decode(stream)
                if step.seek_to is not None:
                    frame = _decode_to(frames, step.key)
                    if not frame.key_frame:
                        raise _SeekMissed
                    if step.key == step.target:
                        yield resize_frame(frame.to_ndarray(format="rgb24"), height, width)
                        continue
            frame = _decode_to(frames, step.target)
            yield resize_frame(frame.to_ndarray(format="rgb24"), height, width)
    except av.FFmpegError:
        raise _SeekMissed from None
    finally:
        container.close()


def iter_frames(
    data: bytes | Path, indices: Sequence[int], height: int, width: int, seek: bool = True
) -> Iterator[np.ndarray]:
    """The frames at ascending `indices` (repeats allowed), each resized to (height, width) as it is decoded.

    Yields uint8 (height, width, 3) arrays in order. With `seek`, sampled frames far apart are reached by seeking
    to keyframes (module docstring); the frames are the same. If the stream ends before a requested index (headers
    can overstate the frame count) or cannot be decoded further, the last decoded frame stands in for the rest,
    with a warning; a stream that yields no frame at all is an error.
    """
    if any(b < a for a, b in zip(indices, indices[1:], strict=False)):
        raise ValueError("frame indices must be ascending")
    plan = _seek_plan(data, indices) if seek and len(indices) > 0 else None
    if plan is None:
        yield from _frames_in_order(data, indices, height, width)
        return
    pos = 0  # indices[:pos] are out
    last = None
    try:
        for last in _frames_seeking(data, plan, height, width):
            index = indices[pos]
            while pos < len(indices) and indices[pos] == index:
                yield last
                pos += 1
    except _SeekMissed:
        logger.info("video seeking missed frame %d; decoding the rest in order", indices[pos])
        yield from _frames_in_order(data, indices[pos:], height, width, last)


def _frames_in_order(data: bytes | Path, indices: Sequence[int], height: int, width: int,
                     last: np.ndarray | None = None) -> Iterator[np.ndarray]:
    """`last`: a frame already given out (before a seek missed), which stands in if decoding fails at once."""
    import av

    n, pos = len(indices), 0
    container = _open(data)
    try:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for i, frame in enumerate(container.decode(stream)):
            if pos >= n:
                break
            if i == indices[pos]:
                last = resize_frame(frame.to_ndarray(format="rgb24"), height, width)
                while pos < n and indices[pos] == i:
                    yield last
                    pos += 1
    except av.FFmpegError as e:
        if last is None:
            raise MediaError(f"cannot decode video: {e}") from None
        logger.warning("video decoding stopped early (%s); reusing the last decoded frame", e)
    finally:
        container.close()
    if last is None:
        raise MediaError("video has no decodable frames")
    if pos < n:
        logger.warning("video ended before frame %d; reusing the last decoded frame", indices[pos])
        for _ in range(n - pos):
            yield last


def _assemble(
    frames: Iterable[np.ndarray],
    n: int,
    height: int,
    width: int,
    indices: list[int],
    video_fps: float,
    cfg: VideoConfig,
    timestamp_indices: list[int] | None = None,
) -> ProcessedVideo:
    norm = Normalization(cfg.image_mean, cfg.image_std, cfg.rescale_factor)
    writer = PatchWriter("video", n, height, width, norm, cfg.patch_size, cfg.merge_size, cfg.temporal_patch_size)
    for frame in frames:
        writer.add(frame)
    pixel_values, grid, digest = writer.finish()
    stamps = frame_timestamps(timestamp_indices or indices, video_fps, cfg.temporal_patch_size)
    return ProcessedVideo(pixel_values, grid, digest, tuple(stamps), tuple(indices), video_fps, cfg.merge_size)


def process_video_file(
    src: Any,
    cfg: VideoConfig,
    opts: VideoOptions,
    rule: VideoRule = "qwen-vl-utils",
    fetch: sources.FetchOptions | None = None,
) -> ProcessedVideo:
    """A video file/URL/data URI/bytes -> ProcessedVideo."""
    data = sources.resolve(src, fetch or sources.FetchOptions())
    total, video_fps, src_h, src_w = probe(data)
    plan = _plan_file(total, video_fps, src_h, src_w, cfg, opts, rule)
    frames = iter_frames(data, plan.indices, plan.height, plan.width)
    return _assemble(frames, len(plan.indices), plan.height, plan.width, plan.indices, video_fps, cfg)


def process_video_frames(
    frames: Sequence[Any],
    cfg: VideoConfig,
    opts: VideoOptions,
    rule: VideoRule = "qwen-vl-utils",
    fetch: sources.FetchOptions | None = None,
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
) -> ProcessedVideo:
    """A list of frames (any image source) taken at `sample_fps` (default 2) -> ProcessedVideo.

    qwen-vl-utils rule (as on its GitHub master, which fixed 0.0.14's patch-32 bug for frame lists): the size is the
    image smart_resize of the first frame followed by the per-frame video budget, applied as ONE resize; the list
    is padded to an even length; timestamps use indices 0..n_padded-1 at `raw_fps` (default `sample_fps`).
    hf rule: the 3-D budget over all frames, padding repeats the last index.
    Frames of a different size than the first are resized to the same target.
    """
    if len(frames) == 0:
        raise MediaError("video frame list is empty")
    images = []
    for k, frame in enumerate(frames):
        try:
            images.append(load_image(frame, fetch, max_image_pixels))
        except MediaError as e:
            raise MediaError(f"frame {k}: {e}") from None
    sample_fps = opts.sample_fps if opts.sample_fps is not None else 2.0
    width0, height0 = images[0].size
    n = len(images)
    f = cfg.factor
    if rule == "qwen-vl-utils":
        if opts.resized_height is None:
            lo = opts.min_pixels if opts.min_pixels is not None else QVU_IMAGE_MIN_TOKENS * f * f
            hi = opts.max_pixels if opts.max_pixels is not None else QVU_IMAGE_MAX_TOKENS * f * f
            height0, width0 = smart_resize(height0, width0, f, lo, hi, rule="qwen-vl-utils")
        n_padded = n + (-n % cfg.temporal_patch_size)
        height, width = _frame_size(height0, width0, n_padded, cfg, opts, rule)
        indices = list(range(n))
        stamp_indices = list(range(n_padded))
        video_fps = opts.raw_fps if opts.raw_fps is not None else sample_fps
    else:
        height, width = _frame_size(height0, width0, n, cfg, opts, rule)
        indices = list(range(n))
        stamp_indices = pad_indices(indices, cfg.temporal_patch_size)
        video_fps = sample_fps
    frames = (resize_frame(np.asarray(img), height, width) for img in images)
    return _assemble(frames, n, height, width, indices, video_fps, cfg, stamp_indices)
