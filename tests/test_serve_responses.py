"""OpenAI's Responses API (`POST /v1/responses`) through the official `openai` client (`client.responses`).

A Responses request runs as the chat request it translates to, so every answer here is compared with the chat
endpoint's answer to the same conversation on the same server: text, token counts, finish state, tool calls and
reasoning. A tiny random checkpoint answers plain requests; a `ScriptedSampler` makes it write tool calls and
reasoning (the rest of the path is real). The translation itself and the event stream are checked directly too."""

from __future__ import annotations

import json

import httpx
import openai
import pytest

from qwen3vl.llm import LLM
from qwen3vl.model.testing import write_tiny_model
from qwen3vl.serve.app import ServeSettings, create_app
from qwen3vl.serve.errors import APIError
from qwen3vl.serve.jobs import Usage
from qwen3vl.serve.outputs import ChoiceDelta
from qwen3vl.serve.responses_api import Echo, ResponseEvents, ResponseStore, translate
from qwen3vl.serve.testing import ScriptedSampler, ServerThread, png_data_uri

TOOL = {"type": "function", "name": "get_weather", "description": "Weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}
CHAT_TOOL = {"type": "function", "function": {k: v for k, v in TOOL.items() if k != "type"}}
CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'


def _serve(folder):
    llm = LLM(folder, kv_cache_gb=0.05)
    return llm, ServerThread(create_app(llm, ServeSettings(["tiny"], sampling_defaults={"max_tokens": 256})))


@pytest.fixture(scope="module")
def instruct(tmp_path_factory):
    llm, server = _serve(write_tiny_model(tmp_path_factory.mktemp("instruct"), sharpen=3.0))
    # one script for the module: it replaces the engine's sampler for every server in the process
    script = ScriptedSampler(llm.tokenizer, eos=llm.tokenizer.special.im_end)
    with script, server:
        yield llm, script, openai.OpenAI(api_key="x", base_url=server.url + "/v1", max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def thinking(tmp_path_factory, instruct):
    folder = write_tiny_model(tmp_path_factory.mktemp("thinking"), chat_template="thinking", sharpen=3.0)
    llm, server = _serve(folder)
    script = instruct[1]
    assert llm.tokenizer.encode("Hello </think>") == script.tokenizer.encode("Hello </think>")  # (same tokenizer)
    with server:
        yield llm, script, openai.OpenAI(api_key="x", base_url=server.url + "/v1", max_retries=0, timeout=60)


def _streamed(client, **kw):
    """(event types, the final response) through the client's own stream helper, which checks the events'
    consistency (items added before their deltas, closed before the end) as it accumulates them."""
    with client.responses.stream(**kw) as stream:
        events = list(stream)
        # (the helper builds its final response from response.completed only; an incomplete one ends the stream
        # with response.incomplete, which carries the response the same way)
        final = events[-1].response if events[-1].type == "response.incomplete" else stream.get_final_response()
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert events[0].type == "response.created" and events[-1].type in ("response.completed", "response.incomplete")
    return [e.type for e in events], final


# ------------------------------------------------------------------------------------------------- answers
def test_text_and_image_input_answer_as_the_chat_endpoint(instruct):
    _, script, client = instruct
    script.say(None)  # the real (greedy) sampler
    image = png_data_uri(3)
    chat = client.chat.completions.create(model="tiny", temperature=0, max_tokens=8, messages=[
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": image}},
                                     {"type": "text", "text": "What is this?"}]}])
    r = client.responses.create(model="tiny", temperature=0, max_output_tokens=8, instructions="Be brief.", input=[
        {"role": "user", "content": [{"type": "input_image", "image_url": image},
                                     {"type": "input_text", "text": "What is this?"}]}])
    assert r.object == "response" and r.id.startswith("resp_") and r.model == "tiny"
    assert r.output_text == chat.choices[0].message.content and r.output_text
    assert r.usage.input_tokens == chat.usage.prompt_tokens > 64  # the image's tokens are in the prompt
    assert r.usage.output_tokens == chat.usage.completion_tokens
    assert r.usage.total_tokens == r.usage.input_tokens + r.usage.output_tokens
    assert r.usage.output_tokens_details.reasoning_tokens == 0
    assert r.usage.input_tokens_details.cache_write_tokens == 0  # (the client's type requires it)
    assert r.parallel_tool_calls is True
    (item,) = r.output
    assert item.type == "message" and item.role == "assistant" and item.status == "completed"
    want = "incomplete" if chat.choices[0].finish_reason == "length" else "completed"
    assert r.status == want and r.instructions == "Be brief." and r.max_output_tokens == 8

    types, final = _streamed(client, model="tiny", temperature=0, max_output_tokens=8, instructions="Be brief.",
                             input=[{"role": "user", "content": [{"type": "input_image", "image_url": image},
                                                                 {"type": "input_text", "text": "What is this?"}]}])
    assert final.output_text == r.output_text and final.usage.output_tokens == r.usage.output_tokens
    assert types[:4] == ["response.created", "response.in_progress", "response.output_item.added",
                         "response.content_part.added"]
    assert "response.output_text.delta" in types and types[-1] == f"response.{want}"


