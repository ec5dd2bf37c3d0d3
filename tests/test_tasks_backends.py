"""Tool-call parsing from raw text and the chat backends (endpoint against a local HTTP server, scripted)."""

from __future__ import annotations

import base64
import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest
from PIL import Image

from qwen3vl.tasks.backends import (
    ChatBackend,
    EndpointBackend,
    ScriptedBackend,
    chat_completions_url,
    image_message,
    LocalBackend,
    make_backend,
    to_data_uri,
)
from qwen3vl.tasks.toolcalls import format_tool_call, parse_tool_calls, split_reasoning

GOOD = ('Thought: click it.\nAction: Click the search bar.\n<tool_call>\n'
        '{"name": "mobile_use", "arguments": {"action": "click", "coordinate": [447, 81]}}\n</tool_call>')


def test_well_formed_call():
    p = parse_tool_calls(GOOD)
    assert [c.to_dict() for c in p.calls] == [{"name": "mobile_use", "arguments": {"action": "click", "coordinate": [447, 81]}}]
    assert p.strict and p.invalid == 0 and p.problems == []
    assert p.content == "Thought: click it.\nAction: Click the search bar."


def test_malformed_calls_are_reported_not_raised():
    text = ("<tool_call>\nclick the button please\n</tool_call>\n"
            '<tool_call>\n{"arguments": {"action": "wait"}}\n</tool_call>\n'
            "<tool_call>\n{'name': 'computer_use', 'arguments': {'action': 'left_click', 'coordinate': [1, 2],}}\n</tool_call>\n"
            '<tool_call>\n{"name": "computer_use", "arguments": {"action": "ty')
    p = parse_tool_calls(text)
    assert [c.arguments for c in p.calls] == [{"action": "left_click", "coordinate": [1, 2]}]
    assert p.invalid == 3 and not p.strict
    problems = " | ".join(p.problems)
    assert "tool call 1: not JSON" in problems and "tool call 2: has no function name" in problems
    assert "tool call 4: no closing </tool_call>" in problems and "truncated" in problems


def test_string_arguments_and_untagged_call():
    p = parse_tool_calls('<tool_call>\n{"name": "f", "arguments": "{\\"x\\": 1}"}\n</tool_call>')
    assert p.calls[0].arguments == {"x": 1} and not p.strict
    bare = parse_tool_calls('{"name": "f", "arguments": {"x": 2}}')
    assert bare.calls[0].arguments == {"x": 2} and "without <tool_call> tags" in bare.problems[0]
    assert parse_tool_calls("just text").calls == []


def test_format_round_trip_and_reasoning_split():
    block = format_tool_call({"name": "f", "arguments": {"a": "é"}})
    assert block == '<tool_call>\n{"name": "f", "arguments": {"a": "é"}}\n</tool_call>'
    assert parse_tool_calls(block).calls[0].arguments == {"a": "é"}
    assert split_reasoning("think hard\n</think>\n\nThe answer is 4.") == ("think hard", "The answer is 4.")
    assert split_reasoning("plain") == (None, "plain")


class _Server:
    """An OpenAI-style endpoint on 127.0.0.1 that records requests and answers with `reply(body)`."""

    def __init__(self, reply):
        self.requests: list[dict] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server API
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.requests.append({"path": self.path, "body": body, "auth": self.headers.get("Authorization")})
                status, payload = reply(body)
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.httpd = HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def completion(message: dict, finish: str = "stop") -> dict:
    return {"choices": [{"index": 0, "message": {"role": "assistant", **message}, "finish_reason": finish}]}


def test_endpoint_sends_images_as_data_uris_and_parses_tool_calls():
    reply = completion({"content": "", "reasoning_content": "look first",
                        "tool_calls": [{"id": "c1", "type": "function", "function": {
                            "name": "computer_use", "arguments": '{"action": "left_click", "coordinate": [10, 20]}'}}]},
                       finish="tool_calls")
    img = Image.new("RGB", (4, 3), (255, 0, 0))
    with _Server(lambda body: (200, reply)) as srv:
        backend = EndpointBackend(srv.url + "/v1", model="qwen3-vl", api_key="sk-test")
        assert isinstance(backend, ChatBackend)
        res = backend.chat(image_message(img, "Where?", max_pixels=1024), max_tokens=64,
                           tools=[{"type": "function", "function": {"name": "computer_use"}}])
    req = srv.requests[0]
    assert req["path"] == "/v1/chat/completions" and req["auth"] == "Bearer sk-test"
    body = req["body"]
    assert body["model"] == "qwen3-vl" and body["max_tokens"] == 64 and body["temperature"] == 0.0
    assert body["tools"][0]["function"]["name"] == "computer_use"
    image_part, text_part = body["messages"][0]["content"]
    assert text_part == {"type": "text", "text": "Where?"}
    url = image_part["image_url"]["url"]
    assert url.startswith("data:image/png;base64,") and "max_pixels" not in image_part
    assert base64.b64decode(url.split(",", 1)[1]).startswith(b"\x89PNG")
    assert res.tool_calls == [{"name": "computer_use", "arguments": {"action": "left_click", "coordinate": [10, 20]}}]
    assert res.reasoning == "look first" and res.finish_reason == "tool_calls"


