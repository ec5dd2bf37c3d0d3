"""`qwen3vl serve` through the official `openai` client: a real uvicorn server on a loopback port, a tiny random
checkpoint, greedy decoding. What the server answers must equal what the Python API gives for the same request."""

from __future__ import annotations

import json
import re
import shutil

from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest

from qwen3vl.engine.beam import EngineExpander, beam_search
from qwen3vl.llm import LLM
from qwen3vl.model.testing import write_tiny_model
from qwen3vl.serve.app import ServeSettings, create_app
from qwen3vl.serve.metrics import parse_metrics
from qwen3vl.serve.testing import ServerThread, data_uri, image_message, mp4_bytes, png_data_uri


MAX_TOKENS = 12


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_tiny_model(tmp_path_factory.mktemp("tiny"), sharpen=3.0)


@pytest.fixture(scope="module")
def media_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("media")
    (d / "clip.mp4").write_bytes(mp4_bytes())
    return d


@pytest.fixture(scope="module")
def server(folder, media_dir):
    llm = LLM(folder, kv_cache_gb=0.05)
    settings = ServeSettings(["tiny"], allowed_local_media_path=str(media_dir),
                             sampling_defaults={"max_tokens": MAX_TOKENS})
    with ServerThread(create_app(llm, settings)) as s:
        yield s


@pytest.fixture(scope="module")
def reference(folder):
    """A second LLM on the same checkpoint: the Python API's answers to compare against."""
    return LLM(folder, kv_cache_gb=0.05)


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(api_key="unused", base_url=server.url + "/v1", max_retries=0, timeout=60)


def _stream_text(stream) -> tuple[dict[int, str], list]:
    texts: dict[int, str] = {}
    chunks = list(stream)
    for ch in chunks:
        for c in ch.choices:
            texts[c.index] = texts.get(c.index, "") + (c.delta.content or "")
    return texts, chunks


def test_chat_with_an_image_equals_the_python_api(client, reference):
    messages = image_message("What is in this picture?", png_data_uri(1))
    r = client.chat.completions.create(model="tiny", messages=messages, temperature=0, max_tokens=MAX_TOKENS)
    want = reference.chat(messages, temperature=0, max_tokens=MAX_TOKENS)
    assert r.id.startswith("chatcmpl-") and r.object == "chat.completion" and r.model == "tiny"
    (c,) = r.choices
    assert c.message.role == "assistant" and c.index == 0
    assert c.message.content == want.text
    assert c.finish_reason == want.finish_reason
    assert r.usage.prompt_tokens == want.usage.prompt_tokens > 64  # the image's tokens are in the prompt
    assert r.usage.completion_tokens == want.usage.completion_tokens
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_stream_joins_to_the_non_streamed_text(client):
    messages = image_message("Describe it.", png_data_uri(2))
    full = client.chat.completions.create(model="tiny", messages=messages, temperature=0)
    texts, chunks = _stream_text(client.chat.completions.create(
        model="tiny", messages=messages, temperature=0, stream=True, stream_options={"include_usage": True}))
    assert texts[0] == full.choices[0].message.content
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.finish_reason for ch in chunks for c in ch.choices if c.finish_reason] == [full.choices[0].finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == full.usage.completion_tokens
    assert all(ch.usage is None for ch in chunks[:-1])
    # without include_usage no usage chunk
    _, chunks = _stream_text(client.chat.completions.create(model="tiny", messages=messages, temperature=0,
                                                            stream=True))
    assert all(ch.choices for ch in chunks)


def test_n2_streamed_and_not(client):
    messages = [{"role": "user", "content": "Say something."}]
    kw = dict(model="tiny", messages=messages, n=2, temperature=1.0, seed=7, max_tokens=MAX_TOKENS)
    r = client.chat.completions.create(**kw)
    assert [c.index for c in r.choices] == [0, 1]
    assert r.usage.completion_tokens == MAX_TOKENS * 2 or r.usage.completion_tokens <= MAX_TOKENS * 2
    texts, _ = _stream_text(client.chat.completions.create(**kw, stream=True))
    assert texts == {0: r.choices[0].message.content, 1: r.choices[1].message.content}
    again = client.chat.completions.create(**kw)  # a seed makes sampling reproducible
    assert [c.message.content for c in again.choices] == [c.message.content for c in r.choices]


def test_logprobs_shape(client, reference):
    r = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "Hi"}], temperature=0,
                                       logprobs=True, top_logprobs=3, max_tokens=6)
    entries = r.choices[0].logprobs.content
    want = reference.chat([{"role": "user", "content": "Hi"}], temperature=0, max_tokens=6)
    shown = [t for t in want.token_ids if not reference.tokenizer.is_special(t)]  # as in the text
    assert [e.token for e in entries] == [reference.tokenizer.token_bytes(t).decode(errors="replace") for t in shown]
    for e in entries:
        assert isinstance(e.token, str) and isinstance(e.logprob, float) and e.logprob <= 0
        assert len(e.top_logprobs) == 3 and e.top_logprobs[0].logprob == pytest.approx(e.logprob)  # greedy
    joined = b"".join(bytes(e.bytes) for e in entries).decode("utf-8", errors="replace")
    assert joined == r.choices[0].message.content
    # streamed: the same entries, spread over the chunks
    chunks = list(client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "Hi"}],
                                                 temperature=0, logprobs=True, top_logprobs=3, max_tokens=6,
                                                 stream=True))
    streamed = [e for ch in chunks for c in ch.choices if c.logprobs for e in c.logprobs.content]
    assert [e.token for e in streamed] == [e.token for e in entries]


