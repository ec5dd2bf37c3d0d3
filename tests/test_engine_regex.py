"""Regex and choice constraints (vLLM's guided_regex / guided_choice): the byte automaton agrees with Python's
`re.fullmatch` (ASCII classes), a prefix is alive exactly when some continuation matches, UTF-8 is exact, refused
constructs are named, and a real (random-weight) model under the constraint writes only matches, through `LLM`, the
CLI and the OpenAI-compatible server."""

from __future__ import annotations

import itertools
import json
import random
import re

import httpx
import openai
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qwen3vl.engine.regex import ChoiceMachine, RegexError, RegexMachine, utf8_sequences
from qwen3vl.engine.sampling import SamplingParams
from qwen3vl.llm import LLM
from qwen3vl.model.testing import write_tiny_model
from qwen3vl.serve.app import ServeSettings, create_app
from qwen3vl.serve.testing import ServerThread


def _state(m, text: str):
    return m.run(m.start(), text.encode())


def _matches(m, text: str) -> bool:
    s = _state(m, text)
    return s is not None and m.complete(s)


PATTERNS = [
    r"abc", r"a|b|cd", r"(ab)*c", r"a+b?", r"[a-c]{2,3}", r"x{2}", r"x{1,}y", r"\d+(\.\d+)?", r"-?\d{1,3}",
    r"[^ab]c", r"(?:yes|no)", r"(?P<w>\w+) \w+", r"\s*\S", r"[\d,]+", r"a.c", r"[-a]b", r"[a-]b", r"[]a]+",
    r"a*?b", r"(a|ab)(c|bcd)", r"^ab$", r"\(\d\)", r"[\]\\]+", r"\x41\u00e9", r"é+ü?", r"[α-ω]{1,2}", r"a{,2}",
    r"((a|b)c)+", r"[^\n]{2}", r"\W\D", r"[\s\w]b", r"(|a)b", r"a{0}b",
]
ALPHABET = "abcdxy0129 .,-()\n\\]éüαβω_"


def _check(m, rx, text: str) -> bool:
    want = rx.fullmatch(text) is not None
    assert _matches(m, text) == want, (rx.pattern, text)
    if want:  # every prefix of a match is alive
        s = m.start()
        for b in text.encode():
            s = m.feed(s, b)
            assert s is not None, (rx.pattern, text)
    return want


@pytest.mark.parametrize("pattern", PATTERNS)
def test_random_texts_match_like_python_re(pattern):
    m, rx = RegexMachine(pattern), re.compile(pattern, re.ASCII)
    rng = random.Random(pattern)
    for text in ["", *ALPHABET] + ["".join(rng.choice(ALPHABET) for _ in range(rng.randint(0, 7)))
                                   for _ in range(2000)]:
        _check(m, rx, text)


@pytest.mark.parametrize("pattern", PATTERNS)
@settings(max_examples=120, deadline=None)
@given(data=st.data())
def test_matches_and_their_mutations_like_python_re(pattern, data):
    """Matches drawn by hypothesis from the pattern itself (so every pattern is tested on strings it accepts), and
    each with one character inserted, deleted or replaced (mostly not matches)."""
    m, rx = RegexMachine(pattern), re.compile(pattern, re.ASCII)
    text = data.draw(st.from_regex(rx, fullmatch=True))
    assert _check(m, rx, text)
    i = data.draw(st.integers(0, len(text)))
    c = data.draw(st.sampled_from(ALPHABET))
    for mutated in (text[:i] + c + text[i:], text[:i] + text[i + 1:], text[:i] + c + text[i + 1:]):
        _check(m, rx, mutated)


SMALL = [r"a(b|c)d?", r"(ab|a)c", r"[ab]{1,2}c?", r"a*b", r"(a|b)+c", r"b?(ab)?", r"[^a]b", r"c|a{2}",
         r"(a[^\x00-\U0010FFFF]|b)c?"]  # a branch through an empty class: its "a" leads nowhere


