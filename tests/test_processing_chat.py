"""Chat rendering: our renderer against the official Qwen3-VL templates (sandboxed Jinja and transformers'
apply_chat_template) over a table of conversations, loss-mask spans, and format detection."""

from __future__ import annotations

import hashlib
import json
import logging

import pytest

from qwen3vl.processing.chat import render
from qwen3vl.processing.chat_template import (
    builtin_template,
    detect_format,
    load_checkpoint_template,
    matches_builtin,
    render_template,
)
from qwen3vl.processing.errors import MessageFormatError
from qwen3vl.processing.messages import normalize_messages

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city ☀",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
CLICK = {
    "type": "function",
    "function": {
        "name": "computer_use",
        "parameters": {"type": "object", "properties": {"action": {"type": "string"}, "coordinate": {"type": "array"}}},
    },
}
IMG = {"type": "image", "image": "a.png"}
VID = {"type": "video", "video": "v.mp4"}


def _t(text):
    return {"type": "text", "text": text}


CONVERSATIONS = {
    "system_image_text": [
        {"role": "system", "content": "You are helpful."},
        {"role": "user", "content": [IMG, _t("What is this?")]},
    ],
    "plain_user": [{"role": "user", "content": "Hello"}],
    "multi_image": [
        {
            "role": "user",
            "content": [
                _t("Compare "),
                IMG,
                _t(" and "),
                {"type": "image_url", "image_url": {"url": "b.png"}},
                _t("."),
            ],
        }
    ],
    "video_then_image": [{"role": "user", "content": [VID, IMG, _t("Q")]}],
    "tool_round_trip": [
        {"role": "system", "content": "Sys."},
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [{"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}],
        },
        {"role": "tool", "content": '{"temp": 20}'},
    ],
    "tool_calls_with_text_and_string_args": [
        {"role": "user", "content": "Do two things"},
        {
            "role": "assistant",
            "content": "Sure.",
            "tool_calls": [
                {"function": {"name": "a", "arguments": '{"x": 1}'}},
                {"name": "b", "arguments": {"y": [1, "二"]}},
            ],
        },
        {"role": "tool", "content": "one"},
        {"role": "tool", "content": "two"},
        {"role": "assistant", "content": "Done."},
    ],
    "tool_response_with_image": [
        {"role": "system", "content": [_t("You operate a computer.")]},
        {"role": "user", "content": [_t("Click OK"), IMG]},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {"function": {"name": "computer_use", "arguments": {"action": "left_click", "coordinate": [500, 300]}}}
            ],
        },
        {"role": "tool", "content": [_t("clicked"), IMG]},
        {"role": "assistant", "content": "It is done."},
    ],
    "thinking_history": [
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "<think>\nadd\n</think>\n\n4"},
        {"role": "user", "content": "3+3?"},
    ],
    "thinking_last_turn_kept": [
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "<think>\nadd\n</think>\n\n4"},
        {"role": "user", "content": "3+3?"},
        {"role": "assistant", "content": "6", "reasoning_content": "\nsum\n"},
    ],
    "thinking_multi_step_tools": [
        {"role": "user", "content": "Plan a trip"},
        {
            "role": "assistant",
            "content": "<think>need weather</think>",
            "tool_calls": [{"function": {"name": "get_weather", "arguments": {"city": "Oslo"}}}],
        },
        {"role": "tool", "content": "cold"},
        {"role": "assistant", "content": "Pack a coat.", "reasoning_content": "it is cold"},
    ],
    "late_system_and_system_image": [
        {"role": "system", "content": [_t("S"), IMG]},
        {"role": "user", "content": [IMG, _t("hi")]},
        {"role": "assistant", "content": "x"},
        {"role": "system", "content": "late"},
        {"role": "user", "content": [VID]},
    ],
    "assistant_list_content": [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": [_t("a"), _t("b")]},
        {"role": "user", "content": "again"},
    ],
    "no_user": [{"role": "system", "content": "only system"}, {"role": "assistant", "content": "monologue"}],
    "unicode_and_whitespace": [
        {"role": "user", "content": "  naïve 你好 😀\n\n"},
        {"role": "assistant", "content": "\n\nok  "},
    ],
}
OPTIONS = [
    {"add_generation_prompt": True},
    {"add_generation_prompt": False},
    {"add_generation_prompt": True, "add_vision_id": True},
    {"add_generation_prompt": True, "tools": [WEATHER, CLICK]},
]
FORMATS = ["instruct", "thinking"]


