"""JSON-schema-constrained decoding: the answer is JSON that validates against a given schema, byte by byte.

`compile_schema(schema)` turns a JSON schema (a dict, as in OpenAI's `response_format: {"type": "json_schema",
"json_schema": {"schema": ...}}` or a pydantic model's `model_json_schema()`) into a graph of nodes;
`SchemaMachine` recognises the JSON texts valid against it, with the same interface as `constrain.JsonMachine`
(`start`, `feed`, `run`, `complete`, `final`), so `constrain.JsonConstraint` and the sampler use it unchanged.

A machine state is a tuple of threads, one per way the bytes so far can still be read (`anyOf` alternatives that
begin alike run side by side until the bytes tell them apart; at most `MAX_THREADS`, the first in the schema's
order); a thread is an immutable tuple, so checking a candidate token is running its bytes, with nothing to copy or
undo. The machine never walks into a dead end: every state it accepts can still be completed into a valid document.
Branches that have no document are cut at compile time (a property whose schema is `false`, items of an
unsatisfiable schema, a `$ref` cycle that requires infinite depth); a property is offered only while it can still be
written, a `,` only while another item or key fits, a number digit only while a value within the bounds can follow.

Enforced: `type` (one or a list), `properties`, `required`, `additionalProperties` (false, true or a schema; true by
default), `items`, `minItems`/`maxItems`, `enum`, `const`, `anyOf`/`oneOf` (read as anyOf), a one-element `allOf`,
`$ref` to `#/$defs/...`/`#/definitions/...` (recursion included), `minLength`/`maxLength` (in code points; an
escape counts as one), `minimum`/`maximum`/`exclusiveMinimum`/`exclusiveMaximum`, and `pattern` (a match anywhere
in the value unless anchored, run on the value's bytes with escapes decoded by `regex.RegexMachine`; not next to
minLength/maxLength).
Annotations (`title`, `description`, `default`, `examples`, `format`, ...) and unknown keywords are ignored, as the
JSON Schema standard says. Refused by name (`SchemaError`), rather than silently not enforced:
`patternProperties`, `propertyNames`, `minProperties`/`maxProperties`, `multipleOf`, `uniqueItems`, `contains`,
`prefixItems`, tuple `items`, `not`, `if`/`then`/`else`, `dependentRequired`/`dependentSchemas`, `unevaluated*`,
longer `allOf`, remote `$ref`s.

Forms the machine does not let the model write (the output is still valid, it just never takes them): whitespace
before the top-level value and runs of whitespace longer than `WS_BASE + WS_PER_LEVEL * depth`; nesting deeper than
`MAX_DEPTH`; numbers longer than `MAX_NUMBER` characters; malformed UTF-8; in objects that allow no undeclared
names, a declared name spelled other than as `json.dumps` spells it (`\\u0061` for `a`); escaped surrogate pairs in
strings with a length limit or a pattern (the character is written as it is); integers with a fraction (`1.0`, which
JSON Schema counts as an integer); exponents in numbers that have bounds; duplicate keys; `enum`/`const` values that
are objects or arrays in any spelling but `json.dumps`'s two (`", "`/`": "` or compact). Bounds are checked on the exact decimal
and on the float a validator reads. Not enforced: the "exactly one" of `oneOf` (it is read as `anyOf`; pydantic's tagged unions are disjoint).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

from qwen3vl.engine.constrain import (DIGITS, ESCAPES, HEX, MAX_NUMBER, NUMBER_ENDS, WS, WS_BASE, WS_PER_LEVEL,
                                      ByteMachine, JsonMachine, utf8_step)

# thread modes (numbers reuse constrain's N_* modes, which are >= 20)
VALUE, ARR_FIRST, OBJ_FIRST, OBJ_KEY, KEY, KEY_ESC, KEY_UHEX, COLON, AFTER, STRING, ESC, UHEX, LITERAL, ENUM = range(14)
PSTRING, PESC, PUHEX = 14, 15, 16  # a string with a `pattern`: aux is the pattern automaton's state
ESCAPED = {ord('"'): 0x22, ord("\\"): 0x5C, ord("/"): 0x2F, ord("b"): 0x08, ord("f"): 0x0C, ord("n"): 0x0A,
           ord("r"): 0x0D, ord("t"): 0x09}  # a JSON escape's letter -> the byte it stands for
N_MINUS = 20
TOP = "top"  # aux of the very first thread: no whitespace before the document

ASSERTIONS = frozenset({  # the keywords enforced; any other keyword not in UNSUPPORTED is an annotation, ignored
    "type", "enum", "const", "properties", "required", "additionalProperties", "items", "minItems", "maxItems",
    "minLength", "maxLength", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "anyOf", "oneOf", "allOf",
    "$ref", "pattern",
})
UNSUPPORTED = ("patternProperties", "propertyNames", "minProperties", "maxProperties", "multipleOf",
               "uniqueItems", "contains", "minContains", "maxContains", "prefixItems", "additionalItems", "not", "if",
               "then", "else", "dependentRequired", "dependentSchemas", "dependencies", "unevaluatedProperties",
               "unevaluatedItems", "$dynamicRef", "$recursiveRef")
TYPES = ("object", "array", "string", "number", "integer", "boolean", "null")


class SchemaError(ValueError):
    """A JSON schema that constrained decoding cannot enforce (or that no document satisfies)."""


Bound = tuple[Fraction, bool] | None  # (value, exclusive)


@dataclass
class Node:
    kind: str  # one of TYPES, or "enum", "union" (a `true` schema is the union of all types), "never"
    names: dict[str, int] = field(default_factory=dict)  # declared property -> node
    props: dict[bytes, str] = field(default_factory=dict)  # declared property as json.dumps writes it -> property
    required: frozenset[str] = frozenset()
    forbidden: frozenset[str] = frozenset()  # declared names whose schema allows no value
    additional: int | None = None  # node for undeclared keys; None: not allowed
    items: int | None = None
    min_items: int = 0
    max_items: float = math.inf
    min_len: int = 0
    max_len: float = math.inf
    lo: Bound = None
    hi: Bound = None
    texts: frozenset[bytes] = frozenset()  # enum: the values as JSON text
    regex: Any = None  # string with a `pattern`: a regex.RegexMachine(search=True) over the string's value
    alts: tuple[int, ...] = ()  # union: the alternatives

    @property
    def bounded(self) -> bool:
        return self.lo is not None or self.hi is not None


def _quoted(name: str) -> bytes:
    return json.dumps(name, ensure_ascii=False)[1:-1].encode()


def _fraction(x: Any, where: str, key: str) -> Fraction:
    if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x):
        raise SchemaError(f"{where}: {key} must be a finite number, got {x!r}")
    return Fraction(repr(x)) if isinstance(x, float) else Fraction(x)  # 0.1 is the decimal 1/10, as in the schema


class _Compiler:
    def __init__(self, root: Any):
        self.root = root
        self.nodes: list[Node] = []
        self.refs: dict[str, int] = {}
        self.any = self._add(Node("union"))
        any_obj = self._add(Node("object", additional=self.any))
        any_arr = self._add(Node("array", items=self.any))
        self.nodes[self.any].alts = (any_obj, any_arr) + tuple(self._add(Node(t)) for t in TYPES[2:])

    def _add(self, node: Node) -> int:
        self.nodes.append(node)
        return len(self.nodes) - 1

    def compile(self, schema: Any, where: str) -> int:
        if schema is True:
            return self.any
        if schema is False:
            return self._add(Node("never"))
        if not isinstance(schema, dict):
            raise SchemaError(f"{where}: a schema must be an object or a boolean, got {schema!r}")
        for key in UNSUPPORTED:
            if key in schema:
                raise SchemaError(f"{where}: the JSON schema keyword {key!r} is not supported by constrained decoding")
        assertions = {k for k in schema if k in ASSERTIONS}
        if "$ref" in schema:
            if assertions - {"$ref"}:
                raise SchemaError(f"{where}: $ref next to {sorted(assertions - {'$ref'})} is not supported")
            return self._ref(schema["$ref"], where)
        if "allOf" in schema:
            subs = schema["allOf"]
            if not isinstance(subs, list) or len(subs) != 1 or assertions - {"allOf"}:
                raise SchemaError(f"{where}: allOf is supported only as a single schema on its own")
            return self.compile(subs[0], f"{where}/allOf/0")
        for key in ("anyOf", "oneOf"):
            if key in schema:
                subs = schema[key]
                if not isinstance(subs, list) or not subs:
                    raise SchemaError(f"{where}: {key} must be a non-empty list of schemas")
                if assertions - {key}:
                    raise SchemaError(f"{where}: {key} next to {sorted(assertions - {key})} is not supported")
                return self._union([self.compile(s, f"{where}/{key}/{i}") for i, s in enumerate(subs)], where)
        if "enum" in schema or "const" in schema:
            if assertions - {"enum", "const", "type"}:
                raise SchemaError(f"{where}: enum/const next to {sorted(assertions - {'enum', 'const', 'type'})} "
                                  "is not supported")
            return self._enum(schema, where)
        types = schema.get("type", None)
        if types is None:
            if assertions:  # keywords of some type without "type": they apply to values of that type
                kinds = [t for t in TYPES if t != "null" and self._uses(schema, t)] or list(TYPES)
                return self._union([self._typed(schema, t, where) for t in kinds], where)
            return self.any
        types = [types] if isinstance(types, str) else types
        if not isinstance(types, list) or not types or any(t not in TYPES for t in types):
            raise SchemaError(f"{where}: type must be one of {TYPES} or a list of them, got {schema['type']!r}")
        if len(types) == 1:
            return self._typed(schema, types[0], where)
        return self._union([self._typed(schema, t, where) for t in dict.fromkeys(types)], where)

    @staticmethod
    def _uses(schema: dict, t: str) -> bool:
        keys = {"object": ("properties", "required", "additionalProperties"),
                "array": ("items", "minItems", "maxItems"),
                "string": ("minLength", "maxLength", "pattern"),
                "number": ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")}.get(t, ())
        return any(k in schema for k in keys)

    def _union(self, alts: list[int], where: str) -> int:
        alts = [a for a in alts if self.nodes[a].kind != "never"]
        if not alts:
            raise SchemaError(f"{where}: no alternative can be satisfied")
        return alts[0] if len(alts) == 1 else self._add(Node("union", alts=tuple(alts)))

    def _ref(self, ref: Any, where: str) -> int:
        if not isinstance(ref, str) or not ref.startswith("#"):
            raise SchemaError(f"{where}: only local $refs ('#/...') are supported, got {ref!r}")
        if ref in self.refs:
            return self.refs[ref]
        target: Any = self.root
        for part in [p for p in ref[1:].split("/") if p]:
            part = part.replace("~1", "/").replace("~0", "~")
            if isinstance(target, dict) and part in target:
                target = target[part]
            elif isinstance(target, list) and part.isdigit() and int(part) < len(target):
                target = target[int(part)]
            else:
                raise SchemaError(f"{where}: $ref {ref!r} points nowhere in the schema")
        # a placeholder union that will point at the compiled target (so recursive schemas terminate)
        slot = self._add(Node("union"))
        self.refs[ref] = slot
        self.nodes[slot].alts = (self.compile(target, ref),)
        return slot

    def _enum(self, schema: dict, where: str) -> int:
        values = schema["enum"] if "enum" in schema else [schema["const"]]
        if not isinstance(values, list):
            raise SchemaError(f"{where}: enum must be a list")
        if "const" in schema:  # both: the const, if the enum has it
            values = [v for v in values if v == schema["const"] and type(v) is type(schema["const"])]
        types = schema.get("type")
        if types is not None:
            types = [types] if isinstance(types, str) else types
            values = [v for v in values if any(_is_type(v, t) for t in types)]
        texts = set()
        for v in values:
            if not _finite(v):
                raise SchemaError(f"{where}: enum/const value {v!r} is not a finite JSON number")
            try:
                texts.add(json.dumps(v, ensure_ascii=False).encode())
                texts.add(json.dumps(v, ensure_ascii=False, separators=(",", ":")).encode())
            except (TypeError, ValueError) as e:
                raise SchemaError(f"{where}: enum value {v!r} is not JSON ({e})") from None
        if not texts:
            raise SchemaError(f"{where}: enum/const leaves no value to write")
        return self._add(Node("enum", texts=frozenset(texts)))

    def _typed(self, schema: dict, t: str, where: str) -> int:
        if t == "object":
            return self._object(schema, where)
        if t == "array":
            items = schema.get("items", True)
            if isinstance(items, list):
                raise SchemaError(f"{where}: tuple-form items (a list of schemas) is not supported")
            lo, hi = schema.get("minItems", 0), schema.get("maxItems", math.inf)
            if not (isinstance(lo, int) and lo >= 0 and (hi == math.inf or isinstance(hi, int)) and lo <= hi):
                raise SchemaError(f"{where}: minItems/maxItems must be integers with 0 <= minItems <= maxItems")
            item = self.compile(items, f"{where}/items")
            if lo > 0 and self.nodes[item].kind == "never":
                raise SchemaError(f"{where}: minItems {lo} but items allow no value")
            return self._add(Node("array", items=item, min_items=lo, max_items=hi))
        if t == "string":
            lo, hi = schema.get("minLength", 0), schema.get("maxLength", math.inf)
            if not (isinstance(lo, int) and lo >= 0 and (hi == math.inf or isinstance(hi, int)) and lo <= hi):
                raise SchemaError(f"{where}: minLength/maxLength must be integers with 0 <= minLength <= maxLength")
            if "pattern" in schema:
                if "minLength" in schema or "maxLength" in schema:
                    raise SchemaError(f"{where}: pattern together with minLength/maxLength is not supported (put the "
                                      "length in the pattern: ^.{2,8}$)")
                return self._add(Node("string", regex=pattern_machine(schema["pattern"], where)))
            return self._add(Node("string", min_len=lo, max_len=hi))
        if t in ("number", "integer"):
            return self._number(schema, t, where)
        return self._add(Node(t))

    def _object(self, schema: dict, where: str) -> int:
        props_in = schema.get("properties", {})
        if not isinstance(props_in, dict):
            raise SchemaError(f"{where}: properties must be an object")
        extra = schema.get("additionalProperties", True)
        additional = None if extra is False else self.compile(extra, f"{where}/additionalProperties")
        if additional is not None and self.nodes[additional].kind == "never":
            additional = None
        names = {k: self.compile(v, f"{where}/properties/{k}") for k, v in props_in.items()}
        required = schema.get("required", [])
        if not isinstance(required, list) or not all(isinstance(r, str) for r in required):
            raise SchemaError(f"{where}: required must be a list of property names")
        for name in required:
            if name not in names:
                if additional is None:
                    raise SchemaError(f"{where}: required property {name!r} is not allowed by the schema")
                names[name] = additional
            if self.nodes[names[name]].kind == "never":
                raise SchemaError(f"{where}: required property {name!r} allows no value")
        return self._add(Node("object", names=names, props={_quoted(k): k for k in names},
                              required=frozenset(required), additional=additional))

    def _number(self, schema: dict, t: str, where: str) -> int:
        lo = hi = None
        if "minimum" in schema:
            lo = (_fraction(schema["minimum"], where, "minimum"), False)
        if "maximum" in schema:
            hi = (_fraction(schema["maximum"], where, "maximum"), False)
        for key, is_lo in (("exclusiveMinimum", True), ("exclusiveMaximum", False)):
            if key not in schema:
                continue
            x = schema[key]
            if isinstance(x, bool):  # draft 4: a flag on minimum/maximum
                if x:
                    bound = lo if is_lo else hi
                    if bound is None:
                        raise SchemaError(f"{where}: {key}: true needs {'minimum' if is_lo else 'maximum'}")
                    bound = (bound[0], True)
                    lo, hi = (bound, hi) if is_lo else (lo, bound)
                continue
            bound = (_fraction(x, where, key), True)
            old = lo if is_lo else hi
            if old is None or (bound[0] >= old[0] if is_lo else bound[0] <= old[0]):
                lo, hi = (bound, hi) if is_lo else (lo, bound)
        node = Node(t, lo=lo, hi=hi)
        if t == "integer":
            a, b = _int_range(node)
            if a is not None and b is not None and a > b:
                raise SchemaError(f"{where}: no integer lies within the bounds")
        elif not _meets(node, None, False, None, False):
            raise SchemaError(f"{where}: no number lies within the bounds")
        return self._add(node)


def _finite(v: Any) -> bool:
    if isinstance(v, float):
        return math.isfinite(v)
    if isinstance(v, dict):
        return all(_finite(x) for x in v.values())
    if isinstance(v, list):
        return all(_finite(x) for x in v)
    return True


def _is_type(v: Any, t: str) -> bool:
    return {"object": isinstance(v, dict), "array": isinstance(v, list), "string": isinstance(v, str),
            "number": isinstance(v, (int, float)) and not isinstance(v, bool),
            "integer": (isinstance(v, int) and not isinstance(v, bool)) or (isinstance(v, float) and v.is_integer()),
            "boolean": isinstance(v, bool), "null": v is None}.get(t, False)


def pattern_machine(pattern: Any, where: str):
    """The automaton of `pattern` as JSON Schema reads it (`RegexMachine(search=True)`: a match anywhere unless
    anchored, Python's Unicode classes, as `jsonschema`'s `re.search`); SchemaError if it cannot be enforced."""
    from qwen3vl.engine.regex import RegexMachine

    if not isinstance(pattern, str):
        raise SchemaError(f"{where}: pattern must be a string, got {pattern!r}")
    try:
        return RegexMachine(pattern, unicode=True, search=True)
    except ValueError as e:  # "regex '<pattern>': what, at position N"
        what = str(e).split(": ", 1)[-1] if str(e).startswith("regex ") else str(e)
        raise SchemaError(f"{where}: pattern {pattern!r}: {what}") from None


@dataclass(frozen=True)
class Schema:
    """A compiled JSON schema: `nodes[root]` is the document's node."""

    nodes: tuple[Node, ...]
    root: int
    source: Any


