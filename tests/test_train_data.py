"""Training data: JSONL paths, deterministic length-bucketed batches, resuming mid-window, the worker process."""

from __future__ import annotations

import itertools
import json

import pytest
import torch

from qwen3vl.processing.processor import load_processor
from qwen3vl.train.data import (BucketedBatches, Conversation, JsonlSource, ListSource, SyntheticSource, batch_loader,
                                prepare)
from qwen3vl.train.synthetic_io import read_jsonl
from qwen3vl.train.testing import tiny_synthetic_config, write_tiny_base, write_tiny_jsonl


@pytest.fixture(scope="module")
def proc(tmp_path_factory):
    return load_processor(write_tiny_base(tmp_path_factory.mktemp("base")))


@pytest.fixture(scope="module")
def jsonl(tmp_path_factory):
    return write_tiny_jsonl(tmp_path_factory.mktemp("data") / "train.jsonl", seed=3, n=11)


def _ids(batch) -> list[list[int]]:
    ids, mask = batch.inputs["input_ids"], batch.inputs["attention_mask"]
    return [row[m.bool()].tolist() for row, m in zip(ids, mask)]


def test_jsonl_paths_resolve_against_the_file(proc, jsonl, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # relative media paths must not depend on the working directory
    src = JsonlSource(jsonl)
    loaded = read_jsonl(jsonl)
    assert src.num_examples == len(loaded) == 11
    for i in range(src.num_examples):
        a = prepare(proc, src[i])
        b = proc.prepare(loaded[i].messages, add_generation_prompt=False)
        assert a.input_ids == b.input_ids and a.loss_mask == b.loss_mask
        for x, y in zip(a.images + a.videos, b.images + b.videos):
            assert torch.equal(x.pixel_values, y.pixel_values)


def test_jsonl_errors_name_the_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"messages": []}) + "\n{oops\n")
    with pytest.raises(ValueError, match="bad.jsonl:2"):
        JsonlSource(bad)


def test_epochs_cover_every_example_once_in_length_buckets(proc, jsonl):
    bb = BucketedBatches(JsonlSource(jsonl), proc, batch_size=2, window_batches=2, seed=5)
    assert bb.batches_per_epoch == 6  # windows of 4, 4 and 3 examples -> 2 + 2 + 2 batches
    seen: list[list[int]] = []
    batches = list(itertools.islice(iter(bb), bb.batches_per_epoch))
    assert [b.position for b in batches] == list(range(1, bb.batches_per_epoch + 1))
    for b in batches:
        seen += _ids(b)
    everything = [prepare(proc, JsonlSource(jsonl)[i]).input_ids for i in range(11)]
    assert sorted(map(tuple, seen)) == sorted(map(tuple, everything))
    # inside a window, the two batches split the sorted lengths: the short pair and the long pair
    for w in range(2):
        lens = sorted(len(r) for b in batches[2 * w:2 * w + 2] for r in _ids(b))
        groups = [sorted(len(r) for r in _ids(b)) for b in batches[2 * w:2 * w + 2]]
        assert sorted(groups) == [lens[:2], lens[2:]]
    # the next epoch is a different order of the same examples
    second = list(itertools.islice(iter(bb), bb.batches_per_epoch, 2 * bb.batches_per_epoch))
    assert [_ids(b) for b in second] != [_ids(b) for b in batches]


def test_starting_mid_stream_gives_the_same_batches(proc, jsonl):
    bb = BucketedBatches(JsonlSource(jsonl), proc, batch_size=2, window_batches=2, seed=1)
    reference = list(itertools.islice(iter(bb), 9))
    for start in (1, 3, 6, 7):
        bb.start = start
        tail = list(itertools.islice(iter(bb), 9 - start))
        assert [_ids(b) for b in tail] == [_ids(b) for b in reference[start:]]
        assert [torch.equal(b.loss_mask, r.loss_mask) for b, r in zip(tail, reference[start:])] == [True] * len(tail)


def test_synthetic_stream_and_worker_process(proc):
    src = SyntheticSource(seed=2, tasks=("color_shape", "ocr"), config=tiny_synthetic_config())
    bb = BucketedBatches(src, proc, batch_size=2, window_batches=2, seed=0, start=1)
    assert bb.batches_per_epoch is None
    in_process = list(itertools.islice(batch_loader(bb, 0), 4))
    in_worker = list(itertools.islice(batch_loader(bb, 1), 4))
    assert [_ids(b) for b in in_worker] == [_ids(b) for b in in_process]
    assert [b.position for b in in_worker] == [2, 3, 4, 5]
    for a, b in zip(in_process, in_worker):
        assert torch.equal(a.inputs["pixel_values"], b.inputs["pixel_values"])


def test_a_pool_of_workers_serves_the_single_process_sequence(proc, jsonl):
    # 11 examples, windows of 4, 4 and 3 (the last window has 2 batches, one of them short); start mid-window and run
    # past the epoch's end, so the plan's bookkeeping of short windows and epochs is exercised
    bb = BucketedBatches(JsonlSource(jsonl), proc, batch_size=2, window_batches=2, seed=4, start=3)
    in_process = list(itertools.islice(batch_loader(bb, 0), 10))
    pooled = list(itertools.islice(batch_loader(bb, 3, prefetch=1), 10))
    assert [b.position for b in pooled] == list(range(4, 14))
    assert [_ids(b) for b in pooled] == [_ids(b) for b in in_process]
    assert all(torch.equal(a.loss_mask, b.loss_mask) for a, b in zip(in_process, pooled))
    with pytest.raises(ValueError, match="num_workers"):
        batch_loader(bb, -1)


def test_bf16_pixels_change_nothing_under_bf16_autocast(proc, tmp_path_factory):
    """Batches carry bf16 pixel values when the run trains under bf16 autocast (half the bytes to move); the loss and
    every gradient must be bitwise what float32 pixels give, since the patch embedding rounds its input to bf16."""
    from qwen3vl.model.qwen3vl import load_model
    from qwen3vl.train.loss import loss_sum
    from qwen3vl.train.testing import write_tiny_base

    model = load_model(write_tiny_base(tmp_path_factory.mktemp("m")), dtype=torch.float32).requires_grad_(True)
    src = SyntheticSource(seed=4, tasks=("color_shape", "video_time"), config=tiny_synthetic_config())
    results = []
    for dtype in (None, torch.bfloat16):
        bb = BucketedBatches(src, proc, batch_size=2, window_batches=1, pixel_dtype=dtype)
        batch = next(iter(bb))
        assert batch.inputs["pixel_values"].dtype == (dtype or torch.float32)
        model.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            s, _ = loss_sum(model, batch)
        s.backward()
        results.append((s.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]))
    (a, grads_a), (b, grads_b) = results
    assert torch.equal(a, b) and len(grads_a) == len(grads_b) > 0
    assert all(torch.equal(x, y) for x, y in zip(grads_a, grads_b))


def test_max_length_cuts_text_but_never_media(proc):
    text = Conversation([{"role": "user", "content": "hello there"}, {"role": "assistant", "content": "x" * 50}])
    full = prepare(proc, text)
    cut = prepare(proc, text, max_length=20)
    assert cut.input_ids == full.input_ids[:20] and cut.loss_mask == full.loss_mask[:20]
    src = ListSource([ex for ex in [SyntheticSource(0, ("count",), tiny_synthetic_config())[0].messages]])
    with pytest.raises(ValueError, match="max_length"):
        prepare(proc, src[0], max_length=5, where="example 0")
