"""Sequences -> choices, on the engine thread: streamed deltas while a sequence runs, the finished choice at the end.

A chat choice streams through the LLM's `_StreamState` (incremental detokenizing, hold-back of stop strings and
tool-call starts, the Thinking reasoning split), and finishes through `LLM.finish_choice` (tool-call and reasoning
parsing), with the server's tool_choice rules on top:

* `tool_choice: "none"`: tools are not shown to the model, and a `<tool_call>` it writes anyway stays in the text;
* a forced call (`"required"` or a named function) on an Instruct model: the prompt was prefilled with the call's
  opening (`<tool_call>\\n` or `<tool_call>\\n{"name": "NAME", "arguments": `), so the output is parsed with that
  prefix put back; nothing is streamed until the call is complete;
* `parallel_tool_calls: false` keeps the first call.

A stream sends each tool call whole (id, name, arguments) as soon as its `</tool_call>` is written, so a client can
start on the first of several calls while the model writes the next; the last chunk carries the calls not yet sent
and `finish_reason`. Text around the calls streams as it comes: a block is held only while it is written, then
its call is sent as a call (or, unreadable, the block as text), and the text after it streams on.

Logprobs come out in OpenAI's shapes (chat: token strings, bytes and top alternatives; completions: the legacy
lists). Special tokens (the end-of-turn token) do not appear in the text, so they are left out of logprobs too.
"""

from __future__ import annotations

import json
import math
import uuid
from dataclasses import dataclass, field
from typing import Any

from qwen3vl.engine.engine import StepOutput
from qwen3vl.engine.output import THINK_END, completed_tool_calls, parse_output
from qwen3vl.engine.sequence import Sequence
from qwen3vl.llm import LLM, _StreamState
from qwen3vl.tasks.toolcalls import TOOL_CLOSE, TOOL_OPEN


@dataclass
class ChoiceDelta:
    """One streamed piece of one choice; the last one has `finish_reason` (and any tool calls)."""

    index: int
    text: str = ""
    reasoning: str = ""
    logprobs: Any = None  # chat: list of entries; completion: dict of lists
    finish_reason: str | None = None
    tool_calls: list[dict[str, Any]] | None = None  # OpenAI tool calls, each with its "index" in the choice


@dataclass
class ChoiceResult:
    index: int
    text: str
    reasoning: str | None
    tool_calls: list[dict[str, Any]]
    finish_reason: str
    logprobs: Any
    num_tokens: int
    extra: dict[str, Any] = field(default_factory=dict)  # non-standard fields (e.g. response_format_error)


@dataclass(frozen=True)
class ChatSpec:
    """What a chat request asks of its output."""

    tools: list[dict[str, Any]] | None  # shown to the model (None for tool_choice "none")
    tool_choice_none: bool = False
    prefix: str | None = None  # forced tool-call opening appended to the prompt
    parallel_tool_calls: bool = True
    json_mode: bool = False  # response_format json_object / json_schema: check (non-streamed) output parses
    json_any: bool = False  # json_schema: any JSON value may be the answer (the schema's root need not be an object)
    logprobs: bool = False


# ------------------------------------------------------------------------------------------------- logprobs
def _finite(x: float) -> float:
    return x if math.isfinite(x) else -9999.0  # JSON has no -Infinity


def _token(llm: LLM, token_id: int) -> tuple[str, list[int]]:
    raw = llm.tokenizer.token_bytes(token_id)
    return raw.decode("utf-8", errors="replace"), list(raw)


def chat_logprobs(llm: LLM, ids: list[int], lps: list) -> list[dict[str, Any]]:
    out = []
    for tid, (lp, top) in zip(ids, lps):
        if llm.tokenizer.is_special(tid):
            continue
        text, raw = _token(llm, tid)
        alts = []
        for alt_id, alt_lp in top or []:
            alt_text, alt_raw = _token(llm, alt_id)
            alts.append({"token": alt_text, "logprob": _finite(alt_lp), "bytes": alt_raw})
        out.append({"token": text, "logprob": _finite(lp), "bytes": raw, "top_logprobs": alts})
    return out


def completion_logprobs(llm: LLM, ids: list[int], lps: list, offset: int = 0,
                        keep_special: bool = False) -> dict[str, Any]:
    """The legacy completions shape. `text_offset` is where each token's text starts in the decoded text (characters
    split over byte tokens count once). Special tokens are left out, as from the text, unless `keep_special` (echo:
    one entry per token, as lm-evaluation-harness counts them)."""
    tokens, values, tops, offsets = [], [], [], []
    decoder = llm.tokenizer.incremental_decoder(skip_special_tokens=not keep_special)
    for tid, entry in zip(ids, lps):
        if not keep_special and llm.tokenizer.is_special(tid):
            continue
        offsets.append(offset + len(decoder.text))
        decoder.add(tid)
        tokens.append(_token(llm, tid)[0])
        if entry is None:  # the first prompt token of an echo: nothing before it to score it
            values.append(None)
            tops.append(None)
            continue
        lp, top = entry
        values.append(_finite(lp))
        tops.append({_token(llm, a)[0]: _finite(v) for a, v in top} if top else None)
    return {"tokens": tokens, "token_logprobs": values, "top_logprobs": tops, "text_offset": offsets}


