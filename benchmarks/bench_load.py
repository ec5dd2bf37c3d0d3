"""Checkpoint load benchmark: `qwen3vl.load_model` against transformers' `from_pretrained`, same files.

Each load runs in a fresh subprocess, so its RSS numbers start clean. A child reports the wall time of the load
call alone, then of the load plus one read per page of every weight (both libraries return mmap-backed tensors
from safetensors, so the call by itself reads little), its RSS just before the call and its peak RSS (`ru_maxrss`)
after both; then it runs one forward pass on a few fixed token ids and saves the logits, which the parent compares
across the two libraries.

The checkpoint is a random one in the official format (config.json + bf16 safetensors) for a preset size, written
once into `--ckpt` (through a temporary sibling folder, renamed only when complete) and reused afterwards.

Each side runs cold then warm: first after dropping the whole page cache (`/proc/sys/vm/drop_caches`, root only;
skipped with a warning where that is refused), then after evicting only the checkpoint's files (posix_fadvise),
then with the files cached.

    python benchmarks/bench_load.py --ckpt /tmp/qwen3vl-bench-2b
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("bench_load")

GiB = 1024**3
SIDES = {"ours": "qwen3vl.load_model", "hf": "transformers from_pretrained"}
N_IDS = 8
TEXT_ID_LIMIT = 151643  # ids below the special tokens of the Qwen tokenizer: plain text


# ---------------------------------------------------------------------------------------------- child side
def _status_bytes(key: str) -> int:
    """One kB field of /proc/self/status (VmRSS, RssAnon, RssFile), in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {key} line in /proc/self/status")


def _rss_bytes() -> int:
    return _status_bytes("VmRSS")