def test_stop_strings_and_token_limits(client):
    messages = [{"role": "user", "content": "Count."}]
    base = client.chat.completions.create(model="tiny", messages=messages, temperature=0, max_tokens=MAX_TOKENS)
    text = base.choices[0].message.content
    assert len(text) >= 5
    stop = text[3:5]
    r = client.chat.completions.create(model="tiny", messages=messages, temperature=0, stop=[stop])
    assert r.choices[0].message.content == text[:text.index(stop)] and r.choices[0].finish_reason == "stop"
    texts, _ = _stream_text(client.chat.completions.create(model="tiny", messages=messages, temperature=0,
                                                           stop=stop, stream=True))
    assert texts[0] == r.choices[0].message.content
    r = client.chat.completions.create(model="tiny", messages=messages, temperature=0, max_completion_tokens=3)
    assert r.usage.completion_tokens == 3 and r.choices[0].finish_reason == "length"


def test_sampling_fields_through_extra_body(client):
    r = client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "Hi"}], temperature=0.8, top_p=0.9, seed=3,
        presence_penalty=0.5, frequency_penalty=0.5, max_tokens=4,
        extra_body={"top_k": 5, "min_p": 0.05, "repetition_penalty": 1.2, "min_tokens": 2})
    assert r.usage.completion_tokens >= 2


def test_several_media_video_and_media_options(client, media_dir):
    video = data_uri(mp4_bytes(), "video/mp4")
    messages = [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": png_data_uri(3)}},
        {"type": "text", "text": "and"},
        {"type": "image_url", "image_url": {"url": png_data_uri(4, 96, 64)}},
        {"type": "video_url", "video_url": {"url": video}},
        {"type": "text", "text": "What changed?"}]}]
    r = client.chat.completions.create(model="tiny", messages=messages, temperature=0, max_tokens=4)
    one = client.chat.completions.create(model="tiny", messages=image_message("x", png_data_uri(3)), max_tokens=1)
    assert r.usage.prompt_tokens > 2 * one.usage.prompt_tokens
    # the media budget through extra_body: a smaller max_pixels means fewer image tokens
    small = client.chat.completions.create(model="tiny", messages=image_message("x", png_data_uri(3)), max_tokens=1,
                                           extra_body={"min_pixels": 32 * 32, "max_pixels": 64 * 64})
    assert small.usage.prompt_tokens < one.usage.prompt_tokens
    # a local file inside --allowed-local-media-path, as a path and as file://
    for src in (str(media_dir / "clip.mp4"), (media_dir / "clip.mp4").as_uri()):
        local = [{"role": "user", "content": [{"type": "video_url", "video_url": {"url": src}},
                                              {"type": "text", "text": "?"}]}]
        assert client.chat.completions.create(model="tiny", messages=local, max_tokens=1).usage.prompt_tokens > 20


