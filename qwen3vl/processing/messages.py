"""Validate OpenAI-style chat messages and normalise them into one canonical shape.

Accepted content parts: `{"type": "text", "text": ...}`, `{"type": "image", "image"|"url"|"path": src}`,
`{"type": "image_url", "image_url": {"url": ...} | str}`, `{"type": "video", "video"|"url"|"path": src | [frames]}`,
`{"type": "video_url", "video_url": {"url": ...} | str}`, and untyped parts with an `image`/`video` key.
Canonical parts are `{"type": "text", "text": str}` or `{"type": "image"|"video", "image"|"video": src, **options}`,
which is also what the chat templates understand (they ignore `video_url` parts; we do not).

Other normalisations: assistant `content: None` becomes "" (OpenAI tool-call turns); `reasoning`/`thinking` are
accepted as aliases of `reasoning_content`, as transformers does. Errors name the message and part (0-based).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from qwen3vl.processing.errors import MessageFormatError, where

ROLES = ("system", "user", "assistant", "tool")
_SOURCE_KEYS = {"image": ("image", "url", "path"), "video": ("video", "url", "path")}


def is_batch(messages: Any) -> bool:
    """A list of conversations (each a list of messages) rather than one conversation."""
    return isinstance(messages, (list, tuple)) and len(messages) > 0 and isinstance(messages[0], (list, tuple))


def normalize_messages(messages: Any) -> list[dict[str, Any]]:
    if not isinstance(messages, (list, tuple)) or len(messages) == 0:
        raise MessageFormatError(f"messages must be a non-empty list of message dicts, got {_describe(messages)}")
    return [_normalize_message(m, i) for i, m in enumerate(messages)]


def normalize_tools(tools: Any) -> list[dict[str, Any]] | None:
    if tools is None:
        return None
    if not isinstance(tools, (list, tuple)) or not all(isinstance(t, dict) for t in tools):
        raise MessageFormatError(f"tools must be a list of JSON-schema dicts, got {_describe(tools)}")
    return list(tools) or None


def _describe(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return f"an empty {type(value).__name__}" if not value else f"a {type(value).__name__}"
    return f"a value of type {type(value).__name__}"


def _normalize_message(message: Any, i: int) -> dict[str, Any]:
    if not isinstance(message, dict):
        raise MessageFormatError(
            f"{where(i, None)}: expected a dict with 'role' and 'content', got {_describe(message)}"
        )
    if "role" not in message:
        raise MessageFormatError(f"{where(i, None)}: missing 'role'")
    role = message["role"]
    if role not in ROLES:
        raise MessageFormatError(f"{where(i, None)}: unknown role {role!r}; expected one of {', '.join(ROLES)}")
    out = {k: v for k, v in message.items() if k not in ("reasoning", "thinking")}
    content = message.get("content")
    if content is None and role == "assistant":
        content = ""
    if isinstance(content, str):
        out["content"] = content
    elif isinstance(content, (list, tuple)):
        out["content"] = [_normalize_part(part, i, j) for j, part in enumerate(content)]
    elif content is None:
        raise MessageFormatError(f"{where(i, None)}: {role} message has no 'content'")
    else:
        raise MessageFormatError(
            f"{where(i, None)}: content must be a string or a list of parts, got {type(content).__name__}"
        )
    if out.get("reasoning_content") is None:
        alias = message.get("reasoning", message.get("thinking"))
        if alias is not None:
            out["reasoning_content"] = alias
        else:
            out.pop("reasoning_content", None)
    if out.get("tool_calls") is not None:
        out["tool_calls"] = _normalize_tool_calls(out["tool_calls"], i)
    else:
        out.pop("tool_calls", None)
    return out


def _normalize_part(part: Any, i: int, j: int) -> dict[str, Any]:
    if isinstance(part, str):
        return {"type": "text", "text": part}
    if not isinstance(part, dict):
        raise MessageFormatError(f"{where(i, j)}: a content part must be a dict, got {_describe(part)}")
    kind = part.get("type")
    if kind is None:
        kind = next((k for k in ("image", "image_url", "video", "video_url", "text") if k in part), None)
    if kind == "text":
        text = part.get("text")
        if not isinstance(text, str):
            raise MessageFormatError(f"{where(i, j, 'text')}: 'text' must be a string, got {_describe(text)}")
        return {"type": "text", "text": text}
    if kind in ("image_url", "video_url"):
        media = kind[: -len("_url")]
        url = part.get(kind)
        url = url.get("url") if isinstance(url, dict) else url
        if not isinstance(url, str) or not url:
            raise MessageFormatError(f"{where(i, j, kind)}: expected {kind}.url to be a non-empty string")
        options = url_options(part.get(kind))
        rest = {k: v for k, v in part.items() if k not in ("type", kind)}
        return {"type": media, media: url, **options, **rest}
    if kind in ("image", "video"):
        source = next((part[k] for k in _SOURCE_KEYS[kind] if part.get(k) is not None), None)
        if source is None:
            raise MessageFormatError(f"{where(i, j, kind)}: no source; put it under the {kind!r} key")
        rest = {k: v for k, v in part.items() if k not in ("type",) + _SOURCE_KEYS[kind]}
        return {"type": kind, kind: source, **rest}
    raise MessageFormatError(
        f"{where(i, j)}: unknown content type {kind!r}; expected text, image, image_url, video or video_url"
    )


def url_options(url_field: Any) -> dict[str, Any]:
    """Options carried inside an OpenAI `image_url`/`video_url` object besides the url (e.g. `detail` is dropped)."""
    if not isinstance(url_field, dict):
        return {}
    keep = ("min_pixels", "max_pixels", "resized_height", "resized_width", "fps", "max_frames", "min_frames")
    return {k: url_field[k] for k in keep if k in url_field}


def _normalize_tool_calls(calls: Any, i: int) -> list[dict[str, Any]]:
    if not isinstance(calls, Sequence) or isinstance(calls, str):
        raise MessageFormatError(f"{where(i, None)}: tool_calls must be a list, got {_describe(calls)}")
    for k, call in enumerate(calls):
        body = call.get("function") if isinstance(call, dict) and call.get("function") else call
        if not isinstance(body, dict) or not isinstance(body.get("name"), str):
            raise MessageFormatError(f"{where(i, None)}, tool call {k}: needs a string 'name' (or function.name)")
        if "arguments" not in body:
            raise MessageFormatError(f"{where(i, None)}, tool call {k} ({body['name']}): missing 'arguments'")
    return list(calls)
