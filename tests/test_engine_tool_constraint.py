"""Forced tool calls: with tool_choice "required" or a named function the answer is tool calls as the chat template
writes them, each valid against its function's parameters schema (checked with the `jsonschema` validator). With
"auto" the answer is free, and only a call the model opens is held to the same rules."""

from __future__ import annotations

import json

import jsonschema
import pytest

from qwen3vl.engine.schema import SchemaError
from qwen3vl.engine.tool_constraint import ToolCallConstraint, arguments_schema, forced_calls

TOOLS = [
    {"type": "function", "function": {"name": "click", "description": "Click a point of the screen.", "parameters": {
        "type": "object", "additionalProperties": False, "required": ["x", "y"],
        "properties": {"x": {"type": "integer", "minimum": 0, "maximum": 999},
                       "y": {"type": "integer", "minimum": 0, "maximum": 999}}}}},
    {"type": "function", "function": {"name": "key", "parameters": {
        "type": "object", "additionalProperties": False, "required": ["keys"],
        "properties": {"keys": {"type": "array", "minItems": 1, "maxItems": 2,
                                "items": {"enum": ["ctrl", "alt", "enter", "tab"]}}}}}},
]
PARAMS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}

EOS, OPEN, CLOSE, THINK_END = 0, 1, 2, 3
VOCAB: list[bytes | None] = [None, None, None, None, b"\n", b"\n\n", b'{"name": "click", "arguments": ',
                             b'{"x": 5, "y": 7}', b"}", b"}\n", b'{"name": "key"', b", ", b'"arguments": {"keys": []}',
                             b'{"x": 5', b"hello", b'{"x": 5, "y": 1000}']


def _allowed(c: ToolCallConstraint) -> list[int]:
    return [t for t in range(len(VOCAB)) if c.allows(t)]


def _constraint(name=None, named=False, opened=True, parallel=True, activate_after=None,
                end=(EOS,)) -> ToolCallConstraint:
    forced = forced_calls(TOOLS, name, named=named, opened=opened, parallel=parallel)
    return ToolCallConstraint(lambda t: VOCAB[t], end, forced, OPEN, CLOSE, activate_after=activate_after)


def test_a_call_is_opened_written_closed_and_then_the_answer_may_end_or_call_again():
    c = _constraint(opened=False)
    assert _allowed(c) == [OPEN]  # "<tool_call>" first: no text, no end
    c.advance(OPEN)
    assert _allowed(c) == [4]  # "\n"
    c.advance(4)
    assert 6 in _allowed(c) and 10 in _allowed(c) and 14 not in _allowed(c)  # a call's JSON, not text
    for t in (6, 7):  # {"name": "click", "arguments": {"x": 5, "y": 7}
        c.advance(t)
    assert _allowed(c) == [8, 9]  # the call's "}" right after the arguments, as the template writes it (or "}\n")
    c.advance(9)
    assert _allowed(c) == [CLOSE] and not c.complete
    c.advance(CLOSE)
    assert c.complete and _allowed(c) == [EOS, 4]  # the end, or "\n" before another call (not "\n\n")
    c.advance(4)
    assert _allowed(c) == [OPEN]


def test_arguments_follow_the_chosen_functions_schema():
    c = _constraint(opened=False)
    for t in (OPEN, 4, 6):
        c.advance(t)
    assert c.allows(7) and not c.allows(15) and c.allows(13)  # y <= 999
    c.advance(13)
    assert not c.allows(8)  # "}" would leave out the required "y"
    other = _constraint(opened=False)
    for t in (OPEN, 4, 10, 11):
        other.advance(t)
    assert not other.allows(12)  # key's "keys" needs at least one item


def test_a_prefilled_named_call_and_no_parallel_calls():
    c = _constraint("click", named=True, parallel=False)  # the prompt holds <tool_call>\n{"name": "click", ...
    assert _allowed(c) == [7, 13]  # the arguments
    for t in (7, 8, 4, CLOSE):
        c.advance(t)
    assert c.complete and _allowed(c) == [EOS]  # parallel_tool_calls false: one call only
    with pytest.raises(ValueError, match="no function named 'scroll'"):
        _constraint("scroll", named=True)