def test_local_files_outside_the_allowed_folder_are_refused(client, media_dir, tmp_path):
    outside = tmp_path / "secret.mp4"
    shutil.copy(media_dir / "clip.mp4", outside)
    for src in (str(outside), outside.as_uri(), str(media_dir / ".." / outside.name), "ftp://example.com/a.png"):
        with pytest.raises(openai.BadRequestError) as e:
            client.chat.completions.create(model="tiny", max_tokens=1, messages=[
                {"role": "user", "content": [{"type": "image_url", "image_url": {"url": src}}]}])
        assert e.value.status_code == 400 and "message 0, content part 0 (image)" in e.value.message
    link = media_dir / "link.mp4"
    link.symlink_to(outside)  # a symlink inside the folder that points out of it
    with pytest.raises(openai.BadRequestError, match="outside the allowed media folder"):
        client.chat.completions.create(model="tiny", max_tokens=1, messages=[
            {"role": "user", "content": [{"type": "video_url", "video_url": {"url": str(link)}}]}])


def test_completions_echo_scores_the_prompt(client, reference):
    """lm-evaluation-harness's loglikelihood request (token ids, echo, logprobs=1, max_tokens=1): one logprob entry
    per prompt token (the first None) and one for the new token, each prompt entry what the engine's
    `prompt_logprobs` gives (checked against transformers in test_engine_prompt_logprobs.py)."""
    from qwen3vl.engine.sampling import SamplingParams

    ids = reference.tokenizer.encode("<|im_start|>user\nOnce upon a time")  # a special token among them
    r = client.completions.create(model="tiny", prompt=ids, echo=True, logprobs=1, max_tokens=1, temperature=0)
    c = r.choices[0]
    assert c.text.startswith(reference.tokenizer.decode(ids)) and c.text.startswith("<|im_start|>user")
    lp = c.logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(ids) + 1
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
    (seq,) = reference.engine.add_request("echo-check", ids, SamplingParams(max_tokens=1, temperature=0,
                                                                             prompt_logprobs=1))
    reference.engine.run_until_done()
    assert lp.token_logprobs[1:len(ids)] == pytest.approx([e[0] for e in seq.prompt_logprobs], abs=1e-5)
    assert all(len(top) == 1 for top in lp.top_logprobs[1:])
    assert lp.text_offset[:3] == [0, len(lp.tokens[0]), len(lp.tokens[0]) + len(lp.tokens[1])]
    # a generated special token (forced here) keeps its entry: lm-eval drops the last entry as the new token
    eos = reference.tokenizer.encode("<|im_end|>")[0]
    forced = client.completions.create(model="tiny", prompt=ids, echo=True, logprobs=1, max_tokens=1, temperature=0,
                                       logit_bias={str(eos): 100}).choices[0]
    assert len(forced.logprobs.tokens) == len(ids) + 1 and forced.logprobs.tokens[-1] == "<|im_end|>"
    assert forced.logprobs.token_logprobs[:-1] == lp.token_logprobs[:-1]
    # offsets count characters of the decoded text, also where a character spans several byte tokens
    text = "héllo wörld ✓ 你好"
    ids2 = reference.tokenizer.encode(text)
    r2 = client.completions.create(model="tiny", prompt=ids2, echo=True, logprobs=0, max_tokens=2, temperature=0)
    offsets = r2.choices[0].logprobs.text_offset
    # (a token inside a character starts where that character does: decoded prefixes without their partial tail)
    starts = [len(reference.tokenizer.decode(ids2[:k]).rstrip("\ufffd")) for k in range(len(ids2))]
    assert offsets[:len(ids2)] == starts
    assert offsets == sorted(offsets) and offsets[len(ids2)] == len(text) and r2.choices[0].text.startswith(text)
    plain = client.completions.create(model="tiny", prompt="Once upon a time", echo=True, max_tokens=4, temperature=0)
    assert plain.choices[0].text.startswith("Once upon a time") and plain.choices[0].logprobs is None
    # streamed: the first chunk opens with the prompt (and its logprobs); the chunks join to the whole answer
    for kwargs in (dict(prompt=ids2, logprobs=1, max_tokens=3), dict(prompt="Once upon a time", max_tokens=4),
                   dict(prompt=ids, logprobs=0, max_tokens=1)):
        whole = client.completions.create(model="tiny", echo=True, temperature=0, **kwargs).choices[0]
        chunks = [c.choices[0] for c in client.completions.create(model="tiny", echo=True, temperature=0, stream=True,
                                                                  **kwargs) if c.choices]
        head = kwargs["prompt"] if isinstance(kwargs["prompt"], str) else reference.tokenizer.decode(kwargs["prompt"])
        assert chunks[0].text.startswith(head) and whole.text.startswith(head)
        assert "".join(c.text for c in chunks) == whole.text
        assert chunks[-1].finish_reason == whole.finish_reason
        if whole.logprobs is None:
            assert all(c.logprobs is None for c in chunks)
            continue
        for key in ("tokens", "token_logprobs", "top_logprobs", "text_offset"):
            joined = [x for c in chunks if c.logprobs for x in getattr(c.logprobs, key)]
            assert joined == getattr(whole.logprobs, key), key


