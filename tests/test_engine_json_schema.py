"""JSON-schema-constrained decoding, checked against the `jsonschema` validator: the machine accepts exactly the
valid documents (random valid instances, and arbitrary JSON), random walks through it never dead-end
and always end in a valid document, and a random-weight model constrained by a schema always answers with one."""

from __future__ import annotations

import json
import random
import re

import jsonschema
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qwen3vl.engine import schema as schema_module
from qwen3vl.engine.constrain import JsonConstraint, JsonMachine
from qwen3vl.engine.schema import SchemaError, SchemaMachine, compile_schema

BBOX = {"type": "object", "additionalProperties": False, "required": ["bbox_2d", "label"],
        "properties": {"bbox_2d": {"type": "array", "minItems": 4, "maxItems": 4,
                                   "items": {"type": "integer", "minimum": 0, "maximum": 1000}},
                       "label": {"type": "string", "minLength": 1, "maxLength": 12}}}
PYDANTIC = {  # what pydantic's model_json_schema() writes for a nested model with Optional, Literal and a list
    "$defs": {"Item": {"properties": {"name": {"title": "Name", "type": "string"},
                                      "price": {"exclusiveMinimum": 0, "title": "Price", "type": "number"},
                                      "tags": {"items": {"type": "string"}, "title": "Tags", "type": "array"}},
                       "required": ["name", "price", "tags"], "title": "Item", "type": "object",
                       "additionalProperties": False}},
    "properties": {"kind": {"enum": ["receipt", "invoice"], "title": "Kind", "type": "string"},
                   "items": {"items": {"$ref": "#/$defs/Item"}, "maxItems": 3, "title": "Items", "type": "array"},
                   "total": {"anyOf": [{"type": "number"}, {"type": "null"}], "default": None, "title": "Total"},
                   "paid": {"type": "boolean"}},
    "required": ["kind", "items", "total", "paid"], "title": "Receipt", "type": "object",
    "additionalProperties": False}
KIDS = {"type": "array", "maxItems": 2, "items": {"$ref": "#/$defs/node"}}
TREE = {"$defs": {"node": {"type": "object", "required": ["v"], "additionalProperties": False,
                           "properties": {"v": {"type": "integer", "minimum": -5, "exclusiveMaximum": 50},
                                          "kids": KIDS}}},
        "$ref": "#/$defs/node"}
OPEN = {"type": "object", "properties": {"id": {"type": ["integer", "string"]}, "ratio": {"type": "number",
                                                                                          "minimum": -1.5,
                                                                                          "maximum": 2.25}},
        "additionalProperties": {"type": ["boolean", "null", "array"]}}
OPEN_REQUIRED = {**OPEN, "required": ["id"]}
ENUMS = {"type": "object", "required": ["c", "n"], "additionalProperties": False,
         "properties": {"c": {"const": {"a": [1, 2]}}, "n": {"enum": [1, 12, 1.5, "x", None, True]},
                        "s": {"type": ["string", "null"], "maxLength": 2}}}
PATTERNED = {  # `examples` (an annotation the compiler ignores) feed `_instance`: values needing escapes, too
    "type": "object", "additionalProperties": False, "required": ["date", "code"],
    "properties": {"date": {"type": "string", "pattern": r"^\d{4}-(0[1-9]|1[0-2])-\d{2}$",
                            "examples": ["2024-01-31", "1999-12-07"]},
                   "code": {"type": "string", "pattern": "a[bc]+",  # unanchored: anywhere in the value
                            "examples": ["ab", 'x"acc"\n', "é\tacb\\", "\u2603ab\x01"]},
                   "tags": {"type": "array", "maxItems": 2, "items": {"type": "string", "pattern": "^(é|x)+\\n?$",
                                                                      "examples": ["é", "xéx\n"]}}}}
SCHEMAS = {"bbox": BBOX, "pydantic": PYDANTIC, "tree": TREE, "open": OPEN, "open_required": OPEN_REQUIRED,
           "enums": ENUMS, "patterned": PATTERNED}


def _valid(schema, value) -> bool:
    return jsonschema.Draft202012Validator(schema).is_valid(value)


def _accepts(schema, text: str) -> bool:
    m = SchemaMachine(schema)
    state = m.run(m.start(), text.encode())
    return state is not None and m.complete(state)


