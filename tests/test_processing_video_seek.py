"""Seeking to keyframes when the sampled frames lie far apart: the frames must be exactly those that decoding every
frame in order gives (what both references do), for the common codecs and containers, with and without B-frames and
open GOPs; a seek that misses, or timestamps that cannot number the frames, fall back to decoding in order."""

from __future__ import annotations

import logging

import av
import numpy as np
import pytest
import torch
from fixtures.processing.references import decode_all, torch_resize_uint8, write_video

from qwen3vl.processing import video as V
from qwen3vl.processing.preprocessor_config import VideoConfig
from qwen3vl.processing.video import VideoOptions, iter_frames, process_video_file

H, W = 48, 64
OUT_H, OUT_W = 32, 32
SPARSE = [3, 3, 40, 41, 77, 118, 119]


def _have(codec: str) -> bool:
    try:
        av.codec.Codec(codec, "w")
        return True
    except Exception:
        return False


# (codec, container, file suffix, encoder options): keyframes every 10 frames
CODECS = [
    ("libx264", "mp4", "mp4", {"g": "10", "bf": "3", "preset": "fast"}),
    ("libx264", "matroska", "mkv", {"bf": "3", "preset": "fast", "x264-params": "keyint=10:min-keyint=10:open-gop=1"}),
    ("mpeg4", "avi", "avi", {"g": "10", "bf": "2"}),
    ("mpeg4", "mp4", "mp4", {"g": "10"}),
    ("libvpx-vp9", "webm", "webm", {"g": "10"}),
    ("libx265", "mp4", "mp4", {"x265-params": "keyint=10:min-keyint=10:open-gop=1:log-level=error"}),
]


def _expected(path, indices):
    frames, _ = decode_all(path)  # every frame, in order, by a decoder of the test's own
    chosen = torch.from_numpy(frames[indices]).permute(0, 3, 1, 2)
    return torch_resize_uint8(chosen, [OUT_H, OUT_W]).permute(0, 2, 3, 1).numpy()


@pytest.mark.parametrize("codec,container,suffix,options", CODECS, ids=[f"{c[0]}-{c[1]}" for c in CODECS])
def test_seeking_gives_the_frames_of_an_in_order_decode(tmp_path, codec, container, suffix, options):
    if not _have(codec):
        pytest.skip(f"this PyAV build has no {codec} encoder")
    path = write_video(tmp_path / f"v.{suffix}", 120, 10, W, H, codec=codec, container=container, options=options)
    plan = V._seek_plan(path, SPARSE)
    assert plan is not None and sum(step.seek_to is not None for step in plan) >= 2  # it does seek
    seeked = list(V._frames_seeking(path, plan, OUT_H, OUT_W))  # raises if a seek misses
    np.testing.assert_array_equal(np.stack(seeked), _expected(path, sorted(set(SPARSE))))
    ours = np.stack(list(iter_frames(path, SPARSE, OUT_H, OUT_W)))
    np.testing.assert_array_equal(ours, _expected(path, SPARSE))
    # bytes in memory seek too
    np.testing.assert_array_equal(np.stack(list(iter_frames(path.read_bytes(), SPARSE, OUT_H, OUT_W))), ours)


def test_dense_sampling_does_not_seek(tmp_path):
    path = write_video(tmp_path / "v.mp4", 60, 10, W, H, options={"g": "10"})
    assert V._seek_plan(path, list(range(0, 60, 3))) is None
    assert V._seek_plan(path, [0, 59]) is not None


def test_a_missed_seek_falls_back_to_decoding_in_order(tmp_path, monkeypatch, caplog):
    path = write_video(tmp_path / "v.mp4", 120, 10, W, H, options={"g": "10"})
    real = V._seek_plan(path, SPARSE)
    last = max((step for step in real if step.seek_to is not None), key=lambda step: step.key)
    # every seek goes to the last keyframe used: the earlier frames are behind the decoder, so the seeks miss
    monkeypatch.setattr(V, "_seek_plan", lambda data, indices: [V._Step(step.target, last.seek_to, last.key)
                                                                for step in real])
    with caplog.at_level(logging.INFO, logger="qwen3vl.processing.video"):
        ours = np.stack(list(iter_frames(path, SPARSE, OUT_H, OUT_W)))
    assert "missed frame 3; decoding the rest in order" in caplog.text
    np.testing.assert_array_equal(ours, _expected(path, SPARSE))


def test_a_seek_missed_midway_leaves_the_frames_before_it(tmp_path, monkeypatch, caplog):
    path = write_video(tmp_path / "v.mp4", 120, 10, W, H, options={"g": "10", "bf": "2"})
    real = V._seek_plan(path, SPARSE)
    step = real[3]
    broken = [*real[:3], V._Step(step.target + 1, step.seek_to, step.key), *real[4:]]  # no frame has that time
    monkeypatch.setattr(V, "_seek_plan", lambda data, indices: broken)
    with caplog.at_level(logging.INFO, logger="qwen3vl.processing.video"):
        ours = np.stack(list(iter_frames(path, SPARSE, OUT_H, OUT_W)))
    assert f"missed frame {sorted(set(SPARSE))[3]}" in caplog.text
    np.testing.assert_array_equal(ours, _expected(path, SPARSE))