def test_completions_endpoint(client, reference):
    r = client.completions.create(model="tiny", prompt="Once upon a time", temperature=0, max_tokens=8)
    ids = reference.tokenizer.encode("Once upon a time")
    assert r.object == "text_completion" and r.usage.prompt_tokens == len(ids)
    by_ids = client.completions.create(model="tiny", prompt=ids, temperature=0, max_tokens=8)
    assert by_ids.choices[0].text == r.choices[0].text
    streamed = "".join(c.text for ch in client.completions.create(model="tiny", prompt="Once upon a time",
                                                                  temperature=0, max_tokens=8, stream=True)
                       for c in ch.choices)
    assert streamed == r.choices[0].text
    many = client.completions.create(model="tiny", prompt=["a", "b c"], n=2, temperature=0, max_tokens=3,
                                     logprobs=2)
    assert [c.index for c in many.choices] == [0, 1, 2, 3]
    assert many.choices[0].text == many.choices[1].text  # greedy: both samples of a prompt agree
    lp = many.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset) == 3


def test_models_health_and_metrics(client, server):
    assert [m.id for m in client.models.list()] == ["tiny"]
    assert httpx.get(server.url + "/health").json() == {"status": "ok"}
    import qwen3vl

    assert httpx.get(server.url + "/version").json() == {"version": qwen3vl.__version__} and qwen3vl.__version__
    assert httpx.get(server.url + "/v1/models/tiny").json()["id"] == "tiny"
    text = httpx.get(server.url + "/metrics").text
    m = parse_metrics(text)
    for name in ("qwen3vl_num_requests_waiting", "qwen3vl_num_requests_running", "qwen3vl_kv_cache_blocks_used",
                 "qwen3vl_kv_cache_blocks_total", "qwen3vl_prefix_cache_hit_rate", "qwen3vl_vision_cache_hits_total",
                 "qwen3vl_prompt_tokens_total", "qwen3vl_generation_tokens_total",
                 "qwen3vl_time_to_first_token_seconds_count", "qwen3vl_inter_token_latency_seconds_count",
                 "qwen3vl_e2e_request_latency_seconds_count"):
        assert name in m, name
    assert m['qwen3vl_requests_total{route="/v1/chat/completions",status="200"}'] > 0
    assert m["qwen3vl_kv_cache_blocks_used"] == 0 and m["qwen3vl_num_requests_running"] == 0
    assert m["qwen3vl_time_to_first_token_seconds_count"] > 0 and m["qwen3vl_generation_tokens_total"] > 0
    assert '# TYPE qwen3vl_time_to_first_token_seconds histogram' in text