def _cases():
    for name in CONVERSATIONS:
        for fmt in FORMATS:
            for k, opt in enumerate(OPTIONS):
                yield pytest.param(name, fmt, opt, id=f"{name}-{fmt}-{k}")


def _ours(messages, fmt, opt):
    return render(
        normalize_messages(messages),
        fmt,
        opt.get("tools"),
        opt["add_generation_prompt"],
        opt.get("add_vision_id", False),
    )


@pytest.mark.parametrize("name,fmt,opt", list(_cases()))
def test_equals_official_template_in_jinja_sandbox(name, fmt, opt):
    msgs = normalize_messages(CONVERSATIONS[name])
    ref = render_template(
        builtin_template(fmt), msgs, opt.get("tools"), opt["add_generation_prompt"], opt.get("add_vision_id", False)
    )
    assert _ours(CONVERSATIONS[name], fmt, opt).text == ref


@pytest.fixture(scope="module")
def hf_tokenizer(tmp_path_factory):
    from fixtures.processing.references import hf_tokenizer

    from qwen3vl.processing.testing import write_tiny_tokenizer

    folder = tmp_path_factory.mktemp("tok")
    write_tiny_tokenizer(folder)
    return hf_tokenizer(folder)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("name", list(CONVERSATIONS))
def test_equals_transformers_apply_chat_template(hf_tokenizer, name, fmt):
    msgs = normalize_messages(CONVERSATIONS[name])
    for opt in OPTIONS:
        ref = hf_tokenizer.apply_chat_template(
            msgs,
            chat_template=builtin_template(fmt),
            tokenize=False,
            add_generation_prompt=opt["add_generation_prompt"],
            tools=opt.get("tools"),
            add_vision_id=opt.get("add_vision_id", False),
        )
        assert _ours(CONVERSATIONS[name], fmt, opt).text == ref, opt


def test_spec_examples_literally():
    msgs = CONVERSATIONS["system_image_text"]
    assert _ours(msgs, "instruct", OPTIONS[0]).text == (
        "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\n"
        "<|vision_start|><|image_pad|><|vision_end|>What is this?<|im_end|>\n<|im_start|>assistant\n"
    )
    text = _ours(CONVERSATIONS["video_then_image"], "instruct", OPTIONS[2]).text
    assert "<|im_start|>user\nVideo 1: <|vision_start|><|video_pad|><|vision_end|>Picture 1: " in text
    assert _ours(CONVERSATIONS["thinking_history"], "thinking", OPTIONS[0]).text == (
        "<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n4<|im_end|>\n"
        "<|im_start|>user\n3+3?<|im_end|>\n<|im_start|>assistant\n<think>\n"
    )
    assert "<think>\nadd\n</think>\n\n4" in _ours(CONVERSATIONS["thinking_history"], "instruct", OPTIONS[0]).text
    tools = _ours(CONVERSATIONS["tool_round_trip"], "instruct", {"add_generation_prompt": True, "tools": [WEATHER]})
    assert tools.text.startswith("<|im_start|>system\nSys.\n\n# Tools\n\nYou may call one or more functions")
    assert (
        '\n<tools>\n{"type": "function", "function": {"name": "get_weather", "description": "Weather for a city ☀"'
        in tools.text
    )
    assert tools.text.endswith(
        '<|im_start|>assistant\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
        '<|im_end|>\n<|im_start|>user\n<tool_response>\n{"temp": 20}\n</tool_response><|im_end|>\n'
        "<|im_start|>assistant\n"
    )


def test_official_template_files_are_pinned():
    assert len(builtin_template("instruct").encode()) == 5292
    assert hashlib.sha256(builtin_template("instruct").encode()).hexdigest() == (
        "3636d0f0bd6bef02654cdffdc447b79cb2cef8ab02cc75267345946291a489e4"
    )
    assert builtin_template("thinking").endswith("{{- '<|im_start|>assistant\\n<think>\\n' }}\n{%- endif %}")


