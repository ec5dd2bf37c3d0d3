"""JSON mode: decoding constrained so the answer is one syntactically valid JSON object, then end of sequence.

`JsonMachine` is a byte-level pushdown automaton for JSON (RFC 8259): a state is a small immutable tuple, `feed`
gives the state after one byte (None when the byte cannot come next), so testing a candidate token is running its
bytes from the current state, with nothing to copy or undo. `JsonConstraint` keeps one sequence's state and answers
"may this token come next?" from the tokenizer's exact token bytes (`Tokenizer.token_bytes`); added/special tokens
never may, the end-of-sequence tokens only once the object is complete, and after it only a little whitespace
(`final`).

The sampler (`sampling.sample`) asks only about the tokens it is about to pick, best first (greedy) or as drawn
(sampling, where a rejected draw is removed and the draw repeated: this samples exactly the filtered distribution
restricted to the allowed tokens). A whole-vocabulary mask is never built, so a step costs a few token checks when
the model is already writing JSON, as it is asked to in JSON mode.

With a JSON schema (`schema=`, compiled by `engine/schema.py`) the machine is a `schema.SchemaMachine` and the answer
is a document valid against the schema. Limits of plain JSON mode: the answer starts with
`{` at once and runs of whitespace are capped (`WS_BASE + WS_PER_LEVEL * depth`, room for pretty-printing) so a
model cannot pad forever; strings are checked for JSON escapes, control characters and UTF-8 well-formedness
(byte-level tokens can hold part of a character, or a stray continuation byte); numbers are at most `MAX_NUMBER`
characters. With `activate_after` (a Thinking model's `</think>` id) the constraint starts after the reasoning, and
the answer may not end before it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

WS_BASE, WS_PER_LEVEL = 8, 4  # a whitespace run may be WS_BASE + WS_PER_LEVEL * depth bytes (pretty-printing fits)
MAX_NUMBER = 64  # characters in a number: a model looping on digits must stop (and Python reads ints to 4,300)
WS = frozenset(b" \t\n\r")
DIGITS = frozenset(b"0123456789")
HEX = frozenset(b"0123456789abcdefABCDEF")
ESCAPES = frozenset(b'"\\/bfnrt')
LITERALS = {ord("t"): b"rue", ord("f"): b"alse", ord("n"): b"ull"}

def utf8_step(pending: tuple | None, b: int) -> tuple | None | bool:
    """UTF-8 well-formedness, a byte at a time. `pending`: None, or (continuation bytes owed, lowest and highest
    allowed next byte). Returns the new pending state (None: a character is complete), or False if `b` is invalid."""
    if pending is not None:
        left, lo, hi = pending
        if not lo <= b <= hi:
            return False
        return (left - 1, 0x80, 0xBF) if left > 1 else None
    if b < 0x80:
        return None
    if 0xC2 <= b <= 0xDF:
        return (1, 0x80, 0xBF)
    if 0xE0 <= b <= 0xEF:  # no overlong forms (E0 A0..), no surrogates (ED ..9F)
        return (2, 0xA0 if b == 0xE0 else 0x80, 0x9F if b == 0xED else 0xBF)
    if 0xF0 <= b <= 0xF4:
        return (3, 0x90 if b == 0xF0 else 0x80, 0x8F if b == 0xF4 else 0xBF)
    return False


# modes
TOP, VALUE, ARR_FIRST, OBJ_FIRST, OBJ_KEY, COLON, AFTER, STRING, KEY, ESC, UHEX, LITERAL = range(12)
N_MINUS, N_ZERO, N_INT, N_DOT, N_FRAC, N_E, N_ESIGN, N_EXP = range(20, 28)
NUMBER_ENDS = frozenset({N_ZERO, N_INT, N_FRAC, N_EXP})  # a number may stop here

# state: (stack of b"{" / b"[" as bytes, mode, aux, whitespace run); aux: UTF-8 bytes owed in STRING/KEY, the string
# mode to go back to in ESC, (mode, hex digits left) in UHEX, the rest of a literal
State = tuple


class ByteMachine:
    """What the JSON and schema recognisers share: `feed(state, byte)` gives the next state or None."""

    def feed(self, state, b: int):
        raise NotImplementedError

    def run(self, state, data: bytes):
        """The state after `data`, or None as soon as a byte cannot come next."""
        for b in data:
            if state is None:
                return None
            state = self.feed(state, b)
        return state


class JsonMachine(ByteMachine):
    """Byte-level JSON recogniser; `start()` accepts one object (`top_object=True`) or any value."""

    def __init__(self, top_object: bool = True):
        self.top_object = top_object

    def start(self) -> State:
        return (b"", TOP if self.top_object else VALUE, None, 0)

    @staticmethod
    def complete(state: State) -> bool:
        stack, mode, _, _ = state
        return not stack and (mode == AFTER or mode in NUMBER_ENDS)

    @staticmethod
    def final(state: State) -> bool:
        """Nothing more may be written: the document is closed and its trailing whitespace used up. (Whitespace may
        follow the document because a model's favourite token often does: `}\n` where it would go on to a fence.)"""
        stack, mode, _, ws = state
        return not stack and mode == AFTER and ws >= WS_BASE

    def feed(self, state: State, b: int) -> State | None:
        stack, mode, aux, ws = state
        if mode in (STRING, KEY):
            if aux is not None:  # inside a multi-byte character
                owed = utf8_step(aux, b)
                return None if owed is False else (stack, mode, owed, 0)
            if b == 0x22:  # closing quote
                return (stack, COLON if mode == KEY else AFTER, None, 0)
            if b == 0x5C:
                return (stack, ESC, mode, 0)
            if b < 0x20:
                return None
            owed = utf8_step(None, b)
            return None if owed is False else (stack, mode, owed, 0)
        if mode == ESC:
            if b == ord("u"):
                return (stack, UHEX, (aux, 4), 0)
            return (stack, aux, None, 0) if b in ESCAPES else None
        if mode == UHEX:
            kind, left = aux
            if b not in HEX:
                return None
            return (stack, kind, None, 0) if left == 1 else (stack, UHEX, (kind, left - 1), 0)
        if mode == LITERAL:
            if b != aux[0]:
                return None
            return (stack, AFTER, None, 0) if len(aux) == 1 else (stack, LITERAL, aux[1:], 0)
        if mode >= N_MINUS:
            nxt = self._number(mode, b)
            if nxt is not None:
                return (stack, nxt, aux + 1, 0) if aux < MAX_NUMBER else None
            if mode not in NUMBER_ENDS:
                return None
            return self.feed((stack, AFTER, None, 0), b)  # the byte ends the number and goes on from there
        if b in WS:
            if mode == TOP:
                return None  # the answer starts with "{" at once
            return (stack, mode, aux, ws + 1) if ws < WS_BASE + WS_PER_LEVEL * len(stack) else None
        if mode == TOP:
            return (b"{", OBJ_FIRST, None, 0) if b == ord("{") else None
        if mode == OBJ_FIRST and b == ord("}"):
            return self._close(stack)
        if mode in (OBJ_FIRST, OBJ_KEY):
            return (stack, KEY, None, 0) if b == 0x22 else None
        if mode == COLON:
            return (stack, VALUE, None, 0) if b == ord(":") else None
        if mode == ARR_FIRST and b == ord("]"):
            return self._close(stack)
        if mode in (VALUE, ARR_FIRST):
            return self._value(stack, b)
        if mode == AFTER:
            if not stack:
                return None
            top = stack[-1:]
            if b == ord(","):
                return (stack, OBJ_KEY if top == b"{" else VALUE, None, 0)
            if (b == ord("}") and top == b"{") or (b == ord("]") and top == b"["):
                return self._close(stack)
        return None

    @staticmethod
    def _close(stack: bytes) -> State:
        return (stack[:-1], AFTER, None, 0)

    @staticmethod
    def _value(stack: bytes, b: int) -> State | None:
        if b == ord("{"):
            return (stack + b"{", OBJ_FIRST, None, 0)
        if b == ord("["):
            return (stack + b"[", ARR_FIRST, None, 0)
        if b == 0x22:
            return (stack, STRING, None, 0)
        if b == ord("-"):
            return (stack, N_MINUS, 1, 0)
        if b == ord("0"):
            return (stack, N_ZERO, 1, 0)
        if b in DIGITS:
            return (stack, N_INT, 1, 0)
        if b in LITERALS:
            return (stack, LITERAL, LITERALS[b], 0)
        return None

    @staticmethod
    def _number(mode: int, b: int) -> int | None:
        digit = b in DIGITS
        if mode == N_MINUS:
            return N_ZERO if b == ord("0") else (N_INT if digit else None)
        if mode in (N_ZERO, N_INT, N_FRAC):
            if digit and mode != N_ZERO:
                return mode
            if b == ord(".") and mode != N_FRAC:
                return N_DOT
            return N_E if b in b"eE" else None
        if mode == N_DOT:
            return N_FRAC if digit else None
        if mode == N_E:
            return N_ESIGN if b in b"+-" else (N_EXP if digit else None)
        if mode in (N_ESIGN, N_EXP):
            return N_EXP if digit else None
        return None


class JsonConstraint:
    """One sequence's JSON-mode state (or, with `machine=`, any byte machine's: a regex or a choice). `token_bytes(id)`
    gives a token's bytes, or None for a special token."""

    def __init__(self, token_bytes: Callable[[int], bytes | None], end_ids: Iterable[int],
                 activate_after: int | None = None, top_object: bool = True, schema=None,
                 machine: ByteMachine | None = None):
        if machine is not None:  # any byte machine: a regex or a choice (engine/regex.py)
            self.machine = machine
        elif schema is not None:
            from qwen3vl.engine.schema import SchemaMachine

            self.machine = SchemaMachine(schema)
        else:
            self.machine = JsonMachine(top_object)
        self.state: State = self.machine.start()
        self.token_bytes = token_bytes
        self.end_ids = frozenset(end_ids)
        self.active = activate_after is None
        self.activate_after = activate_after
        self.failed = False  # a token outside the constraint was picked (nothing allowed was left): stop constraining

    @property
    def complete(self) -> bool:
        return self.active and self.machine.complete(self.state)

    @property
    def constrains(self) -> bool:
        """False once the constraint has given up: every token is allowed, and the sampler skips the check."""
        return not self.failed

    def allows(self, token: int) -> bool:
        if self.failed:
            return True
        if not self.active:
            return token not in self.end_ids  # a Thinking model must get to its answer: no end before </think>
        if token in self.end_ids:
            return self.machine.complete(self.state)
        if self.machine.final(self.state):
            return False
        data = self.token_bytes(token)
        return bool(data) and self.machine.run(self.state, data) is not None

    def advance(self, token: int) -> None:
        if not self.active:
            self.active = token == self.activate_after
            return
        if self.failed or token in self.end_ids:
            return
        data = self.token_bytes(token)
        state = self.machine.run(self.state, data) if data else None
        if state is None:
            self.failed = True
        else:
            self.state = state
