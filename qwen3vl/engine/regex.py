"""Regular expressions and fixed choices as decoding constraints (vLLM's `guided_regex` / `guided_choice`).

`RegexMachine(pattern)` is a `constrain.ByteMachine`: the whole answer must match `pattern` (Python's
`re.fullmatch` with `re.ASCII`), checked a byte at a time so a candidate token is allowed exactly when its bytes
keep the answer a prefix of some match. `ChoiceMachine(options)` does the same for "one of these strings".

How: the pattern is parsed into a small tree, compiled (Thompson's construction) into an NFA over bytes, and the
NFA is run as a DFA built lazily: a machine state is the id of a set of NFA states, and each (state, byte) step is
computed once and cached, so a long generation costs dictionary lookups. Characters are UTF-8: a character class
becomes the byte sequences of its code points (surrogates excluded), so `.`, `[^a]` or `[é-ü]` cover multi-byte
characters exactly and never let a token end the answer inside a character.

Supported: literals and escapes (`\\n \\t \\r \\f \\v \\xHH \\uHHHH \\UHHHHHHHH`, escaped punctuation), `.` (any
character but newline), classes `[...]` / `[^...]` with ranges, `\\d \\w \\s` and their negations (ASCII meanings,
as with `re.ASCII`), groups `(...)`, `(?:...)`, `(?P<name>...)`, `(?<name>...)`, alternation, and the quantifiers
`* + ? {m} {m,} {m,n} {,n}` (lazy forms too: with a whole-answer match they mean the same). `^` at the start and
`$` at the end are accepted (the match is whole anyway). Refused with a `RegexError` naming the construct: back
references, lookaround, word boundaries, inline flags, possessive quantifiers, anchors elsewhere, and patterns that
would need more than `MAX_STATES` NFA states (a large `{m,n}`).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

from qwen3vl.engine.constrain import ByteMachine

MAX_STATES = 50_000
MAX_DFA_STATES = 20_000  # cached DFA states per machine; past it, new states are sets computed afresh at each step
MAX_CODEPOINT = 0x10FFFF
_DIGIT = [(0x30, 0x39)]
_WORD = [(0x30, 0x39), (0x41, 0x5A), (0x5F, 0x5F), (0x61, 0x7A)]
_SPACE = [(0x09, 0x0D), (0x20, 0x20)]
_ASCII_CLASSES = {"d": _DIGIT, "w": _WORD, "s": _SPACE}
_unicode_classes: dict[str, list[tuple[int, int]]] = {}


def unicode_classes() -> dict[str, list[tuple[int, int]]]:
    """`\\d \\w \\s` as Python's `re` reads them without `re.ASCII` (str.isdecimal, isalnum or "_", isspace,
    which is what `re` tests), as code point ranges; computed once (about half a second)."""
    if not _unicode_classes:
        tests = {"d": str.isdecimal, "w": lambda c: c.isalnum() or c == "_", "s": str.isspace}
        for name, test in tests.items():
            ranges: list[tuple[int, int]] = []
            start = None
            for cp in range(MAX_CODEPOINT + 2):
                inside = cp <= MAX_CODEPOINT and test(chr(cp))
                if inside and start is None:
                    start = cp
                elif not inside and start is not None:
                    ranges.append((start, cp - 1))
                    start = None
            _unicode_classes[name] = ranges
    return _unicode_classes


_SIMPLE_ESCAPES = {"n": 0x0A, "t": 0x09, "r": 0x0D, "f": 0x0C, "v": 0x0B, "a": 0x07, "0": 0x00}


class RegexError(ValueError):
    """A pattern we cannot parse or enforce; the message names the construct and its position."""


# ------------------------------------------------------------------------------------------------ character sets
def _normalize(ranges) -> list[tuple[int, int]]:
    out: list[list[int]] = []
    for lo, hi in sorted(ranges):
        if out and lo <= out[-1][1] + 1:
            out[-1][1] = max(out[-1][1], hi)
        else:
            out.append([lo, hi])
    return [(lo, hi) for lo, hi in out]


def _complement(ranges) -> list[tuple[int, int]]:
    out, nxt = [], 0
    for lo, hi in _normalize(ranges):
        if lo > nxt:
            out.append((nxt, lo - 1))
        nxt = hi + 1
    if nxt <= MAX_CODEPOINT:
        out.append((nxt, MAX_CODEPOINT))
    return out


def utf8_sequences(lo: int, hi: int) -> list[tuple[tuple[int, int], ...]]:
    """The code points lo..hi (surrogates left out) as UTF-8: a list of byte-range sequences, each a tuple of
    (low, high) byte ranges, one per byte, whose cross product is exactly the encodings of some of those code
    points; together they cover all of them, once."""
    out = []
    todo = [(lo, hi)]
    while todo:
        lo, hi = todo.pop()
        if lo > hi:
            continue
        if lo <= 0xDFFF and hi >= 0xD800:
            todo += [(lo, 0xD7FF), (0xE000, hi)]
            continue
        bound = next((b for b in (0x7F, 0x7FF, 0xFFFF) if lo <= b < hi), None)
        if bound is not None:  # code points of different encoded lengths
            todo += [(lo, bound), (bound + 1, hi)]
            continue
        if hi <= 0x7F:
            out.append(((lo, hi),))
            continue
        n = len(chr(lo).encode())
        for i in range(1, n):  # make every byte after the first span its full range, or split
            m = (1 << (6 * i)) - 1
            if lo & ~m != hi & ~m:
                if lo & m:
                    todo += [(lo, lo | m), ((lo | m) + 1, hi)]
                    break
                if hi & m != m:
                    todo += [(lo, (hi & ~m) - 1), (hi & ~m, hi)]
                    break
        else:
            out.append(tuple(zip(chr(lo).encode(), chr(hi).encode())))
    return out


# ------------------------------------------------------------------------------------------------ parser
class _Parser:
    """Pattern text -> tree: ("set", ranges) | ("cat", [..]) | ("alt", [..]) | ("rep", node, min, max|None)."""

    def __init__(self, pattern: str, unicode: bool = False):
        self.p, self.i = pattern, 0
        self.classes = unicode_classes() if unicode else _ASCII_CLASSES
        self.anchored_start = self.anchored_end = False  # a leading `^` / trailing `$` was read

    def error(self, what: str, at: int | None = None) -> RegexError:
        at = self.i if at is None else at
        return RegexError(f"regex {self.p!r}: {what} at position {at}")

    def peek(self, k: int = 0) -> str | None:
        return self.p[self.i + k] if self.i + k < len(self.p) else None

    def parse(self):
        node = self.alt()
        if self.i != len(self.p):
            raise self.error("unbalanced ')'")
        return node

    def alt(self):
        items = [self.cat()]
        while self.peek() == "|":
            self.i += 1
            items.append(self.cat())
        return items[0] if len(items) == 1 else ("alt", items)

    def cat(self):
        items = []
        while self.peek() is not None and self.peek() not in "|)":
            atom = self.atom()
            if atom is not None:
                items.append(self.quantified(atom))
        return ("cat", items)

    def atom(self):
        c, start = self.peek(), self.i
        self.i += 1
        if c == "(":
            if self.peek() == "?":
                self.group_prefix(start)
            node = self.alt()
            if self.peek() != ")":
                raise self.error("missing ')' for the group opened", start)
            self.i += 1
            return node
        if c == "[":
            return ("set", self.char_class(start))
        if c == ".":
            return ("set", _complement([(0x0A, 0x0A)]))
        if c == "^":
            if start != 0:
                raise self.error("'^' is only supported at the start of the pattern", start)
            self.anchored_start = True
            return None
        if c == "$":
            if self.i != len(self.p):
                raise self.error("'$' is only supported at the end of the pattern", start)
            self.anchored_end = True
            return None
        if c in "*+?":
            raise self.error(f"nothing to repeat before {c!r}", start)
        if c == "{" and self.quantifier_at(start) is not None:
            raise self.error("nothing to repeat before '{'", start)
        if c == "\\":
            return ("set", self.escape(start, in_class=False))
        return ("set", [(ord(c), ord(c))])

    def group_prefix(self, start: int) -> None:
        rest = self.p[self.i:]
        if rest.startswith("?:"):
            self.i += 2
        elif rest.startswith("?P<") or (rest.startswith("?<") and rest[2:3] not in ("=", "!")):
            end = self.p.find(">", self.i)
            if end < 0:
                raise self.error("unterminated group name", start)
            self.i = end + 1
        elif rest[:2] in ("?=", "?!") or rest[:3] in ("?<=", "?<!"):
            raise self.error("lookaround is not supported", start)
        elif rest.startswith("?P="):
            raise self.error("back references are not supported", start)
        else:
            raise self.error(f"group syntax '({rest[:3]}' (inline flags, conditionals, atomic groups) is not "
                             "supported", start)

    def quantifier_at(self, at: int) -> tuple[int, int | None, int] | None:
        """A `{m}`, `{m,}`, `{m,n}` or `{,n}` starting at `at`: (min, max, index after it), else None (a literal)."""
        end = self.p.find("}", at)
        if self.p[at:at + 1] != "{" or end < 0:
            return None
        body = self.p[at + 1:end]
        lo, comma, hi = body.partition(",")
        if not (lo.isdigit() or (comma and lo == "")) or not (hi == "" or hi.isdigit()):
            return None
        if not lo.isascii() or not hi.isascii():
            return None
        lo_n = int(lo) if lo else 0
        hi_n = (int(hi) if hi else None) if comma else lo_n
        return lo_n, hi_n, end + 1

    def quantified(self, atom):
        c = self.peek()
        start = self.i
        if c in ("*", "+", "?"):
            self.i += 1
            lo, hi = {"*": (0, None), "+": (1, None), "?": (0, 1)}[c]
        elif c == "{" and (q := self.quantifier_at(self.i)) is not None:
            lo, hi, self.i = q
            if hi is not None and hi < lo:
                raise self.error(f"min repeat greater than max repeat in {self.p[start:self.i]!r}", start)
        else:
            return atom
        if self.peek() == "?":  # lazy: the same set of whole matches
            self.i += 1
        elif self.peek() == "+":
            raise self.error("possessive quantifiers are not supported", self.i)
        if self.peek() is not None and (self.peek() in "*+?" or (self.peek() == "{" and self.quantifier_at(self.i))):
            raise self.error("multiple repeat", self.i)
        return ("rep", atom, lo, hi)

    def escape(self, start: int, in_class: bool) -> list[tuple[int, int]]:
        c = self.peek()
        if c is None:
            raise self.error("pattern ends with a lone backslash", start)
        self.i += 1
        if c.lower() in self.classes:
            ranges = self.classes[c.lower()]
            return ranges if c.islower() else _complement(ranges)
        if c in _SIMPLE_ESCAPES and not (c == "0" and (self.peek() or "").isdigit()):
            return [(_SIMPLE_ESCAPES[c],) * 2]
        if c in "xuU":
            width = {"x": 2, "u": 4, "U": 8}[c]
            digits = self.p[self.i:self.i + width]
            if len(digits) != width or any(d not in "0123456789abcdefABCDEF" for d in digits):
                raise self.error(f"\\{c} needs {width} hex digits", start)
            self.i += width
            cp = int(digits, 16)
            if cp > MAX_CODEPOINT:
                raise self.error(f"\\{c}{digits} is not a code point", start)
            return [(cp, cp)]
        if c == "b" and in_class:
            return [(0x08, 0x08)]
        if c.isdigit():
            raise self.error("back references are not supported", start)
        if c in "bBAZzG":
            raise self.error(f"\\{c} (an anchor or word boundary) is not supported", start)
        if c.isascii() and c.isalpha():
            raise self.error(f"bad escape \\{c}", start)
        return [(ord(c), ord(c))]

    def char_class(self, start: int) -> list[tuple[int, int]]:
        negate = self.peek() == "^"
        if negate:
            self.i += 1
        ranges: list[tuple[int, int]] = []
        first = True
        while True:
            c = self.peek()
            if c is None:
                raise self.error("unterminated character set", start)
            if c == "]" and not first:
                self.i += 1
                break
            first = False
            lo = self.class_atom()
            if self.peek() == "-" and self.peek(1) not in (None, "]"):
                dash = self.i
                self.i += 1
                hi = self.class_atom()
                if len(lo) != 1 or len(hi) != 1 or lo[0][0] != lo[0][1] or hi[0][0] != hi[0][1]:
                    raise self.error("bad character range", dash)
                if hi[0][0] < lo[0][0]:
                    raise self.error(f"bad character range {self.p[dash - 1:self.i]!r}", dash)
                ranges.append((lo[0][0], hi[0][0]))
            else:
                ranges += lo
        return _complement(ranges) if negate else _normalize(ranges)

    def class_atom(self) -> list[tuple[int, int]]:
        c, start = self.peek(), self.i
        self.i += 1
        if c == "\\":
            return self.escape(start, in_class=True)
        if c == "[" and self.peek() == ":":
            raise self.error("POSIX classes ([:alpha:]) are not supported", start)
        return [(ord(c), ord(c))]


# ------------------------------------------------------------------------------------------------ NFA and DFA
class _Nfa:
    def __init__(self):
        self.trans: list[list[tuple[int, int, int]]] = []
        self.eps: list[list[int]] = []

    def new(self) -> int:
        if len(self.trans) >= MAX_STATES:
            raise RegexError(f"the pattern needs more than {MAX_STATES} automaton states; use smaller repeat counts "
                             "(or fewer, shorter choices)")
        self.trans.append([])
        self.eps.append([])
        return len(self.trans) - 1

    def build(self, node) -> tuple[int, int]:
        kind = node[0]
        s, e = self.new(), self.new()
        if kind == "set":
            for seq in (q for lo, hi in node[1] for q in utf8_sequences(lo, hi)):
                cur = s
                for k, (blo, bhi) in enumerate(seq):
                    nxt = e if k == len(seq) - 1 else self.new()
                    self.trans[cur].append((blo, bhi, nxt))
                    cur = nxt
        elif kind == "cat":
            cur = s
            for item in node[1]:
                a, b = self.build(item)
                self.eps[cur].append(a)
                cur = b
            self.eps[cur].append(e)
        elif kind == "alt":
            for item in node[1]:
                a, b = self.build(item)
                self.eps[s].append(a)
                self.eps[b].append(e)
        elif kind == "rep":
            _, sub, lo, hi = node
            cur = s
            for _ in range(lo):
                a, b = self.build(sub)
                self.eps[cur].append(a)
                cur = b
            if hi is None:
                a, b = self.build(sub)
                self.eps[cur] += [a, e]
                self.eps[b] += [a, e]
            else:
                for _ in range(hi - lo):
                    a, b = self.build(sub)
                    self.eps[cur] += [a, e]
                    cur = b
            self.eps[cur].append(e)
        elif kind == "trie":  # byte strings (choices), sharing their prefixes
            children: dict[tuple[int, int], int] = {}
            for text in node[1]:
                cur = s
                for byte in text:
                    nxt = children.get((cur, byte))
                    if nxt is None:
                        nxt = children[(cur, byte)] = self.new()
                        self.trans[cur].append((byte, byte, nxt))
                    cur = nxt
                if e not in self.eps[cur]:
                    self.eps[cur].append(e)
        else:  # pragma: no cover - the parser makes no other kinds
            raise AssertionError(kind)
        return s, e


class _LazyDfa(ByteMachine):
    """An NFA run as a DFA built on demand. States are small ints; `feed` caches every step it computes. A pattern
    whose DFA is exponential (`[ab]*a[ab]{20}`) could fill memory that way, so past `MAX_DFA_STATES` a new state is
    handed out as its NFA-state set itself, not cached: the same answers, computed at every step."""

    open_end = False  # RegexMachine(search=True): the pattern's end is not anchored

    def __init__(self, nfa: _Nfa, start: int, accept: int, what: str):
        self.nfa, self.accept = nfa, accept
        self.sets: list[frozenset[int]] = []
        self.ids: dict[frozenset[int], int] = {}
        self.accepting: list[bool] = []
        self.dead_end: list[bool] = []
        self.steps: dict[tuple[int, int], int | None] = {}
        self.live = self._co_reachable()
        if start not in self.live:
            raise RegexError(f"{what} matches no string")
        self.nfa_start = start
        self.start_id = self._id(self._closure([start]))

    def fresh(self) -> "_LazyDfa":
        """The same automaton with empty caches (the NFA is shared): a schema compiled once and used by many
        requests gives each of them its own, so the states one request's text visits are freed with it."""
        out = object.__new__(type(self))
        out.nfa, out.accept, out.live, out.nfa_start = self.nfa, self.accept, self.live, self.nfa_start
        out.open_end = self.open_end
        out.sets, out.ids, out.accepting, out.dead_end, out.steps = [], {}, [], [], {}
        out.start_id = out._id(out._closure([self.nfa_start]))
        return out

    def _co_reachable(self) -> set[int]:
        """The NFA states from which the accepting state can be reached. Only these enter a DFA state, so a state
        the machine hands out always has a way to a match (an empty class such as `[^\\x00-\\U0010FFFF]` in one
        branch leaves nothing behind that could strand the model)."""
        back: list[list[int]] = [[] for _ in self.nfa.trans]
        for s, (eps, trans) in enumerate(zip(self.nfa.eps, self.nfa.trans)):
            for t in eps + [t for _, _, t in trans]:
                back[t].append(s)
        live, todo = {self.accept}, [self.accept]
        while todo:
            for s in back[todo.pop()]:
                if s not in live:
                    live.add(s)
                    todo.append(s)
        return live

    def _closure(self, states) -> frozenset[int]:
        seen, todo = set(states), list(states)
        while todo:
            for t in self.nfa.eps[todo.pop()]:
                if t not in seen:
                    seen.add(t)
                    todo.append(t)
        return frozenset(s for s in seen if s in self.live)

    def _id(self, states: frozenset[int]) -> int:
        sid = self.ids.get(states)
        if sid is None:
            sid = self.ids[states] = len(self.sets)
            self.sets.append(states)
            self.accepting.append(self.accept in states)
            self.dead_end.append(not any(self.nfa.trans[s] for s in states))
        return sid

    def start(self) -> int:
        return self.start_id

    def complete(self, state: int | frozenset) -> bool:
        return self.accept in state if isinstance(state, frozenset) else self.accepting[state]

    def final(self, state: int | frozenset) -> bool:
        """Nothing may follow: only the end of the answer."""
        if isinstance(state, frozenset):
            return not any(self.nfa.trans[s] for s in state)
        return self.dead_end[state]

    def feed(self, state: int | frozenset, b: int) -> int | frozenset | None:
        uncached = isinstance(state, frozenset)
        if not uncached:
            key = (state, b)
            if key in self.steps:
                return self.steps[key]
        states = state if uncached else self.sets[state]
        targets = [t for s in states for lo, hi, t in self.nfa.trans[s] if lo <= b <= hi and t in self.live]
        if not targets:
            nxt = None
        else:
            closure = self._closure(targets)
            nxt = self.ids.get(closure)
            if nxt is None:
                nxt = self._id(closure) if len(self.sets) < MAX_DFA_STATES else closure
        if not uncached and not isinstance(nxt, frozenset):
            self.steps[key] = nxt
        return nxt


