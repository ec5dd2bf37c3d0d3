"""Tensor and expert parallelism on 2 CPU ranks (gloo) equal the single process: model logits (dense, MoE, an
odd model: one kv head replicated, biases, odd tied vocabulary, mixed dense/MoE layers, experts stored in the
transformers 5.x layout, and a block-FP8 MoE with experts stored one per linear) and greedy tokens through the
engine (`LLM`, `build_llm`, torchrun); dead ranks raise instead of hanging."""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

import qwen3vl
from qwen3vl.config import preset
from qwen3vl.model.qwen3vl import load_model
from qwen3vl.model.testing import random_model, write_tiny_model
from qwen3vl.parallel import TensorParallelError
from qwen3vl.parallel.testing import run_ranks
from qwen3vl.weights.export import save_checkpoint
from qwen3vl.weights.loader import CheckpointError
from engine_helpers import Prompt
from fp8_helpers import write_fp8_copy

TOL = 1e-5


# ------------------------------------------------------------------------------------------ checkpoints
@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tp")
    moe = write_tiny_model(root / "moe", kind="moe", sharpen=3.0)
    return {"dense": write_tiny_model(root / "dense", sharpen=3.0), "moe": moe,
            "odd": _odd_checkpoint(root / "odd"),
            "fp8-moe": write_fp8_copy(moe, root / "fp8-moe")}  # block FP8, experts one linear each


def _odd_checkpoint(folder: Path) -> Path:
    cfg = preset("debug")
    cfg.model_type = "qwen3_vl_moe"
    t = cfg.text_config
    t.vocab_size, t.num_key_value_heads, t.attention_bias = 301, 1, True
    t.num_experts, t.num_experts_per_tok, t.moe_intermediate_size, t.mlp_only_layers = 4, 2, 24, [1]
    cfg.tie_word_embeddings = True
    cfg.validate()
    model = random_model(cfg, seed=5)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
    save_checkpoint(model, folder)
    # experts as transformers 5.x writes them: (E, 2I, D) and (E, D, I)
    state = load_file(folder / "model.safetensors")
    state = {k: v.transpose(1, 2).contiguous() if ".mlp.experts." in k else v for k, v in state.items()}
    save_file(state, folder / "model.safetensors", metadata={"format": "pt"})
    return folder


# ------------------------------------------------------------------------------------------ model forward
def _inputs(cfg):
    g = torch.Generator().manual_seed(0)
    prompt = Prompt(cfg, g).text(5).image(8, 6).text(4).video(2, 4, 4).text(3).image(4, 4).text(2)
    ids = torch.randint(0, 250, (2, 9), generator=g)
    mask = torch.ones(2, 9, dtype=torch.long)
    mask[1, :3] = 0  # left padding
    return prompt, ids, mask


@torch.no_grad()
def _logits(model) -> list[torch.Tensor]:
    prompt, ids, mask = _inputs(model.config)
    return [model(torch.tensor([prompt.ids]), **prompt.forward_kwargs()).logits,
            model(ids, attention_mask=mask).logits]


def _forward_rank(rank: int, folders: dict[str, Path]) -> dict:
    from qwen3vl.parallel import parallelize
    from qwen3vl.parallel.loading import load_parallel

    out = {}
    for name, folder in folders.items():
        model = load_parallel(folder)  # each rank reads only its slices
        out[name] = _logits(model)
        out[f"{name}-numel"] = sum(p.numel() for p in model.model.language_model.parameters())
        out[f"{name}-kv-rows"] = model.model.language_model.layers[0].self_attn.k_proj.weight.shape[0]
    model = load_model(folders["dense"])  # parallelize applied to an already loaded model
    parallelize(model)
    out["dense-sliced"] = _logits(model)
    return out


