"""SFT on a tiny random model: the loss mask, learning, freezing, bit-identical resume, export that loads in
transformers, and the CLI."""

from __future__ import annotations

import argparse

import pytest
import torch
from PIL import Image

import qwen3vl
from qwen3vl.processing.processor import load_processor
from qwen3vl.train.data import BucketedBatches, Conversation, JsonlSource, collate, prepare
from qwen3vl.train.sft import SFTConfig, evaluate_loss, train_sft
from qwen3vl.train.testing import write_tiny_base, write_tiny_jsonl


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return str(write_tiny_base(tmp_path_factory.mktemp("base"), seed=0))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("data")
    return str(write_tiny_jsonl(folder / "train.jsonl", seed=0, n=8)), str(write_tiny_jsonl(folder / "val.jsonl", 1, 5))


def _runs(mask: list[int]) -> list[tuple[int, int]]:
    out, start = [], None
    for i, m in enumerate(mask + [0]):
        if m and start is None:
            start = i
        elif not m and start is not None:
            out.append((start, i))
            start = None
    return out


def test_loss_mask_covers_exactly_the_assistant_tokens(base):
    proc = load_processor(base)
    img = Image.new("RGB", (64, 64), (200, 30, 30))
    image = {"type": "image", "image": img, "resized_height": 64, "resized_width": 64}
    long_conv = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [image, {"type": "text", "text": "What color?"}]},
        {"role": "assistant", "content": "red"},
        {"role": "user", "content": "And the shape?"},
        {"role": "assistant", "content": "A square,\n3 px."},
    ]
    short_conv = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]
    expected = [["red<|im_end|>", "A square,\n3 px.<|im_end|>"], ["Hello!<|im_end|>"]]
    prepared = [prepare(proc, Conversation(c)) for c in (long_conv, short_conv)]
    batch = collate(proc, prepared)
    ids, mask = batch.inputs["input_ids"], batch.loss_mask
    assert ids.shape == mask.shape and ids.shape[0] == 2
    tok = proc.tokenizer
    for row, (p, want) in enumerate(zip(prepared, expected)):
        # the masked runs decode to the assistant messages plus <|im_end|>, and nothing else is masked
        runs = _runs(p.loss_mask)
        assert [tok.decode(p.input_ids[a:b]) for a, b in runs] == want
        for a, _ in runs:  # each run starts right after the rendered "<|im_start|>assistant\n"
            assert tok.decode(p.input_ids[:a]).endswith("<|im_start|>assistant\n")
        # in the left-padded batch, the next-token targets are exactly those tokens
        targets = ids[row, 1:][mask[row, 1:].bool()].tolist()
        assert tok.decode(targets) == "".join(want)
        assert not mask[row][batch.inputs["attention_mask"][row] == 0].any()
        assert not mask[row][ids[row] == proc.tokenizer.special.image].any()
    assert batch.num_targets == sum(len(proc.tokenizer.encode(t)) for w in expected for t in w)


def test_loss_mask_on_synthetic_jsonl(base, data):
    proc = load_processor(base)
    src = JsonlSource(data[0])
    for i in range(src.num_examples):
        p = prepare(proc, src[i])
        answer = src[i].messages[-1]["content"]
        assert proc.tokenizer.decode([t for t, m in zip(p.input_ids, p.loss_mask) if m]) == answer + "<|im_end|>"


def test_a_few_steps_lower_the_loss(base, data, tmp_path):
    cfg = SFTConfig(model=base, out_dir=str(tmp_path / "run"), data=data[0], batch_size=4, max_steps=12, lr=3e-3,
                    export=False, progress=False)
    result = train_sft(cfg)
    batches = list(BucketedBatches(JsonlSource(data[0]), load_processor(base), 4, shuffle=False).epoch(0))
    before = evaluate_loss(qwen3vl.load_model(base), batches)
    after = evaluate_loss(result.model, batches)
    assert after < before - 1.0, (before, after)
    assert (tmp_path / "run" / "metrics.jsonl").read_text().count("\n") == 12


