"""Video moments: time formats, ranges, dense captions, SRT/WebVTT, frame mapping, clip cutting with PyAV."""

from __future__ import annotations

from pathlib import Path

import pytest

from qwen3vl.tasks.video_clip import cut_clip, probe
from qwen3vl.tasks.video_time import (
    Caption,
    TimeRange,
    format_mmss,
    frame_timestamps,
    frames_in_range,
    nearest_frame,
    parse_dense_captions,
    parse_time_range,
    parse_timestamp,
    patch_timestamps,
    to_srt,
    to_webvtt,
)

FIX = Path(__file__).parent / "fixtures" / "tasks"


@pytest.mark.parametrize("text, seconds", [
    ("01:28.00", 88.0), ("00:23.50", 23.5), ("1:02:03.5", 3723.5), ("<12.5 seconds>", 12.5),
    ("12.5s", 12.5), ("12.5 sec", 12.5), ("12.5", 12.5), ("1m30s", 90.0), (7, 7.0),
])
def test_timestamps(text, seconds):
    assert parse_timestamp(text) == seconds


def test_bad_timestamp_names_the_input():
    with pytest.raises(ValueError, match="'soon'"):
        parse_timestamp("soon")


def test_mmss_formatting():
    assert format_mmss(88.0) == "01:28.00" and format_mmss(3.456) == "00:03.46" and format_mmss(3723.5) == "62:03.50"


@pytest.mark.parametrize("answer, start, end", [
    ("The event happens from 00:12 to 00:20.", 12.0, 20.0),
    ("12.5-20.0 seconds", 12.5, 20.0),
    ("between 3 and 7.5 seconds", 3.0, 7.5),
    ("<3.0 seconds> - <7.0 seconds>", 3.0, 7.0),
    ("It starts at 00:12.50 and ends at 00:20.", 12.5, 20.0),
    ('```json\n{"start_time": "00:05.00", "end_time": "00:09.50"}\n```', 5.0, 9.5),
    ("[12.5, 20.0]", 12.5, 20.0),
    ("00:01:02 - 00:01:10", 62.0, 70.0),
])
def test_ranges(answer, start, end):
    r = parse_time_range(answer)
    assert r is not None and (r.start, r.end) == (start, end)


def test_reversed_range_is_swapped_and_flagged():
    r = parse_time_range("from 00:20 to 00:12")
    assert (r.start, r.end, r.swapped) == (12.0, 20.0, True)


def test_no_range():
    assert parse_time_range("The person never sits down.") is None


def test_dense_captions_from_the_cookbook_reply():
    caps = parse_dense_captions((FIX / "dense_captions_cookbook.txt").read_text())
    assert len(caps) == 4
    assert caps[1] == Caption(56.0, 88.0, "season the beef with salt and pepper.")
    srt = to_srt(caps[:2])
    assert srt == ("1\n00:00:23,000 --> 00:00:48,000\ntrim the fat off a piece of beef.\n\n"
                   "2\n00:00:56,000 --> 00:01:28,000\nseason the beef with salt and pepper.\n")
    vtt = to_webvtt(caps[:1])
    assert vtt == "WEBVTT\n\n00:00:23.000 --> 00:00:48.000\ntrim the fat off a piece of beef.\n"


def test_dense_captions_as_list_and_as_lines():
    listed = parse_dense_captions('[{"start": "00:04.00", "end": "00:06.25", "caption": "sits"}, '
                                  '{"start": 1.5, "end": 3, "event": "walks"}]')
    assert listed == [Caption(1.5, 3.0, "walks"), Caption(4.0, 6.25, "sits")]
    lines = parse_dense_captions("00:01 - 00:03: a man walks in\n[00:04 - 00:06] he sits down\nno time here")
    assert lines == [Caption(1.0, 3.0, "a man walks in"), Caption(4.0, 6.0, "he sits down")]


def test_frame_mapping():
    ts = frame_timestamps([0, 15, 30, 45, 60], 30.0)
    assert ts == [0.0, 0.5, 1.0, 1.5, 2.0]
    assert frames_in_range(TimeRange(0.4, 1.2), ts) == [1, 2]
    # nothing inside 1.1..1.2: the frame nearest the middle (1.15 -> 1.0)
    assert frames_in_range(TimeRange(1.1, 1.2), ts) == [2]
    # 1.3 is 0.3 from 1.0 and 0.2 from 1.5
    assert nearest_frame(1.3, ts) == 3


def test_patch_timestamps_match_the_processor_example():
    # spec §4: 5 frames at 2 fps -> padded to 6 -> pair means 0.25, 1.25, 2.0 (shown as 0.2, 1.2, 2.0)
    stamps = patch_timestamps([0, 1, 2, 3, 4], 2.0)
    assert stamps == [0.25, 1.25, 2.0]
    assert [format(s, ".1f") for s in stamps] == ["0.2", "1.2", "2.0"]


def make_video(path: Path, frames: int = 40, fps: int = 10, size=(64, 48)) -> None:
    """Solid grey frames, level 6*i, so each frame's index can be read back from its colour."""
    import av
    import numpy as np

    with av.open(str(path), "w") as out:
        s = out.add_stream("libx264", rate=fps)
        s.width, s.height, s.pix_fmt = size[0], size[1], "yuv420p"
        for i in range(frames):
            frame = av.VideoFrame.from_ndarray(np.full((size[1], size[0], 3), 6 * i, np.uint8), format="rgb24")
            for p in s.encode(frame):
                out.mux(p)
        for p in s.encode():
            out.mux(p)


def test_cut_clip_is_frame_exact(tmp_path):
    import av

    src, dst = tmp_path / "src.mp4", tmp_path / "clip.mp4"
    make_video(src)
    assert probe(src) == (4.0, 10.0, 40)
    info = cut_clip(src, dst, 1.0, 2.5)
    # frames at t = 1.0, 1.1, ..., 2.4 -> 15 frames, re-timed from 0
    assert (info.frames, info.start, info.end) == (15, 1.0, 2.5)
    with av.open(str(dst)) as c:
        frames = list(c.decode(video=0))
    assert len(frames) == 15 and frames[0].time == 0.0
    first = frames[0].to_ndarray(format="rgb24").mean()
    last = frames[-1].to_ndarray(format="rgb24").mean()
    assert abs(first - 60) <= 3 and abs(last - 6 * 24) <= 3  # source frames 10 and 24


def test_cut_clip_rejects_empty_and_out_of_range(tmp_path):
    src = tmp_path / "src.mp4"
    make_video(src, frames=10)
    with pytest.raises(ValueError, match="empty"):
        cut_clip(src, tmp_path / "a.mp4", 2.0, 2.0)
    with pytest.raises(ValueError, match="past the end"):
        cut_clip(src, tmp_path / "b.mp4", 30.0, 40.0)
