"""Quantized KV cache (`kv_cache_dtype` "int8" / "fp8", engine/runner.py `KVCache`): the rounding of one key/value
vector and its error bound; the engine with a quantized cache gives the tokens and logprobs of a plain no-cache
forward whose keys and values are rounded the same way (so the paged plumbing, its scales, chunked prefill and prefix
reuse are right); the rounding changes the logits, a little; the memory it saves becomes blocks; the demo model keeps
its answers; the flag reaches the engine and bad names are refused."""

from __future__ import annotations

import argparse

import pytest
import torch

import qwen3vl.model.qwen3vl as qmodel
from qwen3vl.engine.engine import Engine, EngineConfig
from qwen3vl.engine.runner import KVCache, dequantize_kv, parse_kv_cache_dtype, quantize_kv
from qwen3vl.engine.sampling import SamplingParams
from qwen3vl.model.testing import random_model
from qwen3vl.model.text import CausalAttention
from engine_helpers import Prompt, naive_greedy, sharpen

STEPS = 6


@pytest.mark.parametrize("kind", ["int8", "fp8"])
def test_rounding_of_one_vector_and_its_error_bound(kind):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(50, 4, 64, generator=g) * torch.logspace(-4, 2, 50)[:, None, None]  # vectors of many sizes
    x[3, 1] = 0.0  # an all-zero vector must not divide by zero
    codes, scale = quantize_kv(x, kind)
    assert codes.shape == x.shape and codes.element_size() == 1 and scale.shape == (50, 4, 1)
    assert scale.dtype == torch.float32
    back = dequantize_kv(codes, scale, kind, torch.float32)
    amax = x.abs().amax(-1, keepdim=True)
    err = (back - x).abs()
    if kind == "int8":
        assert codes.dtype == torch.int8 and codes.abs().max() <= 127
        assert (err <= amax / 127 * 0.5 * (1 + 1e-5)).all()  # half a step of the vector's own scale
    else:
        # e4m3: 3 mantissa bits, so half a step is 2^-4 of the value; below 2^-6 of 448 steps are fixed (2^-9 * s)
        assert (err <= torch.maximum(x.abs() * 2.0**-4, scale * 2.0**-10) * (1 + 1e-5)).all()
    # each vector's largest element comes back exactly (it maps to the top code), and zeros stay zeros
    top = x.abs().argmax(-1, keepdim=True)
    torch.testing.assert_close(back.gather(-1, top), x.gather(-1, top), rtol=1e-6, atol=0)
    assert (back[3, 1] == 0).all()
    assert err.max() > 0  # it is a rounding, not a copy


def _fake_quant_backend(kind):
    """Full causal attention whose keys and values are rounded the way the cache stores them."""

    class Rounded(CausalAttention):
        def attend(self, layer_idx, q, k, v, scale):
            k = dequantize_kv(*quantize_kv(k, kind), kind, k.dtype)
            v = dequantize_kv(*quantize_kv(v, kind), kind, v.dtype)
            return super().attend(layer_idx, q, k, v, scale)

    return Rounded


@pytest.fixture(scope="module")
def model():
    return sharpen(random_model("debug", seed=12))


def _prompts(cfg):
    g = torch.Generator().manual_seed(3)
    shared = Prompt(cfg, g).text(9).image(8, 6)  # two prompts share a prefix: the second reuses its blocks
    second = Prompt(cfg, g)
    second.ids, second.media, second.kinds, second.images = list(shared.ids), list(shared.media), \
        list(shared.kinds), list(shared.images)
    return [shared.text(4), Prompt(cfg, g).text(21), Prompt(cfg, g).text(3).video(2, 4, 4).text(2), second.text(7)]


def _engine(model, prompts, kind, logprobs=None, **config):
    """Run the prompts; the last one after the others are done, so it finds the first one's blocks cached."""
    eng = Engine(model, eos_token_ids=[], config=EngineConfig(block_size=4, num_blocks=96, kv_cache_dtype=kind,
                                                              **config))
    for wave in (prompts[:-1], prompts[-1:]):
        for p in wave:
            eng.add_request(str(prompts.index(p)), p.ids,
                            SamplingParams(max_tokens=STEPS, temperature=0, logprobs=logprobs), p.media, p.kinds)
        eng.run_until_done()
    return eng, [eng.requests[str(i)][0] for i in range(len(prompts))]


@torch.no_grad()
def _naive_logprobs(model, prompt, tokens):
    """The chosen tokens' log-probabilities from a full no-cache forward per step."""
    ids, out = list(prompt.ids), []
    for t in tokens:
        logits = model(torch.tensor([ids]), **prompt.forward_kwargs()).logits[0, -1].float()
        out.append(float(logits.log_softmax(-1)[t]))
        ids.append(t)
    return out