def test_tool_definitions_reach_the_prompt(client, reference):
    tools = [{"type": "function", "function": {"name": "get_weather", "description": "Weather for a city",
                                               "parameters": {"type": "object",
                                                              "properties": {"city": {"type": "string"}}}}}]
    messages = [{"role": "user", "content": "Weather in Paris?"}]
    auto = client.chat.completions.create(model="tiny", messages=messages, tools=tools, max_tokens=1)
    none = client.chat.completions.create(model="tiny", messages=messages, tools=tools, tool_choice="none",
                                          max_tokens=1)
    assert auto.usage.prompt_tokens == len(reference.prepare(messages, tools).input_ids)
    assert none.usage.prompt_tokens == len(reference.prepare(messages).input_ids)


def test_json_response_format_adds_an_instruction_and_constrains_decoding(client):
    from qwen3vl.engine.constrain import JsonMachine

    messages = [{"role": "user", "content": "Give me a JSON object."}]
    plain = client.chat.completions.create(model="tiny", messages=messages, max_tokens=8, temperature=0)
    r = client.chat.completions.create(model="tiny", messages=messages, max_tokens=8, temperature=0,
                                       response_format={"type": "json_object"})
    assert r.usage.prompt_tokens > plain.usage.prompt_tokens
    # the random model writes no JSON by itself; constrained, it writes a JSON object (or the start of one)
    m = JsonMachine()
    assert m.run(m.start(), plain.choices[0].message.content.encode()) is None
    content = r.choices[0].message.content
    assert content.startswith("{") and m.run(m.start(), content.encode()) is not None
    streamed = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(
        model="tiny", messages=messages, max_tokens=8, temperature=0, response_format={"type": "json_object"},
        stream=True) if c.choices)
    assert streamed == content


def test_json_schema_response_format_is_enforced_and_parse_gives_the_model(client):
    """The official client's `parse(response_format=<pydantic model>)` (a strict json_schema): the random model's
    answer is forced into the schema, so the client validates it into the model object."""
    from typing import Annotated, Literal

    from pydantic import BaseModel, Field

    class Box(BaseModel):
        label: Literal["cat", "dog"]
        bbox_2d: Annotated[list[Annotated[int, Field(ge=0, le=1000)]], Field(min_length=4, max_length=4)]
        visible: bool

    messages = [{"role": "user", "content": "Where is the pet?"}]
    for seed in (0, 1):
        r = client.chat.completions.parse(model="tiny", messages=messages, response_format=Box, max_tokens=600,
                                          temperature=1.0, seed=seed)
        box = r.choices[0].message.parsed
        assert isinstance(box, Box) and r.choices[0].finish_reason == "stop", r.choices[0].message.content
        assert Box.model_validate_json(r.choices[0].message.content) == box
    # json_object mode alone does not give the schema's document
    plain = client.chat.completions.create(model="tiny", messages=messages, max_tokens=60, temperature=0,
                                           response_format={"type": "json_object"})
    with pytest.raises(ValueError):
        Box.model_validate_json(plain.choices[0].message.content)
    # a pattern is enforced
    schema = {"type": "object", "properties": {"id": {"type": "string", "pattern": "^[a-z]{3}$"}}, "required": ["id"],
              "additionalProperties": False}
    r = client.chat.completions.create(model="tiny", messages=messages, max_tokens=200, temperature=0,
                                       response_format={"type": "json_schema",
                                                        "json_schema": {"name": "s", "schema": schema, "strict": True}})
    assert re.fullmatch("[a-z]{3}", json.loads(r.choices[0].message.content)["id"]), r.choices[0].message.content
    # a schema that cannot be enforced: a 400 naming the keyword when strict, JSON syntax only otherwise
    schema = {"type": "object", "properties": {"id": {"type": "integer", "multipleOf": 3}}}
    with pytest.raises(openai.BadRequestError, match="'multipleOf' is not supported"):
        client.chat.completions.create(model="tiny", messages=messages, max_tokens=4, response_format={
            "type": "json_schema", "json_schema": {"name": "s", "schema": schema, "strict": True}})
    loose = client.chat.completions.create(model="tiny", messages=messages, max_tokens=8, temperature=0,
                                           response_format={"type": "json_schema",
                                                            "json_schema": {"name": "s", "schema": schema}})
    assert loose.choices[0].message.content.startswith("{")


