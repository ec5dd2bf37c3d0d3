"""Every way a request can go wrong gets OpenAI's error shape and the right status, never a 500 for bad input;
a real bug is a logged 500 and the server keeps serving. Also: API keys, the queue limit (429), the request
timeout (504), shutting down (503) and remote media (allowed, too large, too slow, unreachable)."""

from __future__ import annotations

import base64
import http.server
import re
import struct
import threading
import time
import zlib

import httpx
import openai
import pytest

from qwen3vl.llm import LLM
from qwen3vl.model.testing import write_tiny_model
from qwen3vl.serve import app as app_module
from qwen3vl.serve.app import ServeSettings, create_app
from qwen3vl.serve.metrics import parse_metrics
from qwen3vl.serve.outputs import ChatChoice
from qwen3vl.serve.testing import ServerThread, free_port, image_message, png_data_uri


KEY = "test-key-123"
USER = [{"role": "user", "content": "Hi"}]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_tiny_model(tmp_path_factory.mktemp("tiny"), sharpen=3.0)


@pytest.fixture(scope="module")
def server(folder):
    llm = LLM(folder, kv_cache_gb=0.05)
    with ServerThread(create_app(llm, ServeSettings(["tiny"], sampling_defaults={"max_tokens": 4}))) as s:
        yield s


@pytest.fixture(scope="module")
def strict(folder):
    """API key, remote media with small limits, 2 running + 1 queued at most, a 3 s timeout, 1 MiB bodies."""
    llm = LLM(folder, kv_cache_gb=0.05, max_num_seqs=2)
    settings = ServeSettings(["tiny"], api_key=KEY, max_queue=1, request_timeout=3.0, allow_remote_media=True,
                             remote_media_timeout=1.0, max_remote_media_mb=0.05, max_request_mb=1.0,
                             sampling_defaults={"max_tokens": 4})
    with ServerThread(create_app(llm, settings)) as s:
        yield s