def test_logits_equal_single_process(folders):
    ranks = run_ranks(_forward_rank, 2, folders)
    for name, folder in folders.items():
        model = load_model(folder)
        expected = _logits(model)
        whole = sum(p.numel() for p in model.model.language_model.parameters())
        for rank, got in enumerate(ranks):
            keys = [name] + (["dense-sliced"] if name == "dense" else [])
            for key in keys:
                for g, e in zip(got[key], expected):
                    assert g.shape == e.shape
                    err = (g - e).abs().max().item()
                    assert err < TOL, f"{key} rank {rank}: max |diff| {err}"
            # a rank holds about half the decoder (norms and the router are replicated)
            assert got[f"{name}-numel"] < 0.56 * whole, (name, got[f"{name}-numel"], whole)
        kv = model.config.text_config.num_key_value_heads
        assert ranks[0][f"{name}-kv-rows"] == max(kv // 2, 1) * model.config.text_config.head_dim


# ------------------------------------------------------------------------------------------ engine / LLM
def _tp_children() -> list:
    return [p for p in multiprocessing.active_children() if p.name.startswith("qwen3vl-tp-rank")]


def _image(seed: int) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (70, 100, 3), dtype=np.uint8))


def _messages(seed: int = 0, text: str = "What is this?"):
    return [{"role": "user", "content": [{"type": "image", "image": _image(seed)}, {"type": "text", "text": text}]}]


CONVERSATIONS = [_messages(1, "a"), _messages(2, "bb"), [{"role": "user", "content": "text only"}],
                 _messages(1, "same image again")]


def _greedy(llm) -> tuple[list[int], list[list[int]]]:
    one = llm.chat(_messages(), max_tokens=8, temperature=0).token_ids
    batch = [r.token_ids for r in llm.chat_batch(CONVERSATIONS, max_tokens=6, temperature=0)]
    return one, batch


# small step budget and blocks: chunked prefill (an image split over steps) and batched decode across ranks
ENGINE = dict(kv_cache_gb=0.01, block_size=4, max_batch_tokens=24)


def _serve_args(folder: Path, n: int, *extra: str) -> argparse.Namespace:
    from qwen3vl.serve.cli import add_serve_parser

    parser = argparse.ArgumentParser()
    add_serve_parser(parser.add_subparsers())
    args = parser.parse_args(["serve", "--model", str(folder), "--tensor-parallel-size", str(n),
                              "--max-batch-tokens", "24", "--kv-cache-gb", "0.01", *extra])
    assert args.tensor_parallel_size == n
    return args


@pytest.mark.parametrize("kind", ["dense", "moe"])
def test_greedy_tokens_equal_single_process(folders, kind):
    from qwen3vl.commands import build_llm

    # the dense case also keeps its KV cache in int8 on both sides: each rank rounds its own kv heads
    kv = "int8" if kind == "dense" else "auto"
    single = qwen3vl.LLM(folders[kind], kv_cache_dtype=kv, **ENGINE)
    expected = _greedy(single)
    scored = single.chat(_messages(), max_tokens=1, temperature=0, prompt_logprobs=2).prompt_logprobs
    threads = torch.get_num_threads()
    if kind == "dense":  # through the CLI path `qwen3vl serve --tensor-parallel-size 2` uses
        llm = build_llm(_serve_args(folders[kind], 2, "--kv-cache-dtype", "int8"))
    else:
        llm = qwen3vl.LLM(folders[kind], tensor_parallel_size=2, **ENGINE)
    try:
        assert llm._parallel is not None and llm.engine.runner.runner.cache.kv_dtype == kv
        workers = list(llm._parallel.workers)
        assert _greedy(llm) == expected
        split = llm.chat(_messages(), max_tokens=1, temperature=0, prompt_logprobs=2).prompt_logprobs
        assert len(split) == len(scored) and split[0] is None  # prompt logprobs: every rank runs the scoring
        assert all(abs(a[0] - b[0]) < 1e-4 and max(abs(x - y) for (_, x), (_, y) in zip(a[1], b[1])) < 1e-4
                   for a, b in zip(split[1:], scored[1:]))
        assert llm.engine.runner.vision_cache.hits >= 1  # the repeated image came from the cache on every rank
    finally:
        llm.close()
    llm.close()  # idempotent
    assert [p.exitcode for p in workers] == [0]
    assert _tp_children() == []
    assert torch.get_num_threads() == threads, "rank 0's CPU threads are restored on close"


def test_dead_worker_raises_instead_of_hanging(folders):
    llm = qwen3vl.LLM(folders["dense"], tensor_parallel_size=2, **ENGINE)
    worker = llm._parallel.workers[0]
    os.kill(worker.pid, signal.SIGKILL)
    worker.join(10)
    start = time.monotonic()
    with pytest.raises(TensorParallelError, match="rank 1 .* exited with code -9"):
        llm.chat(_messages(), max_tokens=4, temperature=0)
    with pytest.raises(TensorParallelError, match="create a new one"):  # and it stays failed
        llm.chat(_messages(), max_tokens=4, temperature=0)
    llm.close()
    assert time.monotonic() - start < 10


