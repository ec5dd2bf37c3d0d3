"""Beam search (`LLM.beam_search`, engine/beam.py) against transformers' `generate(num_beams=...)` on one random
checkpoint: the same hypotheses, in the same order, with the same scores."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

import qwen3vl
from fixtures.processing.references import hf_processor
from qwen3vl.engine.beam import BeamSearch, EngineExpander, beam_search
from qwen3vl.engine.sampling import SamplingParams
from qwen3vl.model.testing import write_tiny_model


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from transformers import AutoModelForImageTextToText

    folder = write_tiny_model(tmp_path_factory.mktemp("beam"), kind="dense", seed=11, sharpen=3.0)
    ref = AutoModelForImageTextToText.from_pretrained(folder, dtype=torch.float32).eval()
    llm = qwen3vl.LLM(folder, kv_cache_gb=0.05)
    return llm, ref, hf_processor(folder)


def _image(seed: int) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (48, 64, 3), dtype=np.uint8))


def _reference(llm, ref, hf, msgs, images, width, max_tokens, ends, **kwargs):
    inputs = hf(text=[llm.processor.render_text(msgs)], images=images or None, return_tensors="pt")
    with torch.no_grad():
        out = ref.generate(**inputs, num_beams=width, num_return_sequences=width, do_sample=False,
                           max_new_tokens=max_tokens, eos_token_id=ends, pad_token_id=ends[0],
                           return_dict_in_generate=True, output_scores=True, **kwargs)
    n = inputs["input_ids"].shape[1]
    rows = []
    for row in out.sequences[:, n:].tolist():
        cut = next((i + 1 for i, t in enumerate(row) if t in ends), len(row))  # the rest is padding
        rows.append(row[:cut])
    return rows, out.sequences_scores.tolist()


def _first_tokens(llm, msgs, count):
    """Tokens greedy decoding writes: made end tokens, so that some beams end early."""
    return llm.chat(msgs, max_tokens=count, temperature=0, ignore_eos=True).token_ids


@pytest.mark.parametrize("case", [
    dict(width=3, max_tokens=7),
    dict(width=4, max_tokens=6, length_penalty=0.0, early_stopping=True, end_at=2, ends_early=True),
    dict(width=2, max_tokens=8, length_penalty=2.0),
    dict(width=3, max_tokens=6, length_penalty=1.5, early_stopping="never", end_at=3),
    dict(width=3, max_tokens=6, length_penalty=-1.0, end_at=2, ends_early=True),
    dict(width=3, max_tokens=5, image=True, end_at=2, ends_early=True),
])
def test_beam_search_equals_transformers(setup, case):
    llm, ref, hf = setup
    images = [_image(3)] if case.get("image") else []
    content = [{"type": "image", "image": img} for img in images] + [{"type": "text", "text": "Tell me a story."}]
    msgs = [{"role": "user", "content": content}]
    extra = []
    if case.get("end_at"):  # a token the greedy answer writes at that step ends a hypothesis there
        extra = [_first_tokens(llm, msgs, case["end_at"])[-1]]
    ends = llm.eos_token_ids + [t for t in extra if t not in llm.eos_token_ids]
    kwargs = {k: case[k] for k in ("length_penalty", "early_stopping") if k in case}
    want_tokens, want_scores = _reference(llm, ref, hf, msgs, images, case["width"], case["max_tokens"], ends,
                                          **kwargs)
    got = llm.beam_search(msgs, beam_width=case["width"], max_tokens=case["max_tokens"], stop_token_ids=extra,
                          **kwargs)
    assert [c.token_ids for c in got.choices] == want_tokens
    assert np.allclose([c.score for c in got.choices], want_scores, atol=1e-4)
    if case.get("ends_early"):  # the case did exercise an early end
        assert any(c.finish_reason == "stop" for c in got.choices)
        assert any(len(c.token_ids) < case["max_tokens"] for c in got.choices)
    assert llm.engine.blocks.num_used == 0 and not llm.engine.requests  # every beam's blocks given back
    assert got.usage.prompt_tokens == len(got.prompt_token_ids)
    assert got.usage.completion_tokens == sum(len(c.token_ids) for c in got.choices)
    # n < width: the best n of the same search
    best = llm.beam_search(msgs, beam_width=case["width"], n=1, max_tokens=case["max_tokens"], stop_token_ids=extra,
                           **kwargs)
    assert [c.token_ids for c in best.choices] == want_tokens[:1]


@pytest.mark.parametrize("kv_cache_dtype", ["auto", "int8"])
def test_forked_beams_equal_recomputed_ones(setup, kv_cache_dtype):
    """Beams forked from the request they grew from (shared blocks, the last one copied: keys, values and int8
    scales) find what beams recomputed from the prompt find, with the same scores."""
    llm, _, _ = setup
    eng = llm.engine if kv_cache_dtype == "auto" else qwen3vl.LLM(llm.path, kv_cache_gb=0.05,
                                                                   kv_cache_dtype=kv_cache_dtype).engine
    ids = llm.tokenizer.encode("a prompt of a few tokens, long enough to fill one block and part of another")
    runs = []
    for fork in (True, False):
        expand = EngineExpander(eng, ids, fork=fork)
        assert expand.forks is fork
        runs.append(beam_search(expand, 3, 9, end_ids=[]))
        assert eng.blocks.num_used == 0 and not eng.requests
    assert [h.tokens for h in runs[0]] == [h.tokens for h in runs[1]]
    assert np.allclose([h.score for h in runs[0]], [h.score for h in runs[1]], atol=1e-5)


def test_forks_fit_a_cache_too_small_for_copies_of_the_prompt(setup):
    """Forks share the prompt's blocks: beams of a prompt filling most of the KV cache still run, and find what a
    large cache finds."""
    llm, _, _ = setup
    msgs = [{"role": "user", "content": " ".join(["word"] * 35)}]
    small = qwen3vl.LLM(llm.path, num_blocks=16, block_size=16)
    assert len(small.prepare(msgs).input_ids) > 10 * 16  # the prompt alone needs 11 of the 16 blocks
    got = small.beam_search(msgs, beam_width=3, max_tokens=4)
    want = llm.beam_search(msgs, beam_width=3, max_tokens=4)
    assert [c.token_ids for c in got.choices] == [c.token_ids for c in want.choices]


def test_a_waiting_request_neither_blocks_a_search_nor_is_dropped(setup):
    """A request that waits for the blocks a search holds lets the search's forks pass; it runs once the search has
    ended and given them back (it is not given up on as one that could never run)."""
    llm, _, _ = setup
    small = qwen3vl.LLM(llm.path, num_blocks=16, block_size=16)
    eng = small.engine
    prompt = small.prepare([{"role": "user", "content": " ".join(["word"] * 35)}]).input_ids  # 11 of 16 blocks
    search = BeamSearch(3, 4, end_ids=[])
    expand = EngineExpander(eng, prompt)
    expand.submit(search.beams(), search.k)
    eng.run_until_done()
    search.advance(expand.collect())
    (plain,) = eng.add_request("plain", list(range(10, 106)), SamplingParams(max_tokens=3, temperature=0,
                                                                                ignore_eos=True))  # 6 blocks
    while (beams := search.beams()) is not None:
        expand.submit(beams, search.k)
        while any(s.finish_reason is None for s in expand.seqs):
            eng.step()
        search.advance(expand.collect())
    expand.close()
    assert plain.finish_reason is None  # still waiting: the search held the blocks it needs
    eng.run_until_done()
    assert plain.finish_reason == "length" and len(plain.output_ids) == 3
    assert [h.tokens for h in search.finished] == [c.token_ids for c in small.beam_search(
        [{"role": "user", "content": " ".join(["word"] * 35)}], beam_width=3, max_tokens=4).choices]


def test_beam_search_finds_what_greedy_misses():
    """On a toy chain where the greedy first step leads to poor continuations, two beams find the better path, and
    the scores are the summed log-probabilities over length ** length_penalty."""
    logp = {(): {1: np.log(0.6), 2: np.log(0.4)},
            (1,): {3: np.log(0.3), 4: np.log(0.3), 5: np.log(0.4)},
            (2,): {6: np.log(0.9), 7: np.log(0.1)}}

    def expand(beams, k):
        return [sorted(logp.get(tuple(b), {0: 0.0}).items(), key=lambda t: -t[1])[:k] for b in beams]

    greedy = beam_search(expand, 1, 2, end_ids=[9])
    assert greedy[0].tokens == [1, 5]
    found = beam_search(expand, 2, 2, end_ids=[9], length_penalty=1.0)
    assert [h.tokens for h in found] == [[2, 6], [1, 5]]
    assert found[0].score == pytest.approx((np.log(0.4) + np.log(0.9)) / 2)
    assert all(h.finish_reason == "length" for h in found)


def test_early_stopping_never_looks_further():
    """With a positive length_penalty, `early_stopping=False` stops once the best live beam, normalised by its
    current length, cannot beat the finished ones; "never" normalises it by max_tokens instead and so goes on to a
    longer hypothesis that scores better."""
    logp = {(): {9: np.log(0.6), 1: np.log(0.4)}, (1,): {2: np.log(0.99), 9: np.log(0.01)},
            (1, 2): {9: np.log(0.99), 3: np.log(0.01)}}

    def expand(beams, k):
        return [sorted(logp[tuple(b)].items(), key=lambda t: -t[1])[:k] for b in beams]

    assert [h.tokens for h in beam_search(expand, 1, 3, end_ids=[9])] == [[9]]
    never = beam_search(expand, 1, 3, end_ids=[9], early_stopping="never")
    assert [h.tokens for h in never] == [[1, 2, 9]] and never[0].finish_reason == "stop"
    assert never[0].score == pytest.approx((np.log(0.4) + 2 * np.log(0.99)) / 3)
    assert [h.tokens for h in beam_search(expand, 1, 3, end_ids=[9], early_stopping=True)] == [[9]]


def test_beam_search_errors(setup):
    llm, _, _ = setup
    msgs = [{"role": "user", "content": "Hi"}]
    with pytest.raises(ValueError, match="n must be an integer in \\[1, beam_width=2\\]"):
        llm.beam_search(msgs, beam_width=2, n=3)
    with pytest.raises(ValueError, match="beam_width must be an integer >= 1"):
        llm.beam_search(msgs, beam_width=0)
    with pytest.raises(ValueError, match="beam_width can be at most"):
        llm.beam_search(msgs, beam_width=40)
    with pytest.raises(ValueError, match="early_stopping must be"):
        llm.beam_search(msgs, beam_width=2, early_stopping="sometimes")


def test_run_beam_width(setup, capsys):
    """`qwen3vl run --beam-width N` prints the best hypothesis of the same search, and refuses sampling flags."""
    from qwen3vl.cli import main

    llm, _, _ = setup
    msgs = [{"role": "user", "content": [{"type": "text", "text": "Tell me a story."}]}]
    want = llm.beam_search(msgs, beam_width=3, n=1, max_tokens=6, length_penalty=0.5)
    capsys.readouterr()
    assert main(["run", "--model", str(llm.path), "--beam-width", "3", "--length-penalty", "0.5", "--max-tokens", "6",
                 "--json", "Tell me a story."]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["token_ids"] == want.token_ids and out["score"] == pytest.approx(want.choices[0].score)
    assert main(["run", "--model", str(llm.path), "--beam-width", "3", "--temperature", "0.5", "hi"]) == 2
    assert "drop --temperature" in capsys.readouterr().err