def touch_weights(model) -> None:
    """Read one element per 4 KiB page of every parameter and buffer, so mmap-backed weights are really read."""
    import torch

    with torch.inference_mode():
        for t in [*model.parameters(), *model.buffers()]:
            flat = t.detach().reshape(-1)
            flat[:: max(1, 4096 // t.element_size())].float().sum()


def _peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def child(side: str, ckpt: str, ids: list[int], threads: int, out: Path) -> None:
    """Load `ckpt` with one library, read every weight, run one forward pass, write `out`.json and `out`.pt."""
    import torch

    torch.set_num_threads(threads)
    # import everything the load call needs first, so neither side's timing includes module imports
    if side == "ours":
        # `import transformers` loads torch._dynamo; our meta build's first init would import it (~1 s) mid-load
        import torch._dynamo  # noqa: F401
        import qwen3vl.weights.loader  # noqa: F401 - load_model imports it lazily
        from qwen3vl.model.qwen3vl import load_model

        def load():
            return load_model(ckpt, dtype=torch.bfloat16)
    elif side == "hf":
        from transformers import Qwen3VLForConditionalGeneration

        def load():
            return Qwen3VLForConditionalGeneration.from_pretrained(ckpt, dtype=torch.bfloat16).eval()
    else:
        raise ValueError(f"unknown side {side!r}; expected one of {sorted(SIDES)}")

    # imports are done, so "before" is what the process costs without the weights
    rss_before, peak_before = _rss_bytes(), _peak_rss_bytes()
    t0 = time.perf_counter()
    model = load()
    load_s = time.perf_counter() - t0
    peak_after_load = _peak_rss_bytes()
    rss_after_load = _rss_bytes()
    # safetensors hands out mmap-backed tensors, so the load call may not have read the file yet: read it now
    touch_weights(model)
    load_touch_s = time.perf_counter() - t0
    peak_after_touch = _peak_rss_bytes()
    anon, file_backed = _status_bytes("RssAnon"), _status_bytes("RssFile")

    input_ids = torch.tensor([ids], dtype=torch.long)  # (B=1, T)
    with torch.inference_mode():
        logits = model(input_ids=input_ids).logits  # (B, T, V)
    torch.save(logits.float().cpu(), out.with_suffix(".pt"))
    out.with_suffix(".json").write_text(json.dumps({
        "side": side, "load_s": load_s, "rss_before": rss_before, "peak_before": peak_before,
        "peak_after_load": peak_after_load, "rss_after_load": rss_after_load, "load_touch_s": load_touch_s,
        "peak_after_touch": peak_after_touch, "anon_after_touch": anon, "file_after_touch": file_backed,
        "peak_after_forward": _peak_rss_bytes(), "param_dtype": str(next(model.parameters()).dtype),
        "logits_shape": list(logits.shape),
    }))


def write_checkpoint_child(folder: str, preset_name: str, seed: int) -> None:
    import torch

    from qwen3vl.model.testing import write_random_checkpoint

    write_random_checkpoint(folder, cfg=preset_name, seed=seed, dtype=torch.bfloat16)


# ---------------------------------------------------------------------------------------------- checkpoint
def expected_weight_bytes(preset_name: str) -> int:
    """Bytes of the bf16 safetensors payload for a preset (a tied LM head is not stored)."""
    import torch

    from qwen3vl.config import preset
    from qwen3vl.model.qwen3vl import Qwen3VLForConditionalGeneration

    cfg = preset(preset_name)
    with torch.device("meta"):
        model = Qwen3VLForConditionalGeneration(cfg)
    n = sum(p.numel() for name, p in model.named_parameters(remove_duplicate=True)
            if not (cfg.tie_word_embeddings and name == "lm_head.weight"))
    return n * 2


def _safetensors_problem(path: Path) -> str | None:
    """Why a safetensors file is not whole (header unreadable, or data shorter/longer than it says), else None."""
    size = path.stat().st_size
    if size < 8:
        return f"{path.name} is {size} bytes, shorter than a safetensors header"
    with path.open("rb") as f:
        header_len = int.from_bytes(f.read(8), "little")
        if header_len > size - 8:
            return f"{path.name} says its header is {header_len} bytes but the file is {size} bytes"
        try:
            header = json.loads(f.read(header_len))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            return f"{path.name} has an unreadable header: {e}"
    end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    if 8 + header_len + end != size:
        return f"{path.name} is {size} bytes but its header describes {8 + header_len + end}"
    return None


def checkpoint_problem(folder: Path, preset_name: str) -> str | None:
    """Why `folder` is not a complete checkpoint of `preset_name`, or None when it can be reused."""
    from qwen3vl.config import load_config, preset
    from qwen3vl.weights.loader import tensor_index

    if not (folder / "config.json").exists():
        return "it has no config.json"
    try:
        cfg = load_config(folder)
    except Exception as e:  # noqa: BLE001 - any unreadable config means "not reusable"
        return f"its config.json does not load: {e}"
    if cfg.to_dict() != preset(preset_name).to_dict():
        return f"its config.json is not the {preset_name!r} preset"
    try:
        files = sorted(set(tensor_index(folder).values()))
    except Exception as e:  # noqa: BLE001
        return str(e)
    for f in files:
        problem = _safetensors_problem(folder / f)
        if problem:
            return problem
    return None


def disk_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.glob("*.safetensors"))


def ensure_checkpoint(folder: Path, preset_name: str, seed: int, python: str) -> None:
    if folder.exists():
        problem = checkpoint_problem(folder, preset_name)
        if problem is None:
            log.info("reusing the checkpoint in %s", folder)
            return
        raise SystemExit(f"--ckpt {folder} exists but is not a complete {preset_name} checkpoint: {problem}. "
                         "Remove it, or pass another --ckpt, and it will be written afresh.")
    need = expected_weight_bytes(preset_name)
    parent = folder.parent
    existing = next(d for d in [parent, *parent.parents] if d.exists())
    free = shutil.disk_usage(existing).free
    margin = GiB // 2
    if free < need + margin:
        raise SystemExit(f"not enough disk space for the {preset_name} checkpoint in {parent}: it needs "
                         f"{need / GiB:.2f} GiB (+{margin / GiB:.1f} GiB margin), {free / GiB:.2f} GiB is free. "
                         "Free some space or point --ckpt at another disk.")
    parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=folder.name + ".partial-", dir=parent))
    log.info("writing a random %s bf16 checkpoint (%.2f GiB) to %s (a minute or so)",
             preset_name, need / GiB, folder)
    t0 = time.perf_counter()
    try:
        run = subprocess.run([python, __file__, "--child-write", str(partial), "--preset", preset_name,
                              "--seed", str(seed)], capture_output=True, text=True)
        if run.returncode != 0:
            raise SystemExit(f"writing the checkpoint failed (exit {run.returncode}):\n{run.stderr[-4000:]}")
        partial.rename(folder)
    finally:
        if partial.exists():
            shutil.rmtree(partial, ignore_errors=True)
    log.info("checkpoint written in %.1f s", time.perf_counter() - t0)


