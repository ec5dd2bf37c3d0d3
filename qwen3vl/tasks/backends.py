"""Chat backends: one protocol for the local model, an OpenAI-compatible endpoint and scripted replies.

Every task (grounding, documents, video, agent, evaluation) talks to a `ChatBackend`, so the same code
runs against `qwen3vl.LLM`, a server speaking POST /v1/chat/completions, or a list of canned replies in
tests. Messages use the OpenAI layout with Qwen-style media parts:
`{"type": "image", "image": path | PIL.Image | bytes | data-URI, "min_pixels": .., "max_pixels": ..}` and
`{"type": "video", "video": path, "fps": ..}`. The endpoint backend turns media into data URIs
(`image_url` / `video_url` parts); plain urllib keeps it dependency-free.
"""

from __future__ import annotations

import base64
import io
import json
import mimetypes
import os
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence, runtime_checkable

from qwen3vl.tasks.toolcalls import TOOL_OPEN, normalize_call, parse_tool_calls, split_reasoning

Message = dict[str, Any]


@dataclass
class ChatReply:
    text: str
    reasoning: str | None = None
    tool_calls: list[dict[str, Any]] = field(default_factory=list)  # [{"name": .., "arguments": {..}}]
    finish_reason: str | None = None
    raw: Any = None
    # what the model wrote before any parsing (tool-call blocks and <think> included), when known: the
    # validity metrics and the agent's fallback parser need it, since `text` may have the calls removed
    raw_text: str | None = None


@runtime_checkable
class ChatBackend(Protocol):
    def chat(self, messages: list[Message], *, max_tokens: int = 1024, temperature: float = 0.0,
             tools: list[dict[str, Any]] | None = None) -> ChatReply: ...


# ---------------------------------------------------------------------------------------------- local

class LocalBackend:
    """`qwen3vl.LLM`, loaded on first use."""

    def __init__(self, model: str, *, dtype: str | None = None, device: str | None = None):
        self.model, self.dtype, self.device = model, dtype, device
        self._llm: Any = None

    @property
    def llm(self) -> Any:
        if self._llm is None:
            from qwen3vl import LLM

            self._llm = LLM(self.model, dtype=self.dtype, device=self.device)
        return self._llm

    def chat(self, messages: list[Message], *, max_tokens: int = 1024, temperature: float = 0.0,
             tools: list[dict[str, Any]] | None = None) -> ChatReply:
        res = self.llm.chat(messages, max_tokens=max_tokens, temperature=temperature, tools=tools)
        text = getattr(res, "text", "") or ""
        reasoning = getattr(res, "reasoning", None)
        if reasoning is None:
            reasoning, text = split_reasoning(text)
        calls = [c if isinstance(c, dict) else {"name": c.name, "arguments": c.arguments}
                 for c in (getattr(res, "tool_calls", None) or [])]
        return ChatReply(text, reasoning, calls, getattr(res, "finish_reason", None), res,
                         raw_text=getattr(res, "raw_text", None) or None)


# ---------------------------------------------------------------------------------------------- endpoint

def _sniff_mime(data: bytes) -> str:
    if data.startswith(b"\x89PNG"):
        return "image/png"
    if data.startswith(b"\xff\xd8"):
        return "image/jpeg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    if data[4:8] == b"ftyp":
        return "video/mp4"
    return "application/octet-stream"


def to_data_uri(media: Any) -> str:
    """A URL an OpenAI-style server accepts for an image or video given as path, bytes, PIL image or URL."""
    if isinstance(media, str):
        if media.startswith(("data:", "http://", "https://")):
            return media
        path = Path(media[7:] if media.startswith("file://") else media)
        if not path.is_file():
            raise FileNotFoundError(f"media file {path} does not exist")
        data = path.read_bytes()
        mime = mimetypes.guess_type(path.name)[0] or _sniff_mime(data)
        return f"data:{mime};base64,{base64.b64encode(data).decode()}"
    if isinstance(media, Path):
        return to_data_uri(str(media))
    if isinstance(media, (bytes, bytearray)):
        return f"data:{_sniff_mime(bytes(media))};base64,{base64.b64encode(bytes(media)).decode()}"
    if hasattr(media, "save"):  # PIL image
        buf = io.BytesIO()
        media.convert("RGB").save(buf, format="PNG")
        return f"data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}"
    raise TypeError(f"cannot send media of type {type(media).__name__}; give a path, bytes, URL or PIL image")