def test_cli_flags_become_settings():
    import argparse

    from qwen3vl.serve.cli import _is_loopback, add_serve_parser, settings_from_args

    parser = argparse.ArgumentParser()
    add_serve_parser(parser.add_subparsers())
    args = parser.parse_args(["serve", "--model", "/m", "--api-key", "k", "--max-queue", "3", "--request-timeout",
                              "9", "--allowed-local-media-path", "/data", "--allow-remote-media", "--max-tokens",
                              "7", "--temperature", "0.5", "--responses-store", "0", "--responses-store-mb", "8"])
    s = settings_from_args(args)
    assert (s.responses_store, s.responses_store_mb) == (0, 8.0)
    assert (s.served_model_names, s.api_key, s.max_queue, s.request_timeout) == (["/m"], "k", 3, 9.0)
    assert s.allowed_local_media_path == "/data" and s.allow_remote_media
    assert s.sampling_defaults["max_tokens"] == 7 and s.sampling_defaults["temperature"] == 0.5
    assert args.host == "127.0.0.1" and args.port == 8000
    assert _is_loopback("127.0.0.1") and _is_loopback("::1") and not _is_loopback("0.0.0.0")


def test_raw_http_shape(server):
    body = {"model": "tiny", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3, "stream": True}
    with httpx.stream("POST", server.url + "/v1/chat/completions", json=body) as resp:
        assert resp.headers["content-type"].startswith("text/event-stream")
        lines = [ln for ln in resp.iter_lines() if ln]
    assert all(ln.startswith("data: ") for ln in lines) and lines[-1] == "data: [DONE]"
    assert json.loads(lines[0][6:])["object"] == "chat.completion.chunk"


def test_tokenize_and_detokenize(server, client, reference):
    url = server.url
    text = "Once upon a time"
    r = httpx.post(url + "/tokenize", json={"prompt": text, "return_token_strs": True}).json()
    assert r["tokens"] == reference.tokenizer.encode(text) and r["count"] == len(r["tokens"])
    assert "".join(r["token_strs"]) == text and r["max_model_len"] == reference.engine.max_model_len
    assert httpx.post(url + "/detokenize", json={"tokens": r["tokens"]}).json() == {"prompt": text}
    # a chat counts as a chat completion runs it: the usage of the same request agrees
    messages = image_message("What is in this picture?", png_data_uri(2))
    tools = [{"type": "function", "function": {"name": "look", "parameters": {"type": "object"}}}]
    for extra in ({}, {"tools": tools}, {"tools": tools, "tool_choice": "required"},
                  {"response_format": {"type": "json_object"}}, {"min_pixels": 4 * 65536, "max_pixels": 4 * 65536}):
        counted = httpx.post(url + "/tokenize", json={"messages": messages, **extra}).json()
        used = client.chat.completions.create(model="tiny", messages=messages, temperature=0, max_tokens=2,
                                              extra_body={k: v for k, v in extra.items()
                                                          if k not in ("tools", "tool_choice", "response_format")},
                                              **{k: v for k, v in extra.items()
                                                 if k in ("tools", "tool_choice", "response_format")})
        assert counted["count"] == used.usage.prompt_tokens, extra
    # OpenAI's developer role is the system role: the same prompt, and a system turn in it
    user = {"role": "user", "content": "Hi"}
    as_developer, as_system, bare = (httpx.post(url + "/tokenize", json={"messages": m}).json()["tokens"] for m in (
        [{"role": "developer", "content": "Be brief."}, user], [{"role": "system", "content": "Be brief."}, user],
        [user]))
    assert as_developer == as_system != bare
    assert reference.tokenizer.decode(as_developer).startswith("<|im_start|>system\nBe brief.<|im_end|>")
    used = client.chat.completions.create(model="tiny", messages=[{"role": "developer", "content": "Be brief."}, user],
                                          max_tokens=1)
    assert used.usage.prompt_tokens == len(as_system)
    image_pad = reference.tokenizer.special.image
    plain = httpx.post(url + "/tokenize", json={"messages": messages}).json()
    large = httpx.post(url + "/tokenize", json={"messages": messages, "min_pixels": 4 * 65536,
                                                "max_pixels": 4 * 65536}).json()
    assert large["tokens"].count(image_pad) > plain["tokens"].count(image_pad) > 0
    # errors name what is wrong
    for route, body, message in (
            ("/tokenize", {"messages": messages, "add_generation_prompt": True, "continue_final_message": True},
             "add_generation_prompt"),
            ("/tokenize", {"messages": image_message("Hi", "data:image/png;base64,AAAA")}, "image"),
            ("/tokenize", {"prompt": 5}, "prompt"),
            ("/detokenize", {"tokens": [1, 10**9]}, "is not a token id"),
            ("/detokenize", {"tokens": [reference.tokenizer.vocab_size]}, "is not a token id of this tokenizer"),
            ("/detokenize", {"tokens": [-1]}, "tokens")):
        resp = httpx.post(url + route, json=body)
        assert resp.status_code == 400 and message in resp.json()["error"]["message"], (body, resp.text)
    resp = httpx.post(url + "/tokenize", json={"messages": messages, "model": "nope"})
    assert resp.status_code == 404 and "does not exist" in resp.json()["error"]["message"]


