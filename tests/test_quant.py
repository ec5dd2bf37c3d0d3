"""Weight-only int8 quantization (model/quant.py): the rounding rule and its error bound; both compute paths of
`Int8Linear` (the CPU int8 kernel for a few bfloat16 rows, the converted weight otherwise) equal a float matmul with
the dequantized weight; a quantized model gives transformers' logits for that model with the dequantized weights
put in (float32, 1e-4), tied and untied heads; greedy decoding through the engine matches too; per-request LoRA
adapters still apply; the shipped demo model keeps its answers; `--quantization int8` reaches the LLM."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import qwen3vl
from qwen3vl.model.quant import SMALL_M, Int8Experts, Int8Linear, quantize_model, quantize_weight
from engine_helpers import Prompt, engine_greedy, reference_greedy, sharpen
from reference import IMG, VID, Inputs, batch, ours_kwargs, random_lora, reference_model


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_rounding_rule_and_error_bound(dtype):
    g = torch.Generator().manual_seed(0)
    w = (torch.randn(300, 70, generator=g) * torch.logspace(-3, 1, 300)[:, None]).to(dtype)  # rows of many sizes
    w[5] = 0.0  # an all-zero row must not divide by zero
    q, s = quantize_weight(w)
    # float16 keeps float32 scales (its own would be subnormal for the rows of small weights)
    assert q.dtype == torch.int8 and s.dtype == (torch.float32 if dtype == torch.float16 else dtype)
    assert s.shape == (300,) and q.abs().max() <= 127
    nonzero = w.abs().amax(1) > 0
    if s.dtype == torch.float32:
        assert (q.abs().amax(1)[nonzero] == 127).all()  # each row's largest weight maps to +-127
    else:  # the scale was rounded up to bfloat16: the largest weight lands at most one step below
        assert (q.abs().amax(1)[nonzero] >= 126).all()
    # the bound holds with the scale the layer computes with (in its own dtype); w / s is rounded in float32, which
    # can tip an exact tie at |w / s| <= 127 by float32's relative step
    err = (q.double() * s.double()[:, None] - w.double()).abs()
    assert (err <= s.double()[:, None] * (0.5 + 127 * 2.0**-22)).all()
    assert (q[5] == 0).all()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("rows", [1, SMALL_M, SMALL_M + 1, 37])
@pytest.mark.parametrize("features", [96, 40])  # 40: not a multiple of 16, which the CPU kernel cannot take
def test_int8_linear_equals_a_matmul_with_the_dequantized_weight(dtype, rows, features):
    g = torch.Generator().manual_seed(rows)
    layer = torch.nn.Linear(features, 40, bias=True).to(dtype)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(40, features, generator=g))
        layer.bias.copy_(torch.randn(40, generator=g))
    q = Int8Linear.from_linear(layer)
    x = torch.randn(2, rows, features, generator=g).to(dtype)[:1]  # (1, rows, in): a batch dimension stays
    want = F.linear(x.float(), q.dequantized().float(), layer.bias.float())
    got = q(x)
    assert got.shape == (1, rows, 40) and got.dtype == dtype
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(got.float(), want, atol=tol * want.abs().max().item(), rtol=0)
    # and it is a quantization, not a copy: the weight differs from the original, within the bound
    diff = (q.qweight.double() * q.scales.double()[:, None] - layer.weight.double()).abs()
    assert diff.max() > 0 and (diff <= q.scales.double()[:, None] * (0.5 + 127 * 2.0**-22)).all()


def _dequantized_into(ref, ours):
    """transformers' model with each quantized layer's weight replaced by what our int8 layer computes with."""
    with torch.no_grad():
        for name, module in ours.named_modules():
            if isinstance(module, Int8Experts):  # transformers 5 keeps experts as (E, out, in)
                for tensor in ("gate_up_proj", "down_proj"):
                    getattr(ref.get_submodule(name), tensor).copy_(module.dequantized(tensor).float().transpose(1, 2))
            if isinstance(module, Int8Linear):
                target = ref.get_submodule(name)
                if name == "lm_head" and ref.config.tie_word_embeddings:  # keep the embedding table as it is
                    target.weight = torch.nn.Parameter(module.dequantized().float().clone())
                else:
                    target.weight.copy_(module.dequantized().float())
    return ref


@pytest.mark.parametrize("kind,tie", [("dense", False), ("dense", True), ("moe", False)])
def test_quantized_model_gives_the_dequantized_models_logits(kind, tie, tmp_path):
    ref = reference_model(kind, seed=3, tie=tie)
    ref.save_pretrained(tmp_path)
    ours = qwen3vl.load_model(tmp_path, dtype=torch.float32)
    names = quantize_model(ours)
    layers = ref.config.text_config.num_hidden_layers
    per_layer = 7 if kind == "dense" else 5  # q/k/v/o + gate/up/down, or q/k/v/o + the experts
    assert len(names) == per_layer * layers + 1 and "lm_head" in names
    assert not any(isinstance(m, Int8Linear) for n, m in ours.named_modules() if n.startswith("model.visual"))
    gen = torch.Generator().manual_seed(8)
    inputs = batch([Inputs().text(5, gen).image(8, 8).text(7, gen), Inputs().text(9, gen)], gen)
    with torch.no_grad():
        before = ref(**inputs).logits
        want = _dequantized_into(ref, ours)(**inputs).logits
        got = ours(**ours_kwargs(inputs)).logits
    keep = inputs["attention_mask"].bool()
    assert (got[keep] - want[keep]).abs().max().item() <= 1e-4
    # the quantization changed the logits (the check above would pass trivially otherwise), but not by much
    change = (before[keep] - want[keep]).abs().max().item()
    assert 1e-4 < change < 0.05 * before[keep].abs().max().item()
    # the embedding table of a tied model is untouched
    torch.testing.assert_close(ours.model.language_model.embed_tokens.weight,
                               ref.model.language_model.embed_tokens.weight)


def test_greedy_decoding_of_a_quantized_model_equals_the_reference(tmp_path):
    ref = sharpen(reference_model("dense", seed=21), factor=2.0)
    ref.save_pretrained(tmp_path)
    ours = qwen3vl.load_model(tmp_path)
    quantize_model(ours)
    ref = _dequantized_into(ref, ours)
    g = torch.Generator().manual_seed(4)
    prompts = [Prompt(ours.config, g).text(6).image(8, 10).text(4), Prompt(ours.config, g).text(3).video(2, 4, 6)]
    for got, p in zip(engine_greedy(ours, prompts, 10), prompts):
        assert got == reference_greedy(ref, p, 10, IMG, VID)


def test_the_demo_model_keeps_its_answers_in_bfloat16():
    """The kernel path (bfloat16, one row per step on CPU) on the trained demo model: the bundled example's
    questions get the unquantized model's answers."""
    from qwen3vl.commands import DEMO_MODEL, EXAMPLE_IMAGE
    from qwen3vl.llm import LLM

    questions = ["What color is the circle?", "Read the text.", "What shape is the blue object?"]
    answers = {}
    for quant in (None, "int8"):
        llm = LLM(DEMO_MODEL, dtype="bfloat16", device="cpu", kv_cache_gb=0.05, quantization=quant)
        answers[quant] = [llm.chat([{"role": "user", "content": [{"type": "image", "image": str(EXAMPLE_IMAGE)},
                                                                 {"type": "text", "text": q}]}],
                                   max_tokens=8, temperature=0.0).text for q in questions]
    assert isinstance(llm.model.lm_head, Int8Linear)
    assert answers["int8"] == answers[None]
    assert answers[None][0] == "red"


