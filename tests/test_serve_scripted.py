"""Tool calls, the Thinking split and JSON answers through the server, with a scripted sampler.

A random-weight model never writes `<tool_call>` or `</think>`, so these tests use `ScriptedSampler`: the real
model runs every step, but the token the engine picks is the next one of a fixed text. Everything after that
choice is the real path: engine stop rules, streaming hold-back, output parsing, the OpenAI response shapes and
the official client."""

from __future__ import annotations

import itertools
import json

import openai
import pytest

from qwen3vl.llm import LLM
from qwen3vl.model.testing import write_tiny_model
from qwen3vl.serve.app import ServeSettings, create_app
from qwen3vl.serve.testing import ScriptedSampler, ServerThread


TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather for a city",
                                           "parameters": {"type": "object",
                                                          "properties": {"city": {"type": "string"}}}}},
         {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object"}}}]
CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'


def _serve(folder):
    llm = LLM(folder, kv_cache_gb=0.05)
    script = ScriptedSampler(llm.tokenizer, eos=llm.tokenizer.special.im_end)
    return llm, script, ServerThread(create_app(llm, ServeSettings(["tiny"], sampling_defaults={"max_tokens": 256})))


@pytest.fixture(scope="module")
def instruct(tmp_path_factory):
    folder = write_tiny_model(tmp_path_factory.mktemp("instruct"), sharpen=3.0)
    llm, script, server = _serve(folder)
    with script, server:
        yield llm, script, openai.OpenAI(api_key="x", base_url=server.url + "/v1", max_retries=0)


@pytest.fixture(scope="module")
def thinking(tmp_path_factory):
    folder = write_tiny_model(tmp_path_factory.mktemp("thinking"), chat_template="thinking", sharpen=3.0)
    llm, script, server = _serve(folder)
    with script, server:
        yield llm, script, openai.OpenAI(api_key="x", base_url=server.url + "/v1", max_retries=0)


def _stream(client, **kw):
    content, reasoning, calls, reasons = "", "", [], []
    for ch in client.chat.completions.create(stream=True, **kw):
        for c in ch.choices:
            content += c.delta.content or ""
            reasoning += (c.delta.model_extra or {}).get("reasoning_content") or ""
            calls += c.delta.tool_calls or []
            if c.finish_reason:
                reasons.append(c.finish_reason)
    return content, reasoning, calls, reasons


def test_tool_call_round_trip(instruct):
    llm, script, client = instruct
    messages = [{"role": "user", "content": "What's the weather in Paris?"}]
    script.say("Let me check.\n" + CALL)
    r = client.chat.completions.create(model="tiny", messages=messages, tools=TOOLS)
    c = r.choices[0]
    assert c.finish_reason == "tool_calls" and c.message.content == "Let me check."
    (call,) = c.message.tool_calls
    assert call.type == "function" and call.id.startswith("call_") and call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Paris"}

    content, _, calls, reasons = _stream(client, model="tiny", messages=messages, tools=TOOLS)
    assert content == "Let me check." and "<tool_call>" not in content and reasons == ["tool_calls"]
    assert calls[0].index == 0 and calls[0].function.name == "get_weather"
    assert json.loads(calls[0].function.arguments) == {"city": "Paris"}

    # second turn: the client's own assistant message (arguments as a JSON string) and the tool's answer
    messages += [c.message.model_dump(exclude_none=True),
                 {"role": "tool", "tool_call_id": call.id, "content": json.dumps({"temp_c": 20})}]
    script.say("It is 20 degrees in Paris.")
    r2 = client.chat.completions.create(model="tiny", messages=messages, tools=TOOLS)
    assert r2.choices[0].message.content == "It is 20 degrees in Paris." and r2.choices[0].finish_reason == "stop"
    # the server rendered the history exactly as the Python API does for the same messages
    assert r2.usage.prompt_tokens == len(llm.prepare(messages, TOOLS).input_ids)
    assert '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>' in \
        llm.processor.render_text(messages, tools=TOOLS)


def test_tool_choice_variants(instruct):
    _, script, client = instruct
    messages = [{"role": "user", "content": "Weather?"}]
    # "none": tools hidden, and a call the model writes anyway stays text
    script.say(CALL)
    r = client.chat.completions.create(model="tiny", messages=messages, tools=TOOLS, tool_choice="none")
    assert r.choices[0].message.tool_calls is None and r.choices[0].message.content == CALL
    assert r.choices[0].finish_reason == "stop"
    # named: the prompt is prefilled with the call's opening, the model only writes the arguments
    script.say('{"city": "Oslo"}}\n</tool_call>')
    named = {"type": "function", "function": {"name": "get_weather"}}
    r = client.chat.completions.create(model="tiny", messages=messages, tools=TOOLS, tool_choice=named)
    (call,) = r.choices[0].message.tool_calls
    assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {"city": "Oslo"}
    assert r.choices[0].finish_reason == "tool_calls" and r.choices[0].message.content is None
    _, _, calls, reasons = _stream(client, model="tiny", messages=messages, tools=TOOLS, tool_choice=named)
    assert [c.function.name for c in calls] == ["get_weather"] and reasons == ["tool_calls"]
    # required: prefilled with "<tool_call>\n", the model picks the function
    script.say('{"name": "get_time", "arguments": {}}\n</tool_call>')
    r = client.chat.completions.create(model="tiny", messages=messages, tools=TOOLS, tool_choice="required")
    assert [c.function.name for c in r.choices[0].message.tool_calls] == ["get_time"]
    # parallel_tool_calls false keeps the first of several calls
    script.say(CALL + "\n" + CALL.replace("Paris", "Rome"))
    r = client.chat.completions.create(model="tiny", messages=messages, tools=TOOLS)
    assert len(r.choices[0].message.tool_calls) == 2
    r = client.chat.completions.create(model="tiny", messages=messages, tools=TOOLS, parallel_tool_calls=False)
    assert len(r.choices[0].message.tool_calls) == 1


def _chunks(client, **kw) -> list:
    return [ch for ch in client.chat.completions.create(stream=True, **kw) for _ in ch.choices]


def test_a_stream_sends_each_tool_call_when_its_block_closes(instruct):
    _, script, client = instruct
    messages = [{"role": "user", "content": "Weather in Paris and Rome?"}]
    rome = CALL.replace("Paris", "Rome")
    script.say("Checking both.\n" + CALL + "\n" + rome)
    # with logprobs every token makes a chunk, so a chunk's place in the stream is its token's
    chunks = _chunks(client, model="tiny", messages=messages, tools=TOOLS, logprobs=True)
    arrivals = [(k, tc) for k, ch in enumerate(chunks) for tc in ch.choices[0].delta.tool_calls or []]
    assert [tc.index for _, tc in arrivals] == [0, 1]
    (first_at, first), (second_at, second) = arrivals
    # the first call arrives while the model is still writing the second (some 20 tokens), not at the end
    assert first_at < second_at - 10
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    assert chunks[first_at].choices[0].finish_reason is None
    assert first.id.startswith("call_") and second.id.startswith("call_") and first.id != second.id
    assert [json.loads(tc.function.arguments)["city"] for _, tc in arrivals] == ["Paris", "Rome"]
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks) == "Checking both."
    # the openai client's own stream helper puts the calls together
    script.say("Checking both.\n" + CALL + "\n" + rome)
    with client.chat.completions.stream(model="tiny", messages=messages, tools=TOOLS) as stream:
        final = stream.get_final_completion()
    calls = final.choices[0].message.tool_calls
    assert [(c.id, c.function.name) for c in calls] != [] and [c.function.name for c in calls] == ["get_weather"] * 2
    assert [json.loads(c.function.arguments) for c in calls] == [{"city": "Paris"}, {"city": "Rome"}]
    # parallel_tool_calls false: only the first is ever sent
    script.say(CALL + "\n" + rome)
    chunks = _chunks(client, model="tiny", messages=messages, tools=TOOLS, parallel_tool_calls=False)
    sent = [tc for ch in chunks for tc in ch.choices[0].delta.tool_calls or []]
    assert [json.loads(tc.function.arguments)["city"] for tc in sent] == ["Paris"]