class RegexMachine(_LazyDfa):
    """The answer must match `pattern` as a whole: `re.fullmatch(pattern, answer, re.ASCII)`, or with `unicode`
    Python's default classes (`\\d \\w \\s` over all of Unicode, as `jsonschema` reads a schema's `pattern`).

    With `search`, JSON Schema's reading instead (`re.search`): unless the pattern starts with `^`, any text may come
    before the match. An end not anchored by `$` is left to the caller (`open_end`): once the value has matched,
    anything may follow, which is cheaper to say by leaving the machine than by carrying "anything" in it."""

    def __init__(self, pattern: str, unicode: bool = False, search: bool = False):
        if not isinstance(pattern, str):
            raise RegexError(f"a regex must be a string, got {type(pattern).__name__}")
        parser = _Parser(pattern, unicode)
        tree = parser.parse()
        self.open_end = False
        if search:
            if tree[0] == "alt" and (parser.anchored_start or parser.anchored_end):
                raise RegexError(f"regex {pattern!r}: anchors with a top-level | are not supported (they apply to one "
                                 "alternative each); group the alternatives: ^(a|b)$")
            if not parser.anchored_start:
                tree = ("cat", [("rep", ("set", [(0, MAX_CODEPOINT)]), 0, None), tree])
            self.open_end = not parser.anchored_end
        nfa = _Nfa()
        s, e = nfa.build(tree)
        super().__init__(nfa, s, e, f"regex {pattern!r}")


