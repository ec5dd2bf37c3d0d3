"""Scoring of the demo tasks against hand-made predictions, and `evaluate` with oracle and useless models."""

from __future__ import annotations

import logging

import pytest

import qwen3vl.tasks
from qwen3vl.train.scoring import (
    box_iou,
    evaluate,
    grey_out,
    parse_boxes,
    parse_grounding_builtin,
    parse_int,
    parse_seconds,
    score,
)
from qwen3vl.train.synthetic import TASKS, Example, format_grounding, make_dataset


def _example(task: str, answer: str, **truth) -> Example:
    return Example(task, [{"role": "user", "content": [{"type": "text", "text": "q"}]},
                          {"role": "assistant", "content": answer}], answer, truth)


GROUND = _example("grounding", format_grounding([([100, 200, 300, 400], "blue square")]),
                  bbox_2d=[100, 200, 300, 400], box_px=[25.6, 51.2, 76.8, 102.4], label="blue square",
                  width=256, height=256)


@pytest.mark.parametrize("prediction, right", [
    ("red", True), ("Red.", True), (" RED ", True), ("blue", False), ("red circle", False), ("", False),
])
def test_color_shape(prediction, right):
    assert score("color_shape", prediction, _example("color_shape", "red")) is right


@pytest.mark.parametrize("prediction, right", [
    ("3", True), ("There are 3 triangles.", True), ("three", True), ("4", False), ("13", False), ("", False),
    ("many", False),
])
def test_count(prediction, right):
    assert score("count", prediction, _example("count", "3", count=3)) is right


@pytest.mark.parametrize("prediction, right", [
    (GROUND.answer, True),
    ('```json\n[\n\t{"bbox_2d": [110, 210, 310, 420], "label": "blue square"}\n]\n```', True),  # slightly off
    ('[{"bbox_2d": [100, 200, 300, 400]}]', True),  # compact, no label
    ('{"bbox_2d": [100, 200, 300, 400], "label": "blue square"', True),  # truncated JSON
    ("[100, 200, 300, 400]", True),  # a bare box
    ('[{"bbox_2d": [500, 600, 700, 800], "label": "blue square"}]', False),  # elsewhere
    ('[{"bbox_2d": [100, 200, 500, 700], "label": "blue square"}]', False),  # IoU 0.2
    ('[{"bbox_2d": [600, 600, 900, 900], "label": "red star"}, {"bbox_2d": [100, 200, 300, 400], '
     '"label": "blue square"}]', True),  # the box with the asked label wins
    ("```json\n[\n\t{\"bbox_2d\": [100, 200", False),  # malformed
    ("I cannot see it.", False),
    ("", False),
])
def test_grounding(prediction, right):
    assert score("grounding", prediction, GROUND, parse_grounding=parse_grounding_builtin) is right


def test_grounding_uses_the_project_parser_when_there_is_one(monkeypatch):
    calls = []

    def project_parser(text, width, height):
        calls.append((width, height))
        return [{"bbox": [25.6, 51.2, 76.8, 102.4], "label": "blue square"}]

    monkeypatch.setattr(qwen3vl.tasks, "parse_grounding", project_parser, raising=False)
    assert score("grounding", "whatever the text", GROUND) is True and calls == [(256, 256)]
    monkeypatch.delattr(qwen3vl.tasks, "parse_grounding")
    assert score("grounding", GROUND.answer, GROUND) is True  # the real project parser, or the built-in one


def test_grounding_with_an_injected_parser():
    calls = []

    def pixel_parser(text, width, height):
        calls.append((text, width, height))
        return [{"bbox_2d": [25.6, 51.2, 76.8, 102.4], "label": "blue square"}]

    assert score("grounding", "anything", GROUND, parse_grounding=pixel_parser) is True
    assert calls == [("anything", 256, 256)]

    class Box:  # objects with a .bbox attribute work too
        bbox, label = (200.0, 200.0, 250.0, 250.0), "blue square"

    assert score("grounding", "x", GROUND, parse_grounding=lambda t, w, h: [Box()]) is False

    def rejecting(text, width, height):
        raise ValueError("not JSON")

    assert score("grounding", GROUND.answer, GROUND, parse_grounding=rejecting) is False


def test_grounding_parser_with_another_signature_falls_back(caplog):
    with caplog.at_level(logging.WARNING):
        assert score("grounding", GROUND.answer, GROUND, parse_grounding=lambda text: []) is True
    assert "built-in parser" in caplog.text


