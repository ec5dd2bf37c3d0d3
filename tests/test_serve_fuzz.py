"""Fuzzing the request schema with hypothesis (bounded): well-formed, half-formed and nonsense bodies for the chat,
completions and Responses endpoints. The server must never answer 5xx (nor put an error event in a stream), every
4xx must be in OpenAI's shape, and afterwards it must be idle and healthy with nothing left in the engine."""

from __future__ import annotations

import base64
import json

import httpx
import openai
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from openai._models import construct_type_unchecked
from openai.lib.streaming.responses._responses import ResponseStreamState
from openai.types.responses import ResponseStreamEvent

from qwen3vl.llm import LLM
from qwen3vl.model.testing import write_tiny_model
from qwen3vl.serve.app import ServeSettings, create_app
from qwen3vl.serve.metrics import parse_metrics
from qwen3vl.serve.schemas import NOT_WITH_BEAMS
from qwen3vl.serve.testing import ServerThread, png_data_uri

SETTINGS = settings(max_examples=250, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

scalars = st.one_of(st.none(), st.booleans(), st.integers(-(10**20), 10**20),
                    st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=12))
anything = st.recursive(scalars, lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=6), c,
                                                                                       max_size=3), max_leaves=6)


def _not_big_int(v) -> bool:
    # a valid huge max_tokens would just generate for a long time; keep valid token budgets small
    return not (isinstance(v, int) and not isinstance(v, bool) and v > 4)


SOURCES = [png_data_uri(0, 16, 16), "data:image/png;base64," + base64.b64encode(b"junk").decode(), "data:,",
           "http://127.0.0.1:9/x.png", "/etc/passwd", "file:///etc/hosts", "ftp://x/y", ""]
url_part = st.builds(lambda kind, src, extra: {"type": kind, kind: {"url": src, **extra}},
                     st.sampled_from(["image_url", "video_url"]), st.sampled_from(SOURCES),
                     st.dictionaries(st.sampled_from(["max_pixels", "min_pixels", "fps", "detail"]),
                                     st.integers(-5, 10**12) | anything, max_size=2))
part = st.one_of(st.fixed_dictionaries({"type": st.just("text"), "text": st.text(max_size=30)}), url_part, anything)
content = st.one_of(st.text(max_size=40), st.lists(part, max_size=3), anything)
message = st.one_of(st.fixed_dictionaries({"role": st.sampled_from(["system", "user", "assistant", "tool", "x"]),
                                           "content": content},
                                          optional={"tool_calls": anything, "name": anything}), anything)
tool = st.one_of(st.fixed_dictionaries({"type": st.just("function"),
                                        "function": st.fixed_dictionaries({"name": st.text(max_size=8)},
                                                                          optional={"parameters": anything})}),
                 anything)
small = st.integers(1, 4) | anything.filter(_not_big_int)
number = st.floats(-1, 3, allow_nan=False) | anything
COMMON = {
    "model": st.sampled_from(["tiny", "other"]) | anything, "max_tokens": small, "n": st.integers(1, 3) | anything,
    "temperature": number, "top_p": number, "top_k": st.integers(-2, 50) | anything, "min_p": number,
    "presence_penalty": number, "frequency_penalty": number, "repetition_penalty": number,
    "seed": st.integers() | anything, "stream": st.booleans() | anything,
    "stop": st.text(max_size=4) | st.lists(st.text(max_size=4), max_size=3) | anything,
    "stream_options": st.fixed_dictionaries({"include_usage": st.booleans()}) | anything,
    "stop_token_ids": st.lists(st.integers(-5, 400), max_size=2) | anything, "min_tokens": small,
    "ignore_eos": st.booleans() | anything,
    "use_beam_search": st.booleans() | anything, "length_penalty": number,
    "early_stopping": st.sampled_from([True, False, "never", "x"]) | anything,
    "continue_final_message": st.booleans() | anything, "add_generation_prompt": st.booleans() | st.none() | anything,
}
# JSON-schema-like values: valid, unsupported (patterns with lookaround), unsatisfiable, cyclic ($ref "#"), malformed
schema_like = st.recursive(
    st.booleans() | st.fixed_dictionaries({}, optional={
        "type": st.sampled_from(["object", "array", "string", "integer", "number", "null", "x"]) | anything,
        "minimum": st.integers(-3, 3) | anything, "maxLength": st.integers(-1, 3) | anything,
        "pattern": st.sampled_from(["a", "^[ab]+$", "(?=a)", "^a|b$", "\\"]) | anything,
        "enum": st.lists(st.integers(0, 2) | st.text(max_size=2), max_size=2) | anything,
        "$ref": st.sampled_from(["#", "#/x", "#/properties/a", "#/$defs/d"])}),
    lambda inner: st.fixed_dictionaries({}, optional={
        "properties": st.dictionaries(st.sampled_from("ab"), inner, max_size=2) | anything, "items": inner,
        "anyOf": st.lists(inner, max_size=2), "required": st.lists(st.sampled_from("abc"), max_size=2) | anything,
        "additionalProperties": inner, "$defs": st.fixed_dictionaries({"d": inner})}),
    max_leaves=6)