def test_a_string_input_and_the_token_limit(instruct):
    _, script, client = instruct
    script.say(None)
    chat = client.chat.completions.create(model="tiny", temperature=0, max_tokens=3,
                                          messages=[{"role": "user", "content": "Count to ten."}])
    r = client.responses.create(model="tiny", temperature=0, max_output_tokens=3, input="Count to ten.")
    assert chat.choices[0].finish_reason == "length" and r.output_text == chat.choices[0].message.content
    assert r.status == "incomplete" and r.incomplete_details.reason == "max_output_tokens"
    assert r.usage.output_tokens == 3
    types, final = _streamed(client, model="tiny", temperature=0, max_output_tokens=3, input="Count to ten.")
    assert final.status == "incomplete" and types[-1] == "response.incomplete" and final.output_text == r.output_text


def test_logprobs(instruct):
    _, script, client = instruct
    script.say(None)
    chat = client.chat.completions.create(model="tiny", temperature=0, max_tokens=5, logprobs=True, top_logprobs=2,
                                          messages=[{"role": "user", "content": "Hi"}])
    r = client.responses.create(model="tiny", temperature=0, max_output_tokens=5, top_logprobs=2, input="Hi",
                                include=["message.output_text.logprobs"])
    got = r.output[0].content[0].logprobs
    want = chat.choices[0].logprobs.content
    assert [e.token for e in got] == [e.token for e in want] and got
    assert [e.logprob for e in got] == pytest.approx([e.logprob for e in want], abs=1e-5)
    assert all(len(e.top_logprobs) == 2 for e in got)
    types, final = _streamed(client, model="tiny", temperature=0, max_output_tokens=5, top_logprobs=2, input="Hi")
    assert [e.token for e in final.output[0].content[0].logprobs] == [e.token for e in got]


def test_json_schema_format_is_enforced(instruct):
    _, script, client = instruct
    script.say(None)
    schema = {"type": "object", "properties": {"answer": {"enum": ["yes", "no"]}}, "required": ["answer"],
              "additionalProperties": False}
    r = client.responses.create(model="tiny", temperature=0, max_output_tokens=40, input="Is it red?",
                                text={"format": {"type": "json_schema", "name": "a", "schema": schema, "strict": True}})
    assert json.loads(r.output_text)["answer"] in ("yes", "no")


# ------------------------------------------------------------------------------------------------- tools
def _chat_after_call(client, content: str, call, output: str):
    """The chat endpoint's answer to "Weather in Paris?", the assistant's `content` and `call`, and its `output`."""
    return client.chat.completions.create(model="tiny", tools=[CHAT_TOOL], messages=[
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": content, "tool_calls": [
            {"id": call.call_id, "type": "function",
             "function": {"name": "get_weather", "arguments": call.arguments}}]},
        {"role": "tool", "tool_call_id": call.call_id, "content": output}])


