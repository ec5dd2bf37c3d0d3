"""Cut a time range out of a video with PyAV (re-encoding, video stream only).

Re-encoding makes the cut frame-exact: the clip holds exactly the source frames with
`start <= t < end`, re-timed to begin at 0. Stream copy would have to start at a keyframe. Audio is not
carried over. H.264 with yuv420p needs even sizes, so an odd width or height loses its last pixel row or
column.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path


@dataclass
class ClipInfo:
    path: str
    start: float
    end: float
    frames: int
    fps: float
    width: int
    height: int


def probe(path: str | Path) -> tuple[float, float, int]:
    """(duration in seconds, fps, frame count) of the first video stream, decoding if the header lacks them."""
    import av

    with av.open(str(path)) as inp:
        if not inp.streams.video:
            raise ValueError(f"{path} has no video stream")
        vs = inp.streams.video[0]
        fps = float(vs.average_rate or vs.guessed_rate or 0) or 25.0
        duration = float(vs.duration * vs.time_base) if vs.duration and vs.time_base else 0.0
        if not duration and inp.duration:
            duration = inp.duration / 1_000_000
        frames = vs.frames or int(round(duration * fps))
        return duration, fps, frames


def cut_clip(src: str | Path, dst: str | Path, start: float, end: float, *, codec: str = "libx264",
             crf: int = 18) -> ClipInfo:
    """Write the frames of `src` with start <= t < end to `dst`; returns what was written."""
    import av

    if not end > start:
        raise ValueError(f"clip range {start:.3f}..{end:.3f} s is empty; the end must be after the start")
    start = max(0.0, float(start))
    with av.open(str(src)) as inp:
        if not inp.streams.video:
            raise ValueError(f"{src} has no video stream")
        vs = inp.streams.video[0]
        rate = Fraction(vs.average_rate or vs.guessed_rate or 25).limit_denominator(1001 * 1000)
        width, height = vs.codec_context.width // 2 * 2, vs.codec_context.height // 2 * 2
        if start > 0 and vs.time_base:
            inp.seek(int(start / vs.time_base), stream=vs, backward=True, any_frame=False)
        n = 0
        eps = 0.5 / float(rate)  # frame times are rounded to the stream time base
        with av.open(str(dst), "w") as out:
            ostream = out.add_stream(codec, rate=rate)
            ostream.width, ostream.height, ostream.pix_fmt = width, height, "yuv420p"
            if codec == "libx264":
                ostream.options = {"crf": str(crf)}
            for frame in inp.decode(vs):
                t = frame.time
                if t is None:
                    continue
                if t < start - eps:
                    continue
                if t >= end - eps:
                    break
                img = frame.reformat(width=width, height=height, format="yuv420p")
                img.pts = n
                img.time_base = Fraction(1, 1) / rate
                for packet in ostream.encode(img):
                    out.mux(packet)
                n += 1
            for packet in ostream.encode():
                out.mux(packet)
    if n == 0:
        raise ValueError(f"no frames of {src} fall in {start:.3f}..{end:.3f} s (is the range past the end?)")
    return ClipInfo(str(dst), start, start + n / float(rate), n, float(rate), width, height)
