"""Video moments: timestamps and ranges in model answers, sampled-frame mapping, SRT / WebVTT captions.

Qwen3-VL sees a video as frames interleaved with text timestamps `<t.t seconds>` (spec §4) and is asked
for times in formats such as `mm:ss.ff`. Answers come back in many shapes; all of these parse:

* clock times `01:28.00`, `1:02:03.5`, and `<12.5 seconds>`, `12.5s`, `12.5 sec`, plain `12.5`;
* ranges "from 00:12 to 00:20", "between 12.5 and 20 seconds", "12.5-20.0 seconds", "00:12 ~ 00:20",
  JSON `{"start": .., "end": ..}` or `[12.5, 20.0]`;
* dense captions as the video cookbook's model emits them, a JSON object
  `{"00:23.00 - 00:48.00": "trim the fat ...", ...}`, or a list of `{start, end, caption}`, or lines.

Range search prefers clock times or numbers with a unit, so "3 to 5 people" is not a time range unless
nothing better is in the answer.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

from qwen3vl.tasks.jsonish import extract_json

_UNIT = r"(?:(?:s|sec|secs|second|seconds)\b)"
_CLOCK = r"\d{1,3}(?::\d{1,2}){1,2}(?:\.\d+)?"
_NUM = r"\d+(?:\.\d+)?"
# one time value: <12.5 seconds> | clock | number with optional unit
_TIME = rf"(?:<\s*{_NUM}\s*{_UNIT}?\s*>|{_CLOCK}|{_NUM}(?:\s*{_UNIT})?)"
_SEP = r"\s*(?:-|–|—|~|to|until|till|through|and)\s*"
_RANGE = re.compile(rf"(?:(from|between)\s+)?({_TIME}){_SEP}({_TIME})(\s*{_UNIT})?", re.I)
_TIME_RE = re.compile(_TIME, re.I)
_START_KEYS = ("start", "start_time", "begin", "from", "start_timestamp")
_END_KEYS = ("end", "end_time", "stop", "to", "end_timestamp")
_TEXT_KEYS = ("caption", "event", "description", "text", "sentence", "label", "content")


def parse_timestamp(value: str | float | int) -> float:
    """Seconds from one time value: `01:28.00`, `1:02:03`, `<12.5 seconds>`, `12.5s`, `12.5`, or a number."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    s = str(value).strip()
    m = re.fullmatch(rf"<?\s*({_NUM})\s*(?:{_UNIT})?\s*>?", s, re.I)
    if m:
        return float(m.group(1))
    m = re.fullmatch(r"(\d+)\s*(?:m|min|mins|minutes?)\s*(\d+(?:\.\d+)?)\s*(?:s|sec|secs|seconds?)?", s, re.I)
    if m:
        return int(m.group(1)) * 60 + float(m.group(2))
    if re.fullmatch(_CLOCK, s):
        parts = s.split(":")
        secs = 0.0
        for p in parts:
            secs = secs * 60 + float(p)
        return secs
    raise ValueError(f"cannot read a time from {value!r}; expected mm:ss.ff, hh:mm:ss, <t seconds> or seconds")


def format_mmss(t: float) -> str:
    """Seconds as `mm:ss.ff` (the format the video prompts ask for); minutes grow past 59."""
    cs = int(round(t * 100))
    return f"{cs // 6000:02d}:{(cs % 6000) // 100:02d}.{cs % 100:02d}"


@dataclass
class TimeRange:
    start: float
    end: float
    text: str = ""  # the span of the answer it was read from
    swapped: bool = False

    @property
    def duration(self) -> float:
        return self.end - self.start

    def to_dict(self) -> dict[str, Any]:
        return {"start": self.start, "end": self.end, "text": self.text, "swapped": self.swapped}


def _make_range(a: float, b: float, text: str) -> TimeRange:
    return TimeRange(min(a, b), max(a, b), text, swapped=a > b)