# ---------------------------------------------------------------------------------------------- page cache
COLD = {"all": "cold: page cache dropped", "checkpoint": "cold: checkpoint evicted"}


def make_cold(kind: str, folder: Path) -> bool:
    """Empty the page cache ('all', root only) or evict only the checkpoint's files ('checkpoint'); True on success.

    Dropping the whole cache also evicts Python's and torch's own code, so such a run pays for paging libraries in
    as well; evicting the checkpoint files alone (posix_fadvise DONTNEED) isolates the cost of reading the weights.
    """
    os.sync()  # dirty pages cannot be dropped
    try:
        if kind == "all":
            Path("/proc/sys/vm/drop_caches").write_text("3\n")
        elif kind == "checkpoint":
            for f in sorted(folder.iterdir()):
                if f.is_file():
                    fd = os.open(f, os.O_RDONLY)
                    try:
                        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                    finally:
                        os.close(fd)
        else:
            raise ValueError(f"unknown cold mode {kind!r}; expected one of {sorted(COLD)}")
    except (OSError, AttributeError) as e:
        log.warning("cannot make the page cache cold (%s: %s); skipping those runs", kind, e)
        return False
    return True


# ---------------------------------------------------------------------------------------------- parent side
@dataclass
class Run:
    side: str
    index: int
    cache: str  # a COLD label, "warm", or "warm-up" when no cold run of its side came before
    stats: dict
    logits_path: Path


def run_child(python: str, side: str, ckpt: Path, ids: list[int], threads: int, out: Path) -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    cmd = [python, __file__, "--child", side, "--ckpt", str(ckpt), "--ids", ",".join(map(str, ids)),
           "--threads", str(threads), "--out", str(out)]
    run = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if run.returncode != 0:
        raise SystemExit(f"the {side} child failed (exit {run.returncode}): {shlex.join(cmd)}\n{run.stderr[-4000:]}")
    return json.loads(out.with_suffix(".json").read_text())


def fmt_ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}" if b else "n/a"