json_schema_format = st.fixed_dictionaries({"type": st.just("json_schema"), "json_schema": st.fixed_dictionaries(
    {"name": st.just("s"), "schema": schema_like}, optional={"strict": st.booleans() | anything})})
chat_body = st.fixed_dictionaries({"messages": st.lists(message, max_size=3) | anything}, optional={
    **COMMON, "max_completion_tokens": small, "logprobs": st.booleans() | anything,
    "top_logprobs": st.integers(-1, 25) | anything, "tools": st.lists(tool, max_size=2) | anything,
    "tool_choice": st.sampled_from(["none", "auto", "required"]) | anything,
    "response_format": st.fixed_dictionaries({"type": st.sampled_from(["text", "json_object", "xml"])})
    | json_schema_format | anything,
    "parallel_tool_calls": st.booleans() | anything, "min_pixels": st.integers(-5, 10**9) | anything,
    "max_pixels": st.integers(-5, 10**9) | anything, "fps": number, "max_frames": small,
})
completion_body = st.fixed_dictionaries({"prompt": st.text(max_size=30) | st.lists(st.integers(-3, 400), max_size=4)
                                         | st.lists(st.text(max_size=5), max_size=3) | anything},
                                        optional={**COMMON, "logprobs": st.integers(-1, 25) | anything,
                                                  "echo": st.booleans() | anything})

def sum_lists(lists: list[list]) -> list:
    return [x for chunk in lists for x in chunk]


# mostly valid: every field in range, so most of these generate (stream and not, tools, logprobs, n, stop ...)
valid_image = st.builds(lambda seed, extra: {"type": "image_url", "image_url": {"url": png_data_uri(seed, 16, 24),
                                                                                 **extra}},
                        st.integers(0, 3), st.dictionaries(st.just("max_pixels"), st.integers(2048, 64 * 64)))
# valid text: anything but the two private-use characters the chat renderer reserves (refused with a 400)
valid_text = st.text(st.characters(exclude_characters="\ue000\ue001"), max_size=30)
valid_user = st.fixed_dictionaries({"role": st.just("user"), "content": valid_text | st.lists(
    st.fixed_dictionaries({"type": st.just("text"), "text": valid_text}) | valid_image,
    min_size=1, max_size=3)})
valid_turns = st.lists(st.fixed_dictionaries({"role": st.sampled_from(["system", "assistant"]),
                                              "content": valid_text}), max_size=2)
TOOLS = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
VALID_SCHEMA = {"type": "json_schema", "json_schema": {"name": "s", "strict": True, "schema": {
    "type": "object", "properties": {"a": {"type": "integer", "minimum": 0, "maximum": 9}}, "required": ["a"],
    "additionalProperties": False}}}
valid_chat_body = st.fixed_dictionaries(
    {"messages": st.builds(lambda a, b: a + [b], valid_turns, valid_user), "max_tokens": st.integers(1, 4)},
    optional={"model": st.just("tiny"), "n": st.integers(1, 3), "temperature": st.sampled_from([0, 1e-7, 0.5, 2.0]),
              "top_p": st.floats(1e-6, 1), "top_k": st.integers(-1, 300), "min_p": st.floats(0, 1),
              "presence_penalty": st.floats(-2, 2), "frequency_penalty": st.floats(-2, 2),
              "repetition_penalty": st.floats(0.1, 10), "seed": st.integers(0, 2**62),
              "stop": st.lists(st.text(min_size=1, max_size=3), max_size=3), "stream": st.booleans(),
              "stream_options": st.fixed_dictionaries({"include_usage": st.booleans()}),
              "logprobs": st.just(True), "top_logprobs": st.integers(0, 20), "min_tokens": st.integers(0, 4),
              "tools": st.just(TOOLS), "response_format": st.sampled_from([{"type": "json_object"}, VALID_SCHEMA]),
              "use_beam_search": st.booleans(), "length_penalty": st.sampled_from([-1.0, 0.0, 1.0, 2.5]),
              "early_stopping": st.sampled_from([True, False, "never"]),
              "max_pixels": st.integers(2048, 64 * 64), "ignore_eos": st.booleans(), "add_vision_id": st.booleans()})