def _exponent_free(value) -> bool:
    """Numbers json.dumps writes without an exponent (the machine refuses exponents in bounded numbers)."""
    if isinstance(value, float):
        return "e" not in repr(value) and "E" not in repr(value)
    if isinstance(value, dict):
        return all(_exponent_free(v) for v in value.values())
    if isinstance(value, list):
        return all(_exponent_free(v) for v in value)
    return True


def _instance(schema, rng: random.Random, root=None, depth: int = 0):
    """A random document meant to be valid against `schema` (read from the raw dict, not from our compiled form)."""
    root = schema if root is None else root
    if schema is True or schema == {}:
        return rng.choice([None, True, 3, "s", [1], {"k": 0}])
    if "$ref" in schema:
        target = root
        for part in schema["$ref"][2:].split("/"):
            target = target[part]
        return _instance(target, rng, root, depth + 1)
    if "anyOf" in schema:
        return _instance(rng.choice(schema["anyOf"]), rng, root, depth)
    if "const" in schema:
        return schema["const"]
    if "enum" in schema:
        return rng.choice(schema["enum"])
    types = schema.get("type")
    t = rng.choice(types) if isinstance(types, list) else types
    if t == "object":
        out = {}
        for k, sub in schema.get("properties", {}).items():
            if k in schema.get("required", []) or (depth < 3 and rng.random() < 0.5):
                out[k] = _instance(sub, rng, root, depth + 1)
        extra = schema.get("additionalProperties", True)
        if extra is not False and rng.random() < 0.5:
            out["extra_" + rng.choice("xyzé")] = _instance(extra, rng, root, depth + 1)
        return dict(rng.sample(list(out.items()), len(out)))  # any key order
    if t == "array":
        lo, hi = schema.get("minItems", 0), schema.get("maxItems", 4)
        n = rng.randint(lo, max(lo, min(hi, 4 if depth < 3 else lo)))
        return [_instance(schema.get("items", True), rng, root, depth + 1) for _ in range(n)]
    if t == "string" and "pattern" in schema:
        return rng.choice(schema["examples"])
    if t == "string":
        lo, hi = schema.get("minLength", 0), schema.get("maxLength", 10)
        return "".join(rng.choice('ab é"\\\n\u2603') for _ in range(rng.randint(lo, hi)))
    if t in ("integer", "number"):
        lo = schema.get("minimum", schema.get("exclusiveMinimum", -1000))
        hi = schema.get("maximum", schema.get("exclusiveMaximum", 1000))
        x = rng.randint(int(lo) + 1, int(hi) - 1) if t == "integer" else round(rng.uniform(lo, hi), rng.randint(0, 4))
        return rng.choice([x, lo, hi]) if rng.random() < 0.2 else x
    if t == "boolean":
        return rng.random() < 0.5
    return None


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_every_valid_document_is_accepted_and_complete_only_at_its_end(name):
    schema = SCHEMAS[name]
    rng = random.Random(1)
    checked = 0
    for i in range(150):
        value = _instance(schema, rng)
        if not _valid(schema, value) or not _exponent_free(value):  # a bound itself, when it is exclusive
            continue
        indent = None if name == "enums" else rng.choice([None, 2])  # enum objects: json.dumps's one-line spellings
        text = json.dumps(value, indent=indent, ensure_ascii=rng.random() < 0.3)
        m = SchemaMachine(schema)
        state = m.start()
        for j, b in enumerate(text.encode()):
            assert not m.complete(state), text[:j]
            state = m.feed(state, b)
            assert state is not None, f"refused at byte {j} of {text!r}"
        assert m.complete(state), text
        checked += 1
    assert checked > 120


