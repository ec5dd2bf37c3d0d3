"""Policies: what chooses the next GUI action. A model behind a ChatBackend, or a script.

A policy maps an `Observation` (task, screenshot, history of steps) to a `PolicyStep` (the raw reply,
its Thought / Action sentences and the tool calls in it). `ModelPolicy` builds the cookbook prompt (see
tools.py) and reads calls from the backend's parsed `tool_calls` or, failing that, from the reply text.
`ScriptedPolicy` replays fixed replies, for tests and for reproducing a run without a model.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Protocol, Sequence

from qwen3vl.tasks.agent.tools import (
    computer_use_tool,
    mobile_use_tool,
    system_prompt,
    user_prompt,
)
from qwen3vl.tasks.toolcalls import TOOL_OPEN, ToolCall, format_tool_call, parse_tool_calls

if TYPE_CHECKING:
    from PIL import Image

    from qwen3vl.tasks.backends import ChatBackend

_THOUGHT = re.compile(r"^\s*Thought:\s*(.*?)(?=^\s*Action:|<tool_call>|\Z)", re.S | re.M)
_ACTION = re.compile(r"^\s*Action:\s*(.+)$", re.M)


@dataclass
class Observation:
    task: str
    screenshot: "Image.Image"
    step: int  # 0-based
    history: list[str] = field(default_factory=list)  # one line per earlier step, as in the prompt


@dataclass
class PolicyStep:
    response: str
    thought: str = ""
    action_text: str = ""
    calls: list[ToolCall] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


class Policy(Protocol):
    def __call__(self, obs: Observation) -> PolicyStep: ...


def parse_step(text: str, tool_calls: Sequence[dict[str, Any]] | None = None, raw_text: str | None = None) -> PolicyStep:
    """Thought, Action sentence and tool calls of one reply. Parsed `tool_calls` win; otherwise the calls
    are read from `raw_text` (the unparsed output, when the backend kept it) or from `text`."""
    thought = _THOUGHT.search(text)
    action = _ACTION.search(text)
    step = PolicyStep(text, thought.group(1).strip() if thought else "",
                      action.group(1).strip().strip('"') if action else "")
    if tool_calls:
        step.calls = [ToolCall(c["name"], dict(c.get("arguments") or {})) for c in tool_calls]
        if raw_text and TOOL_OPEN in raw_text:  # what was wrong with any block that did not become a call
            step.problems = parse_tool_calls(raw_text).problems
    else:
        parsed = parse_tool_calls(raw_text or text)
        step.calls, step.problems = parsed.calls, parsed.problems
        if not parsed.calls and not parsed.problems:
            step.problems.append("reply has no <tool_call>")
    return step


class ModelPolicy:
    """Ask a chat backend for each step with the cookbook prompt (system tools + response format)."""

    def __init__(self, backend: "ChatBackend", *, tool: str = "computer_use", max_tokens: int = 1024,
                 temperature: float = 0.0, min_pixels: int | None = None, max_pixels: int | None = None):
        if tool not in ("computer_use", "mobile_use"):
            raise ValueError(f"tool {tool!r} unknown; expected computer_use or mobile_use")
        self.backend, self.tool = backend, tool
        self.max_tokens, self.temperature = max_tokens, temperature
        self.min_pixels, self.max_pixels = min_pixels, max_pixels
        self.tools = [computer_use_tool() if tool == "computer_use" else mobile_use_tool()]
        self.system = system_prompt(self.tools)

    def messages(self, obs: Observation) -> list[dict[str, Any]]:
        image: dict[str, Any] = {"type": "image", "image": obs.screenshot}
        if self.min_pixels:
            image["min_pixels"] = self.min_pixels
        if self.max_pixels:
            image["max_pixels"] = self.max_pixels
        return [{"role": "system", "content": [{"type": "text", "text": self.system}]},
                {"role": "user", "content": [{"type": "text", "text": user_prompt(obs.task, obs.history)}, image]}]

    def __call__(self, obs: Observation) -> PolicyStep:
        reply = self.backend.chat(self.messages(obs), max_tokens=self.max_tokens, temperature=self.temperature)
        return parse_step(reply.text, reply.tool_calls, reply.raw_text)


ScriptItem = str | dict[str, Any]


class ScriptedPolicy:
    """Replay replies in order. An item is raw reply text, a tool call {"name", "arguments"}, or bare
    arguments {"action": ...} (wrapped as a `tool` call). Past the end it terminates with failure."""

    def __init__(self, items: Sequence[ScriptItem] | Callable[[Observation], ScriptItem], *,
                 tool: str = "computer_use"):
        self.items, self.tool = items, tool
        self.seen: list[Observation] = []

    def _text(self, item: ScriptItem) -> str:
        if isinstance(item, str):
            return item
        call = item if "name" in item else {"name": self.tool, "arguments": item}
        return f"Action: {json.dumps(call['arguments'], ensure_ascii=False)}\n{format_tool_call(call)}"

    def __call__(self, obs: Observation) -> PolicyStep:
        self.seen.append(obs)
        if callable(self.items):
            item = self.items(obs)
        elif obs.step < len(self.items):
            item = self.items[obs.step]
        else:
            item = {"action": "terminate", "status": "failure"}
        return parse_step(self._text(item))


def load_script(path: str, *, tool: str = "computer_use") -> ScriptedPolicy:
    """A ScriptedPolicy from a JSON file holding a list of script items."""
    with open(path, encoding="utf-8") as f:
        items = json.load(f)
    if not isinstance(items, list):
        raise ValueError(f"{path} must hold a JSON list of replies or tool calls, not {type(items).__name__}")
    return ScriptedPolicy(items, tool=tool)