def compile_schema(schema: Any) -> Schema:
    """Compile a JSON schema for constrained decoding; `SchemaError` names what cannot be enforced.

    Remembered by the schema's JSON text: a request's schema is checked when its parameters are validated and
    compiled again where its sequences start, and an API client sends the same schema with every request. (A
    compiled schema is never changed afterwards, so sharing it is safe.)"""
    try:
        key = json.dumps(schema, sort_keys=True)
    except (TypeError, ValueError, RecursionError):  # not JSON, or too deep: `_compile` says how
        return _compile(schema)
    hit = _compiled.get(key)
    if hit is None:
        hit = _compile(schema)
        if len(_compiled) >= 128:
            _compiled.pop(next(iter(_compiled)))
        _compiled[key] = hit
    return hit


_compiled: dict[str, Schema] = {}


def _compile(schema: Any) -> Schema:
    c = _Compiler(schema)
    try:
        root = c.compile(schema, "#")
    except SchemaError:
        raise
    except RecursionError:
        raise SchemaError("#: the schema is nested too deeply") from None
    except (TypeError, AttributeError, ValueError, OverflowError) as e:  # a keyword's value of the wrong kind
        raise SchemaError(f"#: malformed schema ({type(e).__name__}: {e})") from None
    _prune(c.nodes, root)
    _check_ref_cycles(c.nodes)
    return Schema(tuple(c.nodes), root, schema)