def test_quantization_flag_and_refusals(tmp_path):
    import argparse

    from qwen3vl.commands import add_model_flags, build_llm
    from qwen3vl.train.testing import write_tiny_base

    base = write_tiny_base(tmp_path / "base", seed=2)
    p = argparse.ArgumentParser()
    add_model_flags(p)
    llm = build_llm(p.parse_args(["--model", str(base), "--device", "cpu", "--kv-cache-gb", "0.01",
                                  "--quantization", "int8"]))
    assert isinstance(llm.model.model.language_model.layers[0].mlp.down_proj, Int8Linear)
    with pytest.raises(SystemExit):
        p.parse_args(["--quantization", "int3"])
    with pytest.raises(ValueError, match="unknown quantization 'int4'"):
        quantize_model(qwen3vl.load_model(base), "int4")
    from qwen3vl.weights.export import save_checkpoint

    with pytest.raises(ValueError, match="cannot export a model quantized in memory"):
        save_checkpoint(llm.model, tmp_path / "export")
    assert not (tmp_path / "export").exists()
    moe = reference_model("moe", seed=2)
    moe.save_pretrained(tmp_path / "moe")
    model = qwen3vl.load_model(tmp_path / "moe")
    names = quantize_model(model)
    assert not any(n.endswith(".mlp.gate") for n in names)  # the router stays as it is