def test_a_thinking_model_thinks_freely_then_calls():
    c = _constraint(opened=False, activate_after=THINK_END)
    assert c.allows(14) and not c.allows(EOS)  # reasoning is free, but must end with </think> and a call
    c.advance(14)
    c.advance(THINK_END)
    assert _allowed(c) == [4, 5]  # "\n\n" (in one token or two), then "<tool_call>"
    c.advance(5)
    assert _allowed(c) == [OPEN]


def test_forced_calls_name_their_functions_and_refuse_what_cannot_be_enforced():
    assert [n for n, _ in forced_calls(TOOLS).functions] == ["click", "key"]
    assert forced_calls(TOOLS, "key").functions == (("key", PARAMS["key"]),)
    assert arguments_schema("f", None) == {"type": "object"} and arguments_schema("f", {}) == {"type": "object"}
    assert arguments_schema("f", {"type": ["object", "null"]})["type"] == "object"  # arguments are an object
    with pytest.raises(SchemaError, match="function 'f': parameters must describe an object"):
        arguments_schema("f", {"type": "string"})
    pattern = [{"type": "function", "function": {"name": "g", "parameters": {
        "type": "object", "properties": {"a": {"type": "string", "pattern": "x(?=y)"}}}}}]
    with pytest.raises(SchemaError, match="function 'g': .*pattern 'x\\(\\?=y\\)'.*lookaround"):
        forced_calls(pattern)
    with pytest.raises(ValueError, match="no function named 'scroll'"):
        forced_calls(TOOLS, "scroll")


def _call(c: ToolCallConstraint, text: bytes) -> bool:
    """Feed `text` byte by byte as one-byte tokens (the tags as their ids); False if a byte is refused."""
    vocab = {bytes((b,)): 100 + b for b in range(256)}
    c.token_bytes = lambda t: bytes((t - 100,)) if t >= 100 else None
    for b in text:
        tok = vocab[bytes((b,))]
        if not c.allows(tok):
            return False
        c.advance(tok)
    return True


def test_every_one_of_many_tools_can_be_called():
    """The call's name is read first and picks its function's machine: 100 tools are 100 choices, not 100 readings
    of one anyOf (which the reading cap would cut to the first 64)."""
    tools = [{"type": "function", "function": {"name": f"tool_{i}", "parameters": {
        "type": "object", "properties": {"v": {"const": i}}, "required": ["v"]}}} for i in range(100)]
    for i in (0, 63, 64, 99):
        c = ToolCallConstraint(lambda t: None, [EOS], forced_calls(tools), OPEN, CLOSE)
        assert _call(c, f'{{"name": "tool_{i}", "arguments": {{"v": {i}}}}}\n'.encode()), i
        c2 = ToolCallConstraint(lambda t: None, [EOS], forced_calls(tools), OPEN, CLOSE)
        assert not _call(c2, f'{{"name": "tool_{i}", "arguments": {{"v": {i + 1}}}}}'.encode())


def test_refs_in_parameters_resolve_against_the_parameters():
    params = {"$defs": {"Loc": {"type": "object", "properties": {"x": {"type": "integer", "maximum": 9}},
                                "required": ["x"]}},
              "type": "object", "properties": {"at": {"$ref": "#/$defs/Loc"}, "kids": {"type": "array",
                                                                                   "items": {"$ref": "#"}}},
              "required": ["at"]}
    tools = [{"type": "function", "function": {"name": "put", "parameters": params}}]
    ok = b'{"name": "put", "arguments": {"at": {"x": 3}, "kids": [{"at": {"x": 1}}]}}\n'
    assert _call(ToolCallConstraint(lambda t: None, [EOS], forced_calls(tools), OPEN, CLOSE), ok)
    bad = b'{"name": "put", "arguments": {"at": {"x": 30}'
    assert not _call(ToolCallConstraint(lambda t: None, [EOS], forced_calls(tools), OPEN, CLOSE), bad)


def test_arguments_are_always_an_object():
    tools = [{"type": "function", "function": {"name": "f", "parameters": {}}}]
    for text, ok in ((b'{"name": "f", "arguments": {"a": [1]}}', True), (b'{"name": "f", "arguments": 5', False),
                     (b'{"name": "f", "arguments": null', False)):
        assert _call(ToolCallConstraint(lambda t: None, [EOS], forced_calls(tools), OPEN, CLOSE), text) == ok


