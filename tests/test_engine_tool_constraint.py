"""Forced tool calls: with tool_choice "required" or a named function the answer is tool calls as the chat template
writes them, each valid against its function's parameters schema (checked with the `jsonschema` validator)."""

from __future__ import annotations

import json

import jsonschema
import pytest

from qwen3vl.engine.tool_constraint import ToolCallConstraint, call_schema

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


def _constraint(**kwargs) -> ToolCallConstraint:
    return ToolCallConstraint(lambda t: VOCAB[t], [EOS], call_schema(TOOLS), OPEN, CLOSE, **kwargs)


def test_a_call_is_opened_written_closed_and_then_the_answer_may_end_or_call_again():
    c = _constraint(opened=False)
    assert _allowed(c) == [OPEN]  # "<tool_call>" first: no text, no end
    c.advance(OPEN)
    assert _allowed(c) == [4]  # "\n"
    c.advance(4)
    assert 6 in _allowed(c) and 10 in _allowed(c) and 14 not in _allowed(c)  # a call's JSON, not text
    for t in (6, 7):  # {"name": "click", "arguments": {"x": 5, "y": 7}
        c.advance(t)
    assert _allowed(c) == [4, 5, 8, 9]  # whitespace, "}", or "}\n" (which also starts what follows the JSON)
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
    c = _constraint(written='{"name": "click", "arguments": ', parallel=False)
    assert _allowed(c) == [4, 5, 7, 13]  # whitespace or the arguments
    for t in (7, 8, 4, CLOSE):
        c.advance(t)
    assert c.complete and _allowed(c) == [EOS]  # parallel_tool_calls false: one call only
    with pytest.raises(ValueError, match="does not fit"):
        _constraint(written='{"name": "scroll", "arguments": ')


def test_a_thinking_model_thinks_freely_then_calls():
    c = _constraint(opened=False, activate_after=THINK_END)
    assert c.allows(14) and c.allows(EOS)  # reasoning is free
    c.advance(14)
    c.advance(THINK_END)
    assert _allowed(c) == [4, 5]  # "\n\n" (in one token or two), then "<tool_call>"
    c.advance(5)
    assert _allowed(c) == [OPEN]


def test_call_schema_names_and_refuses():
    one = call_schema(TOOLS, "key")
    assert one["properties"]["name"] == {"const": "key"} and one["properties"]["arguments"] == PARAMS["key"]
    assert [a["properties"]["name"]["const"] for a in call_schema(TOOLS)["anyOf"]] == ["click", "key"]
    with pytest.raises(ValueError, match="no function named 'scroll'"):
        call_schema(TOOLS, "scroll")


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
