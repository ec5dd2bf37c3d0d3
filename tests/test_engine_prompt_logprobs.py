"""Prompt logprobs (`SamplingParams.prompt_logprobs`, the server's `echo`): every prompt token after the first, scored
by the model's raw distribution, equal to transformers' log-softmaxed logits on the same random checkpoint, through
chunked prefill, images and videos, and with the prefix cache on."""

from __future__ import annotations

import pytest
import torch

import qwen3vl
from engine_helpers import Prompt
from qwen3vl.engine.engine import Engine, EngineConfig
from qwen3vl.engine.sampling import SamplingParams
from reference import IMG, VID, reference_model

TOP = 3


@pytest.fixture(scope="module", params=["dense", "moe"])
def pair(request, tmp_path_factory):
    ref = reference_model(request.param, seed=8)
    folder = tmp_path_factory.mktemp(request.param)
    ref.save_pretrained(folder)
    return ref, qwen3vl.load_model(folder, dtype=torch.float32)


@torch.no_grad()
def _reference_logprobs(ref, prompt: Prompt) -> torch.Tensor:
    ids = torch.tensor([prompt.ids])
    mm = torch.zeros_like(ids)
    mm[ids == IMG] = 1
    mm[ids == VID] = 2
    logits = ref(input_ids=ids, attention_mask=torch.ones_like(ids), mm_token_type_ids=mm,
                 **prompt.forward_kwargs()).logits[0]
    return logits.float().log_softmax(-1)  # (P, V): row j scores token j + 1


def _check(scored: list, prompt: Prompt, expected: torch.Tensor) -> None:
    assert len(scored) == len(prompt.ids) - 1
    for j, (lp, top) in enumerate(scored):
        want = expected[j]
        assert abs(lp - float(want[prompt.ids[j + 1]])) <= 1e-4, j
        vals, ids = want.topk(TOP)
        assert [t for t, _ in top] == ids.tolist(), j
        assert max(abs(v - float(w)) for (_, v), w in zip(top, vals)) <= 1e-4, j


def test_prompt_logprobs_equal_transformers_through_chunked_prefill(pair):
    ref, ours = pair
    g = torch.Generator().manual_seed(2)
    prompts = [Prompt(ours.config, g).text(9).image(8, 10).text(7),
               Prompt(ours.config, g).text(4).video(2, 4, 6).text(3).image(4, 4).text(6),
               Prompt(ours.config, g).text(30)]
    # 24 tokens a step: every prompt is split over several steps, sharing steps with the others
    eng = Engine(ours, eos_token_ids=[], config=EngineConfig(block_size=8, num_blocks=64, max_batch_tokens=24))
    for i, p in enumerate(prompts):
        eng.add_request(str(i), p.ids, SamplingParams(max_tokens=2, temperature=0, prompt_logprobs=TOP), p.media,
                        p.kinds)
    eng.run_until_done()
    for i, p in enumerate(prompts):
        _check(eng.requests[str(i)][0].prompt_logprobs, p, _reference_logprobs(ref, p))
    # in one step with a request asking for 3 alternatives, one asking for none gets none, one asking for 1 gets 1
    for rid, k in (("none", 0), ("one", 1)):
        eng.add_request(rid, prompts[2].ids, SamplingParams(max_tokens=1, temperature=0, prompt_logprobs=k))
    eng.add_request("three", prompts[2].ids, SamplingParams(max_tokens=1, temperature=0, prompt_logprobs=3))
    eng.run_until_done()
    none, one, three = (eng.requests[r][0].prompt_logprobs for r in ("none", "one", "three"))
    assert all(top is None for _, top in none) and all(len(top) == 1 for _, top in one)
    assert [lp for lp, _ in none] == pytest.approx([lp for lp, _ in three], abs=1e-5)
    assert [[i for i, _ in t[:1]] for _, t in three] == [[i for i, _ in t] for _, t in one]


def test_a_cached_prefix_is_scored_again_and_still_serves_others(pair):
    ref, ours = pair
    g = torch.Generator().manual_seed(3)
    p = Prompt(ours.config, g).text(5).image(8, 8).text(20)
    eng = Engine(ours, eos_token_ids=[], config=EngineConfig(block_size=8, num_blocks=64))

    def run(rid: str, **kw):
        (seq,) = eng.add_request(rid, p.ids, SamplingParams(max_tokens=1, temperature=0, **kw), p.media, p.kinds)
        eng.run_until_done()
        return seq

    plain = run("plain")  # fills the prefix cache
    scored = run("scored", prompt_logprobs=TOP)
    assert scored.num_cached_prefix == 0
    _check(scored.prompt_logprobs, p, _reference_logprobs(ref, p))
    assert run("again").num_cached_prefix >= 8  # the cache still serves requests that score nothing
    assert plain.prompt_logprobs == [] and plain.output_ids == scored.output_ids


def test_each_prompt_position_is_scored_once_after_a_recompute():
    """A preempted sequence recomputes its prompt from token 0; positions scored before are not scored again."""
    from types import SimpleNamespace

    from qwen3vl.engine.runner import score_positions
    from qwen3vl.engine.scheduler import Chunk

    seq = SimpleNamespace(params=SamplingParams(prompt_logprobs=0), prompt_logprobs=[], num_prompt=10,
                          num_tokens=10)
    assert list(score_positions(Chunk(seq, 0, 4))) == [0, 1, 2, 3]
    seq.prompt_logprobs = [(0.0, None)] * 6  # positions 0..5 scored, then preempted
    assert list(score_positions(Chunk(seq, 0, 8))) == [6, 7]
    assert list(score_positions(Chunk(seq, 8, 2))) == [8]  # the last prompt position predicts the first new token
    seq.params = SamplingParams()
    assert list(score_positions(Chunk(seq, 0, 8))) == []


def test_bad_prompt_logprobs_is_refused():
    with pytest.raises(ValueError, match="prompt_logprobs"):
        SamplingParams(prompt_logprobs=21).validate()


def test_the_python_api_returns_them_aligned_with_the_prompt(tmp_path):
    from qwen3vl.model.testing import write_tiny_model

    llm = qwen3vl.LLM(str(write_tiny_model(tmp_path / "tiny")), dtype="float32")
    r = llm.chat([{"role": "user", "content": "Hello there"}], max_tokens=1, prompt_logprobs=2)
    assert len(r.prompt_logprobs) == len(r.prompt_token_ids) and r.prompt_logprobs[0] is None
    assert all(lp <= 0 and len(top) == 2 for lp, top in r.prompt_logprobs[1:])
    assert llm.chat([{"role": "user", "content": "Hello there"}], max_tokens=1).prompt_logprobs is None