def _prune(nodes: list[Node], root: int) -> None:
    """Find the nodes that have a document (of finite depth), and cut every way into the others, so the machine
    never offers a key, item or alternative that cannot be finished."""
    sat = [False] * len(nodes)
    changed = True
    while changed:  # least fixpoint: a node is satisfiable once its needs are
        changed = False
        for i, n in enumerate(nodes):
            if sat[i]:
                continue
            if n.kind == "never":
                ok = False
            elif n.kind == "union":
                ok = any(sat[a] for a in n.alts)
            elif n.kind == "object":
                ok = all(sat[n.names[r]] for r in n.required)
            elif n.kind == "array":
                ok = n.min_items == 0 or sat[n.items]
            else:
                ok = True
            if ok:
                sat[i] = changed = True
    if not sat[root]:
        raise SchemaError("#: the schema allows no document (of finite depth)")
    for n in nodes:
        if n.kind == "union":
            n.alts = tuple(a for a in n.alts if sat[a])
        elif n.kind == "object":
            dead = {k for k, v in n.names.items() if not sat[v]}
            if dead:
                n.forbidden = n.forbidden | dead
                n.names = {k: v for k, v in n.names.items() if k not in dead}
                n.props = {k: v for k, v in n.props.items() if v not in dead}
            if n.additional is not None and not sat[n.additional]:
                n.additional = None
        elif n.kind == "array" and not sat[n.items]:
            n.max_items = 0


