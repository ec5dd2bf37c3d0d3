"""Tool calls and reasoning in raw model text.

Qwen3-VL writes calls as `<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>` (spec §9). An
endpoint that does not parse them (or a local run without `tools=`) hands back the raw text, so this
module reads them itself and never raises on bad input (nesting too deep for Python's parser included): a
call whose JSON cannot be repaired is reported in `problems` and counted in `invalid`. `strict` says whether every
call was well-formed as written (closing tag present, JSON valid without repairs, `name` a string, `arguments` an
object), which is what the tool-call validity metric counts.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from qwen3vl.tasks.jsonish import parse_lenient

TOOL_OPEN = "<tool_call>"  # the tags around a call: added tokens in the official tokenizer
TOOL_CLOSE = "</tool_call>"
TOOL_BLOCK = re.compile(rf"{TOOL_OPEN}(.*?)({TOOL_CLOSE}|(?={TOOL_OPEN})|\Z)", re.S)


@dataclass
class ToolCall:
    name: str
    arguments: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "arguments": self.arguments}


@dataclass
class ToolCallParse:
    calls: list[ToolCall] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    invalid: int = 0  # blocks that could not be turned into a call
    strict: bool = True
    content: str = ""  # the text with the tool-call blocks removed
    kept: str = ""  # the text with only the blocks that became calls removed (unreadable ones stay), right-stripped


def _lenient_object(body: str) -> tuple[Any, list[str], bool]:
    start = body.find("{")
    if start < 0:
        raise ValueError("no JSON object")
    value, _, notes, truncated, _ = parse_lenient(body, start)
    return value, notes, truncated


def normalize_call(obj: Any) -> ToolCall | str:
    """A ToolCall from a decoded object, or the reason it is not one. Accepts string `arguments`
    (as OpenAI transports them) and `parameters` in place of `arguments`."""
    if not isinstance(obj, dict):
        return f"is a {type(obj).__name__}, expected an object with name and arguments"
    name = obj.get("name")
    if not isinstance(name, str) or not name:
        return "has no function name"
    args = obj.get("arguments", obj.get("parameters", {}))
    if isinstance(args, str):
        try:
            args = json.loads(args) if args.strip() else {}
        except (ValueError, RecursionError):
            try:
                args, _, _ = _lenient_object(args)
            except (ValueError, RecursionError) as e:
                return f"arguments are not JSON ({e})"
    if not isinstance(args, dict):
        return f"arguments are a {type(args).__name__}, expected an object"
    return ToolCall(name, args)


def parse_tool_calls(text: str) -> ToolCallParse:
    """Every `<tool_call>` block in `text` (or, failing that, a bare {"name", "arguments"} object)."""
    out = ToolCallParse()
    blocks = list(TOOL_BLOCK.finditer(text))
    out.content = TOOL_BLOCK.sub("", text).strip()
    out.kept = text.strip()
    if not blocks:
        stripped = text.strip()
        if stripped.startswith("{") and '"name"' in stripped:
            try:
                obj = json.loads(stripped)
            except (ValueError, RecursionError):
                obj = None
            call = normalize_call(obj) if obj is not None else None
            if isinstance(call, ToolCall):
                out.calls.append(call)
                out.problems.append("tool call written without <tool_call> tags")
                out.content = out.kept = ""
        return out
    kept, last = [], 0
    for i, m in enumerate(blocks, start=1):
        body, closing = m.group(1).strip(), m.group(2)
        label = f"tool call {i}"
        if not closing:
            out.strict = False
            out.problems.append(f"{label}: no closing </tool_call>")
        try:
            obj = json.loads(body)
        except (ValueError, RecursionError):
            out.strict = False
            try:
                obj, notes, truncated = _lenient_object(body)
            except (ValueError, RecursionError) as e:
                out.invalid += 1
                out.problems.append(f"{label}: not JSON ({e}): {body[:80]!r}")
                continue
            out.problems.extend(f"{label}: {n}" for n in notes)
            if truncated:
                out.invalid += 1
                out.problems.append(f"{label}: JSON ends early (truncated): {body[:80]!r}")
                continue
        call = normalize_call(obj)
        if isinstance(call, str):
            out.strict = False
            out.invalid += 1
            out.problems.append(f"{label}: {call}")
            continue
        if isinstance(obj, dict) and not isinstance(obj.get("arguments"), dict):
            out.strict = False
        out.calls.append(call)
        kept.append(text[last:m.start()])
        last = m.end()
    joined = "".join(kept) + text[last:]
    if kept and not kept[0].strip():  # the answer opens with a call: what follows it loses its leading whitespace
        joined = joined.lstrip()
    out.kept = joined.rstrip()  # leading whitespace of text before the first call stays, as a stream sends it
    return out


def format_tool_call(call: ToolCall | dict[str, Any]) -> str:
    """The block the chat template writes for an assistant tool call."""
    d = call.to_dict() if isinstance(call, ToolCall) else call
    body = json.dumps({"name": d["name"], "arguments": d["arguments"]}, ensure_ascii=False)
    return f"{TOOL_OPEN}\n{body}\n{TOOL_CLOSE}"


def split_reasoning(text: str) -> tuple[str | None, str]:
    """(reasoning, answer) of a Thinking-model reply: the text before `</think>` and what follows it.

    The opening `<think>` is part of the prompt, so it is usually absent from the output (spec §9.2).
    """
    if "</think>" not in text:
        return None, text
    head, tail = text.split("</think>", 1)
    head = head.split("<think>", 1)[-1]
    return head.strip("\n"), tail.lstrip("\n")