def to_openai_messages(messages: Sequence[Message], *, pixel_hints: bool = False) -> list[Message]:
    """Our messages in the wire format: media parts become image_url / video_url data URIs.

    `pixel_hints` keeps min_pixels / max_pixels / fps on the part (DashScope reads them; vLLM ignores them).
    """
    out = []
    for msg in messages:
        m = dict(msg)
        content = m.get("content")
        if isinstance(content, list):
            parts = []
            for part in content:
                kind = part.get("type") or ("image" if "image" in part else "video" if "video" in part else "text")
                if kind == "image" and "image" in part:
                    new: dict[str, Any] = {"type": "image_url", "image_url": {"url": to_data_uri(part["image"])}}
                elif kind == "video" and "video" in part:
                    if not isinstance(part["video"], (str, Path)):
                        raise TypeError("an endpoint needs a video as a file path or URL, not a frame list")
                    new = {"type": "video_url", "video_url": {"url": to_data_uri(str(part["video"]))}}
                else:
                    parts.append(part)
                    continue
                if pixel_hints:
                    new.update({k: part[k] for k in ("min_pixels", "max_pixels", "fps") if k in part})
                parts.append(new)
            m["content"] = parts
        if m.get("role") == "assistant" and m.get("tool_calls"):
            m["tool_calls"] = [
                c if "function" in c else
                {"id": f"call_{i}", "type": "function",
                 "function": {"name": c["name"], "arguments": json.dumps(c.get("arguments", {}), ensure_ascii=False)}}
                for i, c in enumerate(m["tool_calls"])]
        out.append(m)
    return out


def chat_completions_url(url: str) -> str:
    """Accept http://host:port, http://host:port/v1 or the full .../chat/completions URL."""
    u = url.rstrip("/")
    if u.endswith("/chat/completions"):
        return u
    if not u.endswith("/v1"):
        u += "/v1"
    return u + "/chat/completions"