# (floats like 1.0 are left out: JSON Schema counts them as integers, which the machine writes only as `1`)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-60, 1200)
    | st.floats(-3, 3).map(lambda x: round(x, 3)).filter(lambda x: not x.is_integer())
    | st.text(alphabet="abcxyz é\"\\\n", max_size=14) | st.sampled_from(["receipt", "invoice", "x", "name"]),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(
        st.sampled_from(["bbox_2d", "label", "kind", "items", "total", "paid", "name", "price", "tags", "v", "kids",
                         "id", "ratio", "c", "n", "s", "zz"]), inner, max_size=5),
    max_leaves=16)


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_the_machine_agrees_with_jsonschema_on_arbitrary_json(name):
    schema = SCHEMAS[name]
    seen = {True: 0, False: 0}

    @settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
    @given(json_values)
    def check(value):
        text = json.dumps(value, ensure_ascii=False)
        expected = _valid(schema, value)
        seen[expected] += 1
        assert _accepts(schema, text) == expected, text

    check()
    assert seen[False] > 0


def _alphabet(schema) -> list[bytes]:
    """Single bytes (ASCII) and one two-byte character: the model's tokens are UTF-8, and so are the walks."""
    text = json.dumps(schema, ensure_ascii=False)
    ascii_bytes = {c for c in text.encode() if c < 0x80} | set(b'{}[],:" \n0123456789-.eE+tfrulsa\\')
    return [bytes((c,)) for c in sorted(ascii_bytes)] + ["é".encode()]


def _openness(state) -> tuple[int, bool]:
    """How far a machine state is from closing its document: (nesting depth, inside a string or a name)."""
    inside = (schema_module.STRING, schema_module.ESC, schema_module.UHEX, schema_module.KEY, schema_module.KEY_ESC,
              schema_module.KEY_UHEX, schema_module.PSTRING, schema_module.PESC, schema_module.PUHEX)
    return min(((t[0][3] if t[0] else 0), t[1] in inside) for t in state)


def _closer(m, state, alphabet, nexts) -> list[bytes]:
    """The next characters on a shortest way to a less open state (a pattern string may need a few more characters,
    "ab" say, before its quote is allowed): breadth first over the machine's states, at most 6 characters deep."""
    here = _openness(state)
    best = min(_openness(s) for s in nexts.values())
    if best < here or not any(t[1] == schema_module.PSTRING for t in state):
        return sorted(c for c, s in nexts.items() if _openness(s) == best)
    level: dict = {}
    for c, s in sorted(nexts.items()):
        level.setdefault(s, set()).add(c)
    seen = set(level)
    for _ in range(6):
        found = sorted({c for s, cs in level.items() if _openness(s) < here for c in cs})
        if found:
            return found
        nxt: dict = {}
        for s, cs in level.items():
            for a in alphabet:
                t = m.run(s, a)
                if t is not None and t not in seen:
                    nxt.setdefault(t, set()).update(cs)
        seen.update(nxt)
        level = nxt
    return sorted(nexts)


@pytest.mark.parametrize("name", sorted(set(SCHEMAS) - {"open_required"}))  # (random names never hit "id")
def test_random_walks_never_dead_end_and_every_stop_is_valid(name):
    """Characters picked at random among those the machine allows: one is always allowed until the document is
    closed, and wherever the machine says the document may end, it is valid."""
    schema = SCHEMAS[name]
    m = SchemaMachine(schema)
    alphabet = _alphabet(schema)
    rng = random.Random(0)
    stops = 0
    for _ in range(40):
        state, text = m.start(), b""
        while True:
            nexts = {c: s for c in alphabet if (s := m.run(state, c)) is not None}
            if m.complete(state) and (m.final(state) or rng.random() < 0.3 or not nexts):
                value = json.loads(text)
                assert _valid(schema, value), text
                stops += 1
                break
            assert nexts, f"dead end after {text!r}"
            if len(text) > 120:  # after a while, towards closing: out of strings and names, then out of brackets
                c = rng.choice(_closer(m, state, alphabet, nexts))
            else:
                c = rng.choice(sorted(nexts))
            state, text = nexts[c], text + c
            assert len(text) < 3000, text
    assert stops == 40


STRINGS = {"type": "string", "minLength": 2, "maxLength": 3}
ARRAYS = {"type": "array", "items": {"type": "integer"}, "minItems": 1, "maxItems": 2}