def test_a_stop_string_that_cuts_into_a_call_written_before_it(instruct):
    """A stop string cuts the answer where it starts: a call whose block closed inside a stop string that completes
    later is no call, so the stream must not have sent it."""
    _, script, client = instruct
    messages = [{"role": "user", "content": "?"}]
    kw = dict(model="tiny", messages=messages, tools=TOOLS, stop=['}\n</tool_call>\n<tool_call>'])
    script.say(CALL + "\n" + CALL.replace("Paris", "Rome"))
    r = client.chat.completions.create(**kw)
    assert r.choices[0].message.tool_calls is None and r.choices[0].finish_reason == "stop"
    script.say(CALL + "\n" + CALL.replace("Paris", "Rome"))
    content, _, calls, reasons = _stream(client, **kw)
    assert calls == [] and content == r.choices[0].message.content and reasons == ["stop"]


@pytest.mark.parametrize("text", [" Hi.\n" + CALL, "  \n" + CALL + "\n  After.",
                                  "Before.\n" + CALL + "\nBetween.\n" + CALL])
def test_streamed_content_joins_to_the_non_streamed_content(instruct, text):
    _, script, client = instruct
    kw = dict(model="tiny", messages=[{"role": "user", "content": "?"}], tools=TOOLS)
    script.say(text)
    r = client.chat.completions.create(**kw)
    script.say(text)
    content, _, calls, _ = _stream(client, **kw)
    assert content == (r.choices[0].message.content or "")
    assert len(calls) == len(r.choices[0].message.tool_calls) == text.count(CALL)


