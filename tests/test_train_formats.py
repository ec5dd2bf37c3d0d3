"""LLaVA / ShareGPT training records: turned into the same messages, the same tokens and the same loss mask as the
equivalent record in our own format; bad records get errors that name the line."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from qwen3vl.processing.processor import load_processor
from qwen3vl.train.data import JsonlSource, prepare
from qwen3vl.train.formats import record_to_conversation
from qwen3vl.train.testing import write_tiny_base


@pytest.fixture(scope="module")
def processor(tmp_path_factory):
    return load_processor(write_tiny_base(tmp_path_factory.mktemp("base")))


def _write(path, records) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def _image(path, colour) -> str:
    Image.new("RGB", (64, 64), colour).save(path)
    return path.name


def test_llava_record_equals_our_own_format(tmp_path, processor):
    a, b = _image(tmp_path / "a.png", "red"), _image(tmp_path / "b.png", "blue")
    ours = {"messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "Compare"}, {"type": "image", "image": a},
                                     {"type": "text", "text": "with"}, {"type": "image", "image": b}]},
        {"role": "assistant", "content": "Red vs blue."},
        {"role": "user", "content": "Which is warmer?"},
        {"role": "assistant", "content": "Red."}]}
    llava = {"image": [a, b], "system": "Be brief.", "conversations": [
        {"from": "human", "value": "Compare\n<image>\nwith\n<image>"},
        {"from": "gpt", "value": "Red vs blue."},
        {"from": "human", "value": "Which is warmer?"},
        {"from": "gpt", "value": "Red."}]}
    factory = {"images": [a, b], "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Compare\n<image>\nwith\n<image>"},
        {"role": "assistant", "content": "Red vs blue."},
        {"role": "user", "content": "Which is warmer?"},
        {"role": "assistant", "content": "Red."}]}
    _write(tmp_path / "data.jsonl", [ours, llava, factory])
    source = JsonlSource(tmp_path / "data.jsonl")
    assert source[1].messages == source[0].messages
    assert source[2].messages == source[0].messages
    want = prepare(processor, source[0])
    for k in (1, 2):
        got = prepare(processor, source[k])
        assert got.input_ids == want.input_ids
        assert got.loss_mask == want.loss_mask and sum(got.loss_mask) > 0
        assert [i.content_hash for i in got.images] == [i.content_hash for i in want.images]
        assert len({i.content_hash for i in got.images}) == 2


def test_media_without_placeholders_go_first_and_videos_as_frames(tmp_path):
    messages, _ = record_to_conversation(
        {"videos": [["f0.png", "f1.png"]], "conversations": [{"from": "human", "value": "What happens?"},
                                                             {"from": "gpt", "value": "Nothing."}]}, "x")
    assert messages[0]["content"] == [{"type": "video", "video": ["f0.png", "f1.png"]},
                                      {"type": "text", "text": "What happens?"}]
    # Qwen's own layout: a "video" list holds several videos, one per <video>
    messages, _ = record_to_conversation(
        {"video": ["a.mp4", "b.mp4"], "conversations": [{"from": "human", "value": "<video>\n<video>\nSame?"},
                                                        {"from": "gpt", "value": "No."}]}, "x")
    assert messages[0]["content"] == [{"type": "video", "video": "a.mp4"}, {"type": "video", "video": "b.mp4"},
                                      {"type": "text", "text": "Same?"}]
    text_only = {"messages": [{"role": "user", "content": "Write <video> tags"},
                              {"role": "assistant", "content": "<video src=a.mp4>"}]}
    assert record_to_conversation(text_only, "x")[0] == text_only["messages"]  # no media: literal text stays


def test_sharegpt_tool_turns(tmp_path):
    record = {"tools": json.dumps([{"type": "function", "function": {"name": "zoom", "parameters": {}}}]),
              "conversations": [{"from": "human", "value": "Zoom in."},
                                {"from": "function_call", "value": json.dumps({"name": "zoom",
                                                                               "arguments": {"factor": 2}})},
                                {"from": "observation", "value": "done"},
                                {"from": "gpt", "value": "Zoomed."}]}
    messages, tools = record_to_conversation(record, "x")
    assert tools[0]["function"]["name"] == "zoom"
    assert [m["role"] for m in messages] == ["user", "assistant", "tool", "assistant"]
    assert messages[1]["tool_calls"] == [{"type": "function", "function": {"name": "zoom",
                                                                           "arguments": {"factor": 2}}}]


@pytest.mark.parametrize("record, message", [
    ({"image": ["a.png"], "conversations": [{"from": "human", "value": "<image><image> hi"}]},
     r"data.jsonl:1: more <image> placeholders than images \(1\)"),
    ({"images": ["a.png", "b.png"], "conversations": [{"from": "human", "value": "<image> hi"}]},
     r"data.jsonl:1: 2 image\(s\) but 1 <image> placeholder\(s\)"),
    ({"conversations": [{"from": "robot", "value": "beep"}]}, "data.jsonl:1: conversations\\[0\\] has role 'robot'"),
    ({"conversations": [{"from": "human", "value": 3}]}, "needs a string 'value'"),
    ({"prompt": "hi"}, "data.jsonl:1 has neither a 'messages' nor a 'conversations' list"),
    ({"tools": "{not json", "messages": []}, "'tools' is a string but not JSON"),
    ({"conversations": [{"from": "human", "value": "hi"}, {"from": "function_call", "value": "[1, 2]"}]},
     r"conversations\[1\] \(function_call\) must be an object with a 'name'"),
])
def test_bad_records_are_named(tmp_path, record, message):
    _write(tmp_path / "data.jsonl", [record])
    with pytest.raises(ValueError, match=message):
        JsonlSource(tmp_path / "data.jsonl")