def test_pattern_documents_agree_with_jsonschema():
    """Pattern classes as jsonschema reads them (Python's `re.search`, Unicode classes), escapes decoded."""
    cases = [("^\\W$", "é"), ("^\\D$", "٣"), ("^\\S$", "\xa0"), ("^[^\\w]$", "é"), ("^\\w+$", "héllo"),
             ("ab", "xxabyy"), ("ab", "a\nb"), ("^a{,}$", "aaa"), ("^a{,}$", "a{,}"), ("b$", "ab\tb"),
             ("^x", "\u2603x"), ("\\d{3}", "12٣4"), ("é", "\u00e9")]
    for pattern, value in cases:
        schema = {"type": "string", "pattern": pattern}
        for ascii_only in (False, True):
            text = json.dumps(value, ensure_ascii=ascii_only)
            assert _accepts(schema, text) == _valid(schema, value), (pattern, text)


@pytest.mark.parametrize("pattern", ["a)|(b", "a)(b", ")|(", "(a", "[a"])
def test_patterns_python_refuses_are_refused_before_wrapping(pattern):
    with pytest.raises(re.error):
        re.compile(pattern)
    with pytest.raises(SchemaError, match=re.escape(f"pattern {pattern!r}")):
        compile_schema({"type": "string", "pattern": pattern})


@pytest.mark.parametrize("schema,text", [
    (STRINGS, '""'), (STRINGS, '"a"'), (STRINGS, '"ab"'), (STRINGS, '"abc"'), (STRINGS, '"abcd"'),
    (STRINGS, '"é☃"'), (STRINGS, '"\\u00e9"'), (STRINGS, '"a\\n"'), (STRINGS, '"\\u00e9\\t\\""'),
    (STRINGS, '"😀"'), (STRINGS, '"😀😀"'), (STRINGS, '"ab😀c"'),
    (ARRAYS, "[]"), (ARRAYS, "[1]"), (ARRAYS, "[1, 2]"), (ARRAYS, "[1, 2, 3]"), (ARRAYS, "[1.5]"),
    (BBOX, '{"bbox_2d": [0, 0, 1000, 1000], "label": ""}'), (BBOX, '{"label": "z", "bbox_2d": [0, 0, 1000, 1000]}'),
    (OPEN, '{"id": "x", "id2": [1, {"k": null}]}'), (OPEN, '{"id": 1.5}'), (OPEN, '{"\\u0069d": 3}'),
    (OPEN, '{"\\u0069d": "s", "r\\u00e9": true}'), (OPEN, '{"ratio": -1.5}'), (OPEN, '{"ratio": -1.51}'),
    (TREE, '{"v": 49, "kids": [{"v": -5}, {"v": 0, "kids": []}]}'), (TREE, '{"v": 50}'), (TREE, '{"kids": []}'),
    (TREE, '{"v": 1, "kids": [{"v": 1}, {"v": 1}, {"v": 1}]}'),
    (ENUMS, '{"c": {"a": [1, 2]}, "n": 12}'), (ENUMS, '{"c": {"a":[1,2]}, "n": 1.5, "s": null}'),
    (ENUMS, '{"c": {"a": [1, 2]}, "n": 2}'), (ENUMS, '{"c": {"a": [2, 1]}, "n": 1}'),
])
def test_edge_documents_agree_with_jsonschema(schema, text):
    assert _accepts(schema, text) == _valid(schema, json.loads(text)), text


@pytest.mark.parametrize("schema,text", [(OPEN, '{"id": 1, "id": 2}'), (OPEN, '{"x": 1, "x": 2}'),
                                         (OPEN, '{"id": 1, "\\u0069d": 2}'), (TREE, '{"v": 1, "v": 2}')])
def test_duplicate_keys_are_refused(schema, text):
    assert not _accepts(schema, text)


@pytest.mark.parametrize("lo,hi,excl", [(0, 1000, False), (-20, 7, False), (-3, 250, True), (5, None, False),
                                        (None, -8, False)])
def test_integer_bounds_accept_exactly_the_integers_within(lo, hi, excl):
    schema = {"type": "integer"}
    if lo is not None:
        schema["exclusiveMinimum" if excl else "minimum"] = lo
    if hi is not None:
        schema["maximum"] = hi
    for v in range(-1100, 1300):
        assert _accepts(schema, str(v)) == _valid(schema, v), v
    for text in ("1.0", "1e2", "-", "01"):
        assert not _accepts(schema, text)


