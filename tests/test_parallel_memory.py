"""Each of 2 tensor-parallel ranks holds about half the weights: peak RSS measured inside the processes.

The checkpoint is a ~390 MB float32 random model whose weights are nearly all in the decoder (a tiny vision
encoder, which tensor parallelism replicates), so the weights dominate a process's memory. The single process
loads it with `load_model` and reads every page of every weight (its tensors are memory-mapped, so unread pages
would not count); each rank loads its shard with `load_parallel`. Both then run a forward pass. Memory is the
process's peak resident set at the end minus its resident set just before loading (interpreter, torch, the
process group, and a warm-up forward pass of a tiny model, which pages in the code a forward pass runs). The
peak is `VmHWM` from /proc/self/status, not `getrusage(RUSAGE_SELF).ru_maxrss`: Linux carries `ru_maxrss` across
fork and exec, so a spawned process would report the peak of the (large) test process that started it.
"""

from __future__ import annotations

import torch

from qwen3vl.config import RopeConfig, TextConfig, VisionConfig, Qwen3VLConfig
from qwen3vl.model.testing import write_random_checkpoint
from qwen3vl.parallel.testing import run_ranks

MiB = 1024**2


def _config() -> Qwen3VLConfig:
    cfg = Qwen3VLConfig(
        text_config=TextConfig(vocab_size=16384, hidden_size=1024, intermediate_size=4096, num_hidden_layers=4,
                               num_attention_heads=16, num_key_value_heads=8, head_dim=64,
                               max_position_embeddings=4096, rope=RopeConfig(mrope_section=[8, 12, 12])),
        vision_config=VisionConfig(depth=1, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=1024,
                                   num_position_embeddings=64, deepstack_visual_indexes=[0]),
        image_token_id=16001, video_token_id=16002, vision_start_token_id=16003, vision_end_token_id=16004)
    cfg.validate()
    return cfg


def _status(key: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(key + ":"))


def _measure(rank: int, folder: str, sharded: bool) -> dict:
    from qwen3vl.model.qwen3vl import load_model
    from qwen3vl.parallel.loading import load_parallel

    from qwen3vl.model.testing import random_model

    with torch.no_grad():  # warm up: the code pages the first forward pass touches count in RSS too
        random_model("debug")(torch.arange(32)[None])
    before = _status("VmRSS")
    model = load_parallel(folder) if sharded else load_model(folder)
    with torch.no_grad():
        if not sharded:  # memory-mapped weights: read every page, as a forward pass over all tokens would
            for p in model.parameters():
                p.view(-1)[::1024].sum()
        model(torch.arange(32)[None])
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    return {"peak": _status("VmHWM") - before, "weights": weights}


def test_each_rank_holds_about_half_the_weights(tmp_path):
    folder = write_random_checkpoint(tmp_path / "ckpt", _config())
    file_bytes = sum(f.stat().st_size for f in folder.glob("*.safetensors"))
    (single,) = run_ranks(_measure, 1, str(folder), False)
    ranks = run_ranks(_measure, 2, str(folder), True)
    report = (f"checkpoint {file_bytes / MiB:.0f} MiB; single process +{single['peak'] / MiB:.0f} MiB; ranks "
              + ", ".join(f"+{r['peak'] / MiB:.0f} MiB (weights {r['weights'] / MiB:.0f} MiB)" for r in ranks))
    print(report)
    assert single["peak"] > 0.9 * file_bytes, report
    for r in ranks:
        assert r["weights"] < 0.51 * single["weights"], report
        assert r["peak"] < 0.6 * single["peak"], report
