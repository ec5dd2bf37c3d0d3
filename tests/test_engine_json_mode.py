"""JSON mode: the byte automaton agrees with Python's strict json parser, the sampler only picks allowed tokens, and a
real (random-weight) model under the constraint writes JSON-object prefixes that parse whenever it stops."""

from __future__ import annotations

import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from qwen3vl.engine.constrain import JsonConstraint, JsonMachine
from qwen3vl.engine.sampling import SamplingParams, sample
from qwen3vl.llm import LLM
from qwen3vl.model.testing import write_tiny_model


def _strict_object(text: str) -> bool:
    def no_constants(name):
        raise ValueError(name)

    try:
        return isinstance(json.loads(text, parse_constant=no_constants), dict)
    except ValueError:
        return False


def _accepts(text: str, top_object: bool = True) -> bool:
    m = JsonMachine(top_object)
    state = m.run(m.start(), text.encode())
    return state is not None and m.complete(state)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-10**12, 10**12) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=12)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.text(max_size=6), json_values, max_size=5), st.sampled_from([None, 2]), st.booleans())
def test_every_dumped_object_is_accepted_and_only_complete_at_its_end(obj, indent, ascii_only):
    text = json.dumps(obj, indent=indent, ensure_ascii=ascii_only)
    m = JsonMachine()
    state = m.start()
    data = text.encode()
    for i, b in enumerate(data):
        state = m.feed(state, b)
        assert state is not None, (text, i)
        assert m.complete(state) == (i == len(data) - 1), (text, i)


ALPHABET = '{}[]:,"\\ 01-.eE+tuflsnra\n\x01/bx9'


@settings(max_examples=3000, deadline=None)
@given(st.text(alphabet=ALPHABET, max_size=14))
def test_the_automaton_agrees_with_strict_json_on_arbitrary_text(text):
    """Strict JSON objects, less the two deliberate limits: no whitespace before the "{", and (shown separately)
    capped whitespace runs, which these short texts do not reach."""
    assert _accepts(text) == (_strict_object(text) and not text[:1].isspace()), text


@pytest.mark.parametrize("text", ['{"a": 01}', '{"a": 1.}', '{"a": -}', "{'a': 1}", '{a: 1}', '{"a": 1,}',
                                  '{"a": [1,]}', '{"a": tru}', '{"a": NaN}', '{"a\x01": 1}', '[1, 2]', '"s"', "1",
                                  '{"a": "\\x"}', '{"a": "\\u12g4"}', '{"a" 1}', '{"a": 1}}', ' {"a": 1}',
                                  "{" + " " * 13 + "}", '{"a": [' + "\n" * 17 + "]}"])
def test_invalid_objects_are_refused(text):
    assert not _accepts(text)


@pytest.mark.parametrize("text", ['{"a": -0.5e+3}', '{"a": "\\u00e9\\n\\"", "b": [true, false, null, {}]}',
                                  '{ "x" : [ ] }\n', '{"é": "日本"}', "{" + " " * 12 + "}",
                                  '{"a": [' + "\n" * 16 + "]}"])
def test_valid_objects_are_accepted(text):
    assert _accepts(text) and _strict_object(text)


def test_top_level_values_other_than_objects_when_asked():
    assert _accepts("[1, 2]", top_object=False) and _accepts("-12", top_object=False)
    assert not _accepts("-12", top_object=True)


def _vocab(tokens: list[bytes | None]):
    return lambda i: tokens[i]


def test_constraint_allows_end_only_after_a_complete_object_and_then_only_end():
    tokens = [b"{", b'"a"', b":", b" 1", b"}", None, b"hello", b'{"a": 1}']
    c = JsonConstraint(_vocab(tokens), end_ids=[5])
    assert [c.allows(t) for t in range(8)] == [True, False, False, False, False, False, False, True]
    for t in (0, 1, 2, 3):
        c.advance(t)
    assert [c.allows(t) for t in range(8)] == [False, False, False, False, True, False, False, False]
    c.advance(4)
    assert c.complete and [c.allows(t) for t in range(8)] == [False] * 5 + [True, False, False]