@pytest.mark.parametrize("kind", ["int8", "fp8"])
def test_engine_with_a_quantized_cache_equals_a_forward_with_rounded_keys_and_values(model, kind, monkeypatch):
    prompts = _prompts(model.config)
    # chunked prefill (12 tokens a step) and a shared prefix exercise the slots and scales written in pieces
    eng, seqs = _engine(model, prompts, kind, logprobs=0, max_batch_tokens=12)
    assert eng.runner.cache.kv_dtype == kind and eng.runner.cache.k[0].element_size() == 1
    assert eng.blocks.hits > 0  # the fourth prompt read the first one's blocks
    monkeypatch.setattr(qmodel, "CausalAttention", _fake_quant_backend(kind))
    for p, seq in zip(prompts, seqs):
        want = naive_greedy(model, p, STEPS)
        assert seq.output_ids == want
        # 1e-3, not 1e-4: the cache rounds keys computed in chunks, the forward keys computed whole; a float32
        # difference in the last bit can put an int8 code one step apart (fp8 came out exact, int8 1.4e-4 off),
        # against a rounding effect of 0.02-0.05 (checked below)
        torch.testing.assert_close(torch.tensor([lp for lp, _ in seq.logprobs], dtype=torch.float64),
                                   torch.tensor(_naive_logprobs(model, p, want), dtype=torch.float64),
                                   atol=1e-3, rtol=0)
    monkeypatch.undo()
    # the rounding is real: the logprobs differ from the unrounded model's, but by little
    p = prompts[0]
    exact = _naive_logprobs(model, p, seqs[0].output_ids)
    got = [lp for lp, _ in seqs[0].logprobs]
    diff = (torch.tensor(got) - torch.tensor(exact)).abs().max().item()
    assert 5e-3 < diff < 0.1, diff


def test_auto_is_the_unquantized_cache(model):
    prompts = _prompts(model.config)
    _, seqs = _engine(model, prompts, "auto")
    assert [s.output_ids for s in seqs] == [naive_greedy(model, p, STEPS) for p in prompts]


def test_the_memory_saved_becomes_blocks(model):
    tc = model.config.text_config
    sizes = {kind: KVCache.bytes_per_block(tc.num_hidden_layers, 16, tc.num_key_value_heads, tc.head_dim,
                                           torch.bfloat16, kind) for kind in ("auto", "int8", "fp8")}
    vec = tc.num_key_value_heads * 2 * tc.num_hidden_layers * 16
    assert sizes["auto"] == vec * tc.head_dim * 2 and sizes["int8"] == sizes["fp8"] == vec * (tc.head_dim + 4)
    fp32 = KVCache.bytes_per_block(tc.num_hidden_layers, 16, tc.num_key_value_heads, tc.head_dim, model.dtype)
    assert model.dtype == torch.float32 and fp32 == 2 * sizes["auto"]
    budget = 50 * fp32
    engines = {kind: Engine(model, eos_token_ids=[], config=EngineConfig(kv_cache_bytes=budget, kv_cache_dtype=kind))
               for kind in ("auto", "int8")}
    assert engines["auto"].capacity == 50 * 16
    assert engines["int8"].capacity == budget // sizes["int8"] * 16 > 3 * engines["auto"].capacity
    cache = engines["int8"].runner.cache
    held = sum(t.numel() * t.element_size() for t in [*cache.k, *cache.v, *cache.k_scale, *cache.v_scale])
    assert held == budget // sizes["int8"] * sizes["int8"]  # what bytes_per_block promises is what is allocated


def test_bad_names_are_refused_and_vllm_spelling_is_accepted():
    from qwen3vl.commands import KV_CACHE_DTYPE_CHOICES

    assert parse_kv_cache_dtype(None) == "auto" and parse_kv_cache_dtype("FP8_E4M3") == "fp8"
    assert {parse_kv_cache_dtype(name) for name in KV_CACHE_DTYPE_CHOICES} == {"auto", "int8", "fp8"}  # the CLI's
    with pytest.raises(ValueError, match="kv_cache_dtype 'int4' is not supported; choose one of auto, int8, fp8"):
        parse_kv_cache_dtype("int4")


def test_flag_reaches_the_engine_and_the_demo_model_keeps_its_answers():
    from qwen3vl.commands import DEMO_MODEL, EXAMPLE_IMAGE, add_model_flags, build_llm

    p = argparse.ArgumentParser()
    add_model_flags(p)
    with pytest.raises(SystemExit):
        p.parse_args(["--kv-cache-dtype", "int4"])
    # short answers, where the model is sure; a long one (a box) can meet a near-tie that the rounding flips: on the
    # 75,000-step model the red circle's box in bfloat16 turns at its 31st token, whose top two were 0.75 nats apart
    questions = ["What color is the circle?", "Read the text.", "What shape is the blue object?"]
    answers = {}
    for kind in ("auto", "int8", "fp8"):
        llm = build_llm(p.parse_args(["--model", str(DEMO_MODEL), "--device", "cpu", "--dtype", "bfloat16",
                                      "--kv-cache-gb", "0.05", "--kv-cache-dtype", kind]))
        assert llm.engine.runner.cache.kv_dtype == kind
        answers[kind] = [llm.chat([{"role": "user", "content": [{"type": "image", "image": str(EXAMPLE_IMAGE)},
                                                                {"type": "text", "text": q}]}],
                                  max_tokens=8, temperature=0.0).text for q in questions]
    assert answers["auto"] == ["red", "SHIP", "square"]
    assert answers["int8"] == answers["auto"] and answers["fp8"] == answers["auto"]
