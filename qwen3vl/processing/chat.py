"""The one chat renderer, used for inference and training: rendered text, media slots and loss-mask spans.

Two formats, each a line-by-line port of the official Qwen3-VL chat template (kept verbatim in
`qwen3vl/templates/`; tests check both give identical text over a table of conversations):

* Instruct (spec §9.1): system text only (images in it are ignored), non-first system messages dropped, assistant
  history kept verbatim, consecutive tool messages merged into one user turn.
* Thinking (spec §9.2): every role goes through one content renderer (images allowed anywhere, also in tool
  results); reasoning of assistant turns before the last real user query is stripped; the generation prompt opens
  `<think>\\n`.

Loss mask: an assistant turn's target is everything the model generates for it: the content (Thinking: the reasoning
after the prompt's `<think>\\n`, `</think>`, the answer), the tool calls and the closing `<|im_end|>`. The "\\n" after
`<|im_end|>` is NOT a target: generation stops at `<|im_end|>`, and the newline is written by the next turn's
template, never by the model. `<|im_start|>assistant\\n` (and Thinking's `<think>\\n`) is prompt, as at inference.

Media are tracked with private-use sentinels while rendering, so text operations the templates perform (the
Thinking template splits assistant text on `</think>`) keep each image/video attached to its place.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from qwen3vl.processing.errors import MessageFormatError, where

ChatFormat = Literal["instruct", "thinking"]

IMAGE_PLACEHOLDER = "<|vision_start|><|image_pad|><|vision_end|>"
VIDEO_PLACEHOLDER = "<|vision_start|><|video_pad|><|vision_end|>"
TOOLS_HEADER = (
    "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>"
)
TOOLS_FOOTER = (
    "\n</tools>\n\nFor each function call, return a json object with function name and arguments within "
    '<tool_call></tool_call> XML tags:\n<tool_call>\n{"name": <function-name>, "arguments": <args-json-object>}\n'
    "</tool_call><|im_end|>\n"
)
_SENTINEL_OPEN, _SENTINEL_CLOSE = "\ue000", "\ue001"
_SENTINEL_RE = re.compile(f"{_SENTINEL_OPEN}(\\d+){_SENTINEL_CLOSE}")


def tojson(value: Any) -> str:
    """The templates' `tojson` as transformers defines it: json.dumps, no ASCII escaping, default separators."""
    return json.dumps(value, ensure_ascii=False)


@dataclass(frozen=True)
class MediaRef:
    """An image or video part that made it into the rendered text, with where it came from."""

    kind: Literal["image", "video"]
    part: dict[str, Any]
    message_index: int
    part_index: int

    @property
    def location(self) -> str:
        return where(self.message_index, self.part_index, self.kind)


@dataclass(frozen=True)
class TargetSpan:
    """Characters of the rendered text an assistant turn generates (see module docstring)."""

    start: int
    end: int
    message_index: int


@dataclass
class RenderedChat:
    """Rendered conversation: chunks of text, target text or media, in order.

    `text` uses the template's one-token placeholders; `expand` swaps each media for any string (the processor puts
    timestamps and pad tokens there) and returns the target spans in the expanded text.
    """

    chunks: list[tuple[str, int | None, int | None]]  # (text, target message index | None, media index | None)
    media: list[MediaRef]
    dropped: list[MediaRef] = field(default_factory=list)  # media parts the format does not render

    @property
    def text(self) -> str:
        return self.expand(lambda k: _placeholder(self.media[k].kind))[0]

    def expand(self, media_text: Callable[[int], str]) -> tuple[str, list[TargetSpan]]:
        parts: list[str] = []
        spans: list[TargetSpan] = []
        pos = 0
        for text, target, media in self.chunks:
            piece = media_text(media) if media is not None else text
            if target is not None:
                if spans and spans[-1].message_index == target and spans[-1].end == pos:
                    spans[-1] = TargetSpan(spans[-1].start, pos + len(piece), target)
                else:
                    spans.append(TargetSpan(pos, pos + len(piece), target))
            parts.append(piece)
            pos += len(piece)
        return "".join(parts), spans


def _placeholder(kind: str) -> str:
    return IMAGE_PLACEHOLDER if kind == "image" else VIDEO_PLACEHOLDER