@functools.lru_cache(maxsize=128)
def _compiled(regex: str | None, choice: tuple[str, ...] | None) -> _LazyDfa:
    return RegexMachine(regex) if regex is not None else ChoiceMachine(choice)


def compile_constraint(regex: str | None = None, choice: Sequence[str] | None = None) -> _LazyDfa:
    """The machine for a request's `regex` or `choice`: compiled once per distinct pattern (a request's is checked
    when its parameters are validated and used again where its sequences start, and clients repeat patterns), and
    handed out as a `fresh` copy, so the DFA states one request visits are freed with it. RegexError names what
    cannot be enforced."""
    if choice is not None and not (isinstance(choice, (list, tuple)) and all(isinstance(o, str) for o in choice)):
        raise RegexError("choice must be a non-empty list of strings")
    return _compiled(regex, tuple(choice) if choice is not None else None).fresh()


class ChoiceMachine(_LazyDfa):
    """The answer must be exactly one of `options`."""

    def __init__(self, options: Sequence[str]):
        if isinstance(options, str) or not options or not all(isinstance(o, str) for o in options):
            raise RegexError("choice must be a non-empty list of strings")
        try:
            texts = [o.encode() for o in dict.fromkeys(options)]
        except UnicodeEncodeError as e:
            raise RegexError(f"choice {e.object!r} is not valid text (a lone surrogate)") from None
        nfa = _Nfa()
        s, e = nfa.build(("trie", texts))
        super().__init__(nfa, s, e, "choice")