def test_endpoint_raw_text_tool_calls_and_think_split():
    reply = completion({"content": "hmm\n</think>\n\n" + GOOD})
    with _Server(lambda body: (200, reply)) as srv:
        res = EndpointBackend(srv.url).chat([{"role": "user", "content": "hi"}])
    assert res.reasoning == "hmm" and res.text.startswith("Thought:")
    assert res.tool_calls[0]["arguments"]["coordinate"] == [447, 81]


def test_endpoint_http_error_names_the_url():
    with _Server(lambda body: (500, {"error": "boom"})) as srv:
        with pytest.raises(RuntimeError, match=r"chat/completions answered HTTP 500.*boom"):
            EndpointBackend(srv.url).chat([{"role": "user", "content": "hi"}])


def test_url_forms_and_media_uris(tmp_path):
    assert chat_completions_url("http://h:8000") == "http://h:8000/v1/chat/completions"
    assert chat_completions_url("http://h:8000/v1/") == "http://h:8000/v1/chat/completions"
    assert chat_completions_url("http://h/v1/chat/completions") == "http://h/v1/chat/completions"
    p = tmp_path / "x.jpg"
    Image.new("RGB", (2, 2)).save(p)
    assert to_data_uri(str(p)).startswith("data:image/jpeg;base64,")
    assert to_data_uri("https://e.org/a.png") == "https://e.org/a.png"
    with pytest.raises(FileNotFoundError, match="missing.png"):
        to_data_uri(str(tmp_path / "missing.png"))


def test_scripted_backend_and_backend_choice():
    b = ScriptedBackend(["first", GOOD])
    assert b.chat([]).text == "first"
    assert b.chat([]).tool_calls[0]["name"] == "mobile_use"
    with pytest.raises(RuntimeError, match="has 2 replies"):
        b.chat([])
    assert len(b.calls) == 3
    with pytest.raises(ValueError, match="not both"):
        make_backend("path", "http://x")
    assert isinstance(make_backend(endpoint="http://x"), EndpointBackend)


def test_no_model_means_the_bundled_demo_model(tmp_path, monkeypatch):
    import qwen3vl.commands

    monkeypatch.setattr(qwen3vl.commands, "DEMO_MODEL", tmp_path / "missing")
    with pytest.raises(ValueError, match="no bundled demo model"):
        make_backend()
    (tmp_path / "demo").mkdir()
    (tmp_path / "demo" / "config.json").write_text("{}")
    monkeypatch.setattr(qwen3vl.commands, "DEMO_MODEL", tmp_path / "demo")
    backend = make_backend()
    assert isinstance(backend, LocalBackend) and backend.model == str(tmp_path / "demo")


class _FakeResult:
    """Shaped like qwen3vl.llm.ChatResult: `text` has the tool-call blocks removed, `raw_text` keeps them."""

    def __init__(self, text, raw_text, tool_calls, reasoning=None):
        self.text, self.raw_text, self.tool_calls, self.reasoning = text, raw_text, tool_calls, reasoning
        self.finish_reason = "stop"


class _FakeLLM:
    def __init__(self, result):
        self.result, self.seen = result, []

    def chat(self, messages, **kwargs):
        self.seen.append((messages, kwargs))
        return self.result


def test_local_backend_passes_sampling_and_keeps_raw_text():
    from qwen3vl.tasks.backends import LocalBackend

    raw = 'Thought: go.\n<tool_call>\n{"name": "computer_use", "arguments": {"action": "wait",}}\n</tool_call>'
    b = LocalBackend("unused-path")
    b._llm = _FakeLLM(_FakeResult("Thought: go.", raw, [], reasoning="r"))
    res = b.chat([{"role": "user", "content": "hi"}], max_tokens=7, temperature=0.0)
    assert b._llm.seen[0][1] == {"max_tokens": 7, "temperature": 0.0, "tools": None}
    assert res.text == "Thought: go." and res.raw_text == raw and res.reasoning == "r" and res.tool_calls == []


def test_policy_and_metric_read_the_raw_text():
    from qwen3vl.tasks.agent.policy import parse_step
    from qwen3vl.tasks.backends import ChatReply
    from qwen3vl.tasks.eval.runner import EvalRecord, score

    raw = 'Action: wait.\n<tool_call>\n{"name": "computer_use", "arguments": {"action": "wait",}}\n</tool_call>'
    step = parse_step("Action: wait.", [], raw)
    assert step.calls[0].arguments == {"action": "wait"} and any("trailing comma" in p for p in step.problems)
    rec = EvalRecord("1", "tool_call", "q", None)
    # the local engine may have stripped the (repaired) call from `text`; validity judges what was written
    assert score(rec, ChatReply("Action: wait.", tool_calls=[{"name": "computer_use", "arguments": {"action": "wait"}}],
                                raw_text=raw)) == {"valid": 0.0}
    assert score(rec, ChatReply("", tool_calls=[{"name": "f", "arguments": {}}])) == {"valid": 1.0}