def _check_ref_cycles(nodes: list[Node]) -> None:
    """Refuse $refs/anyOfs that lead back to themselves before any value starts (`{"$ref": "#"}`): unbounded."""
    state: dict[int, int] = {}  # 1: being expanded, 2: done

    def visit(i: int) -> None:
        state[i] = 1
        for j in nodes[i].alts:
            if state.get(j) == 1:
                raise SchemaError("#: a $ref/anyOf cycle that never reaches a value")
            if j not in state:
                visit(j)
        state[i] = 2

    for i, node in enumerate(nodes):
        if node.kind == "union" and i not in state:
            visit(i)


# ---- numbers with bounds: can the digits so far still become a number within them? ----

def _int_range(node: Node) -> tuple[int | None, int | None]:
    a = b = None
    if node.lo is not None:
        v, excl = node.lo
        a = math.floor(v) + 1 if excl else math.ceil(v)
    if node.hi is not None:
        v, excl = node.hi
        b = math.ceil(v) - 1 if excl else math.floor(v)
    return a, b


def _meets(node: Node, a: Fraction | None, a_in: bool, b: Fraction | None, b_in: bool) -> bool:
    """Whether the interval from a to b (None: unbounded; *_in: closed at that end) meets the node's bounds."""
    if node.kind == "integer":
        lo_i, hi_i = _int_range(node)
        x = None if a is None else (math.ceil(a) if a_in else math.floor(a) + 1)
        y = None if b is None else (math.floor(b) if b_in else math.ceil(b) - 1)
        lo = x if lo_i is None else (lo_i if x is None else max(x, lo_i))
        hi = y if hi_i is None else (hi_i if y is None else min(y, hi_i))
        return lo is None or hi is None or lo <= hi
    lo, lo_in = a, a_in
    if node.lo is not None:
        v, excl = node.lo
        if lo is None or v > lo or (v == lo and excl):
            lo, lo_in = v, not excl
    hi, hi_in = b, b_in
    if node.hi is not None:
        v, excl = node.hi
        if hi is None or v < hi or (v == hi and excl):
            hi, hi_in = v, not excl
    return lo is None or hi is None or lo < hi or (lo == hi and lo_in and hi_in)