def test_text_after_a_call_streams_before_the_end_and_none_streams_the_block_as_text(instruct):
    _, script, client = instruct
    messages = [{"role": "user", "content": "?"}]
    text = "Checking.\n" + CALL + "\nWhile that runs, here is a long note about the weather in Paris."
    script.say(text)
    chunks = _chunks(client, model="tiny", messages=messages, tools=TOOLS, logprobs=True)
    got = [(k, ch.choices[0].delta.content or "") for k, ch in enumerate(chunks)]
    called = next(k for k, ch in enumerate(chunks) if ch.choices[0].delta.tool_calls)
    # the words after the call arrive token by token after the call, well before the last chunk
    after = [k for k, piece in got if piece and k > called]
    assert len(after) > 5 and after[0] < len(chunks) - 5
    assert "".join(piece for _, piece in got) == text.replace(CALL, "")
    # tool_choice "none": the block is text, streamed as the non-streamed answer has it
    for choice in ("none", "auto"):
        script.say(text)
        r = client.chat.completions.create(model="tiny", messages=messages, tools=TOOLS, tool_choice=choice)
        script.say(text)
        content, _, calls, _ = _stream(client, model="tiny", messages=messages, tools=TOOLS, tool_choice=choice)
        assert content == r.choices[0].message.content and len(calls) == (choice == "auto")
        assert (CALL in content) == (choice == "none")


def test_a_readable_call_next_to_an_unreadable_one(instruct):
    """Each block is read on its own: the readable call is a call (streamed at once), the other stays text."""
    _, script, client = instruct
    messages = [{"role": "user", "content": "?"}]
    text = CALL + "\n<tool_call>\nnot json\n</tool_call>"
    script.say(text)
    r = client.chat.completions.create(model="tiny", messages=messages, tools=TOOLS)
    c = r.choices[0]
    assert [t.function.name for t in c.message.tool_calls] == ["get_weather"] and c.finish_reason == "tool_calls"
    assert c.message.content == "<tool_call>\nnot json\n</tool_call>"
    script.say(text)
    content, _, calls, reasons = _stream(client, model="tiny", messages=messages, tools=TOOLS)
    assert content == c.message.content and reasons == ["tool_calls"]
    assert [t.function.name for t in calls] == ["get_weather"]