@settings(max_examples=300, deadline=None)
@given(st.decimals(-50, 50, places=3, allow_nan=False), st.decimals(-5, 5, places=2), st.decimals(-5, 5, places=2),
       st.booleans(), st.booleans())
def test_number_bounds_accept_exactly_the_numbers_within(x, lo, hi, lo_excl, hi_excl):
    if lo > hi:
        lo, hi = hi, lo
    if lo == hi:
        lo_excl = hi_excl = False
    schema = {"type": "number", ("exclusiveMinimum" if lo_excl else "minimum"): float(lo),
              ("exclusiveMaximum" if hi_excl else "maximum"): float(hi)}
    text = format(x, "f")
    assert _accepts(schema, text) == _valid(schema, float(text)), (text, schema)
    # any prefix the machine takes can still be completed within the bounds: here, by a walk over digits
    m = SchemaMachine(schema)
    state = m.start()
    for b in text.encode():
        nxt = m.feed(state, b)
        if nxt is None:
            break
        state = nxt
    for _ in range(12):  # a byte that completes the number if there is one, else non-zero digits first
        if m.complete(state):
            break
        nexts = [s for b in b"1234567890.-" if (s := m.feed(state, b)) is not None]
        state = next((s for s in nexts if m.complete(s)), nexts[0])
    assert m.complete(state)


@pytest.mark.parametrize("schema,words", [
    ({"type": "string", "pattern": "^a", "maxLength": 3}, "pattern together with minLength/maxLength"),
    ({"type": "string", "pattern": "^a|b$"}, "anchors with a top-level | are not supported"),
    ({"type": "string", "pattern": "(a)\\1"}, "back references are not supported"),
    ({"type": "string", "pattern": "x(?=y)"}, "lookaround is not supported"),
    ({"type": "object", "patternProperties": {"a": {}}}, "'patternProperties' is not supported"),
    ({"type": "integer", "multipleOf": 2}, "'multipleOf'"),
    ({"type": "array", "items": [{"type": "string"}]}, "tuple-form items"),
    ({"allOf": [{"type": "string"}, {"maxLength": 3}]}, "allOf is supported only as a single schema"),
    ({"$ref": "#/$defs/missing"}, "points nowhere"),
    ({"$ref": "https://example.com/s.json"}, "only local $refs"),
    ({"type": "object", "required": ["a"], "additionalProperties": False}, "required property 'a' is not allowed"),
    ({"type": "array", "minItems": 3, "maxItems": 1}, "minItems/maxItems"),
    ({"type": "integer", "minimum": 1.2, "maximum": 1.8}, "no integer lies within"),
    ({"type": "number", "exclusiveMinimum": 2, "maximum": 2}, "no number lies within"),
    ({"type": "string", "enum": [1, 2]}, "enum/const leaves no value"),
    ({"type": "colour"}, "type must be one of"),
    ({"anyOf": [False, False]}, "no alternative"),
    ({"type": "object", "properties": {"a": {"type": "string", "not": {"const": "x"}}}}, "properties/a: the JSON "
                                                                                         "schema keyword 'not'"),
])
def test_schemas_that_cannot_be_enforced_are_refused_by_name(schema, words):
    with pytest.raises(SchemaError, match=re.escape(words)):
        compile_schema(schema)


def test_annotations_and_unknown_keywords_are_ignored_and_format_is_not_asserted():
    schema = {"type": "object", "title": "T", "description": "d", "x-vendor": 1, "examples": [{}],
              "properties": {"when": {"type": "string", "format": "date-time", "default": "now"}}}
    assert _accepts(schema, '{"when": "yesterday"}')


