"""Forced tool calls, constrained: with `tool_choice` "required" or a named function, the answer is one or more calls
exactly as the chat template writes them, each call's JSON valid against its function's `parameters` schema:

    <tool_call>\\n{"name": "get_weather", "arguments": {"city": "Paris"}}\\n</tool_call>[\\n<tool_call>\\n...]<|im_end|>

A call is written as the template writes it, `{"name": ` + one of the functions' names + `, "arguments": ` + the
arguments + `}`: the name is read by a `schema.SchemaMachine` for the enum of names, and then picks the machine of
that function's `parameters` (compiled as a schema of its own, so its `$ref`s resolve, and required to be an
object). The text around (`\\n`, and the `<tool_call>`/`</tool_call>` tokens, which are added tokens with ids of
their own) must come exactly. (So the call's own spacing and key order are the template's: a restriction of spelling,
never of what can be called.) After a call the answer may end, or (with parallel calls
allowed) another call may start. `ToolCallConstraint` has `JsonConstraint`'s interface, so the engine and sampler
use it unchanged.

With `tool_choice` "auto" (`ForcedCalls(lazy=True)`, llama.cpp's "lazy grammar") the model is free: it may answer in
text, call, or both. Only once it writes `<tool_call>` is the call constrained, as above, up to its `</tool_call>`;
then it is free again. So a call the model chooses to make is always one the parser reads and its arguments fit
their schema, and an answer without calls is untouched.

The server prefills an Instruct model's answer with `<tool_call>\\n` (plus `{"name": "N", "arguments": ` for a named
function, passed here as `written`), so the constraint starts inside the call; `LLM.chat(tool_choice=...)` does not
prefill, and the constraint asks for `<tool_call>\\n` first. A Thinking model reasons first: the constraint starts
after `</think>` and asks for `\\n\\n<tool_call>\\n` before the call.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from qwen3vl.engine.schema import SchemaError, SchemaMachine, compile_schema

PIECES, NAME, ARGS, BETWEEN = range(4)
Piece = bytes | int  # literal text, or the id of an added token
NAME_KEY, ARGS_KEY, CALL_END = b'{"name": ', b', "arguments": ', b"}"


@dataclass(frozen=True)
class ForcedCalls:
    """`SamplingParams.forced_tool_calls`: the functions that may be called, and what the prompt already holds."""

    functions: tuple[tuple[str, dict[str, Any]], ...]  # (name, schema of its arguments), from `forced_calls`
    named: bool = False  # the prompt holds the first call's `{"name": "N", "arguments": ` (one function)
    opened: bool = True  # the prompt holds `<tool_call>\n`; False: the model writes it (after </think> if Thinking)
    parallel: bool = True  # more calls may follow the first
    lazy: bool = False  # tool_choice "auto": free text; only a call the model opens is constrained (to its close)

    def machines(self) -> tuple[SchemaMachine, dict[str, SchemaMachine]]:
        """The machine for the name, and one per function for its arguments."""
        names = SchemaMachine({"enum": [name for name, _ in self.functions]})
        return names, {name: SchemaMachine(schema) for name, schema in self.functions}


def arguments_schema(name: str, parameters: Any) -> dict[str, Any]:
    """A function's `parameters` as the schema of its arguments: an object (None means any object)."""
    if parameters is None:
        return {"type": "object"}
    if not isinstance(parameters, dict):
        raise SchemaError(f"function {name!r}: parameters must be a JSON schema object")
    kind = parameters.get("type")
    if kind is None or (isinstance(kind, list) and "object" in kind):
        return {**parameters, "type": "object"}
    if kind != "object":
        raise SchemaError(f"function {name!r}: parameters must describe an object, got type {kind!r}")
    return parameters


def forced_calls(tools: Sequence[dict[str, Any]], name: str | None = None, *, named: bool = False,
                 opened: bool = True, parallel: bool = True, lazy: bool = False) -> ForcedCalls:
    """The constraint for calls to any of `tools` (OpenAI format), or to `name`. ValueError if there is no such
    function; SchemaError (naming the function and keyword) if a function's parameters cannot be enforced."""
    functions = []
    for tool in tools:
        fn = tool.get("function", tool) if isinstance(tool, dict) else {}
        fname = fn.get("name")
        if not isinstance(fname, str) or (name is not None and fname != name):
            continue
        schema = arguments_schema(fname, fn.get("parameters"))
        try:
            compile_schema(schema)
        except SchemaError as e:
            raise SchemaError(f"function {fname!r}: {e}") from None
        functions.append((fname, schema))
    if not functions:
        raise ValueError(f"no function named {name!r} among the tools" if name else "no tools to call")
    return ForcedCalls(tuple(functions), named=named and name is not None, opened=opened, parallel=parallel,
                       lazy=lazy)