@pytest.mark.parametrize("pattern", SMALL)
def test_a_prefix_is_alive_exactly_when_some_continuation_matches(pattern):
    """Brute force over every string of "abcd" up to length 5: the automaton may not refuse a prefix that can still
    match, nor keep one alive that cannot (the constraint would then strand the model)."""
    m = RegexMachine(pattern)
    rx = re.compile(pattern, re.ASCII)
    strings = ["".join(t) for n in range(6) for t in itertools.product("abcd", repeat=n)]
    matches = [s for s in strings if rx.fullmatch(s)]
    for prefix in strings[:341]:  # up to length 4; completions up to length 5 cover these bounded patterns
        alive = any(s.startswith(prefix) for s in matches)
        assert (_state(m, prefix) is not None) == alive, (pattern, prefix)


@given(st.text(max_size=6), st.text(max_size=6))
@settings(max_examples=200, deadline=None)
def test_choices_accept_exactly_the_options(a, b):
    m = ChoiceMachine([a or "x", b or "y"])
    for text in {a or "x", b or "y"}:
        assert _matches(m, text)
    assert not _matches(m, (a or "x") + "\x00")


def test_utf8_sequences_cover_each_code_point_once():
    rng = random.Random(0)
    for _ in range(200):
        lo = rng.choice([0, 0x70, 0x7FF, 0x800, 0xD7F0, 0xFFF0, 0x10000, 0x10FF00, rng.randrange(0x110000)])
        hi = min(0x10FFFF, lo + rng.choice([0, 1, 5, 100, 5000, 70000]))
        seqs = utf8_sequences(lo, hi)
        for _ in range(100):
            cp = rng.randrange(max(0, lo - 50), min(0x110000, hi + 50))
            if 0xD800 <= cp <= 0xDFFF:
                continue
            data = chr(cp).encode()
            hits = sum(len(q) == len(data) and all(a <= x <= b for (a, b), x in zip(q, data)) for q in seqs)
            assert hits == (1 if lo <= cp <= hi else 0), (hex(lo), hex(hi), hex(cp))


def test_multibyte_characters_are_never_split_at_the_end():
    m = RegexMachine(r".")
    s = m.feed(m.start(), "é".encode()[0])
    assert s is not None and not m.complete(s)  # half a character is not a match
    assert _matches(m, "é") and _matches(m, "日") and _matches(m, "😀") and not _matches(m, "\n")
    assert m.run(m.start(), b"\xff") is None and m.run(m.start(), b"\xed\xa0\x80") is None  # no surrogates


@pytest.mark.parametrize("pattern, message", [
    (r"(a)\1", "back references are not supported at position 3"),
    (r"a(?=b)", "lookaround is not supported"),
    (r"(?<!a)b", "lookaround is not supported"),
    (r"\bword", r"\\b \(an anchor or word boundary\) is not supported"),
    (r"(?i)abc", "inline flags"),
    (r"a++", "possessive quantifiers are not supported"),
    (r"a$b", "'\\$' is only supported at the end of the pattern"),
    (r"a^", "'\\^' is only supported at the start"),
    (r"(ab", "missing '\\)' for the group opened at position 0"),
    (r"ab)", "unbalanced '\\)'"),
    (r"[ab", "unterminated character set"),
    (r"*a", "nothing to repeat"),
    (r"a**", "multiple repeat"),
    (r"a{3,2}", "min repeat greater than max repeat"),
    (r"[z-a]", "bad character range"),
    (r"\q", r"bad escape \\q"),
    (r"\x4", r"\\x needs 2 hex digits"),
    (r"[^\x00-\U0010FFFF]", "matches no string"),
    (r".{1,40000}", "more than 50000 automaton states"),
])
def test_refused_patterns_are_named(pattern, message):
    with pytest.raises(RegexError, match=message):
        RegexMachine(pattern)


