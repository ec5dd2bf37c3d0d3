"""Metrics against hand-computed values, answer extraction on real-looking replies, and the JSONL runner."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from qwen3vl.tasks.backends import ChatReply, ScriptedBackend
from qwen3vl.tasks.eval.answers import extract_choice, extract_number, extract_point
from qwen3vl.tasks.eval.metrics import (
    acc_at_iou,
    anls,
    iou,
    json_valid,
    levenshtein,
    numeric_match,
    point_in_box,
    recall_at,
    temporal_iou,
    tool_call_valid,
)
from qwen3vl.tasks.eval.runner import evaluate, format_table, load_dataset

# ---------------------------------------------------------------------------------------------- metrics

def test_levenshtein():
    assert levenshtein("kitten", "sitting") == 3  # k->s, e->i, +g
    assert levenshtein("", "abc") == 3 and levenshtein("same", "same") == 0


def test_anls_by_hand():
    # "Hello  Wrld" -> "hello wrld" (10 chars) vs "hello world" (11): one insertion, NL = 1/11
    assert anls("Hello  Wrld", ["hello world"]) == pytest.approx(1 - 1 / 11)
    # best over references: exact match with the second one
    assert anls("$12.50", ["12.50", "$12.50"]) == 1.0
    # "abc" vs "xyz": NL = 3/3 = 1 >= 0.5 -> 0
    assert anls("abc", "xyz") == 0.0
    # NL exactly 0.5 is cut to 0: "ab" vs "ac" -> 1/2
    assert anls("ab", "ac") == 0.0
    # NL = 1/3 < 0.5 -> 2/3: "abc" vs "abd"
    assert anls("abc", "abd") == pytest.approx(2 / 3)


def test_iou_and_acc_by_hand():
    # (0,0,10,10) vs (5,5,15,15): intersection 5*5 = 25, union 100 + 100 - 25 = 175 -> 1/7
    assert iou((0, 0, 10, 10), (5, 5, 15, 15)) == pytest.approx(25 / 175)
    # nested: (0,0,10,10) vs (0,0,10,5): 50 / 100
    assert iou((0, 0, 10, 10), (0, 0, 10, 5)) == 0.5
    assert iou((0, 0, 1, 1), (2, 2, 3, 3)) == 0.0
    assert iou((0, 0, 0, 0), (0, 0, 0, 0)) == 0.0
    # Acc@0.5 over IoUs [1/7, 0.5, 0.8]: 0.5 and 0.8 pass -> 2/3
    assert acc_at_iou([25 / 175, 0.5, 0.8]) == pytest.approx(2 / 3)


def test_point_in_box_edges_included():
    box = (10, 20, 30, 40)
    assert point_in_box((10, 20), box) and point_in_box((30, 40), box) and point_in_box((15, 25), box)
    assert not point_in_box((9.99, 25), box) and not point_in_box((15, 40.01), box)


def test_temporal_iou_and_recall_by_hand():
    # (0,10) vs (5,15): overlap 5, union 15 -> 1/3
    assert temporal_iou((0, 10), (5, 15)) == pytest.approx(1 / 3)
    assert temporal_iou((0, 1), (2, 3)) == 0.0
    # tIoUs [1/3, 0.6, 0.8, 0]: R@0.3 = 3/4, R@0.5 = 2/4, R@0.7 = 1/4, mIoU = (1/3 + 0.6 + 0.8) / 4 = 0.43333
    r = recall_at([1 / 3, 0.6, 0.8, 0.0])
    assert r == pytest.approx({"R@0.3": 0.75, "R@0.5": 0.5, "R@0.7": 0.25, "mIoU": (1 / 3 + 1.4) / 4})


def test_numeric_match():
    assert numeric_match(42.0, 42) and not numeric_match(None, 1)
    # 5% relaxed: |104.9 - 100| = 4.9 <= 5, |105.1 - 100| = 5.1 > 5
    assert numeric_match(104.9, 100, rel_tol=0.05) and not numeric_match(105.1, 100, rel_tol=0.05)


def test_validity_checks():
    assert json_valid('```json\n[{"bbox_2d": [1, 2, 3, 4]}]\n```')
    assert not json_valid('```json\n[{"bbox_2d": [1, 2, 3, 4]},]\n```')
    assert not json_valid('[{"bbox_2d": [1, 2')
    good = '<tool_call>\n{"name": "computer_use", "arguments": {"action": "wait", "time": 1}}\n</tool_call>'
    assert tool_call_valid(good)
    assert not tool_call_valid(good.replace("</tool_call>", ""))
    assert not tool_call_valid('<tool_call>\n{"name": "computer_use", "arguments": {"action": "wait",}}\n</tool_call>')
    assert not tool_call_valid(good, required={"computer_use": ["action", "coordinate"]})
    assert tool_call_valid(good, required={"computer_use": ["action"]})
    assert not tool_call_valid("no call")


# ---------------------------------------------------------------------------------------------- extraction

@pytest.mark.parametrize("reply, letter", [
    ("C. window", "C"),
    ("...so the robot should follow the **blue arrow**.\n\n✅ Correct answer: **B. Blue.**", "B"),
    ("A points to the drip tray... D points to the lever.\n\n---\n\n**Answer: D. D.**", "D"),
    ("(c)", "C"),
    ("The answer is (A).", "A"),
    ("<think>A or B? Probably A.</think>\n\nB", "B"),
    ("A red car is parked; option C fits.", "C"),
    ("I think it's D", "D"),
    ("None of these fit.", None),
])
def test_choice_letters(reply, letter):
    assert extract_choice(reply) == letter


@pytest.mark.parametrize("reply, number", [
    ("The total is 1,234.5 dollars.", 1234.5),
    ("so x = 12, and the answer is 42.", 42.0),
    ("\\boxed{\\frac{3}{4}}", 0.75),
    ("Answer: -7", -7.0),
    ("<think>maybe 3</think>\n\nThere are 5 apples.", 5.0),
    ("no numbers here", None),
])
def test_numbers(reply, number):
    assert extract_number(reply) == number


def test_points_from_calls_json_and_text():
    assert extract_point('<tool_call>\n{"name": "computer_use", "arguments": {"action": "left_click", "coordinate": [447, 81]}}\n</tool_call>') == (447.0, 81.0)
    assert extract_point('[{"bbox_2d": [100, 200, 300, 400], "label": "x"}]') == (200.0, 300.0)
    assert extract_point('[{"point_2d": [7, 9]}]') == (7, 9)
    assert extract_point("Click at (12, 34).") == (12.0, 34.0)
    assert extract_point("", [{"name": "computer_use", "arguments": {"coordinate": [1, 2]}}]) == (1.0, 2.0)


# ---------------------------------------------------------------------------------------------- runner

def write_dataset(tmp_path):
    Image.new("RGB", (200, 100), (255, 255, 255)).save(tmp_path / "img.png")
    rows = [
        {"id": "doc1", "task": "docvqa", "image": "img.png", "question": "total?", "answer": ["hello world"]},
        {"id": "mc1", "task": "mc", "image": "img.png", "question": "pick", "answer": "B"},
        {"id": "mc2", "task": "mc", "image": "img.png", "question": "pick again", "answer": "C"},
        {"id": "num1", "task": "numeric", "question": "how many?", "answer": 100, "tolerance": 0.05},
        # answer box in pixels of the 200x100 image = (100,100)-(500,500) on the 0..1000 grid
        {"id": "box1", "task": "grounding", "image": "img.png", "question": "find", "answer": [20, 10, 100, 50]},
        {"id": "box2", "task": "grounding", "image": "img.png", "question": "find again", "answer": [20, 10, 100, 50]},
        {"id": "ss1", "task": "screenspot", "image": "img.png", "question": "click ok", "answer": [50, 20, 80, 40]},
        {"id": "t1", "task": "temporal", "video": "clip.mp4", "question": "when?", "answer": ["00:00", "00:10"]},
        {"id": "j1", "task": "json", "image": "img.png", "question": "json please"},
        {"id": "tc1", "task": "tool_call", "question": "call"},
    ]
    path = tmp_path / "bench.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


REPLIES = {
    "total?": "Hello  Wrld",                                                   # ANLS 10/11
    "pick": "✅ Correct answer: **B. Blue.**",                                 # right
    "pick again": "A",                                                         # wrong
    "how many?": "I count \\boxed{104}",                                       # within 5%
    "find": '```json\n[{"bbox_2d": [100, 100, 500, 500], "label": "x"}]\n```',  # IoU 1
    # (300,100)-(700,500) -> pixels (60,10)-(140,50) vs (20,10)-(100,50):
    # overlap 40 x 40 = 1600, union 3200 + 3200 - 1600 = 4800 -> IoU 1/3
    "find again": '[{"bbox_2d": [300, 100, 700, 500], "label": "x"}]',
    "click ok": '<tool_call>\n{"name": "computer_use", "arguments": {"action": "left_click", "coordinate": [300, 300]}}\n</tool_call>',
    "when?": "From 00:05 to 00:15.",                                           # tIoU 5/15 = 1/3
    "json please": '{"a": 1,}',                                                # invalid
}


def scripted():
    def reply(messages):
        q = messages[-1]["content"][-1]["text"]
        if q == "call":
            return ChatReply("", tool_calls=[{"name": "f", "arguments": {"x": 1}}])
        return REPLIES[q]
    return ScriptedBackend(reply)


def test_runner_scores_every_task_family(tmp_path):
    records = load_dataset(write_dataset(tmp_path))
    assert records[0].media == [{"type": "image", "image": str(tmp_path / "img.png")}]
    assert records[7].media[0] == {"type": "video", "video": str(tmp_path / "clip.mp4")}
    out = tmp_path / "results.jsonl"
    report = evaluate(records, scripted(), out_path=out, progress=False)
    s = report.summary
    assert s["docvqa"] == pytest.approx({"n": 1, "anls": 10 / 11})
    assert s["mc"] == {"n": 2, "accuracy": 0.5}
    assert s["numeric"] == {"n": 1, "accuracy": 1.0}
    # mean IoU (1 + 1/3) / 2 = 2/3; Acc@0.5 = 1/2
    assert s["grounding"] == pytest.approx({"n": 2, "iou": 2 / 3, "acc@0.5": 0.5})
    # click (300, 300) on the grid -> (60, 30) px, inside (50, 20, 80, 40)
    assert s["screenspot"] == {"n": 1, "accuracy": 1.0}
    # (5, 15) vs (0, 10): overlap 5, union 15 -> 1/3: passes R@0.3 only
    assert s["temporal"] == pytest.approx({"n": 1, "tIoU": 1 / 3, "R@0.3": 1.0, "R@0.5": 0.0, "R@0.7": 0.0})
    assert s["json"] == {"n": 1, "valid": 0.0}
    assert s["tool_call"] == {"n": 1, "valid": 1.0}
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 10 and rows[1]["prediction"] == REPLIES["pick"]
    table = report.table()
    assert "grounding   2  iou       0.6667" in table and "grounding   2  acc@0.5    50.00" in table
    assert "docvqa      1  anls      0.9091" in table


def test_backend_errors_are_scored_as_failures(tmp_path):
    records = load_dataset(write_dataset(tmp_path), limit=2)
    report = evaluate(records, ScriptedBackend([]), progress=False)
    assert report.summary["docvqa"]["anls"] == 0.0 and "RuntimeError" in report.rows[0]["error"]


def test_dataset_errors_name_line_and_field(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"task": "docvqa", "question": "q", "answer": "a"}\n{"task": "poetry", "question": "q"}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2 has task 'poetry'"):
        load_dataset(bad)
    bad.write_text('{"task": "mc", "question": "q"}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:1 \(mc\) has no 'answer'"):
        load_dataset(bad)


def test_table_layout():
    table = format_table({"mc": {"n": 2, "accuracy": 0.5}, "docvqa": {"n": 1, "anls": 0.90909}})
    lines = table.splitlines()
    assert lines[0].split() == ["task", "n", "metric", "value"]
    assert lines[2].split() == ["mc", "2", "accuracy", "50.00"]
    assert lines[3].split() == ["docvqa", "1", "anls", "0.9091"]
