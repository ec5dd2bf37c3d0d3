"""OpenAI's Responses API (`POST /v1/responses`, `client.responses.create`) on top of the chat path.

A Responses request is translated into a chat completions body (`translate`) and runs exactly as that chat request
would: the same template, media handling, sampling, JSON and tool-call constraints and errors. Its result is then
written as a Response object (`response_object`), or, streamed, as Responses events (`ResponseEvents`).

The request, field by field (Responses -> chat completions):

* `input`: a string is one user message. Items: `message` items by role (`developer` -> `system`), with
  `input_text` / `output_text` -> text parts and `input_image` -> `image_url` (chat parts such as `video_url` pass
  as they are); `function_call` items -> the assistant's `tool_calls` (joining the assistant message before them);
  `function_call_output` -> a `tool` message; a `reasoning` item -> the next assistant message's
  `reasoning_content`.
* `instructions` -> a first system message, joined with the input's system/developer messages (all of them for an
  Instruct model, whose template shows only a first one; the opening ones for a Thinking model);
  `max_output_tokens` -> `max_completion_tokens`.
* `tools` (`{"type": "function", "name", ...}`) -> `{"type": "function", "function": {...}}`; `tool_choice`
  `{"type": "function", "name"}` -> `{"type": "function", "function": {"name"}}`.
* `text.format` (`json_object`, `json_schema`) -> `response_format`; `top_logprobs` or
  `include: ["message.output_text.logprobs"]` -> `logprobs`, `top_logprobs`.
* `temperature`, `top_p`, `parallel_tool_calls`, `stream`, and every `extra_body` field the chat endpoint reads
  (`top_k`, `seed`, `stop`, media budgets, ...) pass as they are.

Finished responses are kept in memory (`ResponseStore`, bounded; `store: false` keeps one out), so
`previous_response_id` continues a conversation and `GET`/`DELETE /v1/responses/{id}` work. `conversation`,
`background` and `prompt` (stored prompts) are refused by name, as are tools other than functions and input files.
`reasoning` (effort, summary) is accepted and has no effect: a Thinking model always reasons, an Instruct one never.
"""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from qwen3vl.serve.errors import APIError, bad_request
from qwen3vl.serve.jobs import Deltas, Finished, Usage
from qwen3vl.serve.loop import RequestHandle
from qwen3vl.serve.outputs import ChoiceDelta, ChoiceResult
from qwen3vl.serve.responses import sse
from qwen3vl.serve.transport import stream_events

# request fields that need state this server does not keep
_STATEFUL = ("conversation", "prompt")
# fields this module translates (everything else passes to the chat request as it is, e.g. extra_body's)
_OWN = {"input", "instructions", "max_output_tokens", "tools", "tool_choice", "text", "top_logprobs", "include",
        "reasoning", "store", "metadata", "truncation", "background", "max_tool_calls", "service_tier",
        "prompt_cache_key", "safety_identifier", "user", "stream_options", "previous_response_id", *_STATEFUL}
LOGPROBS_INCLUDE = "message.output_text.logprobs"

log = logging.getLogger(__name__)


def _new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