class _LogprobCursor:
    """Hands out each token's logprob once, as a stream goes."""

    def __init__(self, seq: Sequence):
        self.seq = seq
        self.sent = 0

    def take(self) -> tuple[list[int], list]:
        n = len(self.seq.logprobs)
        ids, lps = self.seq.output_ids[self.sent:n], self.seq.logprobs[self.sent:n]
        self.sent = n
        return ids, lps


def _rest(final: str, streamed: str) -> str:
    return final[len(streamed):] if final.startswith(streamed) else ""


# ------------------------------------------------------------------------------------------------- chat
def openai_tool_calls(calls: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function",
             "function": {"name": c["name"], "arguments": json.dumps(c["arguments"], ensure_ascii=False)}}
            for c in calls]


class ChatChoice:
    def __init__(self, llm: LLM, seq: Sequence, index: int, spec: ChatSpec, stream: bool):
        self.llm, self.seq, self.index, self.spec = llm, seq, index, spec
        self.stream = stream
        self.thinking = llm.reasoning_open(seq.prompt_ids)  # the answer starts as reasoning
        self.state = (_StreamState(llm, seq, spec.tools, parse_tools=not spec.tool_choice_none)
                      if stream and spec.prefix is None else None)
        self.cursor = _LogprobCursor(seq) if spec.logprobs else None
        self.sent_calls: list[dict[str, Any]] = []  # tool calls streamed so far (OpenAI shape, with their ids)
        self._tag_end = 0  # the text is read for new blocks when a tag appears after this offset
        self._block_end = 0  # where the last complete block read so far ends
        self._stop_hold = max(seq.params.longest_stop - 1, 0)  # text a stop string may still cut
        self._result: ChoiceResult | None = None

    def _logprobs(self) -> list | None:
        if self.cursor is None:
            return None
        return chat_logprobs(self.llm, *self.cursor.take())

    def advance(self, out: StepOutput) -> ChoiceDelta | None:
        lps = self._logprobs()
        if out.finished:
            sent = len(self.sent_calls)
            res = self.result()
            sent_text, sent_reasoning = (self.state.text, self.state.reasoning) if self.state else ("", "")
            return ChoiceDelta(self.index, _rest(res.text, sent_text), _rest(res.reasoning or "", sent_reasoning),
                               lps, res.finish_reason, _indexed(res.tool_calls[sent:], sent))
        if self.state is None:
            return ChoiceDelta(self.index, logprobs=lps) if lps else None
        d = self.state.advance(out)
        calls = self._new_calls()
        piece = d.text if d else ""  # the stream state holds trailing whitespace back itself
        reasoning = d.reasoning if d else ""
        if not (piece or reasoning or lps or calls):
            return None
        return ChoiceDelta(self.index, piece, reasoning, lps, tool_calls=calls or None)

    def _new_calls(self) -> list[dict[str, Any]]:
        """Tool calls whose blocks were completed since the last step (tools offered, tool_choice not "none").

        Only text no stop string can still cut is read (a stop string completed later cuts the answer where it
        starts), blocks already read are not read again, and nothing is read until a new tag arrives."""
        if not self.spec.tools or self.spec.tool_choice_none:
            return []
        if not self.spec.parallel_tool_calls and self.sent_calls:
            return []
        full = self.state.decoder.text
        safe = full[:len(full) - self._stop_hold]
        tag = max(safe.rfind(TOOL_OPEN, self._tag_end), safe.rfind(TOOL_CLOSE, self._tag_end))
        if tag < 0:
            return []
        self._tag_end = safe.index(">", tag) + 1
        calls, self._block_end = completed_tool_calls(safe, self.thinking, self._block_end)
        if not self.spec.parallel_tool_calls:
            calls = calls[:1]
        new = openai_tool_calls(calls)
        start = len(self.sent_calls)
        self.sent_calls += new
        return _indexed(new, start)

    def reasoning_tokens(self) -> int:
        """A Thinking model's output tokens up to and including its `</think>` (all of them if it never wrote it)."""
        if not self.thinking:
            return 0
        ids = list(self.seq.output_ids)
        end = self.llm.tokenizer.token_to_id(THINK_END)
        return ids.index(end) + 1 if end in ids else len(ids)

    def result(self) -> ChoiceResult:
        if self._result is not None:
            return self._result
        llm, seq, spec = self.llm, self.seq, self.spec
        choice = llm.finish_choice(seq, spec.tools)
        text, reasoning, calls = choice.text, choice.reasoning, choice.tool_calls
        if spec.prefix is not None:
            parsed = parse_output(spec.prefix + choice.raw_text, False, True)
            if parsed.tool_calls:
                text, calls = parsed.content, parsed.tool_calls
            else:
                text, calls = spec.prefix + choice.raw_text, []
        elif spec.tool_choice_none and calls:
            text, calls = parse_output(choice.raw_text, self.thinking, False).content, []
        if calls and not spec.parallel_tool_calls:
            calls = calls[:1]
        reason = choice.finish_reason
        if calls and reason == "stop":
            reason = "tool_calls"
        extra: dict[str, Any] = {}
        if spec.json_mode and not self.stream and not calls:
            text, problem = check_json(text, objects_only=not spec.json_any)
            if problem:
                extra["response_format_error"] = problem
        lps = None
        if spec.logprobs:
            lps = chat_logprobs(llm, list(seq.output_ids), list(seq.logprobs))
        # calls already streamed keep the ids they were sent with (they are the first calls of the whole answer)
        sent = self.sent_calls[:len(calls)]
        self._result = ChoiceResult(self.index, text, reasoning, sent + openai_tool_calls(calls[len(sent):]), reason,
                                    lps, len(seq.output_ids), extra)
        return self._result