def test_logit_bias(client, reference):
    """OpenAI's logit_bias: +100 makes a token (almost) certain, -100 bans one; both endpoints."""
    hi = [{"role": "user", "content": "Hi"}]
    token = reference.tokenizer.encode(" sea")[0]
    r = client.chat.completions.create(model="tiny", messages=hi, temperature=0, max_tokens=4,
                                       logit_bias={str(token): 100}, extra_body={"ignore_eos": True})
    want = reference.chat(hi, temperature=0, max_tokens=4, ignore_eos=True, logit_bias={token: 100})
    assert want.token_ids == [token] * 4 and r.choices[0].message.content == want.text
    first = reference.chat(hi, temperature=0, max_tokens=3).token_ids[0]
    banned = reference.chat(hi, temperature=0, max_tokens=3, logit_bias={first: -100})
    assert banned.token_ids[0] != first
    r = client.chat.completions.create(model="tiny", messages=hi, temperature=0, max_tokens=3,
                                       logit_bias={str(first): -100})
    assert r.choices[0].message.content == banned.text
    c = client.completions.create(model="tiny", prompt="Once upon a time", temperature=0, max_tokens=3,
                                  logit_bias={str(token): 100})
    assert c.choices[0].text == reference.tokenizer.decode([token] * 3)