def test_constraint_waits_for_the_end_of_thinking():
    tokens = [b"{", b"}", b"why", None, None]  # 3: </think>, 4: end
    c = JsonConstraint(_vocab(tokens), end_ids=[4], activate_after=3)
    assert c.allows(2) and not c.allows(4)  # free reasoning, but no end before </think> and the JSON
    c.advance(2)
    c.advance(3)
    assert not c.allows(2) and not c.allows(4) and c.allows(0)


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_the_sampler_picks_only_allowed_tokens(temperature):
    gen = torch.Generator().manual_seed(0)
    logits = torch.zeros(50)
    logits[7] = 10.0  # the model's clear favourite, not allowed
    logits[30] = 2.0
    allowed = {3, 30}
    p = SamplingParams(temperature=temperature, top_k=5 if temperature else 0)
    picks = {sample(logits, p, [], [], gen, allowed=lambda t: t in allowed).token for _ in range(40)}
    assert picks <= allowed
    assert 30 in picks
    if temperature == 0:
        assert picks == {30}


def test_sampled_choices_follow_the_restricted_distribution():
    gen = torch.Generator().manual_seed(1)
    logits = torch.log(torch.tensor([0.5, 0.3, 0.15, 0.05]))
    p = SamplingParams(temperature=1.0)
    counts = torch.zeros(4)
    for _ in range(4000):
        counts[sample(logits, p, [], [], gen, allowed=lambda t: t != 0).token] += 1
    assert counts[0] == 0
    freq = counts[1:] / counts.sum()
    assert torch.allclose(freq, torch.tensor([0.6, 0.3, 0.1]), atol=0.03)


@pytest.fixture(scope="module")
def llm(tmp_path_factory):
    return LLM(write_tiny_model(tmp_path_factory.mktemp("m")), kv_cache_gb=0.05, device="cpu")


def _prefix_ok(text: str) -> bool:
    m = JsonMachine()
    return m.run(m.start(), text.encode()) is not None


def test_a_random_model_in_json_mode_writes_json_prefixes(llm):
    messages = [{"role": "user", "content": "Reply in JSON."}]
    free = llm.chat_batch([messages] * 3, max_tokens=12, temperature=1.0, seed=0)
    assert not any(_prefix_ok(r.text) for r in free)  # unconstrained, the random model writes no JSON
    results = [llm.chat(messages, max_tokens=40, temperature=1.0, seed=s, json_mode=True) for s in range(4)]
    results.append(llm.chat(messages, max_tokens=40, temperature=0, json_mode=True))
    for r in results:
        assert r.text.startswith("{") and _prefix_ok(r.text), r.text
        assert r.finish_reason == "length" or isinstance(json.loads(r.text), dict)


def test_json_mode_ends_with_a_parsable_object(llm, monkeypatch):
    """The real engine and sampler, with the logits nudged towards quotes, colons and closing braces (a random model
    would write one endless string): every answer that stops parses, and it stops right after the object."""
    import qwen3vl.engine.engine as engine_module

    tok = llm.tokenizer
    nudge = {tok.encode(t)[0]: b for t, b in (('"', 4.0), (":", 2.0), ("}", 4.0), ("1", 2.0))}
    real = engine_module.sample

    def nudged(logits, *args, **kwargs):
        logits = logits.clone()
        for i, b in nudge.items():
            logits[i] += b
        return real(logits, *args, **kwargs)

    monkeypatch.setattr(engine_module, "sample", nudged)
    messages = [{"role": "user", "content": "Reply in JSON."}]
    results = [llm.chat(messages, max_tokens=80, temperature=1.0, seed=s, json_mode=True) for s in range(8)]
    stopped = [r for r in results if r.finish_reason == "stop"]
    assert len(stopped) >= 4, [r.text for r in results]
    for r in stopped:
        assert isinstance(json.loads(r.text), dict), r.text
        assert r.token_ids[-1] in llm.eos_token_ids or r.text.endswith("}")
    assert len({r.text for r in stopped}) > 1


def test_min_tokens_gives_way_to_a_finished_object_and_ignore_eos_is_refused(llm, monkeypatch):
    import qwen3vl.engine.engine as engine_module

    tok = llm.tokenizer
    close = tok.encode("}")[0]
    real = engine_module.sample

    def nudged(logits, *args, **kwargs):
        logits = logits.clone()
        logits[close] += 30.0  # "{}" at once
        return real(logits, *args, **kwargs)

    monkeypatch.setattr(engine_module, "sample", nudged)
    r = llm.chat([{"role": "user", "content": "JSON"}], max_tokens=30, min_tokens=20, temperature=0, json_mode=True)
    assert (r.text, r.finish_reason) == ("{}", "stop")
    with pytest.raises(ValueError, match="ignore_eos cannot be combined with json_mode"):
        llm.chat([{"role": "user", "content": "JSON"}], max_tokens=5, ignore_eos=True, json_mode=True)
