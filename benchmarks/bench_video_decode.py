"""Time to read the sampled frames of a long video: ours with keyframe seeking, ours decoding every frame in order,
and transformers 5.23's PyAV reader (`transformers.video_utils.read_video_pyav`, which decodes every frame up to
the last sampled one), on the same file and the same frame indices, all three at the source size (decode and RGB
conversion; resizing and patchifying come after and are the same either way).

Writes a synthetic video with PyAV (default: 20 minutes of 320x180 at 30 fps, H.264 with 3 B-frames and a keyframe
every second, as phone cameras and streaming encoders write them) and samples it with the checkpoint defaults (2 fps, at most
768 frames; `--item` adds per-item keys such as '{"fps": 0.5}'). The three readers must give identical frames; the
script checks that before it prints.

    python benchmarks/bench_video_decode.py
    python benchmarks/bench_video_decode.py --minutes 5 --gop 250 --item '{"fps": 0.5}'
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_video_memory import write_video  # noqa: E402


def best_of(fn, runs: int) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(runs):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=20)
    ap.add_argument("--width", type=int, default=320)
    ap.add_argument("--height", type=int, default=180)
    ap.add_argument("--fps", type=int, default=30)
    ap.add_argument("--gop", type=int, default=30, help="frames between keyframes")
    ap.add_argument("--bframes", type=int, default=3, help="B-frames between reference frames (x264 default: 3)")
    ap.add_argument("--item", default="{}", help="per-item video keys as JSON")
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from transformers.video_utils import read_video_pyav

    from qwen3vl.processing import video as V
    from qwen3vl.processing.preprocessor_config import VideoConfig

    cfg, opts = VideoConfig(), V.VideoOptions.from_item(json.loads(args.item))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "long.mp4"
        t = time.perf_counter()
        n = write_video(path, args.minutes * 60, args.width, args.height, args.fps,
                        options={"g": str(args.gop), "bf": str(args.bframes)})
        print(f"wrote {n} frames in {time.perf_counter() - t:.1f} s", file=sys.stderr)
        total, fps, h, w = V.probe(path)
        indices = V._plan_file(total, fps, h, w, cfg, opts, "qwen-vl-utils").indices

        plan = V._seek_plan(path, indices)
        seeks = 0 if plan is None else sum(1 for step in plan if step.seek_to is not None)

        def ours(seek: bool):
            return np.stack(list(V.iter_frames(path, indices, h, w, seek=seek)))

        t_seek, seeking = best_of(lambda: ours(True), args.runs)
        t_order, in_order = best_of(lambda: ours(False), args.runs)
        t_ref, (ref, _) = best_of(lambda: read_video_pyav(str(path), lambda metadata, **kw: indices), args.runs)
        assert np.array_equal(seeking, in_order) and np.array_equal(seeking, ref), "the readers disagree"

    print(f"\n{args.minutes:g} min {args.width}x{args.height} @ {args.fps} fps, keyframe every {args.gop} frames, "
          f"{args.bframes} B-frames, "
          f"{len(indices)} frames sampled (one in {total / len(indices):.0f}; {seeks} seeks), item {args.item}\n")
    print("| reader | seconds | vs transformers |")
    print("|---|---|---|")
    for name, sec in (("transformers read_video_pyav", t_ref), ("qwen3vl, in order", t_order),
                      ("qwen3vl, seeking", t_seek)):
        print(f"| {name} | {sec:.2f} | {t_ref / sec:.2f}x |")
    print(f"\ncommand: python benchmarks/bench_video_decode.py {' '.join(sys.argv[1:])}")


if __name__ == "__main__":
    main()