def test_a_stream_without_timestamps_is_decoded_in_order(tmp_path):
    path = write_video(tmp_path / "v.h264", 120, 10, W, H, container="h264", options={"g": "10"})  # raw: no pts
    assert V._seek_plan(path, SPARSE) is None
    np.testing.assert_array_equal(np.stack(list(iter_frames(path, SPARSE, OUT_H, OUT_W))), _expected(path, SPARSE))


def test_process_video_file_same_with_and_without_seeking(tmp_path, monkeypatch):
    path = write_video(tmp_path / "v.mp4", 200, 10, W, H, options={"g": "8", "bf": "2"})
    opts = VideoOptions.from_item({"fps": 0.25})  # one frame in 40: seeks
    plan = V._seek_plan(path, V._plan_file(200, 10.0, H, W, VideoConfig(), opts, "qwen-vl-utils").indices)
    assert plan is not None and len(list(V._frames_seeking(path, plan, H, W))) == len(plan)
    seeking = process_video_file(path, VideoConfig(), opts)
    monkeypatch.setattr(V, "_seek_plan", lambda data, indices: None)
    in_order = process_video_file(path, VideoConfig(), opts)
    assert seeking.frame_indices == in_order.frame_indices
    assert torch.equal(seeking.pixel_values, in_order.pixel_values)


# ---- streams whose packets do not number the frames as the decoder does (found in review): never a wrong frame
def _remux(src, fmt: str, keep=lambda k: True, edit=None) -> bytes:
    import io

    out = io.BytesIO()
    with av.open(str(src)) as i, av.open(out, "w", format=fmt) as o:
        s = i.streams.video[0]
        o_s = o.add_stream_from_template(s)
        for k, p in enumerate(p for p in i.demux(s) if p.size):
            if keep(k):
                p = edit(k, p) if edit else p
                p.stream = o_s
                o.mux(p)
    return out.getvalue()


def _equal_to_in_order(data, indices):
    seeking = np.stack(list(iter_frames(data, indices, OUT_H, OUT_W)))
    in_order = np.stack(list(iter_frames(data, indices, OUT_H, OUT_W, seek=False)))
    np.testing.assert_array_equal(seeking, in_order)


def test_a_stream_that_starts_mid_gop_is_not_seeked(tmp_path):
    """The decoder drops the frames before the first keyframe, which the packets would count."""
    ts = write_video(tmp_path / "a.ts", 150, 10, W, H, container="mpegts", options={"g": "10", "bf": "3"})
    cut = ts.read_bytes()[188 * 25:]  # a capture that starts 25 TS packets late
    mp4 = _remux(write_video(tmp_path / "a.mp4", 120, 10, W, H, options={"g": "10"}), "mp4", keep=lambda k: k >= 3)
    for data in (cut, mp4):
        assert V._seek_plan(data, [40, 100]) is None
        _equal_to_in_order(data, [40, 100])


def test_keyframe_flags_that_lie_are_caught_after_the_seek(tmp_path):
    """An mp4 without a sync-sample table calls every frame a keyframe; a seek lands on a P-frame, which the
    decoder would conceal silently: the frame there is checked to be a keyframe."""
    data = bytearray(write_video(tmp_path / "b.mp4", 120, 10, W, H, codec="mpeg4", options={"g": "60"}).read_bytes())
    at = data.find(b"stss")
    data[at:at + 4] = b"free"
    data = bytes(data)
    plan = V._seek_plan(data, [5, 40, 100])
    assert plan is not None  # the flags say every frame is a keyframe
    with pytest.raises(V._SeekMissed):
        list(V._frames_seeking(data, plan, OUT_H, OUT_W))
    _equal_to_in_order(data, [5, 40, 100])


def test_timestamps_that_restart_are_not_seeked(tmp_path):
    """Two clips joined: sorted timestamps interleave them; packets far from their sorted place mean no seeking."""
    first = write_video(tmp_path / "c1.ts", 120, 10, W, H, container="mpegts", options={"g": "10"}).read_bytes()
    second = write_video(tmp_path / "c2.ts", 120, 10, W, H, container="mpegts", options={"g": "10"})

    def half_frame_later(k, p):
        p.pts += 4500
        p.dts += 4500
        return p

    data = first + _remux(second, "mpegts", edit=half_frame_later)
    assert V._seek_plan(data, [60, 200]) is None
    _equal_to_in_order(data, [60, 200])


def test_a_corrupt_packet_after_a_seek_behaves_as_in_order(tmp_path, caplog):
    src = write_video(tmp_path / "d.webm", 120, 10, W, H, codec="libvpx-vp9", container="webm", options={"g": "10"})

    def garbage(k, p):
        if k != 55:
            return p
        q = av.Packet(b"\xff" * p.size)
        q.pts, q.dts, q.time_base = p.pts, p.dts, p.time_base
        return q

    data = _remux(src, "webm", edit=garbage)
    assert V._seek_plan(data, [3, 57]) is not None
    with caplog.at_level(logging.WARNING, logger="qwen3vl.processing.video"):
        _equal_to_in_order(data, [3, 57])  # both give frame 3 again for 57, with a warning
    assert "reusing the last decoded frame" in caplog.text
