"""How often torch's first parallel `cos` in a fresh process is inexact, with and without `warm_cpu_threads`.

    .venv/bin/python scripts/threads_first_call.py [--runs 60] [--threads 2]

Each run is a fresh Python process whose first parallel op is a (256, 64) float32 `cos` of vision-rotary-sized
angles, compared with the float64 `cos` rounded to float32. Prints one JSON object: per mode (`cold`, `warm`), how
many runs were off by more than 1e-6 and the largest error seen (qwen3vl/model/cpu_threads.py says why).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

CHILD = """
import sys, torch
torch.set_num_threads(int(sys.argv[2]))
if sys.argv[1] == "warm":
    from qwen3vl.model.cpu_threads import warm_cpu_threads
    warm_cpu_threads(torch.device("cpu"))
rows, cols = torch.arange(256) % 16, torch.arange(256) // 16
inv = 1.0 / (10000 ** (torch.arange(0, 32, 2).float() / 32))
emb = torch.cat((rows.float()[:, None] * inv, cols.float()[:, None] * inv) * 2, dim=-1)
print((emb.cos() - emb.double().cos().float()).abs().max().item())
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=60)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    out = {}
    for mode in ("cold", "warm"):
        errors = [float(subprocess.run([sys.executable, "-c", CHILD, mode, str(args.threads)], check=True,
                                       capture_output=True, text=True).stdout.strip().splitlines()[-1])
                  for _ in range(args.runs)]
        out[mode] = {"runs": args.runs, "inexact": sum(e > 1e-6 for e in errors), "max_error": max(errors)}
    print(json.dumps({"threads": args.threads, **out}))


if __name__ == "__main__":
    main()