def _is_strong(token: str) -> bool:
    """A clock time or a number with a unit, as opposed to a bare number."""
    return ":" in token or "<" in token or bool(re.search(_UNIT, token, re.I))


def find_time_ranges(text: str) -> list[TimeRange]:
    """Every range written in prose, strong ones (clock/unit) first is up to the caller; order = text order."""
    out = []
    for m in _RANGE.finditer(text):
        intro, a, b, unit = m.group(1), m.group(2), m.group(3), m.group(4)
        sep = text[m.end(2):m.start(3)].strip().lower()
        if sep == "and" and (intro or "").lower() != "between":
            continue
        strong = _is_strong(a) or _is_strong(b) or bool(unit) or bool(intro)
        if not strong:
            continue
        out.append(_make_range(parse_timestamp(_strip_unit(a)), parse_timestamp(_strip_unit(b)), m.group(0).strip()))
    return out


def _strip_unit(token: str) -> str:
    return re.sub(rf"\s*{_UNIT}", "", token.strip(), flags=re.I).strip()


def _range_from_json(value: Any) -> TimeRange | None:
    if isinstance(value, dict):
        s = next((value[k] for k in _START_KEYS if k in value), None)
        e = next((value[k] for k in _END_KEYS if k in value), None)
        if s is not None and e is not None:
            try:
                return _make_range(parse_timestamp(s), parse_timestamp(e), f"{s} - {e}")
            except ValueError:
                return None
        for k in ("time", "timestamp", "timestamps", "range", "span"):
            if k in value:
                return _range_from_json(value[k]) or (parse_time_range(value[k]) if isinstance(value[k], str) else None)
    if isinstance(value, (list, tuple)) and len(value) == 2 and all(isinstance(v, (int, float, str)) for v in value):
        try:
            return _make_range(parse_timestamp(value[0]), parse_timestamp(value[1]), f"{value[0]} - {value[1]}")
        except ValueError:
            return None
    return None


def parse_time_range(text: str) -> TimeRange | None:
    """The (first) time range an answer states, or None.

    Tries JSON ({"start", "end"}, [s, e]), then prose ranges, then - as a last resort - the first two
    time values in the answer ("starts at 00:12 and ends at 00:20").
    """
    if "{" in text or "[" in text:
        for v in extract_json(text).values:
            for cand in (v if isinstance(v, list) and v and isinstance(v[0], (dict, list)) else [v]):
                r = _range_from_json(cand)
                if r is not None:
                    return r
    ranges = find_time_ranges(text)
    if ranges:
        return ranges[0]
    tokens = [t for t in _TIME_RE.findall(text) if _is_strong(t)]
    if len(tokens) >= 2:
        return _make_range(parse_timestamp(_strip_unit(tokens[0])), parse_timestamp(_strip_unit(tokens[1])),
                           f"{tokens[0]} ... {tokens[1]}")
    m = re.search(rf"({_NUM})\s*(?:-|–|to)\s*({_NUM})", text)
    if m:
        return _make_range(float(m.group(1)), float(m.group(2)), m.group(0))
    return None


# ---------------------------------------------------------------------------------------------- captions

@dataclass
class Caption:
    start: float
    end: float
    text: str


def parse_dense_captions(text: str) -> list[Caption]:
    """Timed captions from a dense-captioning answer (JSON object/list or one event per line), by start."""
    caps: list[Caption] = []
    if "{" in text or "[" in text:
        for v in extract_json(text).values:
            items = v if isinstance(v, list) else [v]
            for item in items:
                if not isinstance(item, dict):
                    continue
                r = _range_from_json(item)
                if r is not None:
                    body = next((item[k] for k in _TEXT_KEYS if isinstance(item.get(k), str)), "")
                    caps.append(Caption(r.start, r.end, body.strip()))
                    continue
                for key, body in item.items():  # {"00:23.00 - 00:48.00": "caption", ...}
                    kr = parse_time_range(key) if isinstance(key, str) else None
                    if kr is not None and isinstance(body, str):
                        caps.append(Caption(kr.start, kr.end, body.strip()))
    if not caps:
        for line in text.splitlines():
            ranges = find_time_ranges(line)
            if not ranges:
                continue
            r = ranges[0]
            body = line.replace(r.text, "", 1).strip().strip("[]()").strip(" :-,–—\t*")
            caps.append(Caption(r.start, r.end, body))
    caps.sort(key=lambda c: (c.start, c.end))
    return caps