# the Responses API: its own input items, tools and format, over the same common fields
response_part = st.one_of(
    st.fixed_dictionaries({"type": st.sampled_from(["input_text", "output_text"]), "text": st.text(max_size=20)}),
    st.fixed_dictionaries({"type": st.just("input_image"), "image_url": st.sampled_from(SOURCES)},
                          optional={"file_id": anything, "detail": anything}),
    st.fixed_dictionaries({"type": st.sampled_from(["input_file", "refusal"])}), url_part, anything)
response_item = st.one_of(
    st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant", "system", "developer", "x"]) | anything,
                           "content": st.text(max_size=30) | st.lists(response_part, max_size=3) | anything},
                          optional={"type": st.just("message")}),
    st.fixed_dictionaries({"type": st.just("function_call"), "call_id": st.text(max_size=4) | anything,
                           "name": st.sampled_from(["f", "g"]) | anything, "arguments": st.text(max_size=12)}),
    st.fixed_dictionaries({"type": st.just("function_call_output"), "call_id": st.text(max_size=4) | anything,
                           "output": st.text(max_size=12) | st.lists(response_part, max_size=2) | anything}),
    st.fixed_dictionaries({"type": st.just("reasoning")}, optional={
        "content": st.lists(st.fixed_dictionaries({"type": st.just("reasoning_text"), "text": st.text(max_size=9)}),
                            max_size=2) | anything, "summary": anything}),
    anything)
responses_body = st.fixed_dictionaries(
    {"input": st.text(max_size=30) | st.lists(response_item, max_size=4) | anything}, optional={
        **COMMON, "instructions": st.text(max_size=20) | anything, "max_output_tokens": small,
        "tools": st.lists(st.fixed_dictionaries({"type": st.sampled_from(["function", "web_search"]),
                                                 "name": st.sampled_from(["f", "g"])},
                                                optional={"parameters": anything}) | anything, max_size=2) | anything,
        "tool_choice": st.sampled_from(["none", "auto", "required"]) | st.fixed_dictionaries(
            {"type": st.sampled_from(["function", "allowed_tools"]), "name": st.sampled_from(["f", "h"])}) | anything,
        "text": st.fixed_dictionaries({"format": st.fixed_dictionaries(
            {"type": st.sampled_from(["text", "json_object", "json_schema", "xml"])},
            optional={"name": st.just("s"), "schema": schema_like})}) | anything,
        "top_logprobs": st.integers(-1, 25) | anything, "include": st.lists(st.sampled_from(
            ["message.output_text.logprobs", "x"]), max_size=2) | anything,
        "previous_response_id": st.none() | anything, "truncation": st.sampled_from(["auto", "disabled"]) | anything,
        "reasoning": anything, "store": anything, "metadata": anything, "background": st.booleans() | anything,
    })

# mostly valid Responses bodies: a conversation of real items (an earlier call and its output among them)
input_image = valid_image.map(lambda p: {"type": "input_image", "image_url": p["image_url"]["url"]})
valid_response_user = st.fixed_dictionaries({"role": st.sampled_from(["user", "developer"]), "content": valid_text
                                             | st.lists(st.fixed_dictionaries({"type": st.just("input_text"),
                                                                               "text": valid_text}) | input_image,
                                                        min_size=1, max_size=3)})