class ToolCallConstraint:
    """One sequence's forced tool calls. `token_bytes(id)` gives a token's bytes, or None for an added token."""

    def __init__(self, token_bytes: Callable[[int], bytes | None], end_ids: Iterable[int], forced: ForcedCalls,
                 open_id: int, close_id: int, *, activate_after: int | None = None,
                 machines: tuple[SchemaMachine, dict[str, SchemaMachine]] | None = None):
        self.names, self.args = machines or forced.machines()
        self.token_bytes = token_bytes
        self.end_ids = frozenset(end_ids)
        self.open_id, self.close_id, self.parallel = open_id, close_id, forced.parallel
        self.activate_after = activate_after
        self.active = activate_after is None
        self.failed = False
        self.lazy = forced.lazy
        if forced.lazy:  # free until the model opens a call
            self.state = (BETWEEN, None)
        elif forced.named and forced.opened:  # the prompt holds `<tool_call>\n{"name": "N", "arguments": `
            self.state: tuple = self._enter(("args", forced.functions[0][0]))
        elif forced.opened:
            self.state = (PIECES, ((NAME_KEY,), "name"))
        else:  # as the template writes a call: after </think>'s "\n\n" on a Thinking model, at once otherwise
            opening = (b"\n\n", open_id, b"\n") if activate_after is not None else (open_id, b"\n")
            self.state = (PIECES, (opening + (NAME_KEY,), "name"))

    @property
    def complete(self) -> bool:
        if self.lazy:  # nothing is owed: min_tokens applies as without a constraint
            return False
        return self.active and self.state[0] == BETWEEN

    @property
    def free(self) -> bool:
        """Lazy, between calls: any token, and `<tool_call>` opens a constrained call."""
        return self.lazy and self.state[0] == BETWEEN

    @property
    def constrains(self) -> bool:
        """False while every token is allowed (lazy, outside a call; or given up): the sampler then skips the check."""
        return not (self.failed or (self.lazy and (self.free or not self.active)))

    def allows(self, token: int) -> bool:
        if not self.constrains:
            return True
        if not self.active:
            return token not in self.end_ids  # a Thinking model must get to its call: no end before </think>
        if self.token_bytes(token) is None and self._run(self.state, token) is not None:
            return True  # an expected tag (even if it is also a stop token)
        if token in self.end_ids:
            return self.state[0] == BETWEEN
        return self._run(self.state, token) is not None

    def advance(self, token: int) -> None:
        if not self.active:
            self.active = token == self.activate_after
            return
        if self.failed:
            return
        if self.free:
            if token == self.open_id:
                self.state = (PIECES, ((b"\n", NAME_KEY), "name"))
            return
        state = self._run(self.state, token)
        if state is None and token in self.end_ids:
            return
        if state is None:
            self.failed = True  # nothing allowed was left to pick: stop constraining
        else:
            self.state = state

    # -- moves --
    def _run(self, state: tuple, token: int) -> tuple | None:
        data = self.token_bytes(token)
        if data is None:  # an added token: only as the next piece of the text around a call
            if state[0] == BETWEEN:
                state = self._next_call()
            if state is None or state[0] != PIECES or state[1][0][0] != token:
                return None
            return self._pieces(state[1][0][1:], state[1][1])
        if not data:
            return None
        for b in data:
            state = self._byte(state, b)
            if state is None:
                return None
        return state

    def _next_call(self) -> tuple | None:
        return (PIECES, ((b"\n", self.open_id, b"\n", NAME_KEY), "name")) if self.parallel else None

    def _enter(self, then) -> tuple:
        if then == "name":
            return (NAME, (self.names.start(), b""))
        if then == "between":
            return (BETWEEN, None)
        return (ARGS, (then[1], self.args[then[1]].start()))

    def _pieces(self, rest: tuple[Piece, ...], then) -> tuple:
        return (PIECES, (rest, then)) if rest else self._enter(then)

    def _byte(self, state: tuple, b: int) -> tuple | None:
        phase, data = state
        if phase == BETWEEN:
            state = self._next_call()
            return None if state is None else self._byte(state, b)
        if phase == PIECES:
            rest, then = data
            head = rest[0]
            if not isinstance(head, bytes) or head[0] != b:
                return None
            return self._pieces(((head[1:],) if len(head) > 1 else ()) + rest[1:], then)
        if phase == NAME:
            machine_state, raw = data
            nxt = self.names.feed(machine_state, b)
            if nxt is None:
                return None
            raw += bytes((b,))
            if self.names.closed(nxt):
                return (PIECES, ((ARGS_KEY,), ("args", json.loads(raw))))
            return (NAME, (nxt, raw))
        fname, machine_state = data
        machine = self.args[fname]
        nxt = machine.feed(machine_state, b)
        if nxt is None:
            return None
        if machine.closed(nxt):
            return (PIECES, ((CALL_END + b"\n", self.close_id), "between"))
        return (ARGS, (fname, nxt))