@pytest.mark.parametrize("prediction, right", [
    ("FROG", True), ("FROG.", True), ('"FROG"', True), ("frog", False), ("FROGS", False), ("", False),
])
def test_ocr_word(prediction, right):
    assert score("ocr", prediction, _example("ocr", "FROG", text="FROG")) is right


@pytest.mark.parametrize("prediction, right", [("407", True), ("407.", True), ("4O7", False), ("47", False)])
def test_ocr_number(prediction, right):
    assert score("ocr", prediction, _example("ocr", "407", text="407")) is right


@pytest.mark.parametrize("prediction, right", [
    ("At 3.0 seconds.", True), ("At 3.9 seconds.", True), ("2 s", True), ("00:03.5", True), ("0:04", True),
    ("At 4.5 seconds.", False), ("At 1.0 seconds.", False), ("soon", False), ("", False),
])
def test_video_time(prediction, right):
    assert score("video_time", prediction, _example("video_time", "At 3.0 seconds.", time=3.0)) is right


def test_parsers():
    assert parse_int("I count 12 of them") == 12 and parse_int("none") is None
    assert parse_seconds("At 2.5 seconds.") == 2.5 and parse_seconds("01:02.5") == 62.5
    assert parse_seconds("1:00:01") == 3601 and parse_seconds("no time") is None
    assert parse_boxes(GROUND.answer) == [([100.0, 200.0, 300.0, 400.0], "blue square")]
    assert box_iou((0, 0, 10, 10), (5, 0, 15, 10)) == pytest.approx(1 / 3)
    assert box_iou((10, 10, 0, 0), (0, 0, 10, 10)) == 1.0 and box_iou((0, 0, 0, 0), (0, 0, 0, 0)) == 0.0


def test_score_rejects_a_task_mismatch():
    with pytest.raises(ValueError, match="scoring a 'ocr' example as 'count'"):
        score("count", "3", _example("ocr", "3", text="3"))


def test_the_data_scores_itself_perfectly():
    for ex in make_dataset(8, 25):
        assert score(ex.task, ex.answer, ex)


def test_evaluate_with_an_oracle_and_a_useless_model():
    n = 15
    answers = iter([ex.answer for ex in make_dataset(42, n)])
    records: list = []
    assert evaluate(lambda messages: next(answers), 42, n, records=records, progress=False) == dict.fromkeys(TASKS, 1.0)
    assert [r["index"] for r in records] == list(range(n))
    assert all(sum(r["task"] == t for r in records) == n // len(TASKS) for t in TASKS)

    seen = []

    def useless(messages):
        seen.append(messages)
        return "I don't know."

    assert evaluate(useless, 42, n, progress=False) == dict.fromkeys(TASKS, 0.0)
    assert all(len(m) == 1 and m[0]["role"] == "user" for m in seen)  # the answer is never shown


def test_evaluate_needs_an_example_per_task():
    with pytest.raises(ValueError, match="n=3"):
        evaluate(lambda m: "", 0, 3, progress=False)


def test_grey_out_replaces_every_picture_and_keeps_the_rest():
    from PIL import Image

    picture = Image.new("RGB", (40, 30), (200, 10, 10))
    frames = [Image.new("RGB", (16, 12), (0, 255, 0)) for _ in range(3)]
    messages = [{"role": "system", "content": "be brief"},
                {"role": "user", "content": [{"type": "image", "image": picture}, {"type": "text", "text": "q?"},
                                             {"type": "video", "video": frames, "fps": 2.0}]}]
    out = grey_out(messages)
    image, text, video = out[1]["content"]
    assert out[0] == messages[0] and text == {"type": "text", "text": "q?"} and video["fps"] == 2.0
    assert image["image"].size == (40, 30) and image["image"].getcolors() == [(40 * 30, (128, 128, 128))]
    assert len(video["video"]) == 3
    assert all(f.size == (16, 12) and f.getcolors() == [(16 * 12, (128, 128, 128))] for f in video["video"])
    assert messages[1]["content"][0]["image"] is picture and messages[1]["content"][2]["video"] == frames  # untouched
    with pytest.raises(TypeError, match="PIL images"):
        grey_out([{"role": "user", "content": [{"type": "image", "image": "cat.png"}]}])