def test_a_stop_token_that_is_also_a_tag_and_a_thinking_model_that_must_get_to_its_call():
    c = _constraint(end=(EOS, CLOSE))  # </tool_call> is a stop token too: still the expected tag, not an end
    for t in (6, 7, 9):
        c.advance(t)
    assert _allowed(c) == [CLOSE]
    thinking = _constraint(opened=False, activate_after=THINK_END)
    assert not thinking.allows(EOS) and thinking.allows(14)  # no end before </think>: the call must come


def _lazy(activate_after=None) -> ToolCallConstraint:
    return ToolCallConstraint(lambda t: VOCAB[t], (EOS,), forced_calls(TOOLS, lazy=True), OPEN, CLOSE,
                              activate_after=activate_after)


def test_auto_calls_are_free_until_opened_then_constrained_to_their_close():
    everything = list(range(len(VOCAB)))
    c = _lazy()
    assert _allowed(c) == everything and not c.complete and not c.constrains  # text, a call, or the end
    for t in (14, 4):  # "hello\n": text stays free
        c.advance(t)
        assert _allowed(c) == everything
    c.advance(OPEN)
    assert c.constrains and _allowed(c) == [4]  # the call's "\n", then its JSON: no text, no end, no <tool_call>
    c.advance(4)
    assert 14 not in _allowed(c) and EOS not in _allowed(c) and 6 in _allowed(c)
    c.advance(6)
    assert 15 not in _allowed(c) and 7 in _allowed(c)  # y = 1000 is over the schema's maximum
    for t in (7, 9):
        c.advance(t)
    assert _allowed(c) == [CLOSE]
    c.advance(CLOSE)
    assert _allowed(c) == everything and not c.complete  # free again: end, text, or another call
    c.advance(OPEN)
    assert _allowed(c) == [4]


def test_auto_calls_of_a_thinking_model_are_constrained_only_after_its_reasoning():
    c = _lazy(activate_after=THINK_END)
    for t in (OPEN, 14, CLOSE):  # a tag inside the reasoning is text: the parser reads calls after </think> only
        assert _allowed(c) == list(range(len(VOCAB)))
        c.advance(t)
    c.advance(THINK_END)
    assert c.allows(EOS) and c.allows(14)
    c.advance(OPEN)
    assert _allowed(c) == [4]


@pytest.fixture(scope="module")
def llm(tmp_path_factory):
    from qwen3vl.llm import LLM
    from qwen3vl.model.testing import write_tiny_model

    return LLM(write_tiny_model(tmp_path_factory.mktemp("m")), kv_cache_gb=0.05, device="cpu")


def _check_calls(calls):
    assert calls, "no tool call"
    for call in calls:
        jsonschema.validate(call["arguments"], PARAMS[call["name"]])


@pytest.mark.parametrize("choice", ["required", "click", "key"])
def test_a_random_model_forced_to_call_writes_valid_calls(llm, choice):
    messages = [{"role": "user", "content": "Open the menu."}]
    free = llm.chat(messages, tools=TOOLS, max_tokens=30, temperature=0)
    assert not free.tool_calls  # left alone, the random model calls nothing
    for seed in (0, 1):
        r = llm.chat(messages, tools=TOOLS, tool_choice=choice, max_tokens=600, temperature=1.0, seed=seed)
        assert r.finish_reason == "stop" and r.tool_call_error is None, r.raw_text
        _check_calls(r.tool_calls)
        assert choice == "required" or {c["name"] for c in r.tool_calls} == {choice}
    streamed = list(llm.chat_stream(messages, tools=TOOLS, tool_choice=choice, max_tokens=600, temperature=0))
    _check_calls([c for d in streamed for c in (d.tool_calls or [])])
    with pytest.raises(ValueError, match="needs tools"):
        llm.chat(messages, tool_choice=choice, max_tokens=2)


def test_the_server_constrains_forced_calls(llm):
    import openai

    from qwen3vl.serve.app import ServeSettings, create_app
    from qwen3vl.serve.testing import ServerThread

    messages = [{"role": "user", "content": "Press enter."}]
    with ServerThread(create_app(llm, ServeSettings(["tiny"]))) as server:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="x")
        for choice in ("required", {"type": "function", "function": {"name": "key"}}):
            r = client.chat.completions.create(model="tiny", messages=messages, tools=TOOLS, tool_choice=choice,
                                               max_tokens=600, temperature=0.8, seed=3)
            calls = r.choices[0].message.tool_calls
            assert r.choices[0].finish_reason == "tool_calls", r.choices[0].message.content
            _check_calls([{"name": c.function.name, "arguments": json.loads(c.function.arguments)} for c in calls])
            assert choice == "required" or {c.function.name for c in calls} == {"key"}