def test_past_the_state_cache_the_answers_stay_the_same(monkeypatch):
    """An exponential DFA ([ab]*a[ab]{8}: 512 states) with a cache of 50: later states are computed afresh."""
    import qwen3vl.engine.regex as regex_module

    monkeypatch.setattr(regex_module, "MAX_DFA_STATES", 50)
    m, rx = RegexMachine(r"[ab]*a[ab]{8}"), re.compile(r"[ab]*a[ab]{8}")
    rng = random.Random(0)
    for _ in range(600):
        _check(m, rx, "".join(rng.choice("ab") for _ in range(rng.randint(0, 24))))
    assert len(m.sets) == 50


def test_empty_braces_repeat_like_python():
    m = RegexMachine("a{,}")  # Python reads {,} as {0,}
    for text in ("", "a", "aaa", "a{,}"):
        assert _matches(m, text) == bool(re.fullmatch("a{,}", text)), text
    with pytest.raises(RegexError, match="nothing to repeat"):
        RegexMachine("{,}")


def test_unicode_classes_are_pythons():
    ascii_w, uni_w = RegexMachine(r"\w+"), RegexMachine(r"\w+", unicode=True)
    for text in ("héllo", "日本語", "x_1", "٣", "a b", "\xa0"):
        assert _matches(uni_w, text) == bool(re.fullmatch(r"\w+", text)), text
        assert _matches(ascii_w, text) == bool(re.fullmatch(r"\w+", text, re.ASCII)), text
    neg = RegexMachine(r"[^\d\s]\S", unicode=True)
    for text in ("é٣", "a\xa0", "xy", "٣x", "\u2003y"):
        assert _matches(neg, text) == bool(re.fullmatch(r"[^\d\s]\S", text)), text


def test_choices_share_prefixes_and_refuse_bad_text():
    many = [f"option number {i:05d}" for i in range(6000)]  # 6,000 x 19 bytes: far past the state limit unshared
    m = ChoiceMachine(many)
    assert _matches(m, "option number 04321") and not _matches(m, "option number 6000")
    with pytest.raises(RegexError, match="lone surrogate"):
        ChoiceMachine(["ok", "\ud800"])


def test_sampling_params_check_the_pattern_and_refuse_combinations():
    with pytest.raises(ValueError, match="lookaround"):
        SamplingParams(regex="(?=a)").validate()
    with pytest.raises(ValueError, match="regex cannot be combined with choice"):
        SamplingParams(regex="a", choice=["a"]).validate()
    with pytest.raises(ValueError, match="cannot be combined with json_mode"):
        SamplingParams(choice=["a"], json_mode=True).validate()
    with pytest.raises(ValueError, match="ignore_eos cannot be combined with regex"):
        SamplingParams(regex="a", ignore_eos=True).validate()
    with pytest.raises(ValueError, match="choice must be a non-empty list of strings"):
        SamplingParams(choice=[]).validate()


# ------------------------------------------------------------------------------------------------ with a model
@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_tiny_model(tmp_path_factory.mktemp("m"), sharpen=3.0)


@pytest.fixture(scope="module")
def llm(folder):
    return LLM(folder, kv_cache_gb=0.05, device="cpu")


MESSAGES = [{"role": "user", "content": "Phone number?"}]


@pytest.mark.parametrize("pattern", [r"\d{3}-\d{4}", r"(yes|no), [a-z]{2,5}\.", r"[αβγ]{2}!", r"x*"])
def test_the_model_writes_only_matches(llm, pattern):
    plain = llm.chat(MESSAGES, max_tokens=12, temperature=0).text
    assert not re.fullmatch(pattern, plain, re.ASCII)  # the random model would not write a match by itself
    greedy = llm.chat(MESSAGES, max_tokens=40, temperature=0, regex=pattern)
    assert greedy.finish_reason == "stop" and re.fullmatch(pattern, greedy.text, re.ASCII), greedy.text
    for r in llm.chat_batch([MESSAGES] * 3, max_tokens=40, temperature=1.0, seed=3, regex=pattern):
        assert r.finish_reason == "stop" and re.fullmatch(pattern, r.text, re.ASCII), r.text


