"""Peak memory of video preprocessing on a long synthetic video.

Writes a video with PyAV (default: 10 minutes of 1280x720 at 10 fps, H.264 ultrafast), then, in a fresh
subprocess, measures the peak RSS growth while `Processor.process_video` decodes, samples, resizes and patchifies
it. The child resets its peak (VmHWM, via /proc/self/clear_refs) after imports and a warm-up on a tiny clip and
reports peak minus the RSS at that point, so the figure is what the video costs.

    python benchmarks/bench_video_memory.py                      # 10 min 720p, checkpoint defaults
    python benchmarks/bench_video_memory.py --seconds 60 --width 640 --height 360 --fps 24 --json

For scale, the report also gives what holding every decoded frame would take (frames x H x W x 3 bytes).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def write_video(path: Path, seconds: float, width: int, height: int, fps: int, codec: str = "libx264",
                options: dict[str, str] | None = None) -> int:
    """A moving gradient; cheap to encode. `options` go to the encoder after the x264 defaults. Returns the number
    of frames written."""
    import av

    n = int(round(seconds * fps))
    y, x = np.mgrid[0:height, 0:width]
    base = ((x // 8 + y // 8) % 256).astype(np.uint8)
    with av.open(str(path), "w") as out:
        stream = out.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        if codec == "libx264":
            stream.options = {"preset": "ultrafast", "crf": "30"}
        stream.options = {**stream.options, **(options or {})}
        stream.thread_type = "AUTO"
        for i in range(n):
            img = np.empty((height, width, 3), dtype=np.uint8)
            img[..., 0] = base + np.uint8(i % 256)
            img[..., 1] = base * np.uint8(2) - np.uint8(i % 256)
            img[..., 2] = i % 256
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return n


_CHILD = r"""
import json, sys, tempfile, time
from pathlib import Path

def status_mb(key):
    # VmHWM/VmRSS of this process's own address space; getrusage's ru_maxrss would include the parent's peak
    # inherited through fork+exec.
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024

def reset_peak():
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
    except OSError:
        pass

from qwen3vl.processing.processor import load_processor
from qwen3vl.processing.testing import write_tiny_checkpoint
args = json.loads(sys.argv[1])
folder = tempfile.mkdtemp()
write_tiny_checkpoint(folder)
proc = load_processor(folder, video_rule=args["rule"])
warm = Path(folder) / "warm.mp4"
sys.path.insert(0, args["bench_dir"])
from bench_video_memory import write_video
write_video(warm, 1, 64, 48, 4)
proc.process_video({"type": "video", "video": str(warm)})
reset_peak()
before, t0 = status_mb("VmRSS"), time.perf_counter()
video = proc.process_video({"type": "video", "video": args["path"], **args["item"]})
seconds = time.perf_counter() - t0
print(json.dumps({
    "rss_before_mb": round(before, 1), "peak_rss_mb": round(status_mb("VmHWM"), 1),
    "peak_growth_mb": round(status_mb("VmHWM") - before, 1), "process_s": round(seconds, 2),
    "grid_thw": list(video.grid_thw), "frames_kept": len(video.frame_indices),
    "pixel_values_mb": round(video.pixel_values.numel() * 4 / 2**20, 1),
}))
"""


def measure(path: Path, item: dict, rule: str = "qwen-vl-utils") -> dict:
    """Run the measurement in a fresh interpreter; returns its JSON report."""
    args = {"path": str(path), "item": item, "rule": rule, "bench_dir": str(Path(__file__).parent)}
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, json.dumps(args)], capture_output=True, text=True, env=env, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=600)
    ap.add_argument("--width", type=int, default=1280)
    ap.add_argument("--height", type=int, default=720)
    ap.add_argument("--fps", type=int, default=10)
    ap.add_argument("--codec", default="libx264")
    ap.add_argument("--rule", default="qwen-vl-utils", choices=["qwen-vl-utils", "hf"])
    ap.add_argument("--item", default="{}", help="per-item video options as JSON, e.g. '{\"max_pixels\": 65536}'")
    ap.add_argument("--video", help="measure this existing file instead of writing one")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        report: dict = {}
        if args.video:
            path = Path(args.video)
        else:
            path = Path(tmp) / "long.mp4"
            t0 = time.perf_counter()
            n = write_video(path, args.seconds, args.width, args.height, args.fps, args.codec)
            report.update(
                written_frames=n,
                write_s=round(time.perf_counter() - t0, 1),
                file_mb=round(path.stat().st_size / 2**20, 1),
                all_frames_uint8_mb=round(n * args.width * args.height * 3 / 2**20, 1),
            )
        report.update(measure(path, json.loads(args.item), args.rule))
    if args.json:
        print(json.dumps(report))
    else:
        for key, value in report.items():
            print(f"{key:>22}: {value}")


if __name__ == "__main__":
    main()