def report(runs: list[Run], weights: int, command: str, total_s: float, preset_name: str, threads: int,
           logits_line: str, load_avg: tuple[float, float]) -> str:
    lines = [f"## Load benchmark: random {preset_name} checkpoint, bf16, {os.cpu_count()} CPU cores, "
             f"torch.set_num_threads({threads})", "",
             f"1-minute load average {load_avg[0]:.1f} when the runs began, {load_avg[1]:.1f} when they ended"
             + (": other processes shared the cores, so the times are noisy." if max(load_avg) > (os.cpu_count() or 1)
                else "."), ""]
    lines.append("| side | run | cache | load call (s) | load + read weights (s) | peak RSS after load call (GiB) "
                 "| peak RSS (GiB) | RSS before (GiB) | RSS delta (GiB) | anon / file RSS (GiB) "
                 "| weights on disk (GiB) |")
    lines.append("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in runs:
        s = r.stats
        lines.append(f"| {SIDES[r.side]} | {r.index} | {r.cache} | {s['load_s']:.2f} | {s['load_touch_s']:.2f} "
                     f"| {s['peak_after_load'] / GiB:.2f} | {s['peak_after_touch'] / GiB:.2f} "
                     f"| {s['rss_before'] / GiB:.2f} | {(s['peak_after_touch'] - s['rss_before']) / GiB:.2f} "
                     f"| {s['anon_after_touch'] / GiB:.2f} / {s['file_after_touch'] / GiB:.2f} "
                     f"| {weights / GiB:.2f} |")
    lines.append("")
    lines.append("| ratio ours / transformers | load call | load + read weights | peak RSS | RSS delta |")
    lines.append("|---|---:|---:|---:|---:|")
    for cache in dict.fromkeys(r.cache for r in runs):
        last = {r.side: r.stats for r in runs if r.cache == cache}  # the last run of this kind on each side
        if set(last) != set(SIDES):
            continue
        o, h = last["ours"], last["hf"]
        lines.append(f"| {cache} | {fmt_ratio(o['load_s'], h['load_s'])} "
                     f"| {fmt_ratio(o['load_touch_s'], h['load_touch_s'])} "
                     f"| {fmt_ratio(o['peak_after_touch'], h['peak_after_touch'])} "
                     f"| {fmt_ratio(o['peak_after_touch'] - o['rss_before'], h['peak_after_touch'] - h['rss_before'])} "
                     "|")
    lines.append("")
    labels = {r.cache for r in runs}
    if COLD["all"] in labels:
        lines.append(f"- {COLD['all']}: `echo 3 > /proc/sys/vm/drop_caches` first, which evicts Python's and "
                     "torch's code too, so the run also pays for paging libraries back in.")
    if COLD["checkpoint"] in labels:
        lines.append(f"- {COLD['checkpoint']}: only the checkpoint's files dropped from the cache (posix_fadvise "
                     "DONTNEED): the cost of reading the weights from disk.")
    lines.append("- warm: the same files again, already in the page cache ('warm-up' if no cold run came before).")
    lines.append("- Load call: the load alone; both children import their modules (and torch._dynamo, which "
                 "`import transformers` pulls in) before the clock starts.")
    lines.append("- Load + read weights: both loaders keep the weights as mmap views of the safetensors files when no "
                 "cast is needed, so the call itself reads little; this adds one read per 4 KiB page of every "
                 "tensor, the cost a first forward pass would otherwise pay.")
    lines.append("- RSS before = VmRSS after imports, just before the load call; peak RSS = ru_maxrss after the "
                 "weights were read (touched file-backed mmap pages count); delta = peak - before; anon / file = "
                 "RssAnon / RssFile at that point (file-backed pages are page cache: shared and reclaimable).")
    lines.append("")
    lines.append(logits_line)
    lines.append("")
    lines.append(f"Command: `{command}`")
    lines.append(f"Whole script: {total_s:.1f} s")
    return "\n".join(lines)


def compare_logits(runs: list[Run]) -> str:
    """One line comparing ours and transformers (every run of one side must give the same logits)."""
    import torch

    per_side: dict[str, torch.Tensor] = {}
    for r in runs:
        t = torch.load(r.logits_path)
        if r.side in per_side and not torch.equal(per_side[r.side], t):
            log.warning("%s run %d gave different logits from its first run", SIDES[r.side], r.index)
        per_side.setdefault(r.side, t)
    a, b = per_side["ours"], per_side["hf"]  # (B, T, V)
    if a.shape != b.shape:
        raise SystemExit(f"logits shapes differ: ours {tuple(a.shape)}, transformers {tuple(b.shape)}")
    agree = int((a.argmax(-1) == b.argmax(-1)).sum())
    return (f"Logits check ({a.shape[1]} text token ids, bf16): max |ours - transformers| = "
            f"{(a - b).abs().max().item():.3e} (max |logit| {a.abs().max().item():.3e}); "
            f"argmax agrees at {agree}/{a.shape[1]} positions")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ckpt", type=Path, default=Path("/tmp/qwen3vl-bench-2b"), help="checkpoint folder (made once)")
    p.add_argument("--preset", default="2B", help="preset whose shapes the random checkpoint takes")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cold", default="all,checkpoint",
                   help="cold runs per side, in order: 'all' (drop the whole page cache: root only, and it slows "
                        "every other process on the machine for a while), 'checkpoint' (evict only the "
                        "checkpoint's files); '' for none")
    p.add_argument("--warm-runs", type=int, default=1, help="warm runs per side, after the cold ones")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads in every process")
    # internal: what a child process does
    p.add_argument("--child", choices=sorted(SIDES), help=argparse.SUPPRESS)
    p.add_argument("--child-write", help=argparse.SUPPRESS)
    p.add_argument("--ids", help=argparse.SUPPRESS)
    p.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.child:
        child(args.child, str(args.ckpt), [int(i) for i in args.ids.split(",")], args.threads, args.out)
        return
    if args.child_write:
        write_checkpoint_child(args.child_write, args.preset, args.seed)
        return
    cold = [k for k in args.cold.split(",") if k and k != "none"]
    if any(k not in COLD for k in cold):
        p.error(f"--cold takes a comma list of {', '.join(COLD)}; got {args.cold!r}")
    if args.warm_runs < 0 or not (cold or args.warm_runs):
        p.error("nothing to run: give --cold modes or --warm-runs >= 1")

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    t_start = time.perf_counter()
    command = shlex.join([sys.executable, *sys.argv])

    import torch

    torch.set_num_threads(args.threads)
    python = sys.executable
    ckpt = args.ckpt.resolve()
    ensure_checkpoint(ckpt, args.preset, args.seed, python)
    weights = disk_bytes(ckpt)

    from qwen3vl.config import load_config

    cfg = load_config(ckpt)
    limit = min(TEXT_ID_LIMIT, cfg.text_config.vocab_size, cfg.image_token_id, cfg.video_token_id,
                cfg.vision_start_token_id, cfg.vision_end_token_id)  # plain text ids only
    gen = torch.Generator().manual_seed(args.seed)
    ids = torch.randint(0, limit, (N_IDS,), generator=gen).tolist()

    runs: list[Run] = []
    load_start = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="bench-load-") as tmp:
        # sides alternate within each cache state, so a busy spell on the machine does not land on one side only
        plan = [(k, COLD[k]) for k in cold] + [(None, "warm")] * args.warm_runs
        count = dict.fromkeys(SIDES, 0)
        for kind, label in plan:
            for side in SIDES:
                if kind is not None and not make_cold(kind, ckpt):
                    continue
                count[side] += 1
                i = count[side]
                this = "warm-up" if label == "warm" and i == 1 else label
                log.info("%s run %d (%s)", SIDES[side], i, this)
                out = Path(tmp) / f"{side}-{i}"
                stats = run_child(python, side, ckpt, ids, args.threads, out)
                log.info("  load call %.2f s, with reading the weights %.2f s, peak RSS %.2f GiB", stats["load_s"],
                         stats["load_touch_s"], stats["peak_after_touch"] / GiB)
                runs.append(Run(side, i, this, stats, out.with_suffix(".pt")))
        logits_line = compare_logits(runs)
    runs.sort(key=lambda r: list(SIDES).index(r.side))  # stable: each side's runs stay in order
    load_avg = (load_start, os.getloadavg()[0])

    print(report(runs, weights, command, time.perf_counter() - t_start, args.preset, args.threads, logits_line,
                 load_avg))


if __name__ == "__main__":
    main()