def _int_feasible(node: Node, text: bytes) -> bool:
    """`_number_feasible` for integers, in integer arithmetic."""
    lo_i, hi_i = _int_range(node)
    neg = text[:1] == b"-"
    body = text[1:] if neg else text
    if not body:  # "-": any integer <= 0 ("-0" included)
        return lo_i is None or lo_i <= 0

    def hit(a: int, b: int | None) -> bool:  # magnitudes a..b (None: unbounded), signed as the text is
        lo, hi = ((None if b is None else -b), -a) if neg else (a, b)
        return (hi_i is None or lo is None or lo <= hi_i) and (lo_i is None or hi is None or hi >= lo_i)

    v = int(body)
    if hit(v, v):
        return True
    if v == 0:
        return False
    limit = max(abs(x) for x in (lo_i, hi_i) if x is not None)
    p = 10
    while v * p <= limit:
        if hit(v * p, (v + 1) * p - 1):
            return True
        p *= 10
    return hit(v * p, None)


def _number_feasible(node: Node, text: bytes) -> bool:
    """Whether some number literal starting with `text` (no exponent) lies within the node's bounds."""
    if node.kind == "integer":
        return _int_feasible(node, text)
    neg = text.startswith(b"-")
    body = text[1:] if neg else text
    spans: list[tuple[Fraction, bool, Fraction | None, bool]] = []  # magnitudes reachable: (a, a_in, b, b_in)
    if not body:
        spans.append((Fraction(0), True, None, False))
    elif b"." in body:
        whole, frac = body.split(b".")
        v = Fraction(int(whole)) + (Fraction(int(frac), 10 ** len(frac)) if frac else 0)
        step = Fraction(1, 10 ** len(frac))
        spans.append((v, True, v + step, False))  # v itself needs a digit after the dot, but v + tiny is as good
    else:
        v = int(body)
        spans.append((Fraction(v), True, Fraction(v + 1), False))  # v, or v.xxx
        if v != 0:  # or more digits: [v * 10^k, (v + 1) * 10^k) for k = 1, 2, ...
            limit = max(abs(bound[0]) for bound in (node.lo, node.hi) if bound is not None)
            k = 1
            while Fraction(v * 10 ** k) <= limit:
                spans.append((Fraction(v * 10 ** k), True, Fraction((v + 1) * 10 ** k), False))
                k += 1
            # beyond every bound all magnitudes fare alike, so one ray stands for the remaining spans
            spans.append((Fraction(v * 10 ** k), True, None, False))
    for a, a_in, b, b_in in spans:
        if node.kind == "integer" and b is not None:
            b, b_in = b - 1, True  # integers only: [v, v+1) is just v
            if b < a:
                continue
        if neg:
            lo, lo_in, hi, hi_in = (None if b is None else -b), b_in, -a, a_in
        else:
            lo, lo_in, hi, hi_in = a, a_in, b, b_in
        if _meets(node, lo, lo_in, hi, hi_in):
            return True
    return False