def _closed_blocks_are_valid_calls(raw: str, calls: list[dict]) -> None:
    """Every `<tool_call>` block the model closed was read as a call valid against its schema."""
    closed = raw.count("</tool_call>")
    assert closed >= 1, raw
    assert len(calls) >= closed, raw
    _check_calls(calls[:closed])


def test_a_random_model_that_opens_calls_by_itself_writes_valid_ones(llm, monkeypatch):
    """tool_choice "auto": a logit bias makes the random model open `<tool_call>` itself. Constrained, every call it
    closes is valid; with the constraint taken away, the same model writes no valid call at all."""
    messages = [{"role": "user", "content": "Open the menu."}]
    bias = {llm.engine.tool_call_ids[0]: 8.0}
    for seed in (0, 1):
        r = llm.chat(messages, tools=TOOLS, max_tokens=100, temperature=1.0, seed=seed, logit_bias=bias)
        _closed_blocks_are_valid_calls(r.raw_text, r.tool_calls)
    streamed = list(llm.chat_stream(messages, tools=TOOLS, max_tokens=100, temperature=1.0, seed=0,
                                    logit_bias=bias))
    _check_calls([c for d in streamed for c in (d.tool_calls or [])])
    assert llm.chat(messages, tools=TOOLS, tool_choice="none", max_tokens=100, temperature=1.0, seed=0,
                    logit_bias=bias).tool_calls == []  # "none": the tools are hidden and nothing is constrained
    monkeypatch.setattr(type(llm), "auto_tool_calls", lambda self, tools, sampling: None)
    free = [llm.chat(messages, tools=TOOLS, max_tokens=100, temperature=1.0, seed=seed, logit_bias=bias)
            for seed in (0, 1)]
    assert all("<tool_call>" in r.raw_text and not r.tool_calls for r in free), [r.raw_text for r in free]


def test_a_call_a_schema_cannot_describe_leaves_auto_free_and_other_constraints_win(llm):
    unenforceable = [{"type": "function", "function": {"name": "f", "parameters": {
        "type": "object", "properties": {"n": {"type": "number", "multipleOf": 3}}}}}]
    assert llm.auto_tool_calls(unenforceable, {}) is None
    assert llm.auto_tool_calls(TOOLS, {}).lazy
    assert llm.auto_tool_calls(TOOLS, {"regex": "a+"}) is None
    r = llm.chat([{"role": "user", "content": "Hi"}], tools=TOOLS, regex="(yes|no)", max_tokens=10, temperature=0)
    assert r.text in ("yes", "no")


def test_the_server_constrains_calls_the_model_opens_with_tool_choice_auto(llm):
    import openai

    from qwen3vl.serve.app import ServeSettings, create_app
    from qwen3vl.serve.testing import ServerThread

    messages = [{"role": "user", "content": "Press enter."}]
    bias = {str(llm.engine.tool_call_ids[0]): 8}
    with ServerThread(create_app(llm, ServeSettings(["tiny"]))) as server:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="x")
        r = client.chat.completions.create(model="tiny", messages=messages, tools=TOOLS, max_tokens=300,
                                           temperature=1.0, seed=5, logit_bias=bias)
        calls = r.choices[0].message.tool_calls
        assert calls, r.choices[0].message.content
        _check_calls([{"name": c.function.name, "arguments": json.loads(c.function.arguments)} for c in calls])
        stream = client.chat.completions.create(model="tiny", messages=messages, tools=TOOLS, max_tokens=300,
                                                temperature=1.0, seed=5, logit_bias=bias, stream=True)
        streamed = [c for chunk in stream for c in (chunk.choices[0].delta.tool_calls or [])]
        assert [c.function.name for c in streamed] == [c.function.name for c in calls]
        _check_calls([{"name": c.function.name, "arguments": json.loads(c.function.arguments)} for c in streamed])