def test_failed_start_leaves_no_workers(folders, tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in folders["dense"].iterdir():
        if f.is_file():
            (broken / f.name).write_bytes(f.read_bytes())
    state = load_file(broken / "model.safetensors")
    del state["model.language_model.layers.2.mlp.up_proj.weight"]
    save_file(state, broken / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="missing tensor model.language_model.layers.2.mlp.up_proj.weight"):
        qwen3vl.LLM(broken, tensor_parallel_size=2)
    assert _tp_children() == []
    assert not torch.distributed.is_initialized()


RANK0_SCRIPT = """
import os, signal, sys
import qwen3vl
if __name__ == "__main__":
    llm = qwen3vl.LLM(sys.argv[1], tensor_parallel_size=2, kv_cache_gb=0.01)
    llm.chat([{"role": "user", "content": "hi"}], max_tokens=2, temperature=0)
    print(llm._parallel.workers[0].pid, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
"""


def _gone(pid: int) -> bool:
    """No such process, or only its zombie is left (an orphan waiting to be reaped)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True


def test_worker_exits_when_rank0_dies(folders, tmp_path):
    script = tmp_path / "rank0.py"
    script.write_text(RANK0_SCRIPT)
    proc = subprocess.run([sys.executable, str(script), str(folders["dense"])], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    pid = int(proc.stdout.split()[-1])
    deadline = time.monotonic() + 15
    while not _gone(pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _gone(pid), "the worker outlived rank 0"


CTRL_C_SCRIPT = """
import signal, sys
import qwen3vl
signal.signal(signal.SIGINT, signal.default_int_handler)  # even if the test runner was started ignoring Ctrl-C
if __name__ == "__main__":
    llm = qwen3vl.LLM(sys.argv[1], tensor_parallel_size=2, kv_cache_gb=0.01)
    print(llm._parallel.workers[0].pid, flush=True)
    while True:
        llm.chat([{"role": "user", "content": "hi"}], max_tokens=40, temperature=0, ignore_eos=True)
"""


def test_ctrl_c_stops_every_rank(folders, tmp_path):
    script = tmp_path / "ctrl_c.py"
    script.write_text(CTRL_C_SCRIPT)
    proc = subprocess.Popen([sys.executable, str(script), str(folders["dense"])], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        pid = int(proc.stdout.readline())
        time.sleep(1.0)  # mid-generation
        os.killpg(proc.pid, signal.SIGINT)  # what a terminal sends to its foreground group
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert "KeyboardInterrupt" in err, err[-2000:]
    deadline = time.monotonic() + 10
    while not _gone(pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _gone(pid), "the worker outlived Ctrl-C"


TORCHRUN_SCRIPT = """
import json, os, sys
import qwen3vl
llm = qwen3vl.LLM(sys.argv[1], tensor_parallel_size=2, kv_cache_gb=0.01, block_size=4, max_batch_tokens=24)
assert os.environ["RANK"] == "0", "other ranks never return from LLM()"
messages = json.loads(sys.argv[2])
print("TOKENS", json.dumps(llm.chat(messages, max_tokens=8, temperature=0).token_ids), flush=True)
llm.close()
"""


def test_torchrun_launch(folders, tmp_path):
    from qwen3vl.parallel.ranks import free_port

    script = tmp_path / "torchrun_llm.py"
    script.write_text(TORCHRUN_SCRIPT)
    image = tmp_path / "image.png"
    _image(0).save(image)
    messages = [{"role": "user", "content": [{"type": "image", "image": str(image)},
                                             {"type": "text", "text": "What is this?"}]}]
    expected = qwen3vl.LLM(folders["moe"], **ENGINE).chat(messages, max_tokens=8, temperature=0).token_ids
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                           "--master-port", str(free_port()), str(script), str(folders["moe"]),
                           json.dumps(messages)], capture_output=True, text=True, timeout=180, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("TOKENS"))
    assert json.loads(line.split(" ", 1)[1]) == expected
