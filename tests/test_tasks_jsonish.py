"""Tolerant JSON extraction on the shapes models really emit."""

from __future__ import annotations

from qwen3vl.tasks.jsonish import extract_json, parse_lenient, strict_json_values


def test_fenced_block_is_strict():
    ext = extract_json('```json\n[{"bbox_2d": [1, 2, 3, 4], "label": "a"}]\n```')
    assert ext.values == [[{"bbox_2d": [1, 2, 3, 4], "label": "a"}]]
    assert ext.strict and not ext.truncated and ext.problems == []


def test_trailing_commas_single_quotes_unquoted_keys_python_literals():
    ext = extract_json("```json\n[{'a': 1, b: True, \"c\": None,}, ]\n```")
    assert ext.values == [[{"a": 1, "b": True, "c": None}]]
    assert not ext.strict
    text = " ".join(ext.problems)
    assert "trailing comma" in text and "single-quoted" in text and "unquoted keys" in text


def test_several_blocks_and_prose_between():
    ext = extract_json('A:\n```json\n{"x": 1}\n```\nB:\n```json\n{"y": 2}\n```\nthanks')
    assert ext.values == [{"x": 1}, {"y": 2}]


def test_bare_json_inside_prose():
    ext = extract_json('Here you go: [{"point_2d": [925, 618], "label": "point_1"}] - hope it helps.')
    assert ext.values == [[{"point_2d": [925, 618], "label": "point_1"}]]


def test_truncated_list_keeps_complete_items_and_reports_the_rest():
    text = '```json\n[\n {"bbox_2d": [1, 2, 3, 4], "label": "a"},\n {"bbox_2d": [5, 6, 7, 8], "label": "b"},\n {"bbox_2d": [9, 1'
    ext = extract_json(text)
    assert ext.truncated and ext.dropped == 1
    assert ext.values == [[{"bbox_2d": [1, 2, 3, 4], "label": "a"}, {"bbox_2d": [5, 6, 7, 8], "label": "b"}]]
    assert any("truncated" in p for p in ext.problems)


def test_number_cut_at_the_end_counts_as_unfinished():
    value, _, _, truncated, _ = parse_lenient("[1, 2, 12")
    assert truncated and value == [1, 2]


def test_mismatched_closer_is_repaired():
    ext = extract_json('{"a": [1, 2}')
    assert ext.values == [{"a": [1, 2]}]


def test_nothing_to_find_reports_instead_of_raising():
    ext = extract_json("I cannot see any cars in this image.")
    assert ext.values == [] and ext.problems and not ext.strict


def test_strict_values_refuse_repairs():
    assert strict_json_values('```json\n{"a": 1}\n```') == [{"a": 1}]
    assert strict_json_values('{"a": 1,}') is None
    assert strict_json_values("[1, 2") is None