class _Builder:
    """Collects output pieces; media become sentinels until `finish` resolves them in order of appearance."""

    def __init__(self, messages: list[dict[str, Any]], add_vision_id: bool):
        self.messages = messages
        self.add_vision_id = add_vision_id
        self.pieces: list[tuple[str, int | None]] = []
        self.counts = {"image": 0, "video": 0}  # the templates' image_count / video_count
        self._refs: list[MediaRef] = []
        self._ref_ids: dict[tuple[int, int], int] = {}

    def emit(self, text: str, target: int | None = None) -> None:
        if text:
            self.pieces.append((text, target))

    def content(self, i: int, count: bool = True) -> str:
        """Message i's content as text: text parts verbatim, media as (optionally numbered) sentinels.

        `count=False` renders without advancing the counters, as the Thinking template does for the system message
        and its look-back scan (the "Picture N" it prints then is the current count)."""
        content = self.messages[i]["content"]
        if isinstance(content, str):
            return content
        out = ""
        for j, part in enumerate(content):
            kind = part["type"]
            if kind == "text":
                out += part["text"]
                continue
            if count:
                self.counts[kind] += 1
            if self.add_vision_id:
                out += f"Picture {self.counts['image']}: " if kind == "image" else f"Video {self.counts['video']}: "
            out += self.sentinel(i, j, kind)
        return out

    def tool_turn(self, i: int, text: str) -> None:
        """Consecutive tool messages share one user turn, each result in <tool_response> tags."""
        messages = self.messages
        if i == 0 or messages[i - 1]["role"] != "tool":
            self.emit("<|im_start|>user")
        self.emit("\n<tool_response>\n" + text + "\n</tool_response>")
        if i == len(messages) - 1 or messages[i + 1]["role"] != "tool":
            self.emit("<|im_end|>\n")

    def sentinel(self, i: int, j: int, kind: Literal["image", "video"]) -> str:
        key = (i, j)
        if key not in self._ref_ids:
            self._ref_ids[key] = len(self._refs)
            self._refs.append(MediaRef(kind, self.messages[i]["content"][j], i, j))
        return f"{_SENTINEL_OPEN}{self._ref_ids[key]}{_SENTINEL_CLOSE}"

    def finish(self) -> RenderedChat:
        chunks: list[tuple[str, int | None, int | None]] = []
        order: list[int] = []
        for text, target in self.pieces:
            pos = 0
            for m in _SENTINEL_RE.finditer(text):
                if m.start() > pos:
                    chunks.append((text[pos : m.start()], target, None))
                ref = int(m.group(1))
                if ref in order:
                    raise MessageFormatError(f"{self._refs[ref].location}: rendered twice")
                chunks.append(("", None, len(order)))
                order.append(ref)
                pos = m.end()
            if pos < len(text):
                chunks.append((text[pos:], target, None))
        media = [self._refs[r] for r in order]
        shown = {(ref.message_index, ref.part_index) for ref in media}
        dropped = [
            MediaRef(part["type"], part, i, j)
            for i, m in enumerate(self.messages)
            if not isinstance(m["content"], str)
            for j, part in enumerate(m["content"])
            if part["type"] != "text" and (i, j) not in shown
        ]
        return RenderedChat(chunks, media, dropped)


def check_text(messages: list[dict[str, Any]]) -> None:
    for i, m in enumerate(messages):
        texts = [m["content"]] if isinstance(m["content"], str) else [p.get("text", "") for p in m["content"]]
        if isinstance(m.get("reasoning_content"), str):
            texts.append(m["reasoning_content"])
        for text in texts:
            if _SENTINEL_OPEN in text or _SENTINEL_CLOSE in text:
                raise MessageFormatError(f"{where(i, None)}: text contains reserved characters U+E000/U+E001")


def _tool_call(call: dict[str, Any]) -> str:
    body = call["function"] if call.get("function") else call
    args = body["arguments"]
    return (
        '<tool_call>\n{"name": "'
        + str(body["name"])
        + '", "arguments": '
        + (args if isinstance(args, str) else tojson(args))
        + "}\n</tool_call>"
    )


def _tool_calls(calls: list[dict[str, Any]] | None, has_content: bool) -> str:
    out = ""
    for k, call in enumerate(calls or []):
        if (k == 0 and has_content) or k > 0:
            out += "\n"
        out += _tool_call(call)
    return out


def _system_tools_block(system_text: str | None, tools: list[dict[str, Any]]) -> str:
    out = "<|im_start|>system\n"
    if system_text is not None:
        out += system_text + "\n\n"
    return out + TOOLS_HEADER + "".join("\n" + tojson(t) for t in tools) + TOOLS_FOOTER