def _indexed(calls: list[dict[str, Any]], start: int) -> list[dict[str, Any]]:
    return [{"index": start + k, **call} for k, call in enumerate(calls)]


def check_json(text: str, objects_only: bool = True) -> tuple[str, str | None]:
    """(text, None) if `text` is a JSON object (any JSON value with `objects_only=False`; a surrounding ``` fence is
    removed), else (text, why not)."""
    body = text.strip()
    if body.startswith("```"):
        inner = body[3:]
        inner = inner[inner.find("\n") + 1:] if "\n" in inner else ""
        if inner.rstrip().endswith("```"):
            body = inner.rstrip()[:-3].strip()
    try:
        value = json.loads(body)
    except ValueError as e:
        return text, f"the output is not valid JSON: {e}"
    if objects_only and not isinstance(value, dict):
        return text, f"the output is JSON but not an object (a {type(value).__name__})"
    return body, None


# ------------------------------------------------------------------------------------------------- completions
class TextChoice:
    """A plain completion: the decoded text up to a stop string, no parsing."""

    def __init__(self, llm: LLM, seq: Sequence, index: int, stream: bool, echo: bool = False):
        self.llm, self.seq, self.index, self.echo = llm, seq, index, echo
        self.decoder = llm.tokenizer.incremental_decoder(skip_special_tokens=True) if stream else None
        self.hold = max(seq.params.longest_stop - 1, 0)
        self.head = llm.tokenizer.decode(seq.prompt_ids) if echo else ""  # echo: the prompt opens the text
        self.head_sent = not echo  # a stream sends the head with its first piece
        self.sent = ""  # generated text streamed so far
        self.cursor = _LogprobCursor(seq) if seq.params.logprobs is not None else None
        self._result: ChoiceResult | None = None

    def _prompt_logprobs(self) -> dict[str, list]:
        """Echo: every prompt token, special ones too, the first with null (entry i is token i)."""
        seq = self.seq
        scored = [None, *seq.prompt_logprobs][:len(seq.prompt_ids)]
        return completion_logprobs(self.llm, list(seq.prompt_ids), scored, keep_special=True)

    def _logprobs(self) -> dict | None:
        if self.cursor is None:
            return None
        return completion_logprobs(self.llm, *self.cursor.take(), offset=len(self.head) + len(self.sent),
                                   keep_special=self.echo)

    def advance(self, out: StepOutput) -> ChoiceDelta | None:
        head, lps = "", self._logprobs()
        if not self.head_sent:  # the first piece of an echo stream: the prompt and its logprobs before the rest
            self.head_sent, head = True, self.head
            if lps is not None:
                lps = {k: v + lps[k] for k, v in self._prompt_logprobs().items()}
        if out.finished:
            res = self.result()
            return ChoiceDelta(self.index, head + _rest(res.text, self.head + self.sent), logprobs=lps,
                               finish_reason=res.finish_reason)
        self.decoder.add(out.new_tokens)
        full = self.decoder.text
        piece = full[len(self.sent):max(len(self.sent), len(full) - self.hold)]
        self.sent += piece
        return ChoiceDelta(self.index, head + piece, logprobs=lps) if head or piece or lps else None

    def reasoning_tokens(self) -> int:
        return 0

    def result(self) -> ChoiceResult:
        if self._result is None:
            seq = self.seq
            text = self.llm.tokenizer.decode(seq.output_ids, skip_special_tokens=True)
            if seq.stop_text is not None and seq.stop_text in text:
                text = text[:text.index(seq.stop_text)]
            lps = None
            if seq.params.logprobs is not None:
                lps = completion_logprobs(self.llm, list(seq.output_ids), list(seq.logprobs), offset=len(self.head),
                                          keep_special=self.echo)
                if self.echo:
                    lps = {k: v + lps[k] for k, v in self._prompt_logprobs().items()}
            text = self.head + text
            self._result = ChoiceResult(self.index, text, None, [], seq.finish_reason or "length", lps,
                                        len(seq.output_ids))
        return self._result