def test_the_constraint_allows_the_end_only_on_a_valid_document():
    schema = {"type": "object", "required": ["n"], "additionalProperties": False,
              "properties": {"n": {"type": "integer", "maximum": 99}}}
    vocab = [None, b"{", b'"n"', b":", b" 5", b"7", b"0", b"}", b"}\n", b'"m"', b"\n"]
    c = JsonConstraint(lambda t: vocab[t], end_ids=[0], schema=compile_schema(schema))
    assert [t for t in range(11) if c.allows(t)] == [1]
    for t in (1, 2, 3):
        c.advance(t)
    assert [t for t in range(11) if c.allows(t)] == [4, 5, 6, 10]  # an integer (or whitespace)
    c.advance(4)
    assert [t for t in range(11) if c.allows(t)] == [5, 6, 7, 8, 10]  # more digits (57, 50 <= 99) or the end ("}\n":
    c.advance(5)                                                    # whitespace may trail the document)
    assert [t for t in range(11) if c.allows(t)] == [7, 8, 10]  # not 577, 570 > 99
    c.advance(7)
    assert c.complete and [t for t in range(11) if c.allows(t)] == [0, 10]  # the end, or trailing whitespace...
    for _ in range(8):
        c.advance(10)
    assert c.complete and [t for t in range(11) if c.allows(t)] == [0]  # ...but not forever
    number = JsonConstraint(lambda t: vocab[t], end_ids=[0], schema={"type": "integer"})
    number.advance(5)
    assert number.complete and number.allows(0) and number.allows(6)  # a bare number may end or go on


@pytest.fixture(scope="module")
def llm(tmp_path_factory):
    from qwen3vl.llm import LLM
    from qwen3vl.model.testing import write_tiny_model

    return LLM(write_tiny_model(tmp_path_factory.mktemp("m")), kv_cache_gb=0.05, device="cpu")


def test_a_random_model_under_a_schema_always_answers_a_valid_document(llm):
    schema = {"type": "object", "additionalProperties": False, "required": ["bbox_2d", "label", "ok"],
              "properties": {"bbox_2d": BBOX["properties"]["bbox_2d"], "label": {"enum": ["cat", "dog"]},
                             "ok": {"type": "boolean"}}}
    messages = [{"role": "user", "content": "Where is it?"}]
    results = [llm.chat(messages, max_tokens=600, temperature=1.0, seed=s, json_schema=schema) for s in range(3)]
    results.append(llm.chat(messages, max_tokens=600, temperature=0, json_schema=schema))
    for r in results:  # the schema bounds the document (whitespace runs are capped), so every answer finishes
        assert r.finish_reason == "stop", r.text
        assert _valid(schema, json.loads(r.text)), r.text
    free = llm.chat(messages, max_tokens=20, temperature=0, json_mode=True)  # plain JSON mode is looser
    assert not _accepts(schema, free.text)
    with pytest.raises(SchemaError, match="'patternProperties'"):
        llm.chat(messages, max_tokens=5, json_schema={"type": "object", "patternProperties": {"x": {}}})
    dated = {"type": "object", "additionalProperties": False, "required": ["when"],
             "properties": {"when": {"type": "string", "pattern": r"^\d{4}-\d{2}-\d{2}$"}}}
    for r in [llm.chat(messages, max_tokens=300, temperature=1.0, seed=s, json_schema=dated) for s in range(3)]:
        assert r.finish_reason == "stop" and _valid(dated, json.loads(r.text)), r.text


def test_the_cli_takes_a_schema_inline_or_from_a_file(tmp_path):
    import argparse

    from qwen3vl.commands import add_sampling_flags

    parser = argparse.ArgumentParser()
    add_sampling_flags(parser)
    path = tmp_path / "s.json"
    path.write_text(json.dumps(BBOX))
    assert parser.parse_args(["--json-schema", str(path)]).json_schema == BBOX
    assert parser.parse_args(["--json-schema", '{"type": "object"}']).json_schema == {"type": "object"}
    for bad in ('{"type": "string", "pattern": "(?=a)"}', '{"type": ', str(tmp_path / "missing.json")):
        with pytest.raises(SystemExit):
            parser.parse_args(["--json-schema", bad])


# ---- found in review: each of these was a real bug ----

def test_recursive_unions_that_begin_alike_stay_fast():
    """Dog | Cat, each with friends: list[Dog | Cat]: the readings of '{"friends": [' double at every level unless
    capped; 16 levels used to take seconds per byte."""
    import time

    def animal(sound):
        return {"type": "object", "additionalProperties": False, "required": [sound],
                "properties": {sound: {"type": "boolean"},
                               "friends": {"type": "array", "items": {"$ref": "#/$defs/pet"}}}}

    schema = {"$defs": {"dog": animal("bark"), "cat": animal("meow"),
                        "pet": {"anyOf": [{"$ref": "#/$defs/dog"}, {"$ref": "#/$defs/cat"}]}},
              "$ref": "#/$defs/pet"}
    m = SchemaMachine(schema)
    t = time.perf_counter()
    state = m.run(m.start(), b'{"friends": [' * 16)
    assert state is not None and len(state) <= schema_module.MAX_THREADS
    text = b'{"friends": [' * 16 + b'{"meow": true}' + b'], "bark": false}' * 16
    state = m.run(state, text[len(b'{"friends": [' * 16):])
    assert time.perf_counter() - t < 5
    assert state is not None and m.complete(state) and _valid(schema, json.loads(text))


