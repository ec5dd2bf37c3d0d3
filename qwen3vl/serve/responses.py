"""Choices and deltas -> OpenAI response JSON (chat completions, their stream chunks, text completions).

Besides OpenAI's fields, a Thinking model's reasoning goes in `message.reasoning_content` (and
`delta.reasoning_content` when streamed), as vLLM and DeepSeek do; `usage.prompt_tokens_details.cached_tokens`
counts prompt tokens served from the prefix cache.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from qwen3vl.serve.jobs import Usage
from qwen3vl.serve.outputs import ChoiceDelta, ChoiceResult


def sse(obj: Any) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False, separators=(',', ':'))}\n\n"


SSE_DONE = "data: [DONE]\n\n"


@dataclass(frozen=True)
class Envelope:
    """The fields every response object of one request shares."""

    id: str
    created: int
    model: str

    def head(self, obj: str) -> dict[str, Any]:
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model,
                "system_fingerprint": None}


# ------------------------------------------------------------------------------------------------- chat
def chat_completion(env: Envelope, choices: list[ChoiceResult], usage: Usage) -> dict[str, Any]:
    out = []
    for c in choices:
        message: dict[str, Any] = {"role": "assistant",
                                   "content": c.text if c.text or not c.tool_calls else None}
        if c.reasoning is not None:
            message["reasoning_content"] = c.reasoning
        if c.tool_calls:
            message["tool_calls"] = c.tool_calls
        choice = {"index": c.index, "message": message,
                  "logprobs": {"content": c.logprobs, "refusal": None} if c.logprobs is not None else None,
                  "finish_reason": c.finish_reason, **c.extra}
        out.append(choice)
    return {**env.head("chat.completion"), "choices": out, "usage": usage.to_dict()}


def chat_chunk(env: Envelope, choices: list[dict[str, Any]], include_usage: bool) -> dict[str, Any]:
    obj = {**env.head("chat.completion.chunk"), "choices": choices}
    if include_usage:
        obj["usage"] = None
    return obj


def chat_role_choice(index: int) -> dict[str, Any]:
    return {"index": index, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}


def chat_delta_choice(d: ChoiceDelta) -> dict[str, Any]:
    delta: dict[str, Any] = {}
    if d.reasoning:
        delta["reasoning_content"] = d.reasoning
    if d.text:
        delta["content"] = d.text
    if d.tool_calls:
        delta["tool_calls"] = d.tool_calls  # each with its index in the choice
    return {"index": d.index, "delta": delta,
            "logprobs": {"content": d.logprobs, "refusal": None} if d.logprobs else None,
            "finish_reason": d.finish_reason}


def usage_chunk(env: Envelope, obj: str, usage: Usage) -> dict[str, Any]:
    return {**env.head(obj), "choices": [], "usage": usage.to_dict()}


# ------------------------------------------------------------------------------------------------- completions
def completion(env: Envelope, choices: list[ChoiceResult], usage: Usage) -> dict[str, Any]:
    out = [{"index": c.index, "text": c.text, "logprobs": c.logprobs, "finish_reason": c.finish_reason}
           for c in choices]
    return {**env.head("text_completion"), "choices": out, "usage": usage.to_dict()}


def completion_chunk(env: Envelope, deltas: list[ChoiceDelta], include_usage: bool) -> dict[str, Any]:
    obj = {**env.head("text_completion"),
           "choices": [{"index": d.index, "text": d.text, "logprobs": d.logprobs, "finish_reason": d.finish_reason}
                       for d in deltas]}
    if include_usage:
        obj["usage"] = None
    return obj