def test_per_request_adapters_on_a_quantized_model(tmp_path):
    """A LoRA adapter chosen per request on the int8 model gives what the same adapter gives on a float checkpoint
    holding the dequantized weights (float32: same tokens, logprobs within 1e-4)."""
    import shutil

    from transformers import Qwen3VLForConditionalGeneration

    from qwen3vl.llm import LLM
    from qwen3vl.train.testing import write_tiny_base

    base = write_tiny_base(tmp_path / "base", seed=6)
    random_lora(base, tmp_path / "adapter", 1, r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"])

    sampling = dict(max_tokens=6, temperature=0.0, ignore_eos=True, logprobs=0)
    conv = [{"role": "user", "content": "Tell me about the sea."}]
    quant = LLM(base, dtype="float32", device="cpu", kv_cache_gb=0.05, quantization="int8",
                lora_modules={"a": tmp_path / "adapter"})
    dequant = tmp_path / "dequantized"
    _dequantized_into(Qwen3VLForConditionalGeneration.from_pretrained(base), quant.model).save_pretrained(dequant)
    for f in base.iterdir():
        if not (dequant / f.name).exists():
            shutil.copy(f, dequant / f.name)
    plain = LLM(dequant, dtype="float32", device="cpu", kv_cache_gb=0.05, lora_modules={"a": tmp_path / "adapter"})
    results = {}
    for name, llm in (("quant", quant), ("plain", plain)):
        for adapter in (None, "a"):
            out = llm.chat(conv, adapter=adapter, **sampling)
            results[name, adapter] = (out.token_ids, [lp for lp, _ in out.logprobs])
    for adapter in (None, "a"):
        assert results["quant", adapter][0] == results["plain", adapter][0]
        torch.testing.assert_close(torch.tensor(results["quant", adapter][1]),
                                   torch.tensor(results["plain", adapter][1]), atol=1e-4, rtol=0)
    assert results["quant", "a"][0] != results["quant", None][0]  # the adapter changes the answer


@pytest.mark.parametrize("inner", [32, 24])  # 24: down_proj's input is no multiple of 16, the kernel cannot take it
@pytest.mark.parametrize("tokens", [1, 3, 40])
def test_int8_experts_equal_the_experts_with_dequantized_weights_in_bfloat16(tokens, inner):
    """The expert loop's int8 path (kernel for few rows per expert, converted weights for many) against our float
    experts module holding the dequantized weights."""
    from qwen3vl.model.text import Experts

    g = torch.Generator().manual_seed(tokens)
    experts = Experts(4, 64, inner)
    with torch.no_grad():
        experts.gate_up_proj.copy_(torch.randn(4, 64, 2 * inner, generator=g) * 0.2)
        experts.down_proj.copy_(torch.randn(4, inner, 64, generator=g) * 0.2)
    experts = experts.to(torch.bfloat16)
    q = Int8Experts(experts)
    with torch.no_grad():
        for name in ("gate_up_proj", "down_proj"):
            getattr(experts, name).copy_(q.dequantized(name))
    x = torch.randn(tokens, 64, generator=g).to(torch.bfloat16)
    idx = torch.randint(0, 4, (tokens, 2), generator=g)
    w = torch.rand(tokens, 2, generator=g).to(torch.bfloat16)
    want = experts.float()(x.float(), idx, w.float())
    got = q(x, idx, w)
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), want, atol=2e-2 * want.abs().max().item(), rtol=0)


