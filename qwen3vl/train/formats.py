"""Training records in the other common layouts, turned into the API's `messages`.

Besides `{"messages": [...]}` with content parts (our own format), two layouts are widespread for vision-language
fine-tuning data, and a user arriving with a dataset should not have to convert it by hand:

* LLaVA / ShareGPT, as Qwen's own fine-tuning scripts read it:
  `{"image": "a.jpg" | [...], "video": ..., "conversations": [{"from": "human", "value": "<image>\\nWhat is it?"},
  {"from": "gpt", "value": "A cat."}]}`. LLaMA-Factory's sharegpt variant adds `images`/`videos` lists, a `system`
  key, a `tools` JSON string and `function_call` / `observation` turns.
* `messages` whose contents are strings with `<image>` / `<video>` placeholders, plus top-level `images` / `videos`
  (LLaMA-Factory's OpenAI-style layout).

Each `<image>` / `<video>` placeholder becomes a media part at that place in the text, taking the record's media in
order, in user turns; the counts must agree (an error names the record otherwise). A record with media and no
placeholder at all gets its media at the start of the first user turn, the usual convention. A record without
top-level media is left as it is, so a literal `<video>` in text (HTML, say) stays text.
"""

from __future__ import annotations

import json
import re
from typing import Any

ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system",
         "function_call": "assistant", "observation": "tool", "tool": "tool"}
PLACEHOLDER = re.compile(r"<(image|video)>")


def _media_list(record: dict[str, Any], kind: str) -> list[Any]:
    value = record.get(kind + "s", record.get(kind))
    if value is None:
        return []
    # a list is several media, one per placeholder (as Qwen's fine-tuning code reads it); a video given as frames
    # is a list inside it: "videos": [["f0.jpg", "f1.jpg", ...]]
    return list(value) if isinstance(value, list) else [value]


def _split(text: str, media: dict[str, list[Any]], used: dict[str, int], where: str) -> list[dict[str, Any]]:
    parts: list[dict[str, Any]] = []
    pos = 0
    for m in PLACEHOLDER.finditer(text):
        kind = m.group(1)
        if used[kind] >= len(media[kind]):
            raise ValueError(f"{where}: more <{kind}> placeholders than {kind}s ({len(media[kind])})")
        chunk = text[pos:m.start()].strip("\n")
        if chunk:
            parts.append({"type": "text", "text": chunk})
        parts.append({"type": kind, kind: media[kind][used[kind]]})
        used[kind] += 1
        pos = m.end()
    rest = text[pos:].strip("\n") if parts else text[pos:]
    if rest:
        parts.append({"type": "text", "text": rest})
    return parts


def _place_media(messages: list[dict[str, Any]], media: dict[str, list[Any]], where: str) -> list[dict[str, Any]]:
    """Swap `<image>`/`<video>` in string contents for media parts (see the module docstring)."""
    if not any(media.values()):
        return messages  # text-only, or already in parts: a literal "<video>" in text (HTML, say) stays text
    texts = [m.get("content") for m in messages if m.get("role") == "user" and isinstance(m.get("content"), str)]
    if not any(PLACEHOLDER.search(t) for t in texts):
        first_user = next((i for i, m in enumerate(messages) if m["role"] == "user"), None)
        if first_user is None:
            raise ValueError(f"{where}: the record has media but no user turn to put them in")
        tag = "".join(f"<{k}>" for k in ("image", "video") for _ in media[k])
        content = messages[first_user].get("content")
        if not isinstance(content, str):
            raise ValueError(f"{where}: media with no <image>/<video> placeholder need a string user content")
        messages = [dict(m) for m in messages]
        messages[first_user]["content"] = tag + content
    used = {"image": 0, "video": 0}
    out = []
    for m in messages:
        content = m.get("content")
        if m.get("role") == "user" and isinstance(content, str) and PLACEHOLDER.search(content):
            m = {**m, "content": _split(content, media, used, where)}
        out.append(m)
    for kind in ("image", "video"):
        if used[kind] != len(media[kind]):
            raise ValueError(f"{where}: {len(media[kind])} {kind}(s) but {used[kind]} <{kind}> placeholder(s)")
    return out


def _sharegpt_turn(turn: Any, k: int, where: str) -> dict[str, Any]:
    if not isinstance(turn, dict):
        raise ValueError(f"{where}: conversations[{k}] must be an object")
    role = turn.get("from", turn.get("role"))
    value = turn.get("value", turn.get("content"))
    if role not in ROLES:
        raise ValueError(f"{where}: conversations[{k}] has role {role!r}; expected one of {sorted(ROLES)}")
    if not isinstance(value, str):
        raise ValueError(f"{where}: conversations[{k}] needs a string 'value'")
    if role == "function_call":
        try:
            call = json.loads(value)
        except json.JSONDecodeError as e:
            raise ValueError(f"{where}: conversations[{k}] (function_call) is not JSON: {e}") from None
        calls = call if isinstance(call, list) else [call]
        if not calls or not all(isinstance(c, dict) and isinstance(c.get("name"), str) for c in calls):
            raise ValueError(f"{where}: conversations[{k}] (function_call) must be an object with a 'name' (or a "
                             "list of them)")
        return {"role": "assistant", "content": "",
                "tool_calls": [{"type": "function", "function": {"name": c["name"],
                                                                 "arguments": c.get("arguments", {})}}
                               for c in calls]}
    return {"role": ROLES[role], "content": value}


def record_to_conversation(record: Any, where: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]] | None]:
    """(messages, tools) from one JSONL record in any of the layouts above; ValueError naming `where` otherwise."""
    if not isinstance(record, dict):
        raise ValueError(f"{where}: a record must be a JSON object")
    tools = record.get("tools")
    if isinstance(tools, str):  # LLaMA-Factory stores the tool list as a JSON string
        try:
            tools = json.loads(tools) if tools.strip() else None
        except json.JSONDecodeError as e:
            raise ValueError(f"{where}: 'tools' is a string but not JSON: {e}") from None
    if isinstance(record.get("messages"), list):
        messages = list(record["messages"])
    elif isinstance(record.get("conversations"), list):
        messages = [_sharegpt_turn(t, k, where) for k, t in enumerate(record["conversations"])]
        if isinstance(record.get("system"), str) and record["system"] and not any(
                m["role"] == "system" for m in messages):
            messages.insert(0, {"role": "system", "content": record["system"]})
    else:
        raise ValueError(f"{where} has neither a 'messages' nor a 'conversations' list")
    media = {"image": _media_list(record, "image"), "video": _media_list(record, "video")}
    return _place_media(messages, media, where), tools