@pytest.fixture(scope="module")
def media_host():
    """A loopback HTTP server: /ok.png, /big.png (over the 50 KiB limit), /slow.png (answers after 3 s)."""
    png = base64.b64decode(png_data_uri(5).split(",", 1)[1])

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = {"/ok.png": png, "/big.png": png + b"\0" * 200_000, "/slow.png": png}.get(self.path)
            if body is None:
                self.send_error(404)
                return
            if self.path == "/slow.png":
                time.sleep(3)
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def post(server, body=None, content=None, path="/v1/chat/completions", key=None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.post(server.url + path, json=body, content=content, headers=headers, timeout=60)


def error_of(resp: httpx.Response, status: int) -> dict:
    assert resp.status_code == status, resp.text
    err = resp.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    return err


def chat(**kw) -> dict:
    return {"model": "tiny", "messages": USER, **kw}


# ------------------------------------------------------------------------------------------------- bad bodies
def test_malformed_json(server):
    for content in (b'{"model": "tiny", "messages": [', b"", b"\xff\xfe", b'{"messages": [], "temperature": NaN}'):
        err = error_of(post(server, content=content), 400)
        assert err["type"] == "invalid_request_error"
    err = error_of(post(server, content=b"[1, 2]"), 400)
    assert err["message"].startswith("the request body must be a JSON object")
    for number in (b"1e400", b"-1e400", b"1" * 5000):  # overflows (once a 500 when a response echoed them)
        err = error_of(post(server, content=b'{"model": "tiny", "messages": [], "user": ' + number + b"}"), 400)
        assert err["code"] == "invalid_json", number[:10]
    assert error_of(post(server, content=b'{"model": "tiny", "metadata": {"a": 1e400}, "input": "hi"}',
                         path="/v1/responses"), 400)["code"] == "invalid_json"


@pytest.mark.parametrize("field,value", [
    ("temperature", "hot"), ("max_tokens", 1.5), ("stream", "yes"), ("messages", "hi"), ("n", True),
    ("stop", [1]), ("seed", 2**80), ("tools", [{"type": "function"}]), ("tool_choice", "sometimes"),
    ("logprobs", 1), ("top_logprobs", 30), ("n", 1000), ("response_format", {"type": "xml"}),
    ("stream_options", {"include_usage": "yes"}), ("top_k", 2.5), ("max_pixels", 0),
])
def test_wrong_field_types_name_the_field(server, field, value):
    err = error_of(post(server, chat(**{field: value})), 400)
    assert err["param"].split(".")[0].split("[")[0] == field and field in err["message"]


@pytest.mark.parametrize("messages,where", [
    ([{"role": "wizard", "content": "x"}], "message 0"),
    ([{"role": "user"}], "message 0"),
    ([{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}], "message 0, content part 0"),
    ([{"role": "user", "content": [{"type": "text", "text": 5}]}], "message 0, content part 0"),
    ([{"role": "user", "content": "hi <|image_pad|> there"}], "special tokens"),
    ([], "non-empty list"),
])
def test_bad_messages(server, messages, where):
    err = error_of(post(server, chat(messages=messages)), 400)
    assert err["param"] == "messages" and where in err["message"]


@pytest.mark.parametrize("field,value", [
    ("temperature", -1), ("top_p", 1.5), ("top_p", 0), ("max_tokens", 0), ("max_completion_tokens", -3),
    ("presence_penalty", 3), ("frequency_penalty", -2.5), ("n", 0), ("min_p", 2), ("top_k", -5),
    ("repetition_penalty", 0), ("stop_token_ids", [10**6]),
])
def test_bad_sampling_values_name_the_field(server, field, value):
    err = error_of(post(server, chat(**{field: value})), 400)
    assert err["param"] == field and field in err["message"]


def test_unsupported_and_inconsistent_options(server):
    assert error_of(post(server, chat(top_logprobs=2)), 400)["param"] == "top_logprobs"
    for bias, words in (({"x": 10}, "token ids"), ({"\u00b2": 1}, "token ids"), ({"9" * 5000: 1}, "token ids"), ({"5": 101}, "less than or equal to 100"),
                        ({"5": True}, "valid number"), ({str(10**7): 1}, "is not a token id"),
                        ({str(k): 1 for k in range(301)}, "at most 300")):
        err = error_of(post(server, chat(logit_bias=bias)), 400)
        assert err["param"].startswith("logit_bias") and words in err["message"], (bias, err)
    assert error_of(post(server, chat(tool_choice="required")), 400)["param"] == "tool_choice"
    tools = [{"type": "function", "function": {"name": "f"}}]
    err = error_of(post(server, chat(tools=tools, tool_choice={"type": "function", "function": {"name": "g"}})), 400)
    assert err["param"] == "tool_choice" and "'g'" in err["message"]
    named = {"type": "function", "function": {"name": "f"}}
    for choice in ("required", named):  # (before: a 400 naming messages, from the engine thread)
        for guided in ({"guided_regex": "[a-z]+"}, {"guided_choice": ["a", "b"]}, {"guided_json": {"type": "object"}}):
            err = error_of(post(server, chat(tools=tools, tool_choice=choice, **guided)), 400)
            assert err["param"] == "tool_choice" and "structured output" in err["message"], (choice, guided)
    for body, param in (({"prompt": [10**7]}, "prompt"),
                        ({"prompt": "a <|image_pad|>"}, "prompt"), ({"prompt": []}, "prompt"),
                        ({"prompt": "x", "suffix": "y"}, "suffix"), ({"prompt": 5}, "prompt")):
        assert error_of(post(server, body, path="/v1/completions"), 400)["param"] == param


def test_unknown_model_route_and_method(server):
    client = openai.OpenAI(api_key="x", base_url=server.url + "/v1", max_retries=0)
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="gpt-7", messages=USER)
    assert e.value.code == "model_not_found" and "gpt-7" in e.value.message
    assert error_of(post(server, {"prompt": "x", "model": "nope"}, path="/v1/completions"), 404)["param"] == "model"
    error_of(httpx.get(server.url + "/v1/nothing"), 404)
    error_of(httpx.get(server.url + "/v1/chat/completions"), 405)
    error_of(httpx.get(server.url + "/v1/models/nope"), 404)