def _clock(t: float, sep: str) -> str:
    ms = int(round(max(t, 0.0) * 1000))
    h, rem = divmod(ms, 3_600_000)
    m, rem = divmod(rem, 60_000)
    s, ms = divmod(rem, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{sep}{ms:03d}"


def to_srt(captions: Iterable[Caption]) -> str:
    """SubRip: numbered cues, `HH:MM:SS,mmm --> HH:MM:SS,mmm`, blank line between cues."""
    cues = [f"{i}\n{_clock(c.start, ',')} --> {_clock(c.end, ',')}\n{c.text}\n"
            for i, c in enumerate(captions, start=1)]
    return "\n".join(cues)


def to_webvtt(captions: Iterable[Caption]) -> str:
    """WebVTT: `WEBVTT` header, `HH:MM:SS.mmm --> HH:MM:SS.mmm` cues."""
    cues = [f"{_clock(c.start, '.')} --> {_clock(c.end, '.')}\n{c.text}\n" for c in captions]
    return "WEBVTT\n\n" + "\n".join(cues)


# ---------------------------------------------------------------------------------------------- frames

def frame_timestamps(indices: Sequence[int], fps: float) -> list[float]:
    """Seconds of sampled source frames: index / source fps."""
    if fps <= 0:
        raise ValueError(f"video fps is {fps}; expected a positive frame rate")
    return [i / fps for i in indices]


def patch_timestamps(indices: Sequence[int], fps: float, temporal_patch: int = 2) -> list[float]:
    """The `<t seconds>` the model is shown: one per temporal patch, the mean of its first and last
    frame after padding the indices with the last one to a multiple of `temporal_patch` (spec §4)."""
    idx = list(indices)
    if not idx:
        return []
    while len(idx) % temporal_patch:
        idx.append(idx[-1])
    secs = frame_timestamps(idx, fps)
    return [(secs[k] + secs[k + temporal_patch - 1]) / 2 for k in range(0, len(secs), temporal_patch)]


def nearest_frame(t: float, timestamps: Sequence[float]) -> int:
    """Position of the sampled frame closest in time to `t` (earlier one on ties)."""
    if not timestamps:
        raise ValueError("no frame timestamps given")
    return min(range(len(timestamps)), key=lambda i: (abs(timestamps[i] - t), i))


def frames_in_range(r: TimeRange, timestamps: Sequence[float]) -> list[int]:
    """Positions of sampled frames with start <= t <= end; the frame nearest the middle when none fall inside."""
    inside = [i for i, t in enumerate(timestamps) if r.start - 1e-9 <= t <= r.end + 1e-9]
    return inside or [nearest_frame((r.start + r.end) / 2, timestamps)]


def temporal_iou(a: tuple[float, float], b: tuple[float, float]) -> float:
    """Intersection over union of two time intervals (0 when the union is empty)."""
    inter = max(0.0, min(a[1], b[1]) - max(a[0], b[0]))
    union = max(a[1], b[1]) - min(a[0], b[0])
    return inter / union if union > 0 and math.isfinite(union) else 0.0


# ---------------------------------------------------------------------------------------------- prompts

def moment_prompt(query: str) -> str:
    return (f'When does this happen in the video: "{query}"? Give the start and end time in mm:ss.ff format, '
            'as "from mm:ss.ff to mm:ss.ff".')


DENSE_CAPTION_PROMPT = ("Localize a series of activity events in the video, output the start and end timestamp "
                        "for each event, and describe each event with sentences. Provide the result in json "
                        "format with 'mm:ss.ff' format for time depiction.")