def _targets(rendered):
    text = rendered.text
    return [text[s.start : s.end] for s in rendered.expand(lambda k: "<M>")[1]] if not rendered.media else None


def test_loss_mask_spans_instruct():
    r = _ours(CONVERSATIONS["tool_calls_with_text_and_string_args"], "instruct", OPTIONS[1])
    assert _targets(r) == [
        'Sure.\n<tool_call>\n{"name": "a", "arguments": {"x": 1}}\n</tool_call>\n<tool_call>\n{"name": "b", '
        '"arguments": {"y": [1, "二"]}}\n</tool_call><|im_end|>',
        "Done.<|im_end|>",
    ]
    assert all(not t.endswith("\n") for t in _targets(r))


def test_loss_mask_spans_thinking_exclude_prompt_think_tag():
    r = _ours(CONVERSATIONS["thinking_last_turn_kept"], "thinking", OPTIONS[1])
    assert r.text.endswith("<|im_start|>assistant\n<think>\nsum\n</think>\n\n6<|im_end|>\n")
    assert _targets(r) == ["4<|im_end|>", "sum\n</think>\n\n6<|im_end|>"]


def test_media_slots_follow_the_text_order_and_survive_thinking_splits():
    msgs = normalize_messages(CONVERSATIONS["late_system_and_system_image"])
    thinking = render(msgs, "thinking", None, True)
    assert [(m.kind, m.message_index, m.part_index) for m in thinking.media] == [
        ("image", 0, 1),
        ("image", 1, 0),
        ("video", 4, 0),
    ]
    instruct = render(msgs, "instruct", None, True)  # Instruct ignores images in the system message
    assert [(m.kind, m.message_index) for m in instruct.media] == [("image", 1), ("video", 4)]
    assert [(m.kind, m.message_index) for m in instruct.dropped] == [("image", 0)]
    stripped = normalize_messages(
        [
            {"role": "user", "content": "q"},
            {"role": "assistant", "content": [_t("<think>look "), IMG, _t("</think>answer")]},
            {"role": "user", "content": "q2"},
        ]
    )
    r = render(stripped, "thinking", None, True)
    assert r.media == [] and len(r.dropped) == 1  # the image lived in reasoning that history drops


def test_detect_format_and_builtin_match(tmp_path):
    assert detect_format(builtin_template("instruct")) == "instruct"
    assert detect_format(builtin_template("thinking")) == "thinking"
    assert matches_builtin(builtin_template("thinking") + "\n") == "thinking"
    unsloth = "{# Unsloth template fixes #}\n" + builtin_template("thinking")
    assert detect_format(unsloth) == "thinking" and matches_builtin(unsloth) is None
    (tmp_path / "chat_template.json").write_text(json.dumps({"chat_template": "A"}))
    assert load_checkpoint_template(tmp_path) == "A"
    (tmp_path / "chat_template.json").unlink()
    (tmp_path / "chat_template.jinja").write_text("B")
    assert load_checkpoint_template(tmp_path) == "B"
    (tmp_path / "chat_template.jinja").unlink()
    (tmp_path / "tokenizer_config.json").write_text(
        json.dumps({"chat_template": [{"name": "default", "template": "C"}]})
    )
    assert load_checkpoint_template(tmp_path) == "C"


def test_processor_picks_format_from_the_shipped_template(tmp_path, caplog):
    from qwen3vl.processing.processor import load_processor
    from qwen3vl.processing.testing import write_tiny_checkpoint

    for fmt, file in (("instruct", "json"), ("thinking", "jinja")):
        folder = tmp_path / fmt
        write_tiny_checkpoint(folder, chat_template=fmt, template_file=file)
        p = load_processor(folder)
        assert p.chat_format == fmt
        msgs = CONVERSATIONS["tool_response_with_image"]
        assert p.render_text(msgs, tools=[CLICK]) == p.render_text(msgs, tools=[CLICK], use_checkpoint_template=True)
    assert load_processor(tmp_path / "instruct", chat_format="thinking").chat_format == "thinking"
    custom = tmp_path / "custom"
    write_tiny_checkpoint(custom, chat_template=None)
    (custom / "chat_template.jinja").write_text("{# fine-tuned #}" + builtin_template("thinking"))
    with caplog.at_level(logging.WARNING):
        assert load_processor(custom).chat_format == "thinking"
    assert "not the official" in caplog.text
    bare = tmp_path / "Qwen3-VL-2B-Thinking"
    write_tiny_checkpoint(bare, chat_template=None)
    assert load_processor(bare).chat_format == "thinking"