def test_beam_search(server, client, reference):
    """vLLM's `use_beam_search` (extra_body): `n` beams, all returned best first, as `LLM.beam_search` finds them
    (itself checked against transformers' num_beams in test_beam_search.py); a second request runs beside it."""
    messages = image_message("What is in this picture?", png_data_uri(2))
    want = reference.beam_search(messages, beam_width=3, max_tokens=6, length_penalty=0.5)
    plain = {"model": "tiny", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 6, "temperature": 0}
    with ThreadPoolExecutor(1) as pool:
        other = pool.submit(lambda: httpx.post(server.url + "/v1/chat/completions", json=plain, timeout=60).json())
        got = client.chat.completions.create(model="tiny", messages=messages, n=3, max_tokens=6, temperature=0.7,
                                             extra_body={"use_beam_search": True, "length_penalty": 0.5})
    assert [c.message.content for c in got.choices] == [c.text for c in want.choices]
    assert [c.index for c in got.choices] == [0, 1, 2]
    assert [c.finish_reason for c in got.choices] == [c.finish_reason for c in want.choices]
    assert got.usage.completion_tokens == want.usage.completion_tokens
    assert got.usage.prompt_tokens == want.usage.prompt_tokens
    assert other.result()["choices"][0]["message"]["content"] == reference.chat(
        [{"role": "user", "content": "Hi"}], max_tokens=6, temperature=0).text
    # completions: the same search over a text prompt
    prompt = "Once upon a time"
    ids = reference.tokenizer.encode(prompt)

    found = beam_search(EngineExpander(reference.engine, ids), 2, 5, reference.eos_token_ids, early_stopping=True)
    text = client.completions.create(model="tiny", prompt=prompt, n=2, max_tokens=5,
                                     extra_body={"use_beam_search": True, "early_stopping": True})
    assert [c.text for c in text.choices] == [reference.tokenizer.decode(h.tokens, skip_special_tokens=True)
                                              for h in found]
    assert text.usage.prompt_tokens == len(ids)
    # what a beam search cannot honour is a 400 naming the field
    for body, param in (({"stream": True}, "stream"), ({"top_p": 0.5}, "top_p"), ({"logprobs": True}, "logprobs"),
                        ({"response_format": {"type": "json_object"}}, "response_format"), ({"n": 40}, "n"),
                        ({"stop": ["x"]}, "stop")):
        resp = httpx.post(server.url + "/v1/chat/completions",
                          json={"model": "tiny", "messages": messages, "use_beam_search": True, **body})
        assert resp.status_code == 400, body
        assert resp.json()["error"]["param"] == param, resp.json()
    resp = httpx.post(server.url + "/v1/completions", json={"model": "tiny", "prompt": ["a", "b"],
                                                            "use_beam_search": True})
    assert resp.status_code == 400 and resp.json()["error"]["param"] == "prompt"
    resp = httpx.post(server.url + "/v1/completions", json={"model": "tiny", "prompt": "a", "logprobs": 0,
                                                            "use_beam_search": True})  # (0 asks for logprobs too)
    assert resp.status_code == 400 and resp.json()["error"]["param"] == "logprobs"


def test_continue_final_message(server, client, reference):
    """vLLM's `continue_final_message` (extra_body): the answer continues a prefilled assistant message, as the
    Python API continues it; /tokenize counts that prompt; add_generation_prompt: false alone leaves the turn out."""
    messages = image_message("Where is it?", png_data_uri(2)) + [{"role": "assistant", "content": "It is at"}]
    want = reference.chat(messages, max_tokens=5, temperature=0, continue_final_message=True)
    got = client.chat.completions.create(model="tiny", messages=messages, max_tokens=5, temperature=0,
                                         extra_body={"continue_final_message": True, "add_generation_prompt": False})
    assert got.choices[0].message.content == want.text and got.usage.prompt_tokens == len(want.prompt_token_ids)
    counted = httpx.post(server.url + "/tokenize", json={"messages": messages, "continue_final_message": True}).json()
    assert counted["tokens"] == want.prompt_token_ids
    assert reference.tokenizer.decode(counted["tokens"]).endswith("<|im_start|>assistant\nIt is at")
    bare = httpx.post(server.url + "/tokenize", json={"messages": messages, "add_generation_prompt": False}).json()
    assert reference.tokenizer.decode(bare["tokens"]).endswith("It is at<|im_end|>\n")
    for extra, param in (({"continue_final_message": True, "add_generation_prompt": True}, "add_generation_prompt"),
                         ({"continue_final_message": True, "tools": [{"type": "function", "function": {"name": "f"}}],
                           "tool_choice": "required"}, "tool_choice"),
                         ({"continue_final_message": True, "response_format": {"type": "json_object"}},
                          "response_format"),
                         ({"continue_final_message": True, "guided_regex": "[0-9]+"}, "guided_regex")):
        resp = httpx.post(server.url + "/v1/chat/completions", json={"model": "tiny", "messages": messages, **extra})
        assert resp.status_code == 400 and resp.json()["error"]["param"] == param, resp.text