earlier_call = st.just([{"type": "reasoning", "content": [{"type": "reasoning_text", "text": "hm"}]},
                        {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
                        {"type": "function_call_output", "call_id": "c1", "output": "done"}])
valid_responses_body = st.fixed_dictionaries(
    {"input": valid_text | st.builds(lambda a, b, c: a + b + [c], st.lists(valid_response_user, max_size=1),
                                     st.lists(earlier_call, max_size=1).map(sum_lists), valid_response_user),
     "max_output_tokens": st.integers(1, 4)},
    optional={"model": st.just("tiny"), "instructions": valid_text, "temperature": st.sampled_from([0, 0.5, 2.0]),
              "top_p": st.floats(1e-6, 1), "top_k": st.integers(-1, 300), "seed": st.integers(0, 2**62),
              "stream": st.booleans(), "top_logprobs": st.integers(0, 20), "store": st.booleans(),
              "tools": st.just([{"type": "function", "name": "f", "parameters": {"type": "object"}}]),
              "text": st.sampled_from([{"format": {"type": "text"}}, {"format": {"type": "json_object"}},
                                       {"format": {"type": "json_schema", **VALID_SCHEMA["json_schema"]}}]),
              "reasoning": st.just({"effort": "low"}), "metadata": st.just({"k": "v"})})


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    folder = write_tiny_model(tmp_path_factory.mktemp("tiny"), sharpen=3.0)
    llm = LLM(folder, kv_cache_gb=0.05, media={"min_pixels": 1024, "max_pixels": 64 * 64})
    with ServerThread(create_app(llm, ServeSettings(["tiny"], request_timeout=60,
                                                    sampling_defaults={"max_tokens": 4}))) as s:
        with httpx.Client(base_url=s.url, timeout=60) as http:
            yield s, http


def _check(resp: httpx.Response, responses_api: bool = False) -> None:
    assert resp.status_code < 500, resp.text
    if resp.status_code >= 400:
        err = resp.json()["error"]
        assert set(err) == {"message", "type", "param", "code"} and err["message"]
    elif responses_api and resp.headers["content-type"].startswith("text/event-stream"):
        events = [json.loads(ln[6:]) for ln in resp.text.splitlines() if ln.startswith("data: ")]
        assert events[0]["type"] == "response.created"
        assert events[-1]["type"] in ("response.completed", "response.incomplete"), events[-1]
        assert [e["sequence_number"] for e in events] == list(range(len(events)))
        state = ResponseStreamState(input_tools=openai.omit, text_format=openai.omit)  # the SDK's order checks
        for e in events:
            state.handle_event(construct_type_unchecked(type_=ResponseStreamEvent, value=e))
    elif responses_api:
        assert resp.json()["object"] == "response" and resp.json()["output"]
    elif resp.headers["content-type"].startswith("text/event-stream"):
        events = [ln[6:] for ln in resp.text.splitlines() if ln.startswith("data: ")]
        assert events[-1] == "[DONE]"
        for e in events[:-1]:
            assert "error" not in json.loads(e), e
    else:
        assert resp.json()["choices"]


@SETTINGS
@given(body=chat_body)
def test_fuzz_chat(server, body):
    _check(server[1].post("/v1/chat/completions", json=body))


@SETTINGS
@given(body=completion_body)
def test_fuzz_completions(server, body):
    _check(server[1].post("/v1/completions", json=body))


@SETTINGS
@given(body=valid_chat_body)
def test_fuzz_valid_chat(server, body):
    if body.get("top_logprobs") is not None:
        body["logprobs"] = True
    if "response_format" in body:
        body.pop("ignore_eos", None)  # a JSON answer ends with its document: ignore_eos is refused with it (400)
    if body.get("use_beam_search"):  # what a beam search cannot honour is refused with it (400)
        for key in NOT_WITH_BEAMS:
            body.pop(key, None)
    resp = server[1].post("/v1/chat/completions", json=body)
    _check(resp)
    assert resp.status_code == 200, resp.text


@settings(SETTINGS, max_examples=150)
@given(body=responses_body)
def test_fuzz_responses(server, body):
    _check(server[1].post("/v1/responses", json=body), responses_api=True)


@settings(SETTINGS, max_examples=100)
@given(body=valid_responses_body)
def test_fuzz_valid_responses(server, body):
    resp = server[1].post("/v1/responses", json=body)
    _check(resp, responses_api=True)
    assert resp.status_code == 200, resp.text


@settings(max_examples=40, deadline=None, derandomize=True, database=None)
@given(raw=st.binary(max_size=64) | st.text(max_size=64).map(str.encode))
def test_fuzz_raw_bytes(server, raw):
    _check(server[1].post("/v1/chat/completions", content=raw, headers={"content-type": "application/json"}))


def test_still_healthy_and_idle_after_fuzzing(server):
    s, http = server
    assert http.get("/health").status_code == 200
    m = parse_metrics(http.get("/metrics").text)
    assert m["qwen3vl_kv_cache_blocks_used"] == 0 and m["qwen3vl_engine_tracked_requests"] == 0
    assert not any('status="5' in k for k in m)
    r = http.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 200