# ------------------------------------------------------------------------------------------------- request
def translate(body: Any, history: list[dict[str, Any]] | None = None, *,
              every_system: bool = True) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(the chat completions body that runs a Responses request, the conversation a stored response keeps); a 400
    naming the field for what cannot run.

    `history`: the chat messages of the response it continues (`previous_response_id`), put before its input (after
    its instructions: those of the earlier response are not carried over). The system messages (instructions,
    developer and system items) are joined into the first one: all of them with `every_system` (the Instruct
    template drops every system message but the first), else those that open the conversation (the Thinking template
    shows later ones where they are). The conversation kept is the messages before that join, without the
    instructions."""
    if not isinstance(body, dict):
        raise bad_request("the request body must be a JSON object")
    for key in _STATEFUL:
        if body.get(key) is not None:
            raise bad_request(f"{key} is not supported: this server keeps no conversations or stored prompts; "
                              f"send the conversation as input, or continue a response with previous_response_id",
                              key)
    if body.get("background"):
        raise bad_request("background responses are not supported by this server", "background")
    if body.get("truncation") not in (None, "disabled"):
        raise bad_request("truncation 'auto' is not supported: a prompt longer than the context is refused",
                          "truncation")
    if body.get("max_tool_calls") is not None:
        raise bad_request("max_tool_calls is not supported by this server (use parallel_tool_calls: false for at "
                          "most one call)", "max_tool_calls")
    _check_echoed(body)
    out = {k: v for k, v in body.items() if k not in _OWN}
    messages = []
    instructions = body.get("instructions")
    if instructions is not None:
        if not isinstance(instructions, str):
            raise bad_request("instructions must be a string", "instructions")
        messages.append({"role": "system", "content": instructions})
    conversation = (history or []) + _messages(body.get("input"))
    _check_call_outputs(conversation)
    out["messages"] = _one_system(messages + conversation, every_system)
    if body.get("max_output_tokens") is not None:
        out["max_completion_tokens"] = body["max_output_tokens"]
    if body.get("tools") is not None:
        out["tools"] = _tools(body["tools"])
    if body.get("tool_choice") is not None:
        out["tool_choice"] = _tool_choice(body["tool_choice"])
    fmt = _format(body.get("text"))
    if fmt is not None:
        out["response_format"] = fmt
    include = body.get("include") or []
    if not isinstance(include, list):
        raise bad_request("include must be a list of strings", "include")
    if body.get("top_logprobs") is not None or LOGPROBS_INCLUDE in include:
        out["logprobs"] = True
        if body.get("top_logprobs") is not None:
            out["top_logprobs"] = body["top_logprobs"]
    return out, conversation


def _messages(items: Any) -> list[dict[str, Any]]:
    if isinstance(items, str):
        return [{"role": "user", "content": items}]
    if not isinstance(items, list) or not items:
        raise bad_request("input must be a string or a non-empty list of input items", "input")
    messages: list[dict[str, Any]] = []
    reasoning: str | None = None  # a reasoning item's text, for the assistant message that follows it

    def assistant() -> dict[str, Any]:
        """The assistant message a function call joins: the last message if it is the assistant's, else a new one."""
        nonlocal reasoning
        if not messages or messages[-1]["role"] != "assistant":
            messages.append({"role": "assistant", "content": ""})
        if reasoning is not None:
            messages[-1]["reasoning_content"] = reasoning
            reasoning = None
        return messages[-1]

    def unanswered() -> None:
        """A reasoning item that no answer followed (a turn cut off while reasoning): an assistant turn of its own."""
        nonlocal reasoning
        if reasoning is not None:
            messages.append({"role": "assistant", "content": "", "reasoning_content": reasoning})
            reasoning = None

    for i, item in enumerate(items):
        where = f"input[{i}]"
        if not isinstance(item, dict):
            raise bad_request(f"{where}: an input item must be an object", "input")
        kind = item.get("type", "message")
        if kind == "message":
            role = item.get("role")
            if role not in ("user", "assistant", "system", "developer"):
                raise bad_request(f"{where}: role must be user, assistant, system or developer, got {role!r}", "input")
            content = _content(item.get("content"), where)
            if role == "assistant":
                assistant()  # (a new message unless the last one is the assistant's)
                last = messages[-1]
                last["content"] = _joined([last["content"], content]) if last["content"] else content
            else:
                unanswered()
                messages.append({"role": "system" if role == "developer" else role, "content": content})
        elif kind == "function_call":
            name, arguments, call_id = item.get("name"), item.get("arguments"), item.get("call_id")
            if not isinstance(name, str) or not isinstance(arguments, str) or not isinstance(call_id, str):
                raise bad_request(f"{where}: a function_call item needs string name, arguments and call_id", "input")
            assistant().setdefault("tool_calls", []).append(
                {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}})
        elif kind == "function_call_output":
            call_id, output = item.get("call_id"), item.get("output")
            if not isinstance(call_id, str):
                raise bad_request(f"{where}: a function_call_output item needs a string call_id", "input")
            unanswered()
            messages.append({"role": "tool", "tool_call_id": call_id, "content": _content(output, where)})
        elif kind == "reasoning":
            parts = item.get("content") or item.get("summary") or []
            if not isinstance(parts, list) or not all(isinstance(p, dict) for p in parts):
                raise bad_request(f"{where}: a reasoning item's content must be a list of parts", "input")
            reasoning = "".join(str(p.get("text", "")) for p in parts)
        else:
            raise bad_request(f"{where}: input items of type {kind!r} are not supported (message, function_call, "
                              f"function_call_output, reasoning)", "input")
    if reasoning is not None:
        raise bad_request("input: the last item is a reasoning item; it must be followed by the assistant's message "
                          "or function call", "input")
    return messages