@pytest.mark.parametrize("schema,text", [
    ({"properties": {"a": False}}, '{"a": 1}'),  # a property declared false is not "additional"
    ({"properties": {"a": {"$ref": "#/$defs/n"}}, "$defs": {"n": False}}, '{"a": 1}'),
    ({"type": "number", "exclusiveMaximum": 1}, "0.99999999999999999"),  # a float 1.0 to the validator
    ({"const": "a", "enum": ["a", "b"]}, '"b"'),  # both: the const, if the enum has it
])
def test_documents_the_validator_rejects_are_refused(schema, text):
    assert not _valid(schema, json.loads(text))
    assert not _accepts(schema, text)


def test_only_well_formed_utf8_is_written():
    m = SchemaMachine({"type": "object", "properties": {"s": {"type": "string", "maxLength": 1}}})
    start = m.run(m.start(), b'{"s": "')
    assert m.run(start, "é".encode()) is not None and m.run(start, b"a\x80") is None  # a stray continuation byte
    assert m.run(start, b"\xc3") is not None and m.run(start, b'\xc3"') is None  # an unfinished character
    assert m.run(start, b"\xed\xa0\x80") is None  # an encoded surrogate
    key = m.run(m.start(), b'{"')
    assert m.run(key, "ké".encode()) is not None and m.run(key, b"k\x80") is None  # undeclared names too
    plain = JsonMachine()  # plain JSON mode too
    assert plain.run(plain.start(), '{"é": "😀"}'.encode()) is not None
    for bad in (b'{"a\x80', b'{"a": "\xc3"', b'{"a": "\xf5'):
        assert plain.run(plain.start(), bad) is None, bad
    # a length-limited string takes an astral character raw: an escaped surrogate pair would count as two here
    assert m.run(start, "😀".encode()) is not None and m.run(start, b"\\ud83d") is None


@pytest.mark.parametrize("schema,words", [
    ({"type": "array", "minItems": 1, "items": {"$ref": "#/$defs/n"}, "$defs": {"n": False}}, "allows no document"),
    ({"type": "object", "required": ["a"], "properties": {"a": {"$ref": "#/$defs/n"}}, "$defs": {"n": False}},
     "allows no document"),
    ({"$defs": {"n": {"type": "object", "required": ["k"], "properties": {"k": {"$ref": "#/$defs/n"}}}},
      "$ref": "#/$defs/n"}, "finite depth"),  # every document would be infinitely deep
    ({"properties": {"\ud800": {}}}, "malformed schema"),  # a lone surrogate name (json.loads accepts it)
    ({"type": "number", "minimum": 10 ** 400}, "malformed schema"),
    ({"const": float("inf")}, "not a finite JSON number"),
    ({"const": "a", "enum": ["b"]}, "leaves no value"),
])
def test_unsatisfiable_and_malformed_schemas_are_refused(schema, words):
    with pytest.raises(SchemaError, match=words):
        compile_schema(schema)


def test_unsatisfiable_branches_are_never_offered():
    m = SchemaMachine({"type": "object", "additionalProperties": False,
                       "properties": {"a": {"$ref": "#/$defs/n"}, "b": {"type": "array", "items": False}},
                       "$defs": {"n": False}})
    assert m.run(m.start(), b'{"a') is None  # "a" cannot be given a value, so it is not offered
    assert m.run(m.start(), b'{"b": [1') is None and _accepts(m.schema.source, '{"b": []}')


def test_nesting_is_capped():
    m = SchemaMachine(True)
    depth = schema_module.MAX_DEPTH
    assert m.run(m.start(), b"[" * depth) is not None and m.run(m.start(), b"[" * (depth + 1)) is None
