"""The engine's fast path equals the naive one: greedy outputs match a full-recompute loop with no cache."""

from __future__ import annotations

import pytest
import torch

from qwen3vl.engine.engine import Engine, EngineConfig, PromptTooLongError
from qwen3vl.engine.sampling import SamplingParams
from qwen3vl.model.testing import random_model
from engine_helpers import Prompt, naive_greedy, sharpen

STEPS = 8


@pytest.fixture(scope="module")
def model():
    return sharpen(random_model("debug", seed=11))


def _prompts(cfg, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [
        Prompt(cfg, g).text(5).image(8, 6).text(4),
        Prompt(cfg, g).text(23),
        Prompt(cfg, g).text(3).image(4, 4).text(2).image(6, 10).text(3),
        Prompt(cfg, g).text(4).video(3, 4, 6).text(5),
        Prompt(cfg, g).text(2).video(2, 4, 4).text(1).image(4, 8).text(6),
        Prompt(cfg, g).text(1),
    ]


def _run(model, prompts, config, steps=STEPS, **params):
    eng = Engine(model, eos_token_ids=[], config=config)
    for i, p in enumerate(prompts):
        eng.add_request(str(i), p.ids, SamplingParams(max_tokens=steps, temperature=0, **params), p.media, p.kinds)
    eng.run_until_done()
    return eng, [eng.requests[str(i)][0].output_ids for i in range(len(prompts))]


@pytest.fixture(scope="module")
def expected(model):
    return [naive_greedy(model, p, STEPS) for p in _prompts(model.config)]


def test_single_requests_match_naive(model, expected):
    for p, exp in zip(_prompts(model.config), expected):
        _, (got,) = _run(model, [p], EngineConfig(block_size=4, num_blocks=64))
        assert got == exp


def test_batched_mixed_lengths_with_chunked_prefill(model, expected):
    eng, got = _run(model, _prompts(model.config), EngineConfig(block_size=4, num_blocks=128, max_batch_tokens=16))
    assert got == expected
    assert eng.stats["steps"] > STEPS + 5  # prompts really were split over several steps


def test_preemption_with_a_tiny_cache(model, expected):
    # 24 blocks of 4 = 96 tokens: not enough for all six sequences at once, so some are preempted and recomputed
    eng, got = _run(model, _prompts(model.config), EngineConfig(block_size=4, num_blocks=24, max_batch_tokens=64,
                                                                 enable_prefix_cache=False))
    assert eng.scheduler.num_preemptions > 0
    assert got == expected
    assert eng.blocks.num_free == 24  # everything released


def test_prefix_and_vision_cache_hits(model, expected):
    prompts = _prompts(model.config)
    eng = Engine(model, eos_token_ids=[], config=EngineConfig(block_size=4, num_blocks=128))
    p = prompts[2]
    eng.add_request("first", p.ids, SamplingParams(max_tokens=STEPS, temperature=0), p.media, p.kinds)
    eng.run_until_done()
    misses = eng.runner.vision_cache.misses
    eng.add_request("again", p.ids, SamplingParams(max_tokens=STEPS, temperature=0), p.media, p.kinds)
    eng.run_until_done()
    again = eng.requests["again"][0]
    assert again.output_ids == expected[2]
    assert again.num_cached_prefix >= len(p.ids) - 4 - 4  # all but the last (partial) blocks
    # a new prompt with the same image further along: the ViT is not run again for it
    g = torch.Generator().manual_seed(99)
    q = Prompt(model.config, g).text(7)
    q.image(4, 4, key=p.media[0].key, pixels=p.media[0].pixel_values)
    q.text(3)
    eng.add_request("same image", q.ids, SamplingParams(max_tokens=STEPS, temperature=0), q.media, q.kinds)
    eng.run_until_done()
    assert eng.runner.vision_cache.misses == misses
    assert eng.runner.vision_cache.hits >= 1
    assert eng.requests["same image"][0].output_ids == naive_greedy(model, q, STEPS)


def test_output_does_not_depend_on_the_batch(model):
    prompts = _prompts(model.config, seed=3)
    _, alone = _run(model, [prompts[0]], EngineConfig(block_size=4, num_blocks=64))
    _, together = _run(model, prompts, EngineConfig(block_size=4, num_blocks=256, max_batch_tokens=32))
    assert together[0] == alone[0]


def test_prompt_longer_than_context_is_rejected(model):
    eng = Engine(model, eos_token_ids=[], config=EngineConfig(block_size=4, num_blocks=8))
    with pytest.raises(PromptTooLongError, match="the prompt has 40 tokens"):
        eng.add_request("x", list(range(40)), SamplingParams(max_tokens=4, temperature=0))


def test_generation_stops_at_the_cache_capacity(model):
    eng = Engine(model, eos_token_ids=[], config=EngineConfig(block_size=4, num_blocks=8))
    (seq,) = eng.add_request("x", list(range(20)), SamplingParams(max_tokens=100, temperature=0))
    eng.run_until_done()
    assert seq.finish_reason == "length" and seq.num_tokens == 32


def test_abort_frees_blocks(model):
    eng = Engine(model, eos_token_ids=[], config=EngineConfig(block_size=4, num_blocks=32))
    eng.add_request("a", list(range(10)), SamplingParams(max_tokens=50, temperature=0))
    eng.step()
    assert eng.blocks.num_used > 0
    eng.abort("a")
    assert eng.blocks.num_used == 0 and not eng.has_work()


def test_eos_and_stop_tokens(model, expected):
    p = _prompts(model.config)[1]
    stop_at = expected[1][3]
    eng = Engine(model, eos_token_ids=[stop_at], config=EngineConfig(block_size=4, num_blocks=64))
    (seq,) = eng.add_request("x", p.ids, SamplingParams(max_tokens=STEPS, temperature=0), p.media)
    eng.run_until_done()
    first = expected[1].index(stop_at)
    assert seq.output_ids == expected[1][:first + 1] and seq.finish_reason == "stop"
    eng2 = Engine(model, eos_token_ids=[stop_at], config=EngineConfig(block_size=4, num_blocks=64))
    (seq2,) = eng2.add_request("x", p.ids, SamplingParams(max_tokens=STEPS, temperature=0, ignore_eos=True))
    eng2.run_until_done()
    assert seq2.output_ids == expected[1] and seq2.finish_reason == "length"


def test_seeded_sampling_is_reproducible_and_n_gives_distinct_samples(model):
    p = _prompts(model.config)[1]
    params = dict(max_tokens=6, temperature=1.5, top_p=0.95, seed=7, n=3)

    def run():
        eng = Engine(model, eos_token_ids=[], config=EngineConfig(block_size=4, num_blocks=64))
        eng.add_request("x", p.ids, SamplingParams(**params))
        eng.run_until_done()
        return [s.output_ids for s in eng.requests["x"]]

    first, second = run(), run()
    assert first == second
    assert len({tuple(o) for o in first}) > 1


def test_decode_attention_equals_sdpa():
    import torch.nn.functional as F

    from qwen3vl.engine.runner import decode_attention

    g = torch.Generator().manual_seed(0)
    q, k, v = torch.randn(3, 8, 16, generator=g), torch.randn(3, 2, 11, 16, generator=g), torch.randn(3, 2, 11, 16, generator=g)
    mask = torch.ones(3, 11, dtype=torch.bool)
    mask[1, 7:] = False
    ref = F.scaled_dot_product_attention(q[:, :, None], k.repeat_interleave(4, 1), v.repeat_interleave(4, 1),
                                         attn_mask=mask[:, None, None, :], scale=0.25)[:, :, 0]
    assert torch.allclose(decode_attention(q, k, v, mask, 0.25), ref, atol=1e-6)
    assert torch.allclose(decode_attention(q[:1], k[:1], v[:1], None, 0.25), ref[:1], atol=1e-6)