def test_the_model_picks_one_of_the_choices(llm):
    choices = ["red", "green", "blue", "a long answer with spaces", "日本"]
    texts = {llm.chat(MESSAGES, max_tokens=30, temperature=1.0, seed=s, choice=choices).text for s in range(8)}
    assert texts <= set(choices) and texts


def test_cli_run_with_choice_and_regex(folder, capsys):
    from qwen3vl.cli import main

    assert main(["run", "--model", str(folder), "--choice", "cat", "--choice", "dog", "--max-tokens", "8",
                 "--temperature", "0", "Which?"]) == 0
    assert capsys.readouterr().out.strip() in ("cat", "dog")
    assert main(["run", "--model", str(folder), "--regex", r"[0-9]{4}", "--max-tokens", "8", "--temperature", "0",
                 "Year?"]) == 0
    assert re.fullmatch(r"[0-9]{4}", capsys.readouterr().out.strip())
    with pytest.raises(SystemExit):
        main(["run", "--model", str(folder), "--regex", "(?=a)", "x"])
    assert "lookaround is not supported" in capsys.readouterr().err


@pytest.fixture(scope="module")
def server(llm):
    with ServerThread(create_app(llm, ServeSettings(["tiny"], sampling_defaults={"max_tokens": 30}))) as s:
        yield s


def test_server_guided_fields_through_the_openai_client(server):
    client = openai.OpenAI(api_key="unused", base_url=server.url + "/v1", max_retries=0, timeout=60)
    r = client.chat.completions.create(model="tiny", messages=MESSAGES, temperature=0,
                                       extra_body={"guided_choice": ["positive", "negative"]})
    assert r.choices[0].message.content in ("positive", "negative")
    r = client.chat.completions.create(model="tiny", messages=MESSAGES, temperature=0,
                                       extra_body={"structured_outputs": {"regex": r"\d{2}:\d{2}"}})
    assert re.fullmatch(r"\d{2}:\d{2}", r.choices[0].message.content)
    streamed = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(
        model="tiny", messages=MESSAGES, temperature=0, stream=True,
        extra_body={"structured_outputs": {"regex": r"\d{2}:\d{2}"}}) if c.choices)
    assert streamed == r.choices[0].message.content
    r = client.completions.create(model="tiny", prompt="The answer is", temperature=0,
                                  extra_body={"guided_regex": "(yes|no)"})
    assert r.choices[0].text in ("yes", "no")
    r = client.chat.completions.create(model="tiny", messages=MESSAGES, temperature=0, max_tokens=60,
                                       extra_body={"guided_json": {"type": "object", "properties": {
                                           "n": {"type": "integer"}}, "required": ["n"],
                                           "additionalProperties": False}})
    assert set(json.loads(r.choices[0].message.content)) == {"n"}


@pytest.mark.parametrize("body, field, message", [
    ({"guided_regex": "(?=a)"}, "regex", "lookaround is not supported"),
    ({"guided_regex": "a", "guided_choice": ["a"]}, "guided_choice", "cannot be combined"),
    ({"structured_outputs": {"grammar": "root ::= x"}}, "structured_outputs", "grammar is not supported"),
    ({"guided_choice": []}, "guided_choice", ""),
    ({"guided_regex": "a", "response_format": {"type": "json_object"}}, "response_format", "cannot be combined"),
])
def test_server_refuses_bad_structured_outputs(server, body, field, message):
    r = httpx.post(server.url + "/v1/chat/completions", json={"model": "tiny", "messages": MESSAGES, **body},
                   timeout=30)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert message in err["message"] and field in (err.get("param") or "") + err["message"]