class EndpointBackend:
    """An OpenAI-compatible server (vLLM, SGLang, DashScope compatible mode, our own `qwen3vl serve`)."""

    def __init__(self, url: str, *, model: str = "default", api_key: str | None = None, timeout: float = 600.0,
                 extra_body: dict[str, Any] | None = None, pixel_hints: bool = False):
        self.url = chat_completions_url(url)
        self.model, self.timeout, self.pixel_hints = model, timeout, pixel_hints
        self.api_key = api_key if api_key is not None else os.environ.get("OPENAI_API_KEY")
        self.extra_body = dict(extra_body or {})

    def payload(self, messages: list[Message], *, max_tokens: int, temperature: float,
                tools: list[dict[str, Any]] | None) -> dict[str, Any]:
        body: dict[str, Any] = {"model": self.model, "messages": to_openai_messages(messages, pixel_hints=self.pixel_hints),
                                "max_tokens": max_tokens, "temperature": temperature}
        if tools:
            body["tools"] = tools
        body.update(self.extra_body)
        return body

    def chat(self, messages: list[Message], *, max_tokens: int = 1024, temperature: float = 0.0,
             tools: list[dict[str, Any]] | None = None) -> ChatReply:
        data = json.dumps(self.payload(messages, max_tokens=max_tokens, temperature=temperature, tools=tools)).encode()
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        req = urllib.request.Request(self.url, data=data, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                body = json.loads(resp.read().decode("utf-8"))
        except urllib.error.HTTPError as e:
            detail = e.read().decode("utf-8", "replace")[:500]
            raise RuntimeError(f"{self.url} answered HTTP {e.code}: {detail}") from None
        except urllib.error.URLError as e:
            raise RuntimeError(f"cannot reach {self.url}: {e.reason}") from None
        return parse_completion(body)


def parse_completion(body: dict[str, Any]) -> ChatReply:
    """A ChatReply from an OpenAI chat.completion response body."""
    try:
        choice = body["choices"][0]
        msg = choice["message"]
    except (KeyError, IndexError, TypeError):
        raise RuntimeError(f"endpoint reply has no choices[0].message: {json.dumps(body)[:300]}") from None
    content = msg.get("content") or ""
    if isinstance(content, list):
        content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
    raw_text = content
    reasoning = msg.get("reasoning_content") or msg.get("reasoning")
    if reasoning is None:
        reasoning, content = split_reasoning(content)
    calls: list[dict[str, Any]] = []
    for c in msg.get("tool_calls") or []:
        fn = c.get("function", c)
        call = normalize_call({"name": fn.get("name"), "arguments": fn.get("arguments", {})})
        if not isinstance(call, str):
            calls.append(call.to_dict())
    if not calls and TOOL_OPEN in content:
        calls = [c.to_dict() for c in parse_tool_calls(content).calls]
    return ChatReply(content, reasoning, calls, choice.get("finish_reason"), body, raw_text=raw_text)


# ---------------------------------------------------------------------------------------------- scripted

Script = Sequence[str | ChatReply] | Callable[[list[Message]], str | ChatReply]


class ScriptedBackend:
    """Canned replies, in order (or computed by a function of the messages); every request is kept in `calls`.

    Text replies get their tool calls parsed, as an endpoint without a tool parser would need.
    """

    def __init__(self, replies: Script):
        self.replies = replies
        self.calls: list[dict[str, Any]] = []

    def chat(self, messages: list[Message], *, max_tokens: int = 1024, temperature: float = 0.0,
             tools: list[dict[str, Any]] | None = None) -> ChatReply:
        self.calls.append({"messages": messages, "max_tokens": max_tokens, "temperature": temperature, "tools": tools})
        if callable(self.replies):
            reply = self.replies(messages)
        else:
            i = len(self.calls) - 1
            if i >= len(self.replies):
                raise RuntimeError(f"scripted backend has {len(self.replies)} replies; request {i + 1} has none")
            reply = self.replies[i]
        if isinstance(reply, ChatReply):
            return reply
        reasoning, text = split_reasoning(reply)
        calls = [c.to_dict() for c in parse_tool_calls(text).calls] if TOOL_OPEN in text else []
        return ChatReply(text, reasoning, calls, "stop", raw_text=reply)


def make_backend(model: str | None = None, endpoint: str | None = None, *, served_model: str = "default",
                 api_key: str | None = None, dtype: str | None = None, device: str | None = None) -> ChatBackend:
    """The local model (`model` = path or hub id) or an endpoint (`endpoint` = URL); neither: the bundled demo."""
    if model and endpoint:
        raise ValueError("give one of --model PATH_OR_HUB_ID (local) or --endpoint URL (OpenAI-compatible), not both")
    if not model and not endpoint:
        from qwen3vl.commands import bundled_model

        try:
            model = bundled_model()
        except FileNotFoundError as e:
            raise ValueError(f"{e}; give --model PATH_OR_HUB_ID (local) or --endpoint URL (OpenAI-compatible)") from None
    if endpoint:
        return EndpointBackend(endpoint, model=served_model, api_key=api_key)
    return LocalBackend(str(model), dtype=dtype, device=device)


def image_message(image: Any, text: str, *, min_pixels: int | None = None, max_pixels: int | None = None,
                  system: str | None = None) -> list[Message]:
    """A one-turn conversation: one image, then the text (the order the cookbooks use)."""
    part: dict[str, Any] = {"type": "image", "image": image}
    if min_pixels:
        part["min_pixels"] = min_pixels
    if max_pixels:
        part["max_pixels"] = max_pixels
    msgs: list[Message] = [{"role": "system", "content": system}] if system else []
    msgs.append({"role": "user", "content": [part, {"type": "text", "text": text}]})
    return msgs
