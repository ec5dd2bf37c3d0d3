"""The Python API end to end on a tiny random checkpoint, and the output parsing it relies on."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

import qwen3vl
from qwen3vl.engine.output import ReasoningSplitter, parse_output
from qwen3vl.model.testing import write_tiny_model


@pytest.fixture(scope="module")
def llm(tmp_path_factory):
    folder = write_tiny_model(tmp_path_factory.mktemp("tiny"), sharpen=3.0)
    return qwen3vl.LLM(folder, kv_cache_gb=0.05)


def _image(seed=0, size=(70, 100)):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (*size, 3), dtype=np.uint8))


def _messages(text="What is this?", seed=0):
    return [{"role": "user", "content": [{"type": "image", "image": _image(seed)}, {"type": "text", "text": text}]}]


def test_chat_result_fields(llm):
    res = llm.chat(_messages(), max_tokens=6, temperature=0)
    assert res.finish_reason in ("stop", "length") and len(res.token_ids) <= 6
    assert res.usage.prompt_tokens > 70 and res.usage.completion_tokens == len(res.token_ids)
    assert res.text == llm.tokenizer.decode(res.token_ids, skip_special_tokens=True)
    assert res.reasoning is None and res.tool_calls == []


def test_stream_joined_equals_text(llm):
    res = llm.chat(_messages(), max_tokens=10, temperature=0)
    deltas = list(llm.chat_stream(_messages(), max_tokens=10, temperature=0))
    assert "".join(d.text for d in deltas) == res.text
    assert [t for d in deltas for t in d.token_ids] == res.token_ids
    assert deltas[-1].usage.completion_tokens == len(res.token_ids)
    assert deltas[-2].finish_reason == res.finish_reason


def test_batch_equals_single_requests(llm):
    convs = [_messages("a", 1), _messages("bb", 2), [{"role": "user", "content": "text only"}]]
    singles = [llm.chat(c, max_tokens=5, temperature=0).token_ids for c in convs]
    batch = [r.token_ids for r in llm.chat_batch(convs, max_tokens=5, temperature=0)]
    assert batch == singles


def test_n_and_seed(llm):
    a = llm.chat(_messages(), max_tokens=5, temperature=1.0, seed=3, n=3)
    b = llm.chat(_messages(), max_tokens=5, temperature=1.0, seed=3, n=3)
    assert [c.token_ids for c in a.choices] == [c.token_ids for c in b.choices] and len(a.choices) == 3


def test_stop_string_is_cut(llm):
    res = llm.chat(_messages(), max_tokens=12, temperature=0)
    text = res.text
    if len(text) < 3:
        pytest.fail(f"the tiny model's reply {text!r} is too short for this test")
    stop = text[1:3]
    cut = llm.chat(_messages(), max_tokens=12, temperature=0, stop=[stop])
    assert cut.finish_reason == "stop" and cut.text == text[:text.index(stop)]
    streamed = "".join(d.text for d in llm.chat_stream(_messages(), max_tokens=12, temperature=0, stop=[stop]))
    assert streamed == cut.text


def test_bad_sampling_value_names_the_field(llm):
    with pytest.raises(ValueError, match="top_p"):
        llm.chat(_messages(), top_p=1.5)
    with pytest.raises(TypeError, match="unknown sampling"):
        llm.chat(_messages(), topp=0.5)


# ------------------------------------------------------------------------------------------ output parsing
def test_thinking_output_split():
    out = parse_output("Let me look.\nIt is red.\n</think>\n\nRed.", thinking=True, parse_tools=False)
    assert out.reasoning == "Let me look.\nIt is red." and out.content == "Red."
    cut = parse_output("Still thinking", thinking=True, parse_tools=False)
    assert cut.reasoning == "Still thinking" and cut.content == ""


@pytest.mark.parametrize("pieces", [["Let me", " look.\n", "</th", "ink>\n\nRe", "d."],
                                    ["Let me look.\n</think>", "\n\nRed."], ["L", "et me look.", "\n", "</", "think>",
                                                                             "\n", "\n", "Red", "."]])
def test_streamed_reasoning_split_joins_to_the_parse(pieces):
    splitter = ReasoningSplitter(thinking=True)
    reasoning, content = "", ""
    for i, p in enumerate(pieces):
        r, c = splitter.feed(p, final=i == len(pieces) - 1)
        reasoning, content = reasoning + r, content + c
    whole = parse_output("".join(pieces), thinking=True, parse_tools=False)
    assert (reasoning, content) == (whole.reasoning, whole.content)


def test_tool_calls_and_malformed_ones():
    text = 'Checking.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
    out = parse_output(text, thinking=False, parse_tools=True)
    assert out.tool_calls == [{"name": "get_weather", "arguments": {"city": "Paris"}}] and out.content == "Checking."
    bad = parse_output('<tool_call>\n{"name": "f", "arguments": {"x": \n</tool_call>', thinking=False,
                       parse_tools=True)
    assert bad.tool_calls == [] and bad.tool_call_error and "<tool_call>" in bad.content


def test_each_tool_call_block_is_read_on_its_own_and_complete_blocks_give_the_first_calls():
    from qwen3vl.engine.output import completed_tool_calls

    good = '<tool_call>\n{"name": "f", "arguments": {"x": 1}}\n</tool_call>'
    texts = [
        "Sure.\n" + good + "\n" + good.replace("1", "2"),
        good + "\n<tool_call>\nnot json\n</tool_call>\n" + good.replace('"f"', '"g"'),
        '<tool_call>\n{"name": "f", "arguments": {}}\n' + good,  # unclosed, ended by the next opening
        "<think>\n" + good + "\n</think>\n\n" + good.replace('"f"', '"h"'),  # a call in the reasoning is none
        good + "\n<tool_call>\n{\"name\": \"f\", \"argum",  # cut off
    ]
    for k, text in enumerate(texts):
        thinking = text.startswith("<think>")
        whole = parse_output(text, thinking=thinking, parse_tools=True)
        read, start = [], 0  # read as a stream does: only the blocks completed since the last read
        for end in range(len(text) + 1):
            got, _ = completed_tool_calls(text[:end], thinking)
            assert got == whole.tool_calls[:len(got)], (k, end)
            new, start = completed_tool_calls(text[:end], thinking, start)
            read += new
            assert read == got, (k, end)
        assert completed_tool_calls(text, thinking)[0] == whole.tool_calls
    mixed = parse_output(texts[1], thinking=False, parse_tools=True)
    assert [c["name"] for c in mixed.tool_calls] == ["f", "g"] and mixed.content == "<tool_call>\nnot json\n</tool_call>"
    assert "not JSON" in mixed.tool_call_error
    assert [c["name"] for c in parse_output(texts[3], True, True).tool_calls] == ["h"]
    assert [c["arguments"] for c in parse_output(texts[2], False, True).tool_calls] == [{}, {"x": 1}]
    # nesting too deep for Python's JSON parser: an unreadable block, not an exception
    deep = good + '\n<tool_call>\n{"name": "f", "arguments": ' + "[" * 5000 + "]" * 5000 + "}\n</tool_call>"
    out = parse_output(deep, thinking=False, parse_tools=True)
    assert [c["name"] for c in out.tool_calls] == ["f"] and "[[[" in out.content
    assert completed_tool_calls(deep, False)[0] == out.tool_calls


def test_stream_before_a_tool_call_joins_to_the_parsed_text(llm, monkeypatch):
    """Text before a tool call: the stream must not send the newline the parsed answer strips."""
    from qwen3vl.llm import _StreamState

    class Out:
        def __init__(self, seq, ids, finished):
            self.seq, self.new_tokens, self.finished = seq, ids, finished

    text = 'Let me check.\n<tool_call>\n{"name": "f", "arguments": {}}\n</tool_call>'
    ids = llm.tokenizer.encode(text)
    seq = type("Seq", (), {"params": llm.sampling_params(), "output_ids": [], "stop_text": None, "prompt_ids": [],
                           "finish_reason": None, "logprobs": []})()
    state = _StreamState(llm, seq, tools=[{"type": "function", "function": {"name": "f"}}])
    pieces = []
    for i, t in enumerate(ids):
        seq.output_ids.append(t)
        last = i == len(ids) - 1
        if last:
            seq.finish_reason = "stop"
        pieces.append(state.advance(Out(seq, [t], last)))
    assert "".join(p.text for p in pieces) == "Let me check."
    assert pieces[-1].tool_calls == [{"name": "f", "arguments": {}}]


# ------------------------------------------------------------------------------- streaming around tool calls
_GOOD = '<tool_call>\n{"name": "f", "arguments": {"x": 1}}\n</tool_call>'
_BAD = "<tool_call>\nnot json\n</tool_call>"
_PARTS = [_GOOD, _BAD, "<tool_call>\n{\"name\": \"g\", \"arguments\": {}}\n", "Hello", " world.", "\n", "  ", "<tool",
          "</tool_call>", "a<b", "\n\nAfter."]


def _filter_stream(text: str, cuts: list[int], parse_tools: bool = True) -> list[str]:
    from qwen3vl.engine.output import ToolBlockFilter

    f = ToolBlockFilter(parse_tools)
    bounds = [0, *sorted(set(cuts)), len(text)]
    return [f.feed(text[a:b]) for a, b in zip(bounds, bounds[1:])]


@given(st.lists(st.sampled_from(_PARTS), max_size=8), st.lists(st.integers(0, 400), max_size=12), st.booleans())
@settings(max_examples=400, deadline=None)
def test_streamed_content_around_tool_calls_is_always_a_prefix_of_the_parse(parts, cuts, parse_tools):
    """Whatever the text and wherever the tokens split it, what the filter has sent is a prefix of the parsed
    content, and once the text is whole nothing is missing but held trailing whitespace and an unclosed block."""
    text = "".join(parts)
    sent = "".join(_filter_stream(text, [c for c in cuts if c < len(text)], parse_tools))
    content = parse_output(text, thinking=False, parse_tools=parse_tools).content
    assert content.startswith(sent)
    held = content[len(sent):].strip()  # trailing whitespace, a block still open, or a possible start of one
    assert held == "" or held.startswith("<tool_call>") or "<tool_call>".startswith(held), (text, sent)


def test_text_after_a_tool_call_streams_before_the_answer_ends():
    text = "Checking.\n" + _GOOD + "\nDone: " + _BAD + " and more"
    pieces = _filter_stream(text, list(range(1, len(text))))
    sent = "".join(pieces)
    assert sent == "Checking.\n\nDone: " + _BAD + " and more"  # all of it, before any end-of-answer
    assert sent == parse_output(text, thinking=False, parse_tools=True).content
    # the text after the call arrived with the characters that follow the block, not at the end
    close = text.index("</tool_call>") + len("</tool_call>")
    assert "".join(pieces[:close + len("\nDone:")]) == "Checking.\n\nDone:"
    # an answer opening with a call loses the whitespace around it, as the parse does
    assert "".join(_filter_stream("  \n" + _GOOD + "\n\n Hi", [1, 5, 40, 70])) == "Hi"
    # a block is held while written; not a call without tool parsing (tool_choice "none")
    assert "".join(_filter_stream("A " + _GOOD[:30], [1, 2, 10])) == "A"
    assert "".join(_filter_stream("A " + _GOOD + " B", [3, 9], parse_tools=False)) == "A " + _GOOD + " B"


def test_a_custom_chat_template_reaches_the_prompt(tmp_path, capsys):
    """LLM(chat_template=) and --chat-template render prompts with that template (the processor's tests compare it
    with transformers); a missing file is refused before the model loads."""
    from qwen3vl.cli import main
    from qwen3vl.processing.processor import load_processor

    folder = write_tiny_model(tmp_path / "m")
    template = tmp_path / "t.jinja"
    template.write_text("{% for m in messages %}<|im_start|>{{ m.role }}: {{ m.content }}<|im_end|>\n{% endfor %}"
                        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    messages = [{"role": "user", "content": "Hello there"}]
    custom = qwen3vl.LLM(folder, kv_cache_gb=0.05, chat_template=str(template))
    ids = custom.prepare(messages).input_ids
    assert custom.tokenizer.decode(ids) == "<|im_start|>user: Hello there<|im_end|>\n<|im_start|>assistant\n"
    assert ids != qwen3vl.LLM(folder, kv_cache_gb=0.05).prepare(messages).input_ids
    assert ids == load_processor(folder, chat_template=str(template)).prepare(messages, add_generation_prompt=True
                                                                             ).input_ids
    assert custom.chat(messages, temperature=0, max_tokens=3).usage.prompt_tokens == len(ids)
    args = ["run", "--model", str(folder), "--kv-cache-gb", "0.05", "--max-tokens", "2", "Hello there"]
    assert main(args + ["--chat-template", str(template)]) == 0
    with pytest.raises(SystemExit, match="no such file"):
        main(args + ["--chat-template", str(tmp_path / "nope.jinja")])