def test_function_calls_and_their_outputs(instruct):
    _, script, client = instruct
    script.say("Let me check.\n" + CALL)
    r = client.responses.create(model="tiny", input="Weather in Paris?", tools=[TOOL])
    message, call = r.output
    assert message.type == "message" and r.output_text == "Let me check."
    assert call.type == "function_call" and call.name == "get_weather" and call.status == "completed"
    assert json.loads(call.arguments) == {"city": "Paris"} and call.call_id.startswith("call_")
    assert r.status == "completed"

    types, final = _streamed(client, model="tiny", input="Weather in Paris?", tools=[TOOL])
    assert [o.type for o in final.output] == ["message", "function_call"]
    assert final.output_text == "Let me check." and json.loads(final.output[1].arguments) == {"city": "Paris"}
    assert "response.function_call_arguments.done" in types

    # the next turn: the call and its output as input items give the prompt the chat endpoint builds for them
    script.say("It is sunny.")
    r2 = client.responses.create(model="tiny", tools=[TOOL], input=[
        {"role": "user", "content": "Weather in Paris?"}, *[o.model_dump(exclude_none=True) for o in r.output],
        {"type": "function_call_output", "call_id": call.call_id, "output": "sunny, 24 C"}])
    chat = _chat_after_call(client, "Let me check.", call, "sunny, 24 C")
    assert r2.output_text == chat.choices[0].message.content == "It is sunny."
    assert r2.usage.input_tokens == chat.usage.prompt_tokens

    # a named function is forced (the server writes the call's opening), as with the chat endpoint
    script.say('{"city": "Rome"}}\n</tool_call>')
    forced = client.responses.create(model="tiny", input="Anything.", tools=[TOOL],
                                     tool_choice={"type": "function", "name": "get_weather"})
    (call,) = forced.output
    assert call.type == "function_call" and call.name == "get_weather" and json.loads(call.arguments) == {
        "city": "Rome"}


def test_thinking_reasoning_items(thinking):
    llm, script, client = thinking
    reasoning = "The user greets me."
    script.say(f"{reasoning}\n</think>\n\nHello!")
    r = client.responses.create(model="tiny", input="Hi")
    kinds = [o.type for o in r.output]
    assert kinds == ["reasoning", "message"] and r.output_text == "Hello!"
    assert r.output[0].content[0].text == reasoning
    want = len(llm.tokenizer.encode(f"{reasoning}\n</think>"))
    assert r.usage.output_tokens_details.reasoning_tokens == want < r.usage.output_tokens

    types, final = _streamed(client, model="tiny", input="Hi")
    assert [o.type for o in final.output] == ["reasoning", "message"] and final.output_text == "Hello!"
    assert final.output[0].content[0].text == reasoning
    assert "response.reasoning_text.delta" in types
    assert types.index("response.reasoning_text.done") < types.index("response.output_text.delta")

    # reasoning given back as an input item reaches the template as the assistant's reasoning_content
    script.say("Fine.")
    items = [{"role": "user", "content": "Hi"}, *[o.model_dump(exclude_none=True) for o in r.output],
             {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": "{}"},
             {"type": "function_call_output", "call_id": "call_1", "output": "ok"}]
    r2 = client.responses.create(model="tiny", input=items, tools=[TOOL])
    chat = client.chat.completions.create(model="tiny", tools=[CHAT_TOOL], messages=[
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!", "reasoning_content": reasoning, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "ok"}])
    assert r2.usage.input_tokens == chat.usage.prompt_tokens
    without = client.chat.completions.create(model="tiny", tools=[CHAT_TOOL], messages=[
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!", "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "ok"}])
    assert without.usage.prompt_tokens < chat.usage.prompt_tokens  # (so the count above does see the reasoning)


# ------------------------------------------------------------------------------------------------- errors
@pytest.mark.parametrize("fields, param, words", [
    ({"conversation": "conv_1"}, "conversation", "keeps no conversations"),
    ({"previous_response_id": 5}, "previous_response_id", "must be a string"),
    ({"tools": [{"type": "web_search"}]}, "tools", "only function tools"),
    ({"input": [{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}]}, "input", "input_file"),
    ({"input": [{"type": "item_reference", "id": "x"}]}, "input", "'item_reference' are not supported"),
    ({"input": []}, "input", "non-empty list"),
    ({"input": [{"role": "moderator", "content": "x"}]}, "input", "role must be"),
    ({"truncation": "auto"}, "truncation", "longer than the context"),
    ({"n": 2}, "n", "one answer per response"),
    ({"text": {"format": {"type": "yaml"}}}, "text", "json_schema"),
    ({"text": {"format": {"type": "json_schema", "name": "s"}}}, "text.format", "schema must be an object"),
    ({"text": {"format": {"type": "json_schema", "schema": {}}}}, "text.format", "name must be a string"),
    ({"text": {"format": {"type": "json_schema", "name": "s", "schema": {}, "strict": "yes"}}}, "text.format",
     "strict must be true or false"),
    ({"metadata": [1]}, "metadata", "at most 16"),
    ({"metadata": {str(i): "v" for i in range(17)}}, "metadata", "at most 16"),
    ({"metadata": {"k": 5}}, "metadata", "values of at most 512"),
    ({"metadata": {"k": "v" * 513}}, "metadata", "values of at most 512"),
    ({"user": 5}, "user", "must be a string"),
    ({"input": [{"role": "user", "content": "hi"}, {"type": "function_call_output", "call_id": "c9", "output": "x"}]},
     "input", "no function_call with call_id 'c9'"),
    ({"reasoning": "high"}, "reasoning", "must be an object"),
    ({"logit_bias": {"\u00b2": 1}}, "logit_bias", "token ids"),
    # the chat request's own checks, with the field spelled as in the Responses request
    ({"max_output_tokens": "9"}, "max_output_tokens", "max_output_tokens: Input should be a valid integer"),
    ({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "data:,"}]}]}, "input",
     "data URI holds no data"),
    ({"tools": [{"type": "function", "name": 5}]}, "tools[0].name", "tools[0].name: Input should be"),
    ({"text": {"format": {"type": "json_schema", "name": "s", "strict": True,
                          "schema": {"type": "object", "multipleOf": 2}}}}, "text.format", "multipleOf"),
])
def test_what_cannot_run_is_a_400_naming_the_field(instruct, fields, param, words):
    _, _, client = instruct
    body = {"model": "tiny", "input": "hi", **fields}
    r = httpx.post(str(client.base_url) + "responses", json=body, timeout=30)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["param"] == param and words in error["message"]


