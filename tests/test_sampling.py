"""The sampler, checked against hand-computed distributions."""

from __future__ import annotations

import math

import pytest
import torch

from qwen3vl.engine.sampling import SamplingParams, apply_penalties, filter_logits, from_generation_config, sample


def _allowed(x: torch.Tensor) -> set[int]:
    return set(torch.nonzero(torch.isfinite(x)).view(-1).tolist())


def test_greedy_and_topk_one():
    logits = torch.tensor([0.1, 2.0, 1.9, -1.0])
    assert sample(logits, SamplingParams(temperature=0), [], [], None).token == 1
    g = torch.Generator().manual_seed(0)
    assert {sample(logits, SamplingParams(temperature=5, top_k=1), [], [], g).token for _ in range(20)} == {1}


def test_top_k_top_p_min_p_filters():
    logits = torch.log(torch.tensor([0.5, 0.25, 0.15, 0.1]))
    assert _allowed(filter_logits(logits, SamplingParams(top_k=2))) == {0, 1}
    # top_p 0.7: 0.5 < 0.7 so keep the second; 0.75 >= 0.7 so stop there
    assert _allowed(filter_logits(logits, SamplingParams(top_p=0.7))) == {0, 1}
    assert _allowed(filter_logits(logits, SamplingParams(top_p=0.76))) == {0, 1, 2}
    # min_p 0.4: threshold 0.4 * 0.5 = 0.2 keeps 0.5 and 0.25
    assert _allowed(filter_logits(logits, SamplingParams(min_p=0.4))) == {0, 1}
    # a top_p too small for float32 (it compares as 0) still keeps the best token
    assert _allowed(filter_logits(logits, SamplingParams(top_p=3e-210))) == {0}


def test_temperature_scales_logits():
    logits = torch.tensor([1.0, 3.0])
    out = filter_logits(logits, SamplingParams(temperature=2.0))
    assert torch.allclose(out, torch.tensor([0.5, 1.5]))


def test_penalties_by_hand():
    logits = torch.tensor([2.0, -2.0, 1.0, 0.5])
    out = apply_penalties(logits, SamplingParams(repetition_penalty=2.0), prompt_ids=[0], output_ids=[1])
    assert out.tolist() == [1.0, -4.0, 1.0, 0.5]
    out = apply_penalties(logits, SamplingParams(presence_penalty=0.5, frequency_penalty=0.25), [0], [2, 2, 3])
    # token 2: 1.0 - 0.25*2 - 0.5 = 0.0 ; token 3: 0.5 - 0.25 - 0.5 = -0.25 ; prompt token 0 untouched
    assert out.tolist() == [2.0, -2.0, 0.0, -0.25]


def test_sampling_frequencies_follow_the_distribution():
    probs = torch.tensor([0.6, 0.3, 0.1])
    g = torch.Generator().manual_seed(1)
    draws = [sample(probs.log(), SamplingParams(temperature=1.0), [], [], g).token for _ in range(3000)]
    freq = [draws.count(i) / len(draws) for i in range(3)]
    assert all(abs(f - p) < 0.03 for f, p in zip(freq, probs.tolist()))


def test_logprobs():
    logits = torch.tensor([1.0, 2.0, 3.0])
    out = sample(logits, SamplingParams(temperature=0, logprobs=2), [], [], None)
    z = math.log(math.exp(1) + math.exp(2) + math.exp(3))
    assert out.token == 2 and out.logprob == pytest.approx(3 - z, abs=1e-6)
    assert [t for t, _ in out.top] == [2, 1] and out.top[1][1] == pytest.approx(2 - z, abs=1e-6)


@pytest.mark.parametrize("field, value", [("temperature", -1), ("top_p", 0), ("top_p", 1.5), ("max_tokens", 0),
                                          ("min_p", 2), ("n", 0), ("repetition_penalty", 0),
                                          ("repetition_penalty", 3e-210), ("logprobs", 65)])
def test_bad_values_name_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        SamplingParams(**{field: value}).validate()


def test_generation_config_defaults():
    cfg = {"do_sample": True, "temperature": 0.7, "top_k": 20, "top_p": 0.8, "eos_token_id": [151645, 151643]}
    assert from_generation_config(cfg) == {"temperature": 0.7, "top_k": 20, "top_p": 0.8}
    assert from_generation_config({"do_sample": False, "temperature": 0.7}) == {"temperature": 0.0}


def test_logit_bias_is_added_to_the_logits():
    logits = torch.tensor([0.0, 3.0, 1.0, 2.0])
    assert sample(logits, SamplingParams(temperature=0), [], [], None).token == 1
    forced = SamplingParams(temperature=0, logit_bias={2: 100.0}, logprobs=0)
    out = sample(logits, forced, [], [], None)
    assert out.token == 2 and out.logprob == pytest.approx(0.0, abs=1e-6)
    banned = SamplingParams(temperature=0, logit_bias={1: -100.0, 3: 0.5}, logprobs=1)
    out = sample(logits, banned, [], [], None)
    want = torch.tensor([0.0, -97.0, 1.0, 2.5]).log_softmax(-1)  # the biased distribution
    assert out.token == 3 and out.logprob == pytest.approx(float(want[3]), abs=1e-6)
    g = torch.Generator().manual_seed(0)  # sampling: a -100 bias is never drawn
    drawn = {sample(logits, SamplingParams(temperature=1.0, logit_bias={1: -100, 3: -100}), [], [], g).token
             for _ in range(200)}
    assert drawn == {0, 2}
    for bad in ({-1: 1.0}, {2: 101.0}, {"2": 1.0}):
        with pytest.raises(ValueError, match="logit_bias"):
            SamplingParams(logit_bias=bad).validate()


def test_logit_bias_outside_the_vocabulary_is_refused_when_queued(tmp_path):
    from qwen3vl.llm import LLM
    from qwen3vl.model.testing import write_tiny_model

    llm = LLM(write_tiny_model(tmp_path / "tiny"), kv_cache_gb=0.01)
    vocab = llm.model.config.text_config.vocab_size
    with pytest.raises(ValueError, match=f"logit_bias: {vocab} is not a token id"):
        llm.chat([{"role": "user", "content": "Hi"}], logit_bias={vocab: 1.0}, max_tokens=2)
    assert not llm.engine.requests  # nothing was queued