# ------------------------------------------------------------------------------------------------- media
def _png_header(width: int, height: int) -> str:
    """A PNG whose header declares width x height (no real pixel data)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    raw = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
    raw += chunk(b"IDAT", zlib.compress(b"\0" * 10)) + chunk(b"IEND", b"")
    return "data:image/png;base64," + base64.b64encode(raw).decode()


@pytest.mark.parametrize("url,words", [
    ("data:image/png;base64," + base64.b64encode(b"this is not a picture").decode(), "not a recognised image"),
    ("data:image/png;base64,!!!!", "image"),
    ("data:image/png;base64,", "no data"),
    (_png_header(100_000, 100_000), "10000000000 pixels"),
    ("http://127.0.0.1:9/cat.png", "remote media URLs are disabled"),
    ("/etc/passwd", "local file paths are not allowed"),
])
def test_bad_images(server, url, words):
    err = error_of(post(server, chat(messages=image_message("?", url))), 400)
    assert err["param"] == "messages" and words in err["message"]
    assert "message 0, content part 0 (image)" in err["message"]


def test_oversized_media_options(server):
    err = error_of(post(server, chat(messages=image_message("?", png_data_uri(1)), min_pixels=10**9)), 400)
    assert "limit" in err["message"]


def test_remote_media(strict, media_host):
    ok = post(strict, chat(messages=image_message("?", media_host + "/ok.png")), key=KEY)
    assert ok.status_code == 200 and ok.json()["usage"]["prompt_tokens"] > 64
    closed = f"http://127.0.0.1:{free_port()}/x.png"
    for path, words in ((media_host + "/big.png", "above the limit"), (media_host + "/slow.png", "timed out"),
                        (media_host + "/missing.png", "404"), (closed, "could not fetch")):
        err = error_of(post(strict, chat(messages=image_message("?", path)), key=KEY), 400)
        assert err["param"] == "messages", err
        assert words in err["message"] or "could not fetch" in err["message"], err


def test_prompt_past_the_context(server):
    err = error_of(post(server, chat(messages=[{"role": "user", "content": "x" * 5000}])), 400)
    assert err["code"] == "context_length_exceeded" and err["param"] == "messages"
    assert re.search(r"the prompt has 50\d\d tokens", err["message"]) and "at most 4095" in err["message"]
    err = error_of(post(server, {"prompt": "y" * 5000}, path="/v1/completions"), 400)
    assert "5000 tokens" in err["message"]


def test_body_size_limit(strict):
    err = error_of(post(strict, content=b'{"x": "' + b"a" * (2 * 2**20) + b'"}', key=KEY), 413)
    assert err["code"] == "request_too_large"


# ------------------------------------------------------------------------------------------------- auth
def test_api_key(strict):
    assert httpx.get(strict.url + "/health").status_code == 200  # open, for load balancers
    for route in ("/v1/models", "/metrics"):
        assert error_of(httpx.get(strict.url + route), 401)["code"] == "invalid_api_key"
        assert httpx.get(strict.url + route, headers={"Authorization": f"Bearer {KEY}"}).status_code == 200
    error_of(post(strict, chat(), key="wrong"), 401)
    error_of(httpx.post(strict.url + "/v1/chat/completions", json=chat(), headers={"Authorization": KEY}), 401)
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(api_key="wrong", base_url=strict.url + "/v1", max_retries=0).models.list()
    good = openai.OpenAI(api_key=KEY, base_url=strict.url + "/v1", max_retries=0)
    assert good.chat.completions.create(model="tiny", messages=USER).choices[0].message.role == "assistant"


# ------------------------------------------------------------------------------------------------- load limits
def test_queue_full_429_and_timeout_504(strict):
    client = openai.OpenAI(api_key=KEY, base_url=strict.url + "/v1", max_retries=0, timeout=30)
    long = dict(model="tiny", messages=USER, max_tokens=100_000, temperature=0, stream=True,
                extra_body={"ignore_eos": True})
    streams = [client.chat.completions.create(**long) for _ in range(3)]  # 2 running + 1 queued
    for s in streams:
        next(iter(s))  # the role chunk: admitted
    with pytest.raises(openai.RateLimitError) as e:
        client.chat.completions.create(model="tiny", messages=USER)
    assert e.value.code == "queue_full"
    # the 3 s request timeout ends the streams with an error event
    for s in streams:
        with pytest.raises(openai.APIError, match="request timeout"):
            for _ in s:
                pass
    r = post(strict, chat(max_tokens=100_000, ignore_eos=True), key=KEY)
    assert error_of(r, 504)["code"] == "timeout"
    m = _wait_idle(strict, KEY)
    assert m["qwen3vl_num_requests_running"] == 0 and m["qwen3vl_kv_cache_blocks_used"] == 0


def _wait_idle(server, key=None, timeout=10.0) -> dict:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    deadline = time.monotonic() + timeout
    while True:
        m = parse_metrics(httpx.get(server.url + "/metrics", headers=headers).text)
        if (m["qwen3vl_requests_in_flight"] == 0 and m["qwen3vl_kv_cache_blocks_used"] == 0) or \
                time.monotonic() > deadline:
            return m
        time.sleep(0.05)


def test_clients_that_go_away_are_aborted(server):
    long = chat(max_tokens=100_000, ignore_eos=True)
    with pytest.raises(httpx.ReadTimeout):  # a non-streamed request whose client gives up
        httpx.post(server.url + "/v1/chat/completions", json=long, timeout=0.5)
    m = _wait_idle(server, timeout=3)
    assert m["qwen3vl_num_requests_running"] == 0 and m["qwen3vl_kv_cache_blocks_used"] == 0
    # with logprobs every step sends a chunk: the random model often writes "<tool_call>" early, after which the
    # stream holds its text back to the end (a possible tool call), and without them no line would come in time
    with httpx.stream("POST", server.url + "/v1/chat/completions",
                      json={**long, "stream": True, "logprobs": True}) as resp:
        for i, _ in enumerate(resp.iter_lines()):
            if i == 4:
                break  # leaving the block closes the connection mid-stream
    m = _wait_idle(server, timeout=3)
    assert m["qwen3vl_num_requests_running"] == 0 and m["qwen3vl_kv_cache_blocks_used"] == 0
    assert m["qwen3vl_engine_tracked_requests"] == 0 and m["qwen3vl_generation_tokens_total"] < 5000
    assert m['qwen3vl_requests_total{route="/v1/chat/completions",status="499"}'] == 1


def test_shutting_down_503(folder):
    llm = LLM(folder, kv_cache_gb=0.02)
    with ServerThread(create_app(llm, ServeSettings(["tiny"]))) as s:
        assert post(s, chat(max_tokens=2)).status_code == 200
        s.app.state.engine_loop.begin_shutdown()
        assert error_of(post(s, chat(max_tokens=2)), 503)["code"] == "shutting_down"
        assert httpx.get(s.url + "/health").status_code == 503


# ------------------------------------------------------------------------------------------------- our own bugs
def test_unexpected_errors_are_500_and_the_server_keeps_serving(server, monkeypatch, caplog):
    ok = chat(max_tokens=2)

    def boom(*a, **k):
        raise RuntimeError("injected bug")

    # in the route
    monkeypatch.setattr(app_module.R, "chat_completion", boom)
    err = error_of(post(server, ok), 500)
    assert err["type"] == "server_error" and "injected" not in err["message"]
    monkeypatch.undo()
    assert post(server, ok).status_code == 200
    # on the engine thread, building the answer
    monkeypatch.setattr(ChatChoice, "result", boom)
    error_of(post(server, ok), 500)
    monkeypatch.undo()
    # on the engine thread, setting up the request's choices once it is queued (streamed or not)
    monkeypatch.setattr(ChatChoice, "__init__", boom)
    error_of(post(server, ok), 500)
    error_of(post(server, {**ok, "stream": True}), 500)
    monkeypatch.undo()
    # in the engine step itself
    engine = server.app.state.engine_loop.engine
    real_step = engine.step
    calls = []

    def failing_step():
        if not calls:
            calls.append(1)
            raise RuntimeError("injected engine bug")
        return real_step()

    engine.step = failing_step
    try:
        error_of(post(server, ok), 500)
    finally:
        del engine.step
    assert post(server, ok).status_code == 200
    assert "injected" in caplog.text  # logged
    m = _wait_idle(server)
    assert m["qwen3vl_engine_tracked_requests"] == 0 and m["qwen3vl_kv_cache_blocks_used"] == 0
    assert m['qwen3vl_requests_total{route="/v1/chat/completions",status="500"}'] == 5
