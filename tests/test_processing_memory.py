"""Video memory stays bounded by what is kept: a 60 s 640x360 clip is decoded and sampled in a fresh process whose
peak RSS may grow by at most 150 MB, while holding all its frames would take ~950 MB (1440 frames x 640x360x3)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_video_memory.py"
PEAK_GROWTH_BOUND_MB = 150


def _bench():
    spec = importlib.util.spec_from_file_location("bench_video_memory", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_long_video_peak_rss_is_bounded(tmp_path):
    bench = _bench()
    path = tmp_path / "long.mp4"
    frames = bench.write_video(path, seconds=60, width=640, height=360, fps=24)
    all_frames_mb = frames * 640 * 360 * 3 / 2**20
    # 1 fps -> 60 sampled frames at <= 128x128: the output is ~10 MB, so growth is decoder + pipeline overhead
    report = bench.measure(path, {"fps": 1.0, "min_pixels": 4096, "max_pixels": 128 * 128})
    assert report["frames_kept"] == 60
    assert report["peak_growth_mb"] < PEAK_GROWTH_BOUND_MB < all_frames_mb / 5, report
