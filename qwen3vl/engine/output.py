"""Turning generated text into an answer: a Thinking model's reasoning apart from its answer, and tool calls.

The opening `<think>` of a Thinking model is in the prompt (spec §9.2), so its output starts inside the
reasoning and `</think>` switches to the answer. Tool calls are `<tool_call>\\n{json}\\n</tool_call>` blocks;
each block is read on its own: a block whose JSON cannot be read stays in the text and `tool_call_error` says why
(never an exception), the readable ones are calls. So the calls of the blocks complete so far
(`completed_tool_calls`) are always the first calls of the whole answer, which lets a stream send each call as soon
as its block closes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from qwen3vl.tasks.toolcalls import TOOL_BLOCK, TOOL_CLOSE, TOOL_OPEN, parse_tool_calls, split_reasoning

THINK_END = "</think>"


@dataclass
class ParsedOutput:
    content: str
    reasoning: str | None = None
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    tool_call_error: str | None = None


def parse_output(text: str, thinking: bool, parse_tools: bool) -> ParsedOutput:
    reasoning = None
    content = text
    if thinking:
        if THINK_END in text:
            reasoning, content = split_reasoning(text)
        else:  # cut off (or never closed): everything so far is reasoning
            reasoning, content = text.strip("\n"), ""
    out = ParsedOutput(content=content, reasoning=reasoning)
    if parse_tools and TOOL_OPEN in content:
        parsed = parse_tool_calls(content)
        if not parsed.calls:
            out.tool_call_error = "; ".join(parsed.problems) or "unreadable tool call"
        else:
            out.tool_calls = [c.to_dict() for c in parsed.calls]
            out.content = parsed.kept
            if parsed.problems:
                out.tool_call_error = "; ".join(parsed.problems)
    return out


def completed_tool_calls(text: str, thinking: bool, start: int = 0) -> tuple[list[dict[str, Any]], int]:
    """The calls of the tool-call blocks of `text` (output so far) that are complete (closed by `</tool_call>`, or
    followed by another `<tool_call>`) and start at or after `start`, and where the last of them ends (else
    `start`): pass that back as `start` to read only new blocks. The calls are the next calls `parse_output`
    finds once the output is whole."""
    if thinking:
        if THINK_END not in text:
            return [], start
        start = max(start, text.index(THINK_END) + len(THINK_END))
    complete, end = [], start
    for m in TOOL_BLOCK.finditer(text, start):
        if not (m.group(2) or m.end() < len(text)):
            break
        complete.append(m.group(0))
        end = m.end()
    return ([c.to_dict() for c in parse_tool_calls("".join(complete)).calls] if complete else []), end


class ReasoningSplitter:
    """Streams deltas into (reasoning, content) pieces. Text that may be the start of `</think>` (and the newlines
    before it) is held back, so the joined pieces equal what `parse_output` gives for the whole text."""

    def __init__(self, thinking: bool):
        self.in_reasoning = thinking
        self._held = ""
        self._reasoning_started = False
        self._content_started = not thinking  # after </think>, the answer's leading newlines go

    def feed(self, delta: str, final: bool = False) -> tuple[str, str]:
        if not self.in_reasoning:
            return "", self._content(delta)
        text = self._held + delta
        idx = text.find(THINK_END)
        if idx >= 0:
            self.in_reasoning = False
            self._held = ""
            return self._reasoning(text[:idx].rstrip("\n")), self._content(text[idx + len(THINK_END):])
        if final:
            self._held = ""
            return self._reasoning(text.rstrip("\n")), ""
        keep = _partial_suffix(text, THINK_END)
        head = text[:len(text) - keep]
        keep += len(head) - len(head.rstrip("\n"))
        self._held = text[len(text) - keep:] if keep else ""
        return self._reasoning(text[:len(text) - keep]), ""

    def _reasoning(self, piece: str) -> str:
        if not self._reasoning_started:
            piece = piece.lstrip("\n")
            self._reasoning_started = bool(piece)
        return piece

    def _content(self, delta: str) -> str:
        if not self._content_started:
            delta = delta.lstrip("\n")
            self._content_started = bool(delta)
        return delta


def _partial_suffix(text: str, marker: str) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of `marker`."""
    for n in range(min(len(marker) - 1, len(text)), 0, -1):
        if text.endswith(marker[:n]):
            return n
    return 0


class ToolBlockFilter:
    """Streams an answer's content with its readable tool-call blocks taken out, as `parse_output` gives it.

    Text before a `<tool_call>` streams at once; the block is held until it is complete (closed, or followed by
    another `<tool_call>`), then read on its own: a readable call is dropped from the content (the stream sends it
    as a call), an unreadable block is content, and the text after either streams on. What is sent is always a
    prefix of the parsed content: trailing whitespace waits (the parse strips it once there is a call), and so does
    a suffix that may be the start of `<tool_call>`; an answer that opens with a call loses the whitespace before
    and after it, as in the parse. Only the unresolved tail is kept, so a long answer costs linear time."""

    def __init__(self, parse_tools: bool = True):
        self.parse_tools = parse_tools
        self.pending = ""  # received, not resolved: an open block or a possible start of one
        self.held = ""  # resolved trailing whitespace, not sent yet
        self.seen_text = False  # the content sent so far has more than whitespace
        self.strip_lead = False  # the answer opens with a call: whitespace until the next text goes

    def feed(self, delta: str) -> str:
        """The next piece of content to send, given the next piece received."""
        resolved = self._resolve(delta) if self.parse_tools else delta
        text = self.held + resolved
        if self.strip_lead:
            text = text.lstrip()
            self.strip_lead = not text
        piece = text.rstrip()
        self.held = text[len(piece):]
        self.seen_text = self.seen_text or bool(piece)
        return piece

    def _resolve(self, delta: str) -> str:
        """The content `delta` completes: text up to an open block (or a possible start of one), unreadable blocks,
        and readable calls taken out."""
        buf = self.pending + delta
        out: list[str] = []
        while (i := buf.find(TOOL_OPEN)) >= 0:
            body = i + len(TOOL_OPEN)
            if buf.find(TOOL_CLOSE, body) < 0 and buf.find(TOOL_OPEN, body) < 0:
                break  # still being written: neither closed nor followed by another block
            m = TOOL_BLOCK.match(buf, i)
            before, block = buf[:i], m.group(0)
            if not parse_tool_calls(block).calls:
                out.append(before + block)
            elif not (self.seen_text or "".join(out).strip() or before.strip()):
                # the answer opens with calls: the whitespace before and after them goes (held or not)
                out.clear()
                self.held = ""
                self.strip_lead = True
            else:
                out.append(before)
            buf = buf[m.end():]
        else:
            i = len(buf) - _partial_suffix(buf, TOOL_OPEN)
        out.append(buf[:i])
        self.pending = buf[i:]
        return "".join(out)
