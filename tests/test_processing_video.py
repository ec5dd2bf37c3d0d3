"""Videos: frame indices, timestamps, grids and pixel_values against qwen-vl-utils 0.0.14 (its real `fetch_video`
with a PyAV-backed reader) and transformers 5.23's Qwen3VLVideoProcessor, on tiny videos written with PyAV."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from fixtures.processing.references import (
    decode_all,
    frame_pattern,
    hf_video_processor,
    normalize_frames,
    qwen_vl_utils,
    qwen_vl_utils_fetch_video,
    torch_resize_uint8,
    write_video,
)

from qwen3vl.processing.preprocessor_config import VideoConfig
from qwen3vl.processing.resize import smart_resize_video
from qwen3vl.processing.sampling import frame_timestamps, sample_indices
from qwen3vl.processing.video import VideoOptions, process_video_file, process_video_frames

CFG = VideoConfig()
# (seconds, source fps, per-item options): durations x fps x max_frames, windows, explicit nframes
CASES = [
    (1.0, 10, {}),
    (2.5, 24, {}),
    (3.0, 30, {"fps": 1.0}),
    (4.0, 8, {"max_frames": 6}),
    (2.0, 25, {"fps": 4.0}),
    (3.2, 5, {}),
    (6.0, 12, {"max_frames": 5, "min_frames": 3}),
    (4.0, 10, {"video_start": 0.7, "video_end": 3.1}),
    (3.0, 12, {"nframes": 7}),
    (2.0, 29.97, {}),
    (5.0, 6, {"fps": 0.5}),
]


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("videos")
    out = {}
    for seconds, fps, _ in CASES:
        key = (seconds, fps)
        if key not in out:
            out[key] = write_video(folder / f"v_{seconds}_{fps}.mp4", round(seconds * fps), fps)
    return out


@pytest.fixture(scope="module")
def hf_vp():
    return hf_video_processor()


def _case_id(case):
    return f"{case[0]}s@{case[1]}fps-" + ",".join(f"{k}={v}" for k, v in case[2].items())


@pytest.mark.parametrize("case", CASES, ids=[_case_id(c) for c in CASES])
def test_qwen_vl_utils_rule_matches_fetch_video(videos, hf_vp, case):
    seconds, fps, item = case
    path = videos[(seconds, fps)]
    ref_video, ref_meta = qwen_vl_utils_fetch_video(
        {"video": str(path), **item}, image_patch_size=16, return_video_metadata=True
    )
    ours = process_video_file(path, CFG, VideoOptions.from_item(item), "qwen-vl-utils")
    assert list(ours.frame_indices) == [int(i) for i in ref_meta["frames_indices"]]
    assert ours.video_fps == pytest.approx(ref_meta["fps"])
    # the reference pipeline continues in transformers: processor(videos=..., video_metadata=..., do_resize=False)
    frames = normalize_frames(ref_video.to(torch.uint8).permute(0, 2, 3, 1).numpy())
    ref = hf_vp(
        videos=[frames],
        video_metadata=[_meta(ref_meta)],
        do_sample_frames=False,
        do_resize=False,
        do_rescale=False,
        do_normalize=False,
        do_convert_rgb=False,
        cap_pixels_per_frame=False,
        return_tensors="pt",
    )
    assert list(ours.grid_thw) == ref["video_grid_thw"][0].tolist()
    torch.testing.assert_close(ours.pixel_values, ref["pixel_values_videos"], atol=1e-6, rtol=0)
    assert list(ours.timestamps) == _hf_timestamps(ref_meta["frames_indices"], ref_meta["fps"])


def _meta(meta):
    from transformers.video_utils import VideoMetadata

    return VideoMetadata(
        total_num_frames=meta["total_num_frames"], fps=meta["fps"], frames_indices=list(meta["frames_indices"])
    )


def _hf_timestamps(indices, fps):
    from transformers import Qwen3VLProcessor

    return Qwen3VLProcessor._calculate_timestamps(None, [int(i) for i in indices], fps, 2)


HF_CASES = [c for c in CASES if "nframes" not in c[2] and "video_start" not in c[2]]


@pytest.mark.parametrize("case", HF_CASES, ids=[_case_id(c) for c in HF_CASES])
def test_hf_rule_matches_transformers(videos, hf_vp, case):
    from transformers.video_utils import VideoMetadata

    seconds, fps, item = case
    path = videos[(seconds, fps)]
    all_frames, src_fps = decode_all(path)
    vp = hf_video_processor()
    for key in ("min_frames", "max_frames"):
        if key in item:
            setattr(vp, key, item[key])
    meta = VideoMetadata(total_num_frames=len(all_frames), fps=src_fps)
    indices = vp.sample_frames(meta, fps=item.get("fps", 2.0))
    ours = process_video_file(path, CFG, VideoOptions.from_item(item), "hf")
    assert list(ours.frame_indices) == indices.tolist()
    h, w = smart_resize_video(len(indices), 48, 64)  # our 3-D rule, itself checked against transformers' below
    resized = torch_resize_uint8(torch.from_numpy(all_frames[indices]).permute(0, 3, 1, 2), [h, w])
    frames = normalize_frames(resized.permute(0, 2, 3, 1).numpy())
    ref = hf_vp(
        videos=[frames],
        video_metadata=[VideoMetadata(len(all_frames), src_fps, frames_indices=indices)],
        do_sample_frames=False,
        do_resize=False,
        do_rescale=False,
        do_normalize=False,
        do_convert_rgb=False,
        cap_pixels_per_frame=False,
        return_tensors="pt",
    )
    assert list(ours.grid_thw) == ref["video_grid_thw"][0].tolist()
    torch.testing.assert_close(ours.pixel_values, ref["pixel_values_videos"], atol=1e-6, rtol=0)
    assert list(ours.timestamps) == _hf_timestamps(indices, src_fps)


def test_3d_smart_resize_equals_transformers():
    import importlib

    ref = importlib.import_module("transformers.models.qwen3_vl.video_processing_qwen3_vl").smart_resize
    rng = np.random.default_rng(0)
    for _ in range(2000):
        t = int(rng.integers(2, 800))
        h, w = (int(v) for v in np.exp(rng.uniform(np.log(8), np.log(4000), 2)).round())
        if max(h, w) / min(h, w) > 150:
            continue
        lo, hi = [(4096, 25165824), (128 * 32 * 32, 768 * 32 * 32 * 4)][t % 2]
        assert smart_resize_video(t, h, w, 32, 2, lo, hi) == ref(t, h, w, 2, 32, lo, hi), (t, h, w)


def test_sampling_sweep_equals_references():
    """Frame counts and indices over a grid of (total frames, source fps, target fps, max_frames), no decoding."""
    import importlib

    qvu = qwen_vl_utils()
    VP = importlib.import_module("transformers.models.qwen3_vl.video_processing_qwen3_vl").Qwen3VLVideoProcessor
    from transformers.video_utils import VideoMetadata

    from qwen3vl.processing.sampling import num_frames_hf, num_frames_qwen_vl_utils

    for total in (2, 3, 7, 31, 100, 601, 3001, 20000):
        for src_fps in (1.0, 7.5, 24.0, 29.97, 60.0):
            for fps in (0.5, 1.0, 2.0, 3.0):
                for max_frames in (None, 16, 768):
                    ele = {"fps": fps, **({"max_frames": max_frames} if max_frames else {})}
                    try:
                        ref_n = qvu.smart_nframes(ele, total, src_fps)
                    except ValueError:
                        ref_n = None
                    if ref_n is not None:
                        n = num_frames_qwen_vl_utils(total, src_fps, fps, 4, max_frames or min(768, total))
                        assert n == ref_n
                        ref_idx = torch.linspace(0, total - 1, ref_n).round().long().tolist()
                        assert sample_indices(0, total - 1, n, "qwen-vl-utils") == ref_idx
                    vp = VP(max_frames=max_frames or 768)
                    ref_idx = vp.sample_frames(VideoMetadata(total_num_frames=total, fps=src_fps), fps=fps).tolist()
                    n = num_frames_hf(total, src_fps, fps, 4, max_frames or 768)
                    assert sample_indices(0, total - 1, n, "hf") == ref_idx


def test_frame_list_matches_qwen_vl_utils_metadata_and_master_sizes():
    qvu = qwen_vl_utils()
    frames = [frame_pattern(i, 90, 120) for i in range(5)]
    item = {"sample_fps": 3.0}
    from PIL import Image

    pil = [Image.fromarray(f) for f in frames]
    _, ref_meta = qwen_vl_utils_fetch_video({"video": pil, **item}, image_patch_size=16, return_video_metadata=True)
    ours = process_video_frames(frames, CFG, VideoOptions.from_item(item))
    assert ours.video_fps == ref_meta["fps"] == 3.0
    assert list(ours.timestamps) == _hf_timestamps(ref_meta["frames_indices"], ref_meta["fps"])
    # sizes as on qwen-vl-utils' GitHub master (image stage at patch 16 -> 32, then the video budget)
    h1, w1 = qvu.smart_resize(90, 120, factor=32, min_pixels=4 * 32 * 32, max_pixels=16384 * 32 * 32)
    hi = max(min(768 * 32 * 32, 128000 * 32 * 32 * 0.9 / 6 * 2), int(128 * 32 * 32 * 1.05))
    h2, w2 = qvu.smart_resize(h1, w1, factor=32, min_pixels=128 * 32 * 32, max_pixels=hi)
    assert ours.grid_thw == (3, h2 // 16, w2 // 16)


def test_frame_list_hf_rule_and_sources(tmp_path):
    from fixtures.processing.references import to_bytes
    from PIL import Image

    frames = [frame_pattern(i, 48, 64) for i in range(3)]
    srcs = [Image.fromarray(frames[0]), to_bytes(Image.fromarray(frames[1])), frames[2]]
    ours = process_video_frames(srcs, CFG, VideoOptions(sample_fps=2.0), "hf")
    assert ours.frame_indices == (0, 1, 2)
    assert list(ours.timestamps) == frame_timestamps([0, 1, 2, 2], 2.0) == [0.25, 1.0]
    h, w = smart_resize_video(3, 48, 64)
    assert ours.grid_thw == (2, h // 16, w // 16)


@pytest.mark.parametrize(
    "container,codec,ext",
    [("webm", "libvpx-vp9", "webm"), ("matroska", "mpeg4", "mkv"), ("gif", "gif", "gif"), ("mp4", "mpeg4", "mp4")],
)
def test_containers(tmp_path, container, codec, ext):
    path = write_video(tmp_path / f"v.{ext}", 20, 10, codec=codec, container=container)
    ours = process_video_file(path, CFG, VideoOptions(), "qwen-vl-utils")
    _, meta = qwen_vl_utils_fetch_video({"video": str(path)}, image_patch_size=16, return_video_metadata=True)
    assert list(ours.frame_indices) == [int(i) for i in meta["frames_indices"]]
    assert ours.grid_thw[0] == len(meta["frames_indices"]) // 2


def test_video_sources(tmp_path):
    import base64

    path = write_video(tmp_path / "v.mp4", 12, 6)
    data = path.read_bytes()
    base = process_video_file(path, CFG, VideoOptions())
    for src in (str(path), f"file://{path}", data, "data:video/mp4;base64," + base64.b64encode(data).decode()):
        assert process_video_file(src, CFG, VideoOptions()).content_hash == base.content_hash


def test_single_frame_video_is_padded(tmp_path):
    path = write_video(tmp_path / "one.mp4", 1, 5)
    ours = process_video_file(path, CFG, VideoOptions())
    assert ours.frame_indices == (0,) and ours.grid_thw[0] == 1
