"""Tolerant JSON extraction from model replies.

Models wrap JSON in ```json fences, emit several blocks, leave trailing commas, switch to Python-style
single quotes and True/None, drop the quotes around keys, or stop mid-list when they hit max_tokens.
`extract_json` finds every JSON value in a reply and parses it with a small forgiving parser that keeps
what is complete and *says* what it repaired or dropped, instead of failing on the first bad character.

Truncation rule: a list keeps its complete items and drops an unfinished last one; an object keeps its
complete key/value pairs. A number that ends exactly at the end of the text counts as unfinished (the
reply may have been cut inside "123").
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[^\n\[{]*\n?(.*?)(```|\Z)", re.S)
_NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")
_OPEN = re.compile(r"[\[{]")
_IDENT = re.compile(r"[A-Za-z_$][\w$-]*")
_WORDS = {"true": True, "false": False, "null": None, "True": True, "False": False, "None": None,
          "NaN": float("nan"), "Infinity": float("inf")}
_JSONISH_LANGS = {"", "json", "jsonc", "json5", "python", "py", "javascript", "js"}
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "b": "\b", "f": "\f", "/": "/", "\\": "\\", '"': '"', "'": "'"}


@dataclass
class JsonExtraction:
    """Every JSON value found in a reply, with what had to be repaired to read it."""

    values: list[Any] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    truncated: bool = False
    strict: bool = True  # every block parsed by json.loads as it stood (after removing the fence)
    dropped: int = 0  # unfinished items dropped because the reply was cut off


class _Incomplete(Exception):
    """The text ended inside a value; `partial` is what had been read of it (None if nothing usable)."""

    def __init__(self, partial: Any = None):
        super().__init__("incomplete")
        self.partial = partial


class _Malformed(Exception):
    def __init__(self, message: str, pos: int):
        super().__init__(message)
        self.pos = pos


class _Parser:
    def __init__(self, src: str, pos: int = 0):
        self.src, self.pos = src, pos
        self.notes: list[str] = []
        self.dropped = 0

    def note(self, message: str) -> None:
        if message not in self.notes:
            self.notes.append(message)

    def skip_ws(self) -> None:
        src, n = self.src, len(self.src)
        while self.pos < n:
            c = src[self.pos]
            if c.isspace():
                self.pos += 1
            elif src.startswith("//", self.pos):
                end = src.find("\n", self.pos)
                self.pos = n if end < 0 else end + 1
                self.note("comment removed")
            else:
                break

    def at_end(self) -> bool:
        return self.pos >= len(self.src)

    def value(self) -> Any:
        self.skip_ws()
        if self.at_end():
            raise _Incomplete(None)
        c = self.src[self.pos]
        if c == "{":
            return self.obj()
        if c == "[":
            return self.arr()
        if c in "\"'":
            return self.string()
        m = _NUMBER.match(self.src, self.pos)
        if m:
            self.pos = m.end()
            if self.at_end():
                raise _Incomplete(None)
            text = m.group().lstrip("+")
            return float(text) if any(ch in text for ch in ".eE") else int(text)
        m = _IDENT.match(self.src, self.pos)
        if m:
            self.pos = m.end()
            word = m.group()
            if word in _WORDS:
                return _WORDS[word]
            self.note(f"unquoted value {word!r} read as a string")
            return word
        raise _Malformed(f"unexpected {c!r}", self.pos)

    def string(self) -> str:
        quote = self.src[self.pos]
        if quote == "'":
            self.note("single-quoted strings")
        self.pos += 1
        out: list[str] = []
        src, n = self.src, len(self.src)
        while self.pos < n:
            c = src[self.pos]
            if c == quote:
                self.pos += 1
                return "".join(out)
            if c == "\\" and self.pos + 1 < n:
                e = src[self.pos + 1]
                if e == "u" and re.fullmatch(r"[0-9a-fA-F]{4}", src[self.pos + 2:self.pos + 6] or ""):
                    out.append(chr(int(src[self.pos + 2:self.pos + 6], 16)))
                    self.pos += 6
                    continue
                out.append(_ESCAPES.get(e, e))
                self.pos += 2
                continue
            out.append(c)
            self.pos += 1
        raise _Incomplete("".join(out))

    def key(self) -> str:
        c = self.src[self.pos]
        if c in "\"'":
            return self.string()
        m = _IDENT.match(self.src, self.pos)
        if m:
            self.pos = m.end()
            self.note("unquoted keys")
            return m.group()
        m = _NUMBER.match(self.src, self.pos)
        if m:
            self.pos = m.end()
            self.note("unquoted keys")
            return m.group()
        raise _Malformed(f"expected a key, found {c!r}", self.pos)

    def arr(self) -> list[Any]:
        self.pos += 1
        items: list[Any] = []
        need_sep = False
        while True:
            self.skip_ws()
            if self.at_end():
                raise _Incomplete(items)
            c = self.src[self.pos]
            if c == "]":
                self.pos += 1
                return items
            if c == "}":  # mismatched closer: end the list here and let the enclosing object take the '}'
                self.note("']' expected, found '}'")
                return items
            if c == ",":
                self.pos += 1
                self.skip_ws()
                if not self.at_end() and self.src[self.pos] == "]":
                    self.note("trailing comma removed")
                elif not need_sep:
                    self.note("empty list item skipped")
                need_sep = False
                continue
            if need_sep:
                self.note("missing comma between list items")
            try:
                items.append(self.value())
            except _Incomplete:
                # the unfinished item of the shallowest cut list is the one reported (outer lists overwrite)
                self.dropped = 1
                raise _Incomplete(items) from None
            need_sep = True

    def obj(self) -> dict[str, Any]:
        self.pos += 1
        out: dict[str, Any] = {}
        need_sep = False
        while True:
            self.skip_ws()
            if self.at_end():
                raise _Incomplete(out)
            c = self.src[self.pos]
            if c == "}":
                self.pos += 1
                return out
            if c == "]":  # mismatched closer: end the object here and let the enclosing list take the ']'
                self.note("'}' expected, found ']'")
                return out
            if c == ",":
                self.pos += 1
                self.skip_ws()
                if not self.at_end() and self.src[self.pos] == "}":
                    self.note("trailing comma removed")
                need_sep = False
                continue
            if need_sep:
                self.note("missing comma between object members")
            try:
                k = self.key()
            except _Incomplete:
                raise _Incomplete(out) from None
            self.skip_ws()
            if self.at_end():
                raise _Incomplete(out)
            if self.src[self.pos] not in ":=":
                raise _Malformed(f"expected ':' after key {k!r}", self.pos)
            self.pos += 1
            try:
                out[k] = self.value()
            except _Incomplete:
                raise _Incomplete(out) from None
            need_sep = True


def parse_lenient(src: str, pos: int = 0) -> tuple[Any, int, list[str], bool, int]:
    """Parse one value starting at `pos`.

    Returns (value, end, notes, truncated, dropped). Raises ValueError naming the offset when the text is
    not JSON-like at all. On truncation `value` is what was complete (possibly None).
    """
    p = _Parser(src, pos)
    try:
        value = p.value()
        return value, p.pos, p.notes, False, p.dropped
    except _Incomplete as e:
        return e.partial, len(src), p.notes, True, p.dropped
    except _Malformed as e:
        raise ValueError(f"{e} at offset {e.pos}") from None


def _parse_block(text: str, label: str, out: JsonExtraction, *, fenced: bool) -> bool:
    """Parse every value in a fenced block (several values may follow each other). True if any."""
    found = False
    try:
        json.loads(text)
    except ValueError:
        if text.strip():
            out.strict = False
    pos, n = 0, len(text)
    while pos < n:
        while pos < n and (text[pos].isspace() or text[pos] == ","):
            pos += 1
        if pos >= n:
            break
        try:
            value, pos, notes, truncated, dropped = parse_lenient(text, pos)
        except ValueError as e:
            out.problems.append(f"{label}: not valid JSON ({e})")
            out.strict = False
            break
        for note in notes:
            out.problems.append(f"{label}: {note}")
        if truncated:
            out.truncated = True
            out.dropped += dropped
            what = f"{dropped} unfinished item dropped" if dropped else "unfinished value"
            out.problems.append(f"{label}: output ends mid-JSON (truncated); {what}")
        if value is not None or not truncated:
            out.values.append(value)
            found = True
        if not fenced:
            break
    return found


def extract_json(text: str) -> JsonExtraction:
    """Find and leniently parse every JSON value in a model reply.

    Fenced blocks (```json ... ```, also an unterminated last fence) are used when present; otherwise the
    reply is scanned for '[' or '{' and each position that parses is taken, skipping prose between them.
    """
    out = JsonExtraction()
    blocks = [(m.group(1).lower(), m.group(2), m.group(3)) for m in _FENCE.finditer(text)]
    blocks = [b for b in blocks if b[0] in _JSONISH_LANGS and b[1].strip()]
    if blocks:
        for i, (_, body, closing) in enumerate(blocks, start=1):
            label = f"block {i}" if len(blocks) > 1 else "block"
            _parse_block(body, label, out, fenced=True)
            if not closing and not out.truncated:
                out.problems.append(f"{label}: code fence not closed")
        if out.values:
            return out
    # bare JSON somewhere in prose: take every bracket position that parses
    out.strict = True
    pos = 0
    found_any = False
    first_error = ""
    while True:
        m = _OPEN.search(text, pos)
        if not m:
            break
        start = m.start()
        try:
            value, end, notes, truncated, dropped = parse_lenient(text, start)
        except ValueError as e:
            first_error = first_error or str(e)
            pos = start + 1
            continue
        if value is None and truncated:
            pos = start + 1
            continue
        try:
            json.loads(text[start:end])
        except ValueError:
            out.strict = False
        label = f"JSON at offset {start}"
        out.problems.extend(f"{label}: {note}" for note in notes)
        if truncated:
            out.truncated = True
            out.dropped += dropped
            what = f"{dropped} unfinished item dropped" if dropped else "unfinished value"
            out.problems.append(f"{label}: output ends mid-JSON (truncated); {what}")
        out.values.append(value)
        found_any = True
        pos = max(end, start + 1)
    if not found_any:
        out.strict = False
        if not out.problems:
            detail = f" (could not parse: {first_error})" if first_error else ""
            out.problems.append(f"no JSON found in the reply{detail}")
    return out


def strict_json_values(text: str) -> list[Any] | None:
    """The reply's JSON parsed with the standard library only (fences removed), or None if invalid.

    This is what "the model emitted valid JSON" means for the validity metric: no repairs allowed.
    """
    blocks = [m.group(2) for m in _FENCE.finditer(text) if m.group(1).lower() in _JSONISH_LANGS and m.group(3)]
    candidates = blocks if blocks else [text.strip()]
    values = []
    for body in candidates:
        try:
            values.append(json.loads(body))
        except ValueError:
            return None
    return values or None