def _check_call_outputs(messages: list[dict[str, Any]]) -> None:
    """Each function_call_output answers a function_call made before it (in the input or the continued response), as
    OpenAI requires."""
    calls: set[str] = set()
    for m in messages:
        calls.update(c["id"] for c in m.get("tool_calls") or [])
        if m["role"] == "tool" and m["tool_call_id"] not in calls:
            raise bad_request(f"input: no function_call with call_id {m['tool_call_id']!r} comes before its "
                              "function_call_output", "input")


def _one_system(messages: list[dict[str, Any]], every_system: bool) -> list[dict[str, Any]]:
    """The system messages joined into one first message: all of them, or only those that open `messages`."""
    head = 0
    while head < len(messages) and messages[head]["role"] == "system":
        head += 1
    picked = [i for i, m in enumerate(messages) if m["role"] == "system" and (every_system or i < head)]
    if len(picked) < 2 and (not picked or picked[0] == 0):
        return messages
    joined = _joined([messages[i]["content"] for i in picked], "\n\n")
    taken = set(picked)
    return [{"role": "system", "content": joined}, *(m for i, m in enumerate(messages) if i not in taken)]


def _content(content: Any, where: str) -> str | list[dict[str, Any]]:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise bad_request(f"{where}: content must be a string or a list of content parts", "input")
    parts = []
    for j, part in enumerate(content):
        if not isinstance(part, dict):
            raise bad_request(f"{where}.content[{j}]: a content part must be an object", "input")
        kind = part.get("type")
        if kind in ("input_text", "output_text"):
            parts.append({"type": "text", "text": part.get("text")})
        elif kind == "input_image":
            if part.get("file_id") is not None or not isinstance(part.get("image_url"), str):
                raise bad_request(f"{where}.content[{j}]: an input_image needs image_url (a URL or a data URI); "
                                  f"file_id is not supported (no files API)", "input")
            parts.append({"type": "image_url", "image_url": {"url": part["image_url"]}})
        elif kind in ("input_file", "input_audio", "refusal"):
            raise bad_request(f"{where}.content[{j}]: {kind} parts are not supported", "input")
        else:  # a chat content part (text, image_url, video_url, image, video): checked as the chat endpoint does
            parts.append(part)
    return parts


def _joined(contents: list[str | list], sep: str = "") -> str | list:
    """Message contents as one: a string if all are strings, else a list of parts (strings as text parts)."""
    if all(isinstance(c, str) for c in contents):
        return sep.join(contents)
    out: list = []
    for k, c in enumerate(contents):
        out += ([{"type": "text", "text": sep}] if k and sep else []) + (
            [{"type": "text", "text": c}] if isinstance(c, str) else list(c))
    return out