def test_float16_outputs_do_not_overflow():
    """Large outputs (~100) of a layer with small weights: the unscaled int8 sums would be far above float16's
    65504; the layer must give the float16 matmul's numbers, not inf."""
    g = torch.Generator().manual_seed(0)
    layer = torch.nn.Linear(4096, 256, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(256, 4096, generator=g) * 0.02)
    layer = layer.half()
    q = Int8Linear.from_linear(layer)
    x = (torch.randn(3, 4096, generator=g) * 25).half()
    want = F.linear(x.float(), q.dequantized().float())
    assert want.abs().max() > 50
    got = q(x)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got.float(), want, atol=1e-2 * want.abs().max().item(), rtol=0)


def test_quantizing_keeps_one_float_layer_alive_at_a_time():
    """Peak memory: each replaced float weight is freed before the next layer is quantized."""
    import weakref

    model = torch.nn.Module()
    model.model = torch.nn.Module()
    model.model.language_model = torch.nn.Module()
    model.model.language_model.layers = torch.nn.ModuleList()
    for _ in range(3):
        layer = torch.nn.Module()
        layer.mlp = torch.nn.Module()
        for name in ("gate_proj", "up_proj", "down_proj"):
            setattr(layer.mlp, name, torch.nn.Linear(32, 32, bias=False))
        model.model.language_model.layers.append(layer)
    model.lm_head = torch.nn.Linear(32, 40, bias=False)
    refs = [weakref.ref(m.weight) for m in model.modules() if type(m) is torch.nn.Linear]
    alive_at_each_step = []
    original = Int8Linear.from_linear.__func__

    def spy(cls, layer):
        alive_at_each_step.append(sum(r() is not None for r in refs))
        return original(cls, layer)

    Int8Linear.from_linear = classmethod(spy)
    try:
        quantize_model(model)
    finally:
        Int8Linear.from_linear = classmethod(original)
    assert alive_at_each_step == list(range(len(refs), 0, -1))  # one fewer float weight alive at each step


def test_eval_synthetic_runs_the_demo_model_quantized(monkeypatch, capsys, tmp_path):
    import json

    import qwen3vl.llm
    from qwen3vl.cli import main

    made = []
    real = qwen3vl.llm.LLM

    def recording(*args, **kwargs):
        llm = real(*args, **kwargs)
        made.append((kwargs, llm))
        return llm

    monkeypatch.setattr(qwen3vl.llm, "LLM", recording)
    assert main(["eval", "synthetic", "--seed", "4242", "--n", "10", "--dtype", "bfloat16", "-q", "int8",
                 "--kv-cache-dtype", "int8", "--no-progress"]) == 0
    scores = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert all(0.0 <= v <= 1.0 for v in scores.values())
    (kwargs, llm), = made
    assert kwargs["quantization"] == "int8" and llm.model.dtype == torch.bfloat16
    assert kwargs["kv_cache_dtype"] == "int8" and llm.engine.runner.cache.kv_dtype == "int8"
    assert isinstance(llm.model.lm_head, Int8Linear)
    data = tmp_path / "d.jsonl"
    data.write_text("")
    assert main(["eval", str(data), "-q", "int8"]) == 2  # a dataset: refused, with the way to do it
    assert "serve the model" in capsys.readouterr().err
    assert main(["eval", str(data), "--kv-cache-dtype", "fp8"]) == 2
    assert "--kv-cache-dtype / --blind are for" in capsys.readouterr().err
    assert main(["eval", str(data), "--blind"]) == 2
    assert "--blind are for `qwen3vl eval synthetic`" in capsys.readouterr().err