def test_previous_response_id_continues_a_stored_conversation(instruct):
    _, script, client = instruct
    script.say("Hello Ann.")
    first = client.responses.create(model="tiny", instructions="Be kind.", input="My name is Ann.")
    assert first.store is True and first.output_text == "Hello Ann."
    script.say("Ann.")
    second = client.responses.create(model="tiny", previous_response_id=first.id, input="What is my name?")
    assert second.previous_response_id == first.id and second.output_text == "Ann."
    # the same prompt as the whole conversation sent to the chat endpoint (the first instructions not carried over)
    chat = client.chat.completions.create(model="tiny", messages=[
        {"role": "user", "content": "My name is Ann."}, {"role": "assistant", "content": "Hello Ann."},
        {"role": "user", "content": "What is my name?"}])
    assert second.usage.input_tokens == chat.usage.prompt_tokens
    # developer messages of a stored conversation are kept: a new turn shows them with its own instructions
    script.say("Noted.")
    dev = client.responses.create(model="tiny", instructions="Be kind.", input=[
        {"role": "developer", "content": "Answer in French."}, {"role": "user", "content": "Hi"}])
    script.say("Oui.")
    again = client.responses.create(model="tiny", instructions="Be brief.", previous_response_id=dev.id,
                                    input="Again?")
    chat = client.chat.completions.create(model="tiny", messages=[
        {"role": "system", "content": "Be brief.\n\nAnswer in French."}, {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Noted."}, {"role": "user", "content": "Again?"}])
    assert again.usage.input_tokens == chat.usage.prompt_tokens
    # a chain: the third turn sees both earlier ones; a streamed response is stored too
    script.say("Yes.")
    types, third = _streamed(client, model="tiny", previous_response_id=second.id, input="Sure?")
    script.say("Bye.")
    fourth = client.responses.create(model="tiny", previous_response_id=third.id, input="Bye.")
    chat = client.chat.completions.create(model="tiny", messages=[
        {"role": "user", "content": "My name is Ann."}, {"role": "assistant", "content": "Hello Ann."},
        {"role": "user", "content": "What is my name?"}, {"role": "assistant", "content": "Ann."},
        {"role": "user", "content": "Sure?"}, {"role": "assistant", "content": "Yes."},
        {"role": "user", "content": "Bye."}])
    assert fourth.usage.input_tokens == chat.usage.prompt_tokens

    # tool calls carry over: a function_call_output continues the response that made the call
    script.say(CALL)
    called = client.responses.create(model="tiny", input="Weather in Paris?", tools=[TOOL])
    (call,) = called.output
    script.say("Sunny.")
    after = client.responses.create(model="tiny", tools=[TOOL], previous_response_id=called.id, input=[
        {"type": "function_call_output", "call_id": call.call_id, "output": "sunny"}])
    chat = _chat_after_call(client, "", call, "sunny")
    assert after.output_text == "Sunny." and after.usage.input_tokens == chat.usage.prompt_tokens

    # the input items of a stored response: its own input, listed newest first by default, a page at a time
    items = [{"role": "user", "content": "One."}, {"type": "function_call", "call_id": "c9", "name": "get_weather",
                                                  "arguments": "{}"},
             {"type": "function_call_output", "call_id": "c9", "output": "two"}]
    script.say("Three.")
    listed = client.responses.create(model="tiny", tools=[TOOL], input=items)
    newest_first = list(client.responses.input_items.list(listed.id))
    assert [i.type for i in newest_first] == ["function_call_output", "function_call", "message"]
    assert newest_first[2].content[0].type == "input_text" and newest_first[2].content[0].text == "One."
    assert newest_first[0].output == "two" and len({i.id for i in newest_first}) == 3
    paged = client.responses.input_items.list(listed.id, order="asc", limit=2)
    assert [i.type for i in paged.data] == ["message", "function_call"] and paged.has_more
    assert [i.type for i in paged.get_next_page().data] == ["function_call_output"]
    assert [i.id for i in client.responses.input_items.list(listed.id, order="asc")] == [
        i.id for i in reversed(newest_first)]
    with pytest.raises(openai.BadRequestError, match="limit"):
        client.responses.input_items.list(listed.id, limit=0)
    for limit in ("x", "\u00b2", "9" * 5000):  # ('²' passed str.isdigit and int() then failed: a 500)
        with pytest.raises(openai.BadRequestError, match="limit must be an integer"):
            client.responses.input_items.list(listed.id, extra_query={"limit": limit})

    # GET and DELETE; a response not stored (store: false) or deleted cannot be continued
    assert client.responses.retrieve(first.id).output_text == "Hello Ann."
    client.responses.delete(first.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(first.id)
    with pytest.raises(openai.NotFoundError, match="no stored response"):
        client.responses.create(model="tiny", previous_response_id=first.id, input="Again?")
    script.say("Hi.")
    unstored = client.responses.create(model="tiny", input="Hi", store=False)
    assert unstored.store is False
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(unstored.id)


def test_a_server_that_stores_nothing(tmp_path):
    llm, _ = _serve(write_tiny_model(tmp_path, sharpen=3.0))
    with ServerThread(create_app(llm, ServeSettings(["tiny"], responses_store=0))) as server:
        client = openai.OpenAI(api_key="x", base_url=server.url + "/v1", max_retries=0, timeout=60)
        r = client.responses.create(model="tiny", input="Hi", max_output_tokens=2)
        assert r.store is False
        with pytest.raises(openai.NotFoundError, match="stores no responses"):
            client.responses.create(model="tiny", input="Hi", previous_response_id=r.id)
    with ServerThread(create_app(llm, ServeSettings(["tiny"], responses_store_mb=1e-4))) as server:  # 104 bytes
        client = openai.OpenAI(api_key="x", base_url=server.url + "/v1", max_retries=0, timeout=60)
        r = client.responses.create(model="tiny", input="Hi", max_output_tokens=2)
        assert r.store is False  # too large for the store: the response says it was not stored
        with pytest.raises(openai.NotFoundError):
            client.responses.retrieve(r.id)


def test_the_store_is_bounded():
    store = ResponseStore(max_items=2, max_mb=1)
    for i in range(3):
        store.put({"id": f"r{i}", "output": []}, [{"role": "user", "content": "x"}])
    assert len(store) == 2 and store.conversation("r2") and store.get("r1")["id"] == "r1"
    with pytest.raises(APIError) as e:
        store.get("r0")  # the oldest went first
    assert e.value.status == 404
    assert not store.put({"id": "big", "output": []}, [{"role": "user", "content": "y" * (2 << 20)}])  # too large
    with pytest.raises(APIError):
        store.get("big")
    store.put({"id": "half", "output": []}, [{"role": "user", "content": "z" * (600 << 10)}])
    store.put({"id": "half2", "output": []}, [{"role": "user", "content": "z" * (600 << 10)}])
    assert len(store) == 1 and store.get("half2") and store.bytes < 1 << 20  # the byte bound evicts too
    store.delete("half2")
    assert len(store) == 0 and store.bytes == 0


def test_an_unknown_model_is_a_404(instruct):
    _, _, client = instruct
    with pytest.raises(openai.NotFoundError):
        client.responses.create(model="gpt-5", input="hi")


# ------------------------------------------------------------------------------------------------- pieces
def chat_body(body, **kw):
    return translate(body, **kw)[0]


def test_chat_body_translation():
    body = chat_body({
        "model": "m", "instructions": "Sys.", "max_output_tokens": 9, "temperature": 0.5, "top_k": 3,
        "tool_choice": {"type": "function", "name": "f"}, "tools": [{"type": "function", "name": "f"}],
        "text": {"format": {"type": "json_object"}}, "store": True, "reasoning": {"effort": "low"},
        "input": [
            {"role": "developer", "content": "Dev."},
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "a"},
                                                            {"type": "video_url", "video_url": {"url": "v.mp4"}}]},
            {"type": "reasoning", "id": "rs_1", "summary": [], "content": [{"type": "reasoning_text", "text": "r"}]},
            {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "b"}]},
            {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
            {"type": "function_call", "call_id": "c2", "name": "f", "arguments": "{\"x\": 1}"},
            {"type": "function_call_output", "call_id": "c1", "output": "one"},
            {"type": "function_call_output", "call_id": "c2", "output": [{"type": "input_text", "text": "two"}]},
        ]})
    assert body == {
        "model": "m", "temperature": 0.5, "top_k": 3, "max_completion_tokens": 9,
        "tools": [{"type": "function", "function": {"name": "f"}}],
        "tool_choice": {"type": "function", "function": {"name": "f"}},
        "response_format": {"type": "json_object"},
        "messages": [
            {"role": "system", "content": "Sys.\n\nDev."},  # one: the Instruct template shows only the first
            {"role": "user", "content": [{"type": "text", "text": "a"},
                                         {"type": "video_url", "video_url": {"url": "v.mp4"}}]},
            {"role": "assistant", "content": [{"type": "text", "text": "b"}], "reasoning_content": "r",
             "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}},
                            {"id": "c2", "type": "function", "function": {"name": "f", "arguments": "{\"x\": 1}"}}]},
            {"role": "tool", "tool_call_id": "c1", "content": "one"},
            {"role": "tool", "tool_call_id": "c2", "content": [{"type": "text", "text": "two"}]},
        ]}
    mixed = {"instructions": "A.", "input": [
        {"role": "system", "content": [{"type": "input_text", "text": "B."}]}, {"role": "user", "content": "q"},
        {"role": "developer", "content": "later"}]}
    # the Instruct template shows only a first system message: every one is joined into it
    assert chat_body(mixed)["messages"] == [
        {"role": "system", "content": [{"type": "text", "text": "A."}, {"type": "text", "text": "\n\n"},
                                       {"type": "text", "text": "B."}, {"type": "text", "text": "\n\n"},
                                       {"type": "text", "text": "later"}]},
        {"role": "user", "content": "q"}]
    # the Thinking template shows later ones where they are: only the opening ones are joined
    assert chat_body(mixed, every_system=False)["messages"] == [
        {"role": "system", "content": [{"type": "text", "text": "A."}, {"type": "text", "text": "\n\n"},
                                       {"type": "text", "text": "B."}]},
        {"role": "user", "content": "q"}, {"role": "system", "content": "later"}]
    # a reasoning item no answer followed (a turn cut off while reasoning) is an assistant turn of its own
    cut = chat_body({"input": [{"role": "user", "content": "a"}, {"type": "reasoning", "content": [
        {"type": "reasoning_text", "text": "hm"}]}, {"role": "user", "content": "b"}]})["messages"]
    assert cut == [{"role": "user", "content": "a"}, {"role": "assistant", "content": "", "reasoning_content": "hm"},
                   {"role": "user", "content": "b"}]
    with pytest.raises(APIError, match="followed by the assistant"):
        chat_body({"input": [{"role": "user", "content": "a"}, {"type": "reasoning", "content": []}]})


