"""Which tensor-parallel splits are possible, and the errors for the ones that are not (no processes started)."""

from __future__ import annotations

import multiprocessing

import pytest
import torch

from qwen3vl.config import preset
from qwen3vl.engine.engine import EngineConfig
from qwen3vl.model.testing import write_tiny_model
from qwen3vl.parallel import ParallelSplitError, check_split
from qwen3vl.parallel.launch import start_tensor_parallel
from qwen3vl.parallel.plan import kv_head_range, local_kv_heads, valid_sizes, vocab_chunk


def test_released_sizes_split_over_usual_gpu_counts():
    for name in ("2B", "4B", "8B", "32B"):
        for n in (1, 2, 4, 8):
            check_split(preset(name), n)
    # 4 kv heads: 8 ranks replicate each kv head twice
    for n in (1, 2, 4, 8):
        check_split(preset("30B-A3B"), n)
        check_split(preset("235B-A22B"), n)


@pytest.mark.parametrize("field, value, n, message", [
    ("num_attention_heads", 6, 4, r"num_attention_heads \(6\) is not divisible by 4"),
    ("num_key_value_heads", 3, 2, r"num_key_value_heads \(3\) is not divisible by 2"),
    ("intermediate_size", 130, 4, r"intermediate_size \(130\) is not divisible by 4"),
    ("vocab_size", 3, 4, r"vocab_size \(3\) is smaller than the rank count 4"),
])
def test_impossible_dense_splits_name_the_field(field, value, n, message):
    cfg = preset("debug")
    setattr(cfg.text_config, field, value)
    if field == "num_key_value_heads":
        cfg.text_config.num_attention_heads = 6
    with pytest.raises(ParallelSplitError, match=message):
        check_split(cfg, n)


def test_more_ranks_than_kv_heads():
    cfg = preset("debug")  # 4 query heads, 2 kv heads
    cfg.text_config.num_attention_heads, cfg.text_config.num_key_value_heads = 12, 2
    check_split(cfg, 4)  # each kv head on 2 ranks
    assert [kv_head_range(2, 4, r) for r in range(4)] == [(0, 1), (0, 1), (1, 2), (1, 2)]
    assert local_kv_heads(cfg, 4) == 1 and local_kv_heads(cfg, 2) == 1 and local_kv_heads(cfg, 1) == 2
    cfg.text_config.num_attention_heads, cfg.text_config.num_key_value_heads = 12, 4
    with pytest.raises(ParallelSplitError, match=r"6 ranks cannot share text_config.num_key_value_heads \(4\)"):
        check_split(cfg, 6)


def test_experts_must_split_evenly_and_all_problems_are_listed():
    cfg = preset("30B-A3B")  # 128 experts, 32 heads, 4 kv heads
    with pytest.raises(ParallelSplitError) as e:
        check_split(cfg, 3)
    text = str(e.value)
    assert "num_experts (128) is not divisible by 3" in text
    assert "num_attention_heads (32) is not divisible by 3" in text
    assert "tensor_parallel_size=3" in text and "Sizes that work for this model: 1, 2, 4, 8, 16, 32" in text
    assert 16 in valid_sizes(cfg) and 32 in valid_sizes(cfg)  # kv heads replicated 4 and 8 times
    # an all-MoE model never uses intermediate_size, so it does not constrain the split
    cfg.text_config.intermediate_size = 7
    check_split(cfg, 2)


def test_uneven_vocab_chunks_cover_the_vocab():
    assert [vocab_chunk(301, 4, r) for r in range(4)] == [(0, 76), (76, 152), (152, 228), (228, 301)]
    assert [vocab_chunk(282, 2, r) for r in range(2)] == [(0, 141), (141, 282)]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return write_tiny_model(tmp_path_factory.mktemp("tiny"))


def test_more_ranks_than_gpus(tiny, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ValueError, match="tensor_parallel_size=2 needs 2 GPUs on this machine, but only 1 is visible"):
        start_tensor_parallel(tiny, 2, device="cuda", engine_config=EngineConfig())
    with pytest.raises(ValueError, match="CUDA_VISIBLE_DEVICES"):
        start_tensor_parallel(tiny, 2, device="cuda:1", engine_config=EngineConfig())
    assert not [p for p in multiprocessing.active_children() if p.name.startswith("qwen3vl-tp-rank")]


def test_split_checked_before_any_process_starts(tiny):
    with pytest.raises(ParallelSplitError, match=r"num_attention_heads \(4\) is not divisible by 3"):
        start_tensor_parallel(tiny, 3, device="cpu", engine_config=EngineConfig())
    assert not [p for p in multiprocessing.active_children() if p.name.startswith("qwen3vl-tp-rank")]


def test_torchrun_world_size_must_match(tiny, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(ValueError, match="tensor_parallel_size=2 but the launcher started WORLD_SIZE=4"):
        start_tensor_parallel(tiny, 2, device="cpu", engine_config=EngineConfig())