def _params(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("train,lora", [(("merger",), False), (("language",), True)])
def test_frozen_parameters_do_not_change(base, data, tmp_path, train, lora):
    before = _params(qwen3vl.load_model(base))
    cfg = SFTConfig(model=base, out_dir=str(tmp_path / "run"), data=data[0], batch_size=4, max_steps=2, lr=1e-2,
                    train=train, lora=lora, export=False, progress=False)
    after = _params(train_sft(cfg).model)
    for name, t in before.items():
        changed = not torch.equal(t, after[name])
        trains = not lora and any(name.startswith(p) for p in ("model.visual.merger", "model.visual.deepstack"))
        assert changed == trains, name
    lora_names = [n for n in after if n not in before]
    assert bool(lora_names) == lora
    assert all(n.startswith("model.language_model.layers.") for n in lora_names)
    if lora:
        assert any(not torch.all(after[n] == 0) for n in lora_names if n.endswith("lora_B"))


@pytest.mark.parametrize("lora", [True, False])
def test_resume_continues_identically(base, data, tmp_path, lora):
    common = dict(model=base, data=data[0], batch_size=3, grad_accum=2, max_steps=6, lr=5e-3, warmup_steps=2,
                  train=("language", "merger"), lora=lora, lora_dropout=0.1, bf16=False, save_every=3,
                  window_batches=2, export=False, progress=False, seed=7)
    full = train_sft(SFTConfig(out_dir=str(tmp_path / "a"), **common))
    ckpt = tmp_path / "a" / "checkpoints" / "step-000003"
    assert (ckpt / "trainer.json").is_file()
    resumed = train_sft(SFTConfig(out_dir=str(tmp_path / "b"), resume=str(ckpt), **common))
    assert sorted(resumed.losses) == [4, 5, 6]
    for step in (4, 5, 6):
        assert resumed.losses[step] == pytest.approx(full.losses[step], abs=1e-6, rel=0)  # bit-equal in practice
    a, b = _params(full.model), _params(resumed.model)
    assert all(torch.allclose(a[n], b[n], atol=1e-6, rtol=0) for n in a)


def test_export_loads_in_transformers_with_the_same_logits(base, data, tmp_path):
    from transformers import Qwen3VLForConditionalGeneration

    cfg = SFTConfig(model=base, out_dir=str(tmp_path / "run"), data=data[0], batch_size=4, max_steps=3, lr=2e-2,
                    lora=True, lora_rank=4, bf16=False, progress=False)
    result = train_sft(cfg)
    folder = result.export_dir
    for name in ("config.json", "model.safetensors", "tokenizer.json", "preprocessor_config.json",
                 "video_preprocessor_config.json", "generation_config.json", "chat_template.json"):
        assert (folder / name).is_file(), name
    assert (tmp_path / "run" / "adapter" / "adapter_model.safetensors").is_file()

    proc = load_processor(folder)
    img = Image.effect_noise((64, 64), 60).convert("RGB")
    conversations = [
        [{"role": "user", "content": [{"type": "image", "image": img, "resized_height": 64, "resized_width": 64},
                                      {"type": "text", "text": "What is this?"}]}],
        [{"role": "user", "content": "Say something."}],
    ]
    inputs = proc(conversations, return_mm_token_type_ids=True)
    ours_inputs = {k: v for k, v in inputs.items() if k != "mm_token_type_ids"}
    with torch.no_grad():
        ours = qwen3vl.load_model(folder)(**ours_inputs).logits
        trained = result.model.eval()(**ours_inputs).logits  # merged in place by the export
        hf = Qwen3VLForConditionalGeneration.from_pretrained(folder).eval()(**inputs).logits
        untrained = qwen3vl.load_model(base)(**ours_inputs).logits
    keep = inputs["attention_mask"].bool()
    assert (ours - hf)[keep].abs().max() <= 1e-4
    assert (ours - trained)[keep].abs().max() <= 1e-5
    assert (ours - untrained)[keep].abs().max() > 1e-3  # the adapters did something
    import peft  # the adapter alone, in peft's format, on transformers' base model

    with torch.no_grad():
        base_hf = Qwen3VLForConditionalGeneration.from_pretrained(base)
        via_peft = peft.PeftModel.from_pretrained(base_hf, tmp_path / "run" / "adapter").eval()(**inputs).logits
    assert (via_peft - ours)[keep].abs().max() <= 1e-4


def test_cli_sft_then_export(base, data, tmp_path):
    from qwen3vl.train.cli import add_parser

    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers(dest="command"))
    run = tmp_path / "run"
    args = parser.parse_args(["train", "sft", "--model", base, "--data", data[0], "--out", str(run), "--max-steps",
                              "2", "--batch-size", "4", "--lora", "--lora-rank", "2", "--train", "language",
                              "--save-every", "2", "--eval-data", data[1], "--eval-every", "2", "--no-export"])
    assert args.func(args) == 0
    assert not (run / "model").exists()
    ckpt = str(run / "checkpoints" / "step-000002")
    args = parser.parse_args(["train", "export", ckpt, "--out", str(tmp_path / "m")])
    assert args.func(args) == 0
    model = qwen3vl.load_model(tmp_path / "m")
    assert not any("lora" in n for n, _ in model.named_parameters())
    assert (tmp_path / "m" / "tokenizer.json").is_file()


def test_resume_auto_in_the_same_folder_keeps_one_log_line_per_step(base, data, tmp_path):
    import json

    common = dict(model=base, out_dir=str(tmp_path / "run"), data=data[0], batch_size=4, max_steps=4, save_every=2,
                  export=False, progress=False)
    train_sft(SFTConfig(**common))
    (tmp_path / "run" / "checkpoints" / "step-000004").rename(tmp_path / "moved")  # as if stopped after step 3
    resumed = train_sft(SFTConfig(resume="auto", **common))
    assert sorted(resumed.losses) == [3, 4]
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [1, 2, 3, 4]


def test_a_hub_id_base_exports_with_its_tokenizer_and_templates(base, data, tmp_path, monkeypatch):
    """`--model owner/name` (here from a pre-filled hub cache, offline): the export must carry the snapshot's side
    files, or the fine-tuned folder could not be loaded."""
    import shutil

    import huggingface_hub.constants

    cache = tmp_path / "hub"
    snapshot = cache / "models--tiny--base" / "snapshots" / ("0" * 40)
    shutil.copytree(base, snapshot)
    (cache / "models--tiny--base" / "refs").mkdir()
    (cache / "models--tiny--base" / "refs" / "main").write_text("0" * 40)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    result = train_sft(SFTConfig(model="tiny/base", out_dir=str(tmp_path / "run"), data=data[0], batch_size=2,
                                 max_steps=1, bf16=False, progress=False))
    for name in ("tokenizer.json", "chat_template.json", "preprocessor_config.json", "generation_config.json"):
        assert (result.export_dir / name).is_file(), name
    assert qwen3vl.LLM(str(result.export_dir), device="cpu", kv_cache_gb=0.05).chat(
        [{"role": "user", "content": "hi"}], max_tokens=2).token_ids