def _sdk_final(chunks: list[str]):
    """The events through the openai SDK's own stream accumulator (it raises on events out of order): the parsed
    events and the final response it builds."""
    from openai._models import construct_type_unchecked
    from openai.lib.streaming.responses._responses import ResponseStreamState
    from openai.types.responses import ResponseStreamEvent

    state = ResponseStreamState(input_tools=openai.omit, text_format=openai.omit)
    parsed = [json.loads(c.split("data: ", 1)[1]) for c in chunks]
    assert all(c.startswith(f"event: {p['type']}\n") for c, p in zip(chunks, parsed))
    assert [p["sequence_number"] for p in parsed] == list(range(len(parsed)))
    for p in parsed:
        state.handle_event(construct_type_unchecked(type_=ResponseStreamEvent, value=p))
    return parsed, state._completed_response


def test_event_stream_items_open_and_close_in_order():
    events = ResponseEvents(Echo({"model": "m"}, "m"))
    out = events.start()
    out += events.delta(ChoiceDelta(0, reasoning="think", logprobs=[{"token": "think"}]))
    out += events.delta(ChoiceDelta(0, logprobs=[{"token": "</think>"}]))  # logprobs only: no item opens for them
    out += events.delta(ChoiceDelta(0, text="Hello", logprobs=[{"token": "Hello"}]))
    out += events.delta(ChoiceDelta(0, text=" there", tool_calls=[
        {"index": 0, "id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]))
    out += events.delta(ChoiceDelta(0, text="after", finish_reason="tool_calls"))
    out += events.finish(Usage(5, 7, 0, 2))
    parsed, sdk = _sdk_final(out)
    added = [(p["output_index"], p["item"]["type"]) for p in parsed if p["type"] == "response.output_item.added"]
    done = [(p["output_index"], p["item"]["type"]) for p in parsed if p["type"] == "response.output_item.done"]
    assert added == done == [(0, "reasoning"), (1, "message"), (2, "function_call"), (3, "message")]
    final = parsed[-1]["response"]
    assert parsed[-1]["type"] == "response.completed" and final["status"] == "completed"
    assert [o["type"] for o in final["output"]] == ["reasoning", "message", "function_call", "message"]
    assert final["output"][1]["content"][0]["text"] == "Hello there"
    assert [lp["token"] for lp in final["output"][1]["content"][0]["logprobs"]] == ["think", "</think>", "Hello"]
    assert final["output"][3]["content"][0]["text"] == "after"
    assert final["usage"]["output_tokens_details"] == {"reasoning_tokens": 2} and final["usage"]["total_tokens"] == 12
    assert sdk.output_text == "Hello thereafter"
    assert [o.type for o in sdk.output] == [o["type"] for o in final["output"]]

    # cut off while reasoning: the reasoning item, then an empty message, as in the plain response
    cut = ResponseEvents(Echo({"model": "m"}, "m"))
    out = cut.start() + cut.delta(ChoiceDelta(0, reasoning="hmm", finish_reason="length")) + cut.finish(Usage(1, 1))
    parsed, _ = _sdk_final(out)
    final = parsed[-1]["response"]
    assert parsed[-1]["type"] == "response.incomplete"
    assert final["incomplete_details"] == {"reason": "max_output_tokens"}
    assert [o["type"] for o in final["output"]] == ["reasoning", "message"]
    # nothing at all: one empty message
    empty = ResponseEvents(Echo({"model": "m"}, "m"))
    parsed, sdk = _sdk_final(empty.start() + empty.delta(ChoiceDelta(0, finish_reason="stop"))
                             + empty.finish(Usage(1, 1)))
    assert [o["type"] for o in parsed[-1]["response"]["output"]] == ["message"] and sdk.output_text == ""

    failing = ResponseEvents(Echo({"model": "m"}, "m"))
    failing.start()
    failing.delta(ChoiceDelta(0, text="par"))
    last = [json.loads(e.split("data: ", 1)[1]) for e in failing.fail(APIError(504, "too slow", code="timeout"))]
    assert last[0]["type"] == "error" and last[0]["code"] == "timeout" and last[0]["message"] == "too slow"
    assert last[1]["type"] == "response.failed" and last[1]["response"]["error"]["code"] == "server_error"
    from openai.types.responses import Response

    sdk = Response.model_validate(last[1]["response"])  # (validated: the code is one of the SDK's literals)
    assert sdk.error.code == "server_error" and sdk.status == "failed"


def test_echoed_parallel_tool_calls_is_a_bool():
    from qwen3vl.serve import responses_api as RA

    for sent, echoed in ((None, True), (True, True), (False, False)):
        assert RA.Echo({"parallel_tool_calls": sent}, "tiny").fields["parallel_tool_calls"] is echoed
    assert RA.Echo({}, "tiny").fields["parallel_tool_calls"] is True