def test_unreadable_tool_call_stays_text(instruct):
    _, script, client = instruct
    script.say("<tool_call>\nnot json at all\n</tool_call>")
    r = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "?"}], tools=TOOLS)
    assert r.choices[0].message.tool_calls is None and "not json at all" in r.choices[0].message.content
    assert r.choices[0].finish_reason == "stop"


def test_json_response_format(instruct):
    _, script, client = instruct
    fmt = {"type": "json_object"}
    script.say('```json\n{"colour": "red", "n": 2}\n```')
    r = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "?"}],
                                       response_format=fmt)
    assert json.loads(r.choices[0].message.content) == {"colour": "red", "n": 2}
    assert "response_format_error" not in r.choices[0].model_extra
    script.say("red, probably")
    r = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "?"}],
                                       response_format=fmt)
    assert r.choices[0].message.content == "red, probably"
    assert "not valid JSON" in r.choices[0].model_extra["response_format_error"]
    schema = {"type": "json_schema", "json_schema": {"name": "c", "schema": {"type": "object"}}}
    script.say('{"a": 1}')
    r = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "?"}],
                                       response_format=schema)
    assert json.loads(r.choices[0].message.content) == {"a": 1}


def test_thinking_split(thinking):
    _, script, client = thinking
    messages = [{"role": "user", "content": "What colour is the sky?"}]
    script.say("The sky scatters blue light.\nSo: blue.\n</think>\n\nBlue.")
    r = client.chat.completions.create(model="tiny", messages=messages)
    m = r.choices[0].message
    assert m.content == "Blue." and m.model_extra["reasoning_content"] == "The sky scatters blue light.\nSo: blue."
    content, reasoning, _, reasons = _stream(client, model="tiny", messages=messages)
    assert content == "Blue." and reasoning == "The sky scatters blue light.\nSo: blue." and reasons == ["stop"]
    # a Thinking model's tool call comes after its reasoning
    script.say("I need the weather tool.\n</think>\n\n" + CALL)
    r = client.chat.completions.create(model="tiny", messages=messages, tools=TOOLS)
    assert r.choices[0].message.model_extra["reasoning_content"] == "I need the weather tool."
    assert r.choices[0].message.tool_calls[0].function.name == "get_weather"
    # streamed, the call comes once its block closes, and a call written inside the reasoning is no call
    script.say("Maybe <tool_call>\n{\"name\": \"get_time\", \"arguments\": {}}\n</tool_call> no.\n</think>\n\n" + CALL)
    _, reasoning, calls, reasons = _stream(client, model="tiny", messages=messages, tools=TOOLS)
    assert [c.function.name for c in calls] == ["get_weather"] and reasons == ["tool_calls"]
    assert "get_time" in reasoning
    # and the reasoning after it streams on as written (not held to the end of the answer)
    script.say("Maybe <tool_call>\n{\"name\": \"get_time\", \"arguments\": {}}\n</tool_call> no.\n</think>\n\n" + CALL)
    chunks = _chunks(client, model="tiny", messages=messages, tools=TOOLS, logprobs=True)
    so_far = itertools.accumulate((ch.choices[0].delta.model_extra or {}).get("reasoning_content") or ""
                                  for ch in chunks)
    said = next(k for k, r in enumerate(so_far) if "</tool_call> no" in r)
    called = next(k for k, ch in enumerate(chunks) if ch.choices[0].delta.tool_calls)
    assert said < called - 10
    # unscripted, the random model never closes its reasoning: all of it is reasoning, the answer is empty
    script.say(None)
    r = client.chat.completions.create(model="tiny", messages=messages, max_tokens=8, temperature=0)
    assert r.choices[0].message.content == "" and r.choices[0].message.model_extra["reasoning_content"] is not None