def _number_ok(node: Node, text: bytes) -> bool:
    """Whether the finished number is within the bounds, read exactly and also as a float (as validators read
    `0.99999999999999999`, which is 1.0: such a number may then fail a bound its decimal meets)."""
    if not node.bounded:
        return True
    for convert in (Fraction, float):
        v = convert(text.decode())
        if node.lo is not None:
            lo = convert(node.lo[0])
            if v < lo or (v == lo and node.lo[1]):
                return False
        if node.hi is not None:
            hi = convert(node.hi[0])
            if v > hi or (v == hi and node.hi[1]):
                return False
    return True


# ---- the machine ----

Thread = tuple  # (stack, mode, node, aux, ws); stack: () or (parent stack, container node, seen keys | count, depth)
State = tuple  # threads, deduplicated, in the schema's order of alternatives
MAX_THREADS = 64  # readings kept at once (recursive unions that begin alike would double at every level)
MAX_DEPTH = 256  # nesting levels (Python's json reader refuses documents much deeper than ~1,000)


class SchemaMachine(ByteMachine):
    """Byte-level recogniser of the JSON documents valid against a compiled schema."""

    def __init__(self, schema: Schema | dict):
        self.schema = schema if isinstance(schema, Schema) else compile_schema(schema)
        self.nodes = self.schema.nodes
        self._cache: dict[tuple, bool] = {}
        self._regexes: dict[int, Any] = {}  # node -> this machine's own copy of its pattern automaton

    def _regex(self, n: int):
        rx = self._regexes.get(n)
        if rx is None:
            rx = self._regexes[n] = self.nodes[n].regex.fresh()
        return rx

    def _in_pattern(self, stack: tuple, n: int, state: int) -> Thread:
        """The thread inside a pattern string after `state`; a plain string once an open-ended pattern matched."""
        regex = self._regex(n)
        if regex.open_end and regex.complete(state):
            return (stack, STRING, n, (0, None), 0)
        return (stack, PSTRING, n, state, 0)

    def _feasible(self, n: int, text: bytes, done: bool = False) -> bool:
        """`_number_feasible` (`_number_ok` when `done`), remembered: a vocabulary scan asks about the same few
        numbers again and again."""
        key = (n, text, done)
        hit = self._cache.get(key)
        if hit is None:
            if len(self._cache) > 100_000:
                self._cache.clear()
            check = _number_ok if done else _number_feasible
            hit = self._cache[key] = check(self.nodes[n], text)
        return hit

    def start(self) -> State:
        return (((), VALUE, self.schema.root, TOP, 0),)

    def feed(self, state: State, b: int) -> State | None:
        out: dict = {}
        for t in state:
            for nxt in self._step(t, b):
                out[nxt] = None
        # every thread is a valid reading that can be finished, so keeping only the first ones stays sound
        return tuple(out)[:MAX_THREADS] if out else None

    def complete(self, state: State) -> bool:
        """Whether the bytes so far are a whole valid document (the answer may end here)."""
        return any(self._ends(t) for t in state)

    def closed(self, state: State) -> bool:
        """Whether the document is closed (only trailing whitespace could follow)."""
        return all(t[0] == () and (t[1] == AFTER or (t[1] == ENUM and t[3] == {b""})) for t in state)

    def final(self, state: State) -> bool:
        """Whether nothing more can be written: the document is closed and its trailing whitespace (which a model's
        favourite token may hold: `]\n` where it would go on to a fence) is used up."""
        return all(t[0] == () and t[1] == AFTER and t[4] >= WS_BASE for t in state)

    def _ends(self, t: Thread) -> bool:
        stack, mode, node, aux, _ = t
        if stack:
            return False
        if mode == AFTER:
            return True
        if mode == ENUM:
            return b"" in aux
        return mode in NUMBER_ENDS and (not self.nodes[node].bounded or self._feasible(node, aux, done=True))

    # -- one byte --
    def _step(self, t: Thread, b: int) -> list[Thread] | tuple:
        stack, mode, n, aux, ws = t
        if PSTRING <= mode <= PUHEX:
            return self._pattern_step(t, b)
        if mode == STRING:  # aux: (characters so far, UTF-8 bytes owed)
            node = self.nodes[n]
            count, pending = aux
            if pending is not None:
                nxt = utf8_step(pending, b)
                return () if nxt is False else [(stack, STRING, n, (count, nxt), 0)]
            if b == 0x22:
                return [(stack, AFTER, None, None, 0)] if count >= node.min_len else ()
            if b < 0x20 or count >= node.max_len:
                return ()
            if b == 0x5C:
                return [(stack, ESC, n, count + 1, 0)]
            nxt = utf8_step(None, b)
            return () if nxt is False else [(stack, STRING, n, (count + 1, nxt), 0)]
        if mode == ESC:
            if b == ord("u"):
                return [(stack, UHEX, n, (aux, 4, None), 0)]
            return [(stack, STRING, n, (aux, None), 0)] if b in ESCAPES else ()
        if mode == UHEX:  # aux: (characters, hex digits left, the first digit)
            count, left, first = aux
            if b not in HEX:
                return ()
            node = self.nodes[n]
            if left == 3 and first in b"dD" and b in b"89abcdefABCDEF" and (node.min_len or node.max_len < math.inf):
                return ()  # a surrogate escape: a pair is one character, so length limits take the character raw
            if left == 1:
                return [(stack, STRING, n, (count, None), 0)]
            return [(stack, UHEX, n, (count, left - 1, b if left == 4 else first), 0)]
        if mode == LITERAL:
            if b != aux[0]:
                return ()
            return [(stack, AFTER, None, None, 0) if len(aux) == 1 else (stack, LITERAL, None, aux[1:], 0)]
        if mode == ENUM:
            rest = frozenset(s[1:] for s in aux if s[:1] == bytes((b,)))
            out = [(stack, ENUM, n, rest, 0)] if rest else []
            if b"" in aux:
                out += self._step((stack, AFTER, None, None, 0), b)
            return out
        if mode >= N_MINUS:
            node = self.nodes[n]
            nxt = JsonMachine._number(mode, b)
            if nxt is not None:
                if (b in b".eE" and node.kind == "integer") or (b in b"eE" and node.bounded):
                    return ()  # a form this node does not take ('.', 'e' cannot end a number either)
                text = aux + bytes((b,))
                if len(text) > MAX_NUMBER or (node.bounded and not self._feasible(n, text)):
                    return ()
                return [(stack, nxt, n, text, 0)]
            if mode not in NUMBER_ENDS or (node.bounded and not self._feasible(n, aux, done=True)):
                return ()
            return self._step((stack, AFTER, None, None, 0), b)
        if mode in (KEY, KEY_ESC, KEY_UHEX):
            return self._key(stack, mode, aux, b)
        if b in WS:
            if aux is TOP:
                return ()
            depth = stack[3] if stack else 0
            return [(stack, mode, n, aux, ws + 1)] if ws < WS_BASE + WS_PER_LEVEL * depth else ()
        if mode == VALUE:
            return self._start(stack, n, b)
        if mode == AFTER:
            return self._after(stack, b)
        if mode == ARR_FIRST:
            container = self.nodes[stack[1]]
            if b == ord("]"):
                return [self._pop(stack)] if container.min_items == 0 else ()
            if container.max_items < 1:
                return ()
            return self._start((stack[0], stack[1], 1, stack[3]), container.items, b)
        if mode in (OBJ_FIRST, OBJ_KEY):
            if b == ord("}") and mode == OBJ_FIRST:
                return [self._pop(stack)] if not self.nodes[stack[1]].required else ()
            return [(stack, KEY, None, (b"", None), 0)] if b == 0x22 and self._room(stack) else ()
        if mode == COLON:
            return [(stack, VALUE, n, None, 0)] if b == ord(":") else ()
        return ()

    def _pattern_step(self, t: Thread, b: int) -> list[Thread] | tuple:
        """A string with a `pattern`: its value's bytes (escapes decoded) run through the pattern's automaton, and
        the closing quote only where the value matches. A `\\u` escape is begun, and each of its hex digits taken,
        only while some character it can still spell may come next; escaped surrogate pairs are not taken (the
        character is written as it is)."""
        stack, mode, n, aux, _ = t
        regex = self._regex(n)
        if mode == PSTRING:
            if b == 0x22:
                return [(stack, AFTER, None, None, 0)] if regex.complete(aux) else ()
            if b == 0x5C:
                return [(stack, PESC, n, aux, 0)] if self._escapable(n, aux) else ()
            if b < 0x20:
                return ()
            nxt = regex.feed(aux, b)
            return () if nxt is None else [self._in_pattern(stack, n, nxt)]
        if mode == PESC:
            if b == ord("u"):
                return [(stack, PUHEX, n, (aux, ""), 0)] if self._spellable(n, aux, "") else ()
            nxt = regex.feed(aux, ESCAPED[b]) if b in ESCAPED else None
            return () if nxt is None else [self._in_pattern(stack, n, nxt)]
        state, digits = aux  # PUHEX
        if b not in HEX:
            return ()
        digits += chr(b).lower()
        if len(digits) < 4:
            return [(stack, PUHEX, n, (state, digits), 0)] if self._spellable(n, state, digits) else ()
        cp = int(digits, 16)
        nxt = None if 0xD800 <= cp <= 0xDFFF else regex.run(state, chr(cp).encode())
        return () if nxt is None else [self._in_pattern(stack, n, nxt)]

    def _spellable(self, n: int, state: int, digits: str) -> bool:
        """Whether some character U+XXXX (not a surrogate) whose hex starts with `digits` may come next in node n's
        pattern. Up to 65,536 candidates for a bare `\\u`, so the answer is remembered."""
        key = ("u", n, state, digits)
        hit = self._cache.get(key)
        if hit is None:
            regex = self._regex(n)
            width = 16 ** (4 - len(digits))
            lo = int(digits, 16) * width if digits else 0
            hit = any(regex.run(state, chr(cp).encode()) is not None
                      for cp in range(lo, lo + width) if not 0xD800 <= cp <= 0xDFFF)
            if len(self._cache) > 100_000:
                self._cache.clear()
            self._cache[key] = hit
        return hit

    def _escapable(self, n: int, state: int) -> bool:
        regex = self._regex(n)
        return any(regex.feed(state, v) is not None for v in ESCAPED.values()) or self._spellable(n, state, "")

    def _start(self, stack: tuple, n: int, b: int) -> list[Thread]:
        node = self.nodes[n]
        kind = node.kind
        if kind == "union":
            out: list[Thread] = []
            for alt in node.alts:
                out += self._start(stack, alt, b)
            return out
        depth = stack[3] if stack else 0
        if kind in ("object", "array") and depth >= MAX_DEPTH:
            return []
        if kind == "object":
            return [((stack, n, frozenset(), depth + 1), OBJ_FIRST, None, None, 0)] if b == ord("{") else []
        if kind == "array":
            return [((stack, n, 0, depth + 1), ARR_FIRST, None, None, 0)] if b == ord("[") else []
        if kind == "string":
            if b != 0x22:
                return []
            if node.regex is not None:
                return [self._in_pattern(stack, n, self._regex(n).start())]
            return [(stack, STRING, n, (0, None), 0)]
        if kind in ("number", "integer"):
            mode = N_MINUS if b == ord("-") else (JsonMachine._number(N_MINUS, b) if b in DIGITS else None)
            text = bytes((b,))
            if mode is None or (node.bounded and not self._feasible(n, text)):
                return []
            return [(stack, mode, n, text, 0)]
        if kind == "boolean":
            rest = {ord("t"): b"rue", ord("f"): b"alse"}.get(b)
            return [(stack, LITERAL, None, rest, 0)] if rest else []
        if kind == "null":
            return [(stack, LITERAL, None, b"ull", 0)] if b == ord("n") else []
        if kind == "enum":
            rest = frozenset(s[1:] for s in node.texts if s[:1] == bytes((b,)))
            return [(stack, ENUM, n, rest, 0)] if rest else []
        return []

    @staticmethod
    def _pop(stack: tuple) -> Thread:
        return (stack[0], AFTER, None, None, 0)

    def _room(self, stack: tuple) -> bool:
        """Whether another key can still be written in the object on top of `stack`."""
        node, seen = self.nodes[stack[1]], stack[2]
        return node.additional is not None or any(name not in seen for name in node.names)

    def _after(self, stack: tuple, b: int) -> list[Thread]:
        if not stack:
            return []
        parent, n, data, depth = stack
        node = self.nodes[n]
        if node.kind == "object":
            if b == ord(","):
                return [(stack, OBJ_KEY, None, None, 0)] if self._room(stack) else []
            if b == ord("}"):
                return [self._pop(stack)] if node.required <= data else []
            return []
        if b == ord(","):
            return [((parent, n, data + 1, depth), VALUE, node.items, None, 0)] if data < node.max_items else []
        if b == ord("]"):
            return [self._pop(stack)] if data >= node.min_items else []
        return []

    def _key(self, stack: tuple, mode: int, aux, b: int) -> list[Thread]:
        """A byte of a property name: a declared property not yet written, or (where allowed) any other name.
        aux: KEY (bytes so far, UTF-8 bytes owed), KEY_ESC bytes so far, KEY_UHEX (bytes so far, hex digits left)."""
        parent, n, seen, depth = stack
        node = self.nodes[n]
        if mode == KEY:
            raw, pending = aux
            if b == 0x22 and pending is None:
                if node.additional is None:
                    name = node.props.get(raw)  # only the declared names, spelled as json.dumps spells them
                else:
                    try:
                        name = json.loads(b'"' + raw + b'"')
                    except ValueError:
                        return []
                if name is None or name in seen or name in node.forbidden:
                    return []
                return [((parent, n, seen | {name}, depth), COLON, node.names.get(name, node.additional), None, 0)]
            if b < 0x20:
                return []
            if b == 0x5C and pending is None:
                nxt = (KEY_ESC, raw + b"\\")
            else:
                owed = utf8_step(pending, b)
                if owed is False:
                    return []
                nxt = (KEY, (raw + bytes((b,)), owed))
        elif mode == KEY_ESC:
            if b == ord("u"):
                nxt = (KEY_UHEX, (aux + b"u", 4))
            elif b in ESCAPES:
                nxt = (KEY, (aux + bytes((b,)), None))
            else:
                return []
        else:
            raw, left = aux
            if b not in HEX:
                return []
            nxt = (KEY, (raw + bytes((b,)), None)) if left == 1 else (KEY_UHEX, (raw + bytes((b,)), left - 1))
        raw = nxt[1] if nxt[0] == KEY_ESC else nxt[1][0]
        if node.additional is None and not any(k.startswith(raw) and name not in seen
                                               for k, name in node.props.items()):
            return []
        return [(stack, nxt[0], None, nxt[1], 0)]