def _tools(tools: Any) -> list[dict[str, Any]]:
    if not isinstance(tools, list):
        raise bad_request("tools must be a list", "tools")
    out = []
    for i, tool in enumerate(tools):
        if not isinstance(tool, dict) or tool.get("type") != "function":
            kind = tool.get("type") if isinstance(tool, dict) else type(tool).__name__
            raise bad_request(f"tools[{i}]: only function tools are supported, got {kind!r}", "tools")
        fn = {k: tool[k] for k in ("name", "description", "parameters", "strict") if tool.get(k) is not None}
        out.append({"type": "function", "function": fn})
    return out


def _tool_choice(choice: Any) -> Any:
    if isinstance(choice, str):
        return choice
    if isinstance(choice, dict) and choice.get("type") == "function":
        return {"type": "function", "function": {"name": choice.get("name")}}
    if isinstance(choice, dict) and choice.get("type") == "allowed_tools":
        raise bad_request("tool_choice allowed_tools is not supported (send only the allowed tools)", "tool_choice")
    raise bad_request("tool_choice must be none, auto, required or {\"type\": \"function\", \"name\": ...}",
                      "tool_choice")


def _format(text: Any) -> dict[str, Any] | None:
    if text is None:
        return None
    if not isinstance(text, dict):
        raise bad_request("text must be an object, e.g. {\"format\": {\"type\": \"json_object\"}}", "text")
    fmt = text.get("format")
    if fmt is None or (isinstance(fmt, dict) and fmt.get("type") == "text"):
        return None
    if not isinstance(fmt, dict) or fmt.get("type") not in ("json_object", "json_schema"):
        raise bad_request("text.format.type must be text, json_object or json_schema", "text")
    if fmt["type"] == "json_object":
        return {"type": "json_object"}
    for key, kind, name in (("name", str, "a string"), ("schema", dict, "an object (the JSON schema)")):
        if not isinstance(fmt.get(key), kind):
            raise bad_request(f"text.format.{key} must be {name} for a json_schema format", "text.format")
    if fmt.get("strict") is not None and not isinstance(fmt["strict"], bool):
        raise bad_request("text.format.strict must be true or false", "text.format")
    schema = {k: fmt[k] for k in ("name", "description", "schema", "strict") if fmt.get(k) is not None}
    return {"type": "json_schema", "json_schema": schema}