def from_template_text(text: str, messages: list[dict[str, Any]], partial: bool = False) -> RenderedChat:
    """A conversation rendered by some other chat template (its text, media as the one-token placeholders) as a
    RenderedChat: the placeholders, in order of appearance, are the messages' image and video parts in order. It
    marks no target spans (a custom template does not say which text is the assistant's). `partial`: the text was
    cut inside the final message (continue_final_message), so media after the cut are dropped."""
    refs = [MediaRef(p["type"], p, mi, pi) for mi, m in enumerate(messages) if isinstance(m["content"], list)
            for pi, p in enumerate(m["content"]) if p.get("type") in ("image", "video")]
    pieces = re.split(f"({re.escape(IMAGE_PLACEHOLDER)}|{re.escape(VIDEO_PLACEHOLDER)})", text)
    kinds = ["image" if piece == IMAGE_PLACEHOLDER else "video" for piece in pieces[1::2]]
    dropped: list[MediaRef] = []
    if partial and kinds == [r.kind for r in refs[:len(kinds)]]:
        refs, dropped = refs[:len(kinds)], refs[len(kinds):]
    if kinds != [r.kind for r in refs]:
        raise MessageFormatError(
            f"the chat template shows {kinds.count('image')} image(s) and {kinds.count('video')} video(s) "
            f"({', '.join(kinds) or 'none'}), but the messages hold {', '.join(r.kind for r in refs) or 'none'}: "
            "it must render every image and video part, in order")
    chunks: list[tuple[str, int | None, int | None]] = []
    for i, piece in enumerate(pieces):
        if i % 2:
            chunks.append((piece, None, i // 2))
        elif piece:
            chunks.append((piece, None, None))
    return RenderedChat(chunks, refs, dropped)


def render(
    messages: list[dict[str, Any]],
    chat_format: ChatFormat,
    tools: list[dict[str, Any]] | None = None,
    add_generation_prompt: bool = False,
    add_vision_id: bool = False,
    continue_final_message: bool = False,
) -> RenderedChat:
    """Render normalised messages (see `messages.normalize_messages`) in the given format.

    `continue_final_message=True` ends the text inside the final message, right after its (last) text, so the model
    continues it (a prefilled answer): transformers' `apply_chat_template(continue_final_message=True)`."""
    check_text(messages)
    if continue_final_message:
        if add_generation_prompt:
            raise ValueError("continue_final_message and add_generation_prompt cannot both be set: one continues the "
                             "final message, the other opens a new assistant turn after it")
        messages, final = tag_final_message(messages)
    b = _Builder(messages, add_vision_id)
    if chat_format == "instruct":
        _render_instruct(b, tools, add_generation_prompt)
    elif chat_format == "thinking":
        _render_thinking(b, tools, add_generation_prompt)
    else:
        raise ValueError(f"unknown chat format {chat_format!r}; expected 'instruct' or 'thinking'")
    out = b.finish()
    if continue_final_message:
        out = _cut(out, continued_length(out.text, final, len(messages) - 1, chat_format))
    return out


# ---- continue_final_message ------------------------------------------------------------------------------------
# As transformers does it: a marker after the final message's last text, the chat rendered, the text cut where the
# marker landed (and, where the template trimmed the space after it, right-stripped), so cuts agree to the character.
CONTINUE_TAG = "CONTINUE_FINAL_MESSAGE_TAG "


def tag_final_message(messages: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], str]:
    """A copy of `messages` whose final message's last text ends with the marker; and that text as it was."""
    if not messages:
        raise MessageFormatError("continue_final_message needs a message to continue")
    i, last = len(messages) - 1, dict(messages[-1])
    content = last["content"]
    if isinstance(content, str):
        final, last["content"] = content, content + CONTINUE_TAG
    else:
        j = next((j for j in range(len(content) - 1, -1, -1) if content[j].get("type") == "text"), None)
        if j is None:
            raise MessageFormatError(f"{where(i, None)}: continue_final_message is set, but the final message has "
                                     "no text to continue")
        final = content[j]["text"]
        last["content"] = content[:j] + [{**content[j], "text": final + CONTINUE_TAG}] + content[j + 1:]
    return messages[:-1] + [last], final


def continued_length(text: str, final: str, i: int, chat_format: str) -> int:
    """Where a chat rendered from `tag_final_message`'s messages is cut."""
    mark = CONTINUE_TAG.strip()
    if final.strip() not in text or mark not in text:
        raise MessageFormatError(f"{where(i, None)}: continue_final_message is set, but the {chat_format} chat "
                                 "format does not show the final message's text")
    at = text.rindex(mark)
    return at if text[at:at + len(CONTINUE_TAG)] == CONTINUE_TAG else len(text[:at].rstrip())


def _cut(rendered: RenderedChat, length: int) -> RenderedChat:
    """The rendered chat up to `length` characters of its text (media after the cut are dropped)."""
    chunks: list[tuple[str, int | None, int | None]] = []
    pos = 0
    for text, target, media in rendered.chunks:
        piece = _placeholder(rendered.media[media].kind) if media is not None else text
        if pos + len(piece) > length:
            if media is None and length > pos:
                chunks.append((text[:length - pos], target, None))
            break
        chunks.append((text, target, media))
        pos += len(piece)
    kept = [m for _, _, m in chunks if m is not None]
    return RenderedChat(chunks, rendered.media[:len(kept)], rendered.dropped + rendered.media[len(kept):])


# ---- Instruct --------------------------------------------------------------------------------------------------


def _render_instruct(b: _Builder, tools: list[dict[str, Any]] | None, gen: bool) -> None:
    messages = b.messages

    def text_only(content: Any) -> str:
        return content if isinstance(content, str) else "".join(p["text"] for p in content if p["type"] == "text")

    first = messages[0]
    system_text = text_only(first["content"]) if first["role"] == "system" else None
    if tools:
        b.emit(_system_tools_block(system_text, tools))
    elif system_text is not None:
        b.emit("<|im_start|>system\n" + system_text + "<|im_end|>\n")
    for i, m in enumerate(messages):
        role = m["role"]
        if role == "user":
            b.emit("<|im_start|>user\n" + b.content(i) + "<|im_end|>\n")
        elif role == "assistant":
            b.emit("<|im_start|>assistant\n")
            body = text_only(m["content"]) + _tool_calls(m.get("tool_calls"), bool(m["content"]))
            b.emit(body + "<|im_end|>", target=i)
            b.emit("\n")
        elif role == "tool":
            b.tool_turn(i, b.content(i))
    if gen:
        b.emit("<|im_start|>assistant\n")


# ---- Thinking --------------------------------------------------------------------------------------------------


def _render_thinking(b: _Builder, tools: list[dict[str, Any]] | None, gen: bool) -> None:
    messages = b.messages

    if tools:
        system_text = b.content(0, count=False) if messages[0]["role"] == "system" else None
        b.emit(_system_tools_block(system_text, tools))
    elif messages[0]["role"] == "system":
        b.emit("<|im_start|>system\n" + b.content(0, count=False) + "<|im_end|>\n")

    # The last user message that is not just tool responses; assistant turns after it keep their reasoning.
    last_query = len(messages) - 1
    for i in range(len(messages) - 1, -1, -1):
        if messages[i]["role"] == "user":
            text = b.content(i, count=False)
            if not (text.startswith("<tool_response>") and text.endswith("</tool_response>")):
                last_query = i
                break

    last = len(messages) - 1
    for i, m in enumerate(messages):
        content = b.content(i)
        role = m["role"]
        if role == "user" or (role == "system" and i > 0):
            b.emit("<|im_start|>" + role + "\n" + content + "<|im_end|>\n")
        elif role == "assistant":
            reasoning = ""
            if isinstance(m.get("reasoning_content"), str):
                reasoning = m["reasoning_content"]
            elif "</think>" in content:
                reasoning = content.split("</think>")[0].rstrip("\n").split("<think>")[-1].lstrip("\n")
                content = content.split("</think>")[-1].lstrip("\n")
            if i > last_query and (i == last or reasoning):
                b.emit("<|im_start|>assistant\n<think>\n")
                body = reasoning.strip("\n") + "\n</think>\n\n" + content.lstrip("\n")
            else:
                b.emit("<|im_start|>assistant\n")
                body = content
            body += _tool_calls(m.get("tool_calls"), bool(content))
            b.emit(body + "<|im_end|>", target=i)
            b.emit("\n")
        elif role == "tool":
            b.tool_turn(i, content)
    if gen:
        b.emit("<|im_start|>assistant\n<think>\n")
