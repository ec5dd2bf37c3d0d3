"""Checkpoint chat templates: find them, recognise Instruct vs Thinking, and render them in a Jinja sandbox.

Our renderer (`chat.py`) is the one used; a shipped template only decides the format (unless one is forced), and can
be rendered as a cross-check. The sandbox mirrors transformers' `apply_chat_template` environment:
`ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)`, `tojson` without ASCII escaping,
`raise_exception`, and the loop-controls extension.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime
from functools import cache, lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

from qwen3vl.processing.chat import ChatFormat

logger = logging.getLogger(__name__)

BUILTIN_TEMPLATES: dict[str, str] = {"instruct": "qwen3vl_instruct.jinja", "thinking": "qwen3vl_thinking.jinja"}


@cache
def builtin_template(chat_format: ChatFormat) -> str:
    """The official template text for a format, as shipped with the checkpoints (stored verbatim)."""
    return resources.files("qwen3vl").joinpath("templates", BUILTIN_TEMPLATES[chat_format]).read_text("utf-8")


def load_checkpoint_template(folder: str | Path) -> str | None:
    """chat_template.json ("chat_template" key), chat_template.jinja, or tokenizer_config.json's "chat_template"."""
    folder = Path(folder)
    path = folder / "chat_template.json"
    if path.is_file():
        with open(path, encoding="utf-8") as f:
            value = json.load(f).get("chat_template")
        if isinstance(value, str):
            return value
    path = folder / "chat_template.jinja"
    if path.is_file():
        return path.read_text("utf-8")
    path = folder / "tokenizer_config.json"
    if path.is_file():
        with open(path, encoding="utf-8") as f:
            value = json.load(f).get("chat_template")
        if isinstance(value, list):  # [{"name": ..., "template": ...}]
            value = next((t.get("template") for t in value if t.get("name") == "default"), None)
        if isinstance(value, str):
            return value
    return None


def probe_format(template: str) -> ChatFormat:
    """A custom template's format: Thinking if its generation prompt leaves a `<think>` block open (rendered for a
    one-message probe), or if `detect_format` says so; else Instruct."""
    try:
        opened = render_template(template, [{"role": "user", "content": "Hi."}], add_generation_prompt=True)
    except Exception:  # (a template that will not render the probe: judged by its text)
        opened = ""
    if opened.rstrip().endswith("<think>"):
        return "thinking"
    return detect_format(template)


def detect_format(template: str) -> ChatFormat:
    """Thinking templates open the answer with `<think>` in the generation prompt and read `reasoning_content`."""
    if "<think>" in template and "reasoning_content" in template:
        return "thinking"
    return "instruct"


def matches_builtin(template: str) -> ChatFormat | None:
    """The format whose official template this is (ignoring trailing whitespace), or None for a custom one."""
    for chat_format in BUILTIN_TEMPLATES:
        if template.rstrip() == builtin_template(chat_format).rstrip():  # type: ignore[arg-type]
            return chat_format  # type: ignore[return-value]
    return None


@cache
def _environment():
    import jinja2
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise jinja2.exceptions.TemplateError(message)

    def tojson_filter(value: Any, ensure_ascii: bool = False, indent: int | None = None,
                      separators: tuple[str, str] | None = None, sort_keys: bool = False) -> str:
        # (what the official templates call, `tojson(x)`, is chat.tojson; fine-tunes' templates may pass the rest)
        return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                          sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.filters["tojson"] = tojson_filter
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env


@lru_cache(maxsize=16)
def compile_template(template: str):
    """The template compiled once (jinja2.TemplateSyntaxError for a broken one)."""
    return _environment().from_string(template)


def plain_data(value: Any) -> Any:
    """What a template may see: JSON-like data, every other object (an image, an array, bytes) replaced by its type
    name as a string, so a template can test for a part but never call a method of what it holds (as transformers'
    sandbox does)."""
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    if isinstance(value, dict):
        return {str(k): plain_data(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain_data(v) for v in value]
    return f"<{type(value).__name__}>"


def render_template(
    template: str,
    messages: list[dict[str, Any]],
    tools: list[dict[str, Any]] | None = None,
    add_generation_prompt: bool = False,
    add_vision_id: bool = False,
    continue_final_message: bool = False,
    **extra: Any,
) -> str:
    """Render a chat template in the sandbox. Pass normalised messages (media parts keep their keys; the
    templates only test for them). `continue_final_message` as in `chat.render`."""
    from qwen3vl.processing.chat import continued_length, tag_final_message

    if continue_final_message:
        if add_generation_prompt:
            raise ValueError("continue_final_message and add_generation_prompt cannot both be set")
        messages, final = tag_final_message(messages)
    text = compile_template(template).render(
        messages=plain_data(messages),
        tools=plain_data(tools),
        add_generation_prompt=add_generation_prompt,
        add_vision_id=add_vision_id,
        **plain_data(extra),
    )
    if continue_final_message:
        text = text[:continued_length(text, final, len(messages) - 1, "checkpoint's")]
    return text