def output_messages(output: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A response's output items as the chat messages that continue its conversation."""
    items = list(output)
    while items and items[-1]["type"] == "reasoning":  # (cut off while reasoning: nothing followed it)
        items.pop()
    return _messages(items) if items else []


def input_items(items: Any) -> list[dict[str, Any]]:
    """A request's input as the items `GET /v1/responses/{id}/input_items` lists: each with a type and an id (a string
    input is one user message)."""
    if isinstance(items, str):
        items = [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": items}]}]
    prefixes = {"message": "msg", "function_call": "fc", "function_call_output": "fco", "reasoning": "rs"}
    out = []
    for item in items:
        kind = item.get("type", "message")
        listed = {"type": kind, **item, "id": item.get("id") or _new_id(prefixes.get(kind, "item"))}
        if kind == "message":
            listed.setdefault("status", "completed")
            if isinstance(listed.get("content"), str):
                part = "output_text" if listed.get("role") == "assistant" else "input_text"
                listed["content"] = [{"type": part, "text": listed["content"]}]
        out.append(listed)
    return out


def item_page(items: list[dict[str, Any]], order: str = "desc", limit: int = 20, after: str | None = None
              ) -> dict[str, Any]:
    """One page of a list of items, as the API's cursor pages are: `order` asc or desc, at most `limit` (1-100)
    after the item `after`."""
    if order not in ("asc", "desc"):
        raise bad_request("order must be asc or desc", "order")
    if not 1 <= limit <= 100:
        raise bad_request("limit must be between 1 and 100", "limit")
    ordered = items if order == "asc" else items[::-1]
    start = 0
    if after is not None:
        ids = [item["id"] for item in ordered]
        if after not in ids:
            raise bad_request(f"after: no item {after!r} in this response's input", "after")
        start = ids.index(after) + 1
    page = ordered[start:start + limit]
    return {"object": "list", "data": page, "first_id": page[0]["id"] if page else None,
            "last_id": page[-1]["id"] if page else None, "has_more": start + limit < len(ordered)}


@dataclass
class _Stored:
    response: dict[str, Any]
    conversation: list[dict[str, Any]]  # the chat messages that continue it
    inputs: list[dict[str, Any]]  # its request's own input items
    conversation_bytes: int  # what the conversation counts (shared earlier turns counted again)
    size: int  # what the entry counts against the store


class ResponseStore:
    """Finished responses kept in memory, for `previous_response_id` and `GET`/`DELETE /v1/responses/{id}`: each
    with the chat messages of its whole conversation. At most `max_items` of them and `max_mb` of their JSON; the
    oldest go first. Used from the event loop only."""

    def __init__(self, max_items: int = 1000, max_mb: float = 256.0):
        self.max_items, self.max_bytes = max_items, int(max_mb * 2**20)
        self._items: OrderedDict[str, _Stored] = OrderedDict()
        self.bytes = 0

    @property
    def enabled(self) -> bool:
        return self.max_items > 0 and self.max_bytes > 0

    def __len__(self) -> int:
        return len(self._items)

    def put(self, response: dict[str, Any], conversation: list[dict[str, Any]], previous: str | None = None,
            inputs: list[dict[str, Any]] | None = None) -> bool:
        """Keep `response` with its conversation (and its request's input items); False if it alone is more than the
        store holds. `previous`: the stored response the conversation continues (its messages are shared, and their
        size is counted once more without serialising them again)."""
        known = self._items.get(previous) if previous is not None else None
        base, skip = (known.conversation_bytes, len(known.conversation)) if known is not None else (0, 0)
        conversation_bytes = base + _nbytes(conversation[skip:])
        size = conversation_bytes + _nbytes(response) + _nbytes(inputs or [])
        if size > self.max_bytes:
            log.warning("response %s not stored: its %d MB are more than the store holds", response["id"], size >> 20)
            return False
        self._items[response["id"]] = _Stored(response, conversation, inputs or [], conversation_bytes, size)
        self.bytes += size
        while len(self._items) > self.max_items or self.bytes > self.max_bytes:
            _, old = self._items.popitem(last=False)
            self.bytes -= old.size
        return True

    def _entry(self, response_id: Any, param: str | None) -> _Stored:
        if not isinstance(response_id, str):
            raise bad_request(f"{param} must be a string", param)
        if response_id not in self._items:
            hint = "" if self.enabled else " (this server stores no responses: --responses-store 0)"
            raise APIError(404, f"no stored response {response_id!r}: it was not stored (store: false), was "
                                f"deleted, or was evicted from this server's store{hint}", param, "not_found")
        return self._items[response_id]

    def get(self, response_id: Any) -> dict[str, Any]:
        return self._entry(response_id, None).response

    def inputs(self, response_id: Any) -> list[dict[str, Any]]:
        """The stored response's own input items (not those of the responses it continues)."""
        return self._entry(response_id, None).inputs

    def conversation(self, response_id: Any) -> list[dict[str, Any]]:
        """The chat messages that continue the stored response (a 404 naming `previous_response_id` if none)."""
        return self._entry(response_id, "previous_response_id").conversation

    def delete(self, response_id: Any) -> None:
        self.bytes -= self._entry(response_id, None).size
        del self._items[response_id]


def _nbytes(value: Any) -> int:
    return len(json.dumps(value, ensure_ascii=False).encode())


def renamed(error: APIError) -> APIError:
    """A chat request's error, its field named as the Responses request spells it (`messages[2].content` ->
    `input`, `max_completion_tokens` -> `max_output_tokens`, `tools[0].function.name` -> `tools[0].name`, ...)."""
    old = error.param
    if not old:
        return error
    new = re.sub(r"^messages(\[\d+\])?", "input", old)
    new = re.sub(r"^max_completion_tokens", "max_output_tokens", new)
    new = re.sub(r"^response_format", "text.format", new)
    new = re.sub(r"^(tools\[\d+\]|tool_choice)\.function", r"\1", new)
    if new != old:
        message = new + error.message[len(old):] if error.message.startswith(old) else error.message
        error = APIError(error.status, message, new, error.code, error.type)
    return error


def _check_echoed(body: dict[str, Any]) -> None:
    """Fields that only come back in the Response object: their types (and OpenAI's bounds on metadata)."""
    metadata = body.get("metadata")
    if metadata is not None:
        if not isinstance(metadata, dict) or len(metadata) > 16:
            raise bad_request("metadata must be an object of at most 16 string keys and values", "metadata")
        for k, v in metadata.items():
            if not isinstance(v, str) or len(k) > 64 or len(v) > 512:
                raise bad_request(f"metadata[{k[:64]!r}]: keys are strings of at most 64 characters, values of "
                                  "at most 512", "metadata")
    for key, kind, name in (("user", str, "a string"), ("reasoning", dict, "an object")):
        if body.get(key) is not None and not isinstance(body[key], kind):
            raise bad_request(f"{key} must be {name}", key)


# ------------------------------------------------------------------------------------------------- response
class Echo:
    """The request fields a Response object repeats, and its identity."""

    def __init__(self, body: dict[str, Any], model: str, keep: Callable[[dict[str, Any]], bool] | None = None):
        self.keep = keep  # stores the finished response (False if it could not)
        self.id = _new_id("resp")
        self.created_at = int(time.time())
        self.model = model
        tool_choice = body.get("tool_choice")
        self.fields = {
            "instructions": body.get("instructions"), "max_output_tokens": body.get("max_output_tokens"),
            "metadata": body.get("metadata") or {}, "parallel_tool_calls": body.get("parallel_tool_calls") is not False,
            "temperature": body.get("temperature"), "top_p": body.get("top_p"),
            "tool_choice": "auto" if tool_choice is None else tool_choice, "tools": body.get("tools") or [],
            "text": body.get("text") or {"format": {"type": "text"}}, "top_logprobs": body.get("top_logprobs"),
            "reasoning": body.get("reasoning"), "store": keep is not None, "truncation": "disabled",
            "background": False, "previous_response_id": body.get("previous_response_id"), "user": body.get("user"),
        }

    def finished(self, response: dict[str, Any]) -> dict[str, Any]:
        """The finished response, stored when it is to be (`store` says whether it was)."""
        if self.keep is not None:
            response["store"] = self.keep(response)
        return response

    def response(self, status: str, output: list[dict[str, Any]], usage: dict[str, Any] | None = None,
                 incomplete: str | None = None, error: dict[str, Any] | None = None) -> dict[str, Any]:
        return {"id": self.id, "object": "response", "created_at": self.created_at, "status": status,
                "completed_at": int(time.time()) if status == "completed" else None, "model": self.model,
                "output": output, "error": error,
                "incomplete_details": {"reason": incomplete} if incomplete else None,
                "usage": usage, **self.fields}


def usage_dict(usage: Usage) -> dict[str, Any]:
    return {"input_tokens": usage.prompt_tokens,
            "input_tokens_details": {"cached_tokens": usage.cached_tokens, "cache_write_tokens": 0},
            "output_tokens": usage.completion_tokens,
            "output_tokens_details": {"reasoning_tokens": usage.reasoning_tokens},
            "total_tokens": usage.prompt_tokens + usage.completion_tokens}


def _reasoning_item(item_id: str, text: str, status: str = "completed") -> dict[str, Any]:
    return {"id": item_id, "type": "reasoning", "summary": [], "status": status,
            "content": [{"type": "reasoning_text", "text": text}]}


def _message_item(item_id: str, text: str, logprobs: list | None, status: str = "completed") -> dict[str, Any]:
    return {"id": item_id, "type": "message", "role": "assistant", "status": status,
            "content": [_text_part(text, logprobs)]}


def _text_part(text: str, logprobs: list | None) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": logprobs or []}


def _call_item(call: dict[str, Any], status: str = "completed") -> dict[str, Any]:
    """An OpenAI chat tool call as a function_call output item (the chat call id is its call_id)."""
    return {"id": "fc_" + call["id"].removeprefix("call_"), "type": "function_call", "status": status,
            "call_id": call["id"], "name": call["function"]["name"], "arguments": call["function"]["arguments"]}


def _finish(reason: str | None) -> tuple[str, str | None]:
    """(status, incomplete reason) for a chat finish_reason."""
    return ("incomplete", "max_output_tokens") if reason == "length" else ("completed", None)


def response_object(echo: Echo, choices: list[ChoiceResult], usage: Usage) -> dict[str, Any]:
    """A finished request as one Response object: reasoning, then the message, then the function calls."""
    (c,) = choices
    output = []
    if c.reasoning:
        output.append(_reasoning_item(_new_id("rs"), c.reasoning))
    if c.text or not c.tool_calls:
        output.append(_message_item(_new_id("msg"), c.text, c.logprobs))
    output += [_call_item(call) for call in c.tool_calls]
    status, incomplete = _finish(c.finish_reason)
    return echo.finished({**echo.response(status, output, usage_dict(usage), incomplete), **c.extra})


class ResponseEvents:
    """A streamed request's deltas as Responses events (`response.created` ... `response.completed`).

    Output items open and close as the answer goes: reasoning, then text, each tool call as it completes (its
    arguments in one delta), and text after a call in a new message item. The final event carries the whole
    response, its items as they were streamed."""

    def __init__(self, echo: Echo):
        self.echo = echo
        self.seq = 0
        self.output: list[dict[str, Any]] = []  # items done so far (the open one is in self.open)
        self.open: dict[str, Any] | None = None  # {"item": ..., "text": ..., "logprobs": [...]}
        self.finish_reason: str | None = None
        self.logprobs: list = []  # logprobs of tokens not yet sent with a text delta (reasoning, held-back text)

    def _event(self, kind: str, **fields: Any) -> str:
        obj = {"type": kind, "sequence_number": self.seq, **fields}
        self.seq += 1
        return f"event: {kind}\n" + sse(obj)

    def start(self) -> list[str]:
        snapshot = self.echo.response("in_progress", [])
        return [self._event("response.created", response=snapshot),
                self._event("response.in_progress", response=snapshot)]

    def _index(self) -> int:
        return len(self.output)

    def _open(self, kind: str) -> list[str]:
        if self.open is not None and self.open["item"]["type"] == kind:
            return []
        out = self._close()
        item_id = _new_id("rs" if kind == "reasoning" else "msg")
        item = (_reasoning_item(item_id, "", "in_progress") if kind == "reasoning"
                else _message_item(item_id, "", None, "in_progress"))
        part = {"type": "reasoning_text", "text": ""} if kind == "reasoning" else _text_part("", None)
        empty = {**item, "content": []}
        self.open = {"item": item, "text": "", "logprobs": []}
        return out + [self._event("response.output_item.added", output_index=self._index(), item=empty),
                      self._event("response.content_part.added", item_id=item_id, output_index=self._index(),
                                  content_index=0, part=part)]

    def _close(self) -> list[str]:
        if self.open is None:
            return []
        item, text, logprobs = self.open["item"], self.open["text"], self.open["logprobs"]
        self.open = None
        where = {"item_id": item["id"], "output_index": self._index(), "content_index": 0}
        if item["type"] == "reasoning":
            done = _reasoning_item(item["id"], text)
            events = [self._event("response.reasoning_text.done", **where, text=text)]
        else:
            done = _message_item(item["id"], text, logprobs)
            events = [self._event("response.output_text.done", **where, text=text, logprobs=logprobs)]
        events += [self._event("response.content_part.done", **where, part=done["content"][0]),
                   self._event("response.output_item.done", output_index=self._index(), item=done)]
        self.output.append(done)
        return events

    def _text(self, kind: str, delta: str) -> list[str]:
        out = self._open(kind)
        self.open["text"] += delta
        item_id = self.open["item"]["id"]
        where = {"item_id": item_id, "output_index": self._index(), "content_index": 0}
        if kind == "reasoning":
            return out + [self._event("response.reasoning_text.delta", **where, delta=delta)]
        logprobs, self.logprobs = self.logprobs, []
        self.open["logprobs"] += logprobs
        return out + [self._event("response.output_text.delta", **where, delta=delta, logprobs=logprobs)]

    def _call(self, call: dict[str, Any]) -> list[str]:
        out = self._close()
        item = _call_item(call)
        index = self._index()
        self.output.append(item)
        return out + [
            self._event("response.output_item.added", output_index=index,
                        item={**item, "status": "in_progress", "arguments": ""}),
            self._event("response.function_call_arguments.delta", item_id=item["id"], output_index=index,
                        delta=item["arguments"]),
            self._event("response.function_call_arguments.done", item_id=item["id"], output_index=index,
                        name=item["name"], arguments=item["arguments"]),
            self._event("response.output_item.done", output_index=index, item=item)]

    def delta(self, d: ChoiceDelta) -> list[str]:
        """Events for one delta. Its logprobs go with the next text delta (a delta may carry only logprobs, of
        reasoning or of text held back), so an item opens only for text."""
        out = []
        self.logprobs += d.logprobs or []
        if d.reasoning:
            out += self._text("reasoning", d.reasoning)
        if d.text:
            out += self._text("message", d.text)
        for call in d.tool_calls or []:
            out += self._call({k: v for k, v in call.items() if k != "index"})
        if d.finish_reason is not None:
            self.finish_reason = d.finish_reason
        return out

    def finish(self, usage: Usage) -> list[str]:
        out = []
        if self.open is not None and self.open["item"]["type"] == "message":
            self.open["logprobs"] += self.logprobs  # (any after the last text: a stream sends no delta without text)
        kinds = {item["type"] for item in self.output} | ({self.open["item"]["type"]} if self.open else set())
        if not kinds & {"message", "function_call"}:  # no answer (none, or cut off while reasoning): an empty
            out += self._open("message")  # message, as the plain response has
        out += self._close()
        status, incomplete = _finish(self.finish_reason)
        final = self.echo.finished(self.echo.response(status, self.output, usage_dict(usage), incomplete))
        return out + [self._event(f"response.{status}", response=final)]

    def fail(self, error: APIError) -> list[str]:
        error = renamed(error)
        code = error.code or error.type
        out = [self._event("error", code=code, message=error.message, param=error.param)]
        # (a Response's error.code is one of OpenAI's few; the event above keeps ours)
        kind = {429: "rate_limit_exceeded", 400: "invalid_prompt"}.get(error.status, "server_error")
        failed = self.echo.response("failed", self.output, None, error={"code": kind, "message": error.message})
        return out + [self._event("response.failed", response=failed)]


async def response_events(echo: Echo, handle: RequestHandle) -> AsyncIterator[str]:
    events = ResponseEvents(echo)
    for chunk in events.start():
        yield chunk
    async for ev in stream_events(handle):
        if isinstance(ev, Deltas):
            for d in ev.deltas:
                for chunk in events.delta(d):
                    yield chunk
        elif isinstance(ev, Finished):
            for chunk in events.finish(ev.usage):
                yield chunk
        else:
            for chunk in events.fail(ev):
                yield chunk
