"""Forced tool calls, constrained: with `tool_choice` "required" or a named function, the answer is one or more calls
exactly as the chat template writes them, each call's JSON valid against its function's `parameters` schema:

    <tool_call>\\n{"name": "get_weather", "arguments": {"city": "Paris"}}\\n</tool_call>[\\n<tool_call>\\n...]<|im_end|>

The call's JSON is recognised by a `schema.SchemaMachine` for `call_schema(tools)` (an anyOf over the functions: the
name picks the arguments' schema); the text around it (`\\n`, and the `<tool_call>`/`</tool_call>` tokens, which are
added tokens with ids of their own) must come exactly. After a call the answer may end, or (with parallel calls
allowed) another call may start. `ToolCallConstraint` has `JsonConstraint`'s interface, so the engine and sampler
use it unchanged.

The server prefills an Instruct model's answer with `<tool_call>\\n` (plus `{"name": "N", "arguments": ` for a named
function, passed here as `written`), so the constraint starts inside the call; `LLM.chat(tool_choice=...)` does not
prefill, and the constraint asks for `<tool_call>\\n` first. A Thinking model reasons first: the constraint starts
after `</think>` and asks for `\\n\\n<tool_call>\\n` before the call.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from qwen3vl.engine.schema import Schema, SchemaMachine, compile_schema

PRE, CALL, POST, BETWEEN = range(4)
Piece = bytes | int  # literal text, or the id of an added token


@dataclass(frozen=True)
class ForcedCalls:
    """`SamplingParams.forced_tool_calls`: the schema of one call, and what the prompt already holds of the first."""

    schema: dict[str, Any]  # call_schema(tools[, name])
    written: str = ""  # the first call's JSON already prefilled (a named function's `{"name": "N", "arguments": `)
    opened: bool = True  # `<tool_call>\n` is prefilled; False: the model writes it (after </think> if Thinking)
    parallel: bool = True  # more calls may follow the first


def call_schema(tools: Sequence[dict[str, Any]], name: str | None = None) -> dict[str, Any]:
    """The JSON schema of one call `{"name": ..., "arguments": ...}` to any of `tools` (OpenAI format), or to `name`."""
    alternatives = []
    for tool in tools:
        fn = tool.get("function", tool) if isinstance(tool, dict) else {}
        if name is not None and fn.get("name") != name:
            continue
        params = fn.get("parameters")
        alternatives.append({"type": "object", "additionalProperties": False, "required": ["name", "arguments"],
                             "properties": {"name": {"const": fn.get("name")},
                                            "arguments": params if params is not None else {"type": "object"}}})
    if not alternatives:
        raise ValueError(f"no function named {name!r} among the tools" if name else "no tools to call")
    return alternatives[0] if len(alternatives) == 1 else {"anyOf": alternatives}


class ToolCallConstraint:
    """One sequence's forced tool calls. `token_bytes(id)` gives a token's bytes, or None for an added token."""

    def __init__(self, token_bytes: Callable[[int], bytes | None], end_ids: Iterable[int], schema: Schema | dict,
                 open_id: int, close_id: int, *, written: str = "", opened: bool = True, parallel: bool = True,
                 activate_after: int | None = None):
        self.machine = SchemaMachine(schema if isinstance(schema, Schema) else compile_schema(schema))
        self.token_bytes = token_bytes
        self.end_ids = frozenset(end_ids)
        self.open_id, self.close_id, self.parallel = open_id, close_id, parallel
        self.activate_after = activate_after
        self.active = activate_after is None
        self.failed = False
        if opened:  # the prompt already holds `<tool_call>\n` and `written`
            call = self.machine.run(self.machine.start(), written.encode())
            if call is None:
                raise ValueError(f"the prefilled call {written!r} does not fit the tools' schema")
            self.state: tuple = (CALL, call)
        elif activate_after is not None:  # after a Thinking model's </think>, as the template writes a call
            self.state = (PRE, (b"\n\n", open_id, b"\n"))
        else:
            self.state = (PRE, (open_id, b"\n"))

    @property
    def complete(self) -> bool:
        return self.active and self.state[0] == BETWEEN

    def allows(self, token: int) -> bool:
        if not self.active or self.failed:
            return True
        if token in self.end_ids:
            return self.state[0] == BETWEEN
        return self._run(self.state, token) is not None

    def advance(self, token: int) -> None:
        if not self.active:
            self.active = token == self.activate_after
            return
        if self.failed or token in self.end_ids:
            return
        state = self._run(self.state, token)
        if state is None:
            self.failed = True  # nothing allowed was left to pick: stop constraining
        else:
            self.state = state

    # -- moves --
    def _run(self, state: tuple, token: int) -> tuple | None:
        data = self.token_bytes(token)
        if data is None:  # an added token: only as the next piece of the text around a call
            return self._piece(self._open(state) if state[0] == BETWEEN else state, token)
        if not data:
            return None
        for b in data:
            state = self._byte(state, b)
            if state is None:
                return None
        return state

    def _open(self, state: tuple) -> tuple | None:
        """From between calls: the next call's opening, if parallel calls are allowed."""
        return (PRE, (b"\n", self.open_id, b"\n")) if self.parallel else None

    def _byte(self, state: tuple, b: int) -> tuple | None:
        phase, data = state
        if phase == BETWEEN:
            state = self._open(state)
            return None if state is None else self._byte(state, b)
        if phase == CALL:
            nxt = self.machine.feed(data, b)
            if nxt is None:
                return None
            return (POST, (b"\n", self.close_id)) if self.machine.closed(nxt) else (CALL, nxt)
        head = data[0]
        if not isinstance(head, bytes) or head[0] != b:
            return None
        return self._advance_pieces(phase, (head[1:],) + data[1:] if len(head) > 1 else data[1:])

    def _piece(self, state: tuple | None, token: int) -> tuple | None:
        if state is None or state[0] not in (PRE, POST) or state[1][0] != token:
            return None
        return self._advance_pieces(state[0], state[1][1:])

    def _advance_pieces(self, phase: int, rest: tuple[Piece, ...]) -> tuple:
        if rest:
            return (phase, rest)
        return (CALL, self.machine.start()) if phase == PRE else (BETWEEN, None)