CONTINUED = {
    "assistant_prefill": [{"role": "user", "content": [IMG, _t("Where is the cat?")]},
                          {"role": "assistant", "content": '[{"bbox_2d": ['}],
    "trailing_space": [{"role": "user", "content": "Finish the sentence."},
                       {"role": "assistant", "content": "The quick brown "}],
    "trailing_newline": [{"role": "user", "content": "List two."}, {"role": "assistant", "content": "1. one\n"}],
    "assistant_parts": [{"role": "user", "content": "Hi"},
                        {"role": "assistant", "content": [_t("Hello"), _t(", I am")]}],
    "after_tools": [{"role": "user", "content": "Weather?"},
                    {"role": "assistant", "content": "", "tool_calls": [
                        {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Oslo"}}}]},
                    {"role": "tool", "content": "rain"}, {"role": "assistant", "content": "In Oslo it is"}],
    "thinking_history": [{"role": "user", "content": "2+2?"},
                         {"role": "assistant", "content": "4", "reasoning_content": "add"},
                         {"role": "user", "content": "and 3+3?"},
                         {"role": "assistant", "content": "It is", "reasoning_content": "add again"}],
    "user_text": [{"role": "user", "content": [IMG, _t("Describe the")]}],
}


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("name", list(CONTINUED))
def test_continue_final_message_equals_transformers(hf_tokenizer, name, fmt):
    """A prefilled final message: our renderer and the official template in the sandbox cut where transformers'
    apply_chat_template(continue_final_message=True) cuts, to the character."""
    msgs = normalize_messages(CONTINUED[name])
    tools = [WEATHER] if name == "after_tools" else None
    ref = hf_tokenizer.apply_chat_template(msgs, chat_template=builtin_template(fmt), tokenize=False,
                                           add_generation_prompt=False, continue_final_message=True, tools=tools)
    ours = render(msgs, fmt, tools, False, False, continue_final_message=True)
    assert ours.text == ref
    assert render_template(builtin_template(fmt), msgs, tools, continue_final_message=True) == ref
    assert not ours.text.endswith("<|im_end|>\n")  # (the turn stays open)


def test_continue_final_message_errors():
    msgs = normalize_messages([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hel"}])
    with pytest.raises(ValueError, match="cannot both be set"):
        render(msgs, "instruct", None, True, False, continue_final_message=True)
    only_media = normalize_messages([{"role": "user", "content": [IMG]}])
    with pytest.raises(MessageFormatError, match="message 0: continue_final_message is set, but the final message "
                                                  "has no text"):
        render(only_media, "instruct", None, False, False, continue_final_message=True)
    # the Instruct template drops a system message after the first: nothing of it is left to continue
    late_system = normalize_messages([{"role": "user", "content": "Hi"}, {"role": "system", "content": "Be"}])
    with pytest.raises(MessageFormatError, match="does not show the final message's text"):
        render(late_system, "instruct", None, False, False, continue_final_message=True)


def test_continue_final_message_with_a_template_that_trims(hf_tokenizer):
    """A checkpoint template that trims message text (so the space after the marker is gone) is cut and
    right-stripped where transformers cuts it."""
    template = ("{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content | trim }}<|im_end|>\n{% endfor %}"
                "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    msgs = normalize_messages([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Well,  "}])
    ref = hf_tokenizer.apply_chat_template(msgs, chat_template=template, tokenize=False, continue_final_message=True)
    assert render_template(template, msgs, continue_final_message=True) == ref
    assert ref.endswith("assistant\nWell,")
