"""Requests -> engine jobs: the messages the model sees, the prompt token ids, and the sampling parameters.

Cheap checks run on the HTTP thread, so a bad request fails fast (messages shape, media sources and budget,
sampling values); `build()` runs on a preprocessing worker (template, tokenising, media download and decoding).

What the server adds to a chat (documented in docs/SERVING.md):

* a `developer` message (OpenAI's newer name for the system role) is a `system` message;
* `tool_choice: "none"` hides the tools from the model; `"auto"` (the default with tools) shows them;
* `"required"` / a named function on an Instruct model prefills the assistant turn with the call's opening, so
  the model must write a call (of that function); on a Thinking model, which has to think first, a system note
  asks for the call instead;
* `response_format` `json_object` / `json_schema` adds a system note asking for one JSON object (with the schema)
  and, when no tools are offered, constrains decoding: to one syntactically valid JSON object (`json_object`,
  `engine/constrain.py`), or to a document valid against the schema (`json_schema`, `engine/schema.py`). A schema
  the decoder cannot enforce (a `multipleOf`, say) is a 400 naming the keyword when `strict` is true; otherwise the
  answer is constrained to JSON syntax only and a warning is logged. The non-streamed answer is then checked (see
  `outputs.check_json`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

from qwen3vl.engine.engine import PromptTooLongError
from qwen3vl.engine.beam import candidates_per_beam
from qwen3vl.engine.sampling import MAX_LOGPROBS, SamplingParams
from qwen3vl.engine.schema import SchemaError, compile_schema
from qwen3vl.engine.tool_constraint import ForcedCalls, forced_calls
from qwen3vl.llm import LLM, media_items
from qwen3vl.processing.messages import normalize_messages
from qwen3vl.serve.errors import bad_request
from qwen3vl.serve.jobs import BeamSpec, EnginePrompt, Job
from qwen3vl.serve.media import MediaPolicy, apply_request_options, check_media
from qwen3vl.serve.outputs import ChatChoice, ChatSpec, TextChoice
from qwen3vl.serve.schemas import ChatCompletionRequest, CompletionRequest, NamedToolChoice
from qwen3vl.tasks.toolcalls import TOOL_OPEN

log = logging.getLogger("qwen3vl.serve")
_SAMPLING_EPS = 1e-5  # below this a temperature is greedy: dividing logits by it overflows


def sampling_params(llm: LLM, fields: dict[str, Any], server_defaults: dict[str, Any]) -> SamplingParams:
    """Request fields over server defaults over the checkpoint's; a bad value is a 400 naming the field."""
    values = {k: v for k, v in server_defaults.items() if v is not None}
    values.update({k: v for k, v in fields.items() if v is not None})
    if values.get("temperature") is not None and 0 < values["temperature"] < _SAMPLING_EPS:
        values["temperature"] = 0.0
    vocab = llm.model.config.text_config.vocab_size
    for t in values.get("stop_token_ids") or []:
        if not 0 <= t < vocab:
            raise bad_request(f"stop_token_ids: {t} is not a token id (0..{vocab - 1})", "stop_token_ids")
    for t in values.get("logit_bias") or {}:
        if not 0 <= t < vocab:
            raise bad_request(f"logit_bias: {t} is not a token id (0..{vocab - 1})", "logit_bias")
    try:
        return llm.sampling_params(**values)
    except (ValueError, TypeError) as e:
        name = str(e).split(" ", 1)[0]  # SamplingParams.validate names the field first
        raise bad_request(str(e), name if name in values else None) from None


def enforceable_schema(schema: Any, strict: bool) -> Any:
    """The schema to constrain decoding with, or None (syntax only) when a non-strict schema cannot be enforced."""
    try:
        compile_schema(schema)
    except SchemaError as e:
        if strict:
            raise bad_request(f"response_format.json_schema: {e}", "response_format") from None
        log.warning("response_format json_schema not enforced (JSON syntax only): %s", e)
        return None
    return schema


def constrained_calls(llm: LLM, tools: list[dict[str, Any]], name: str | None, parallel: bool) -> ForcedCalls | None:
    """The constraint for a forced call (tool_choice "required" or named): calls valid against the tools' schemas.
    None (unconstrained, logged) when a function's parameters use a keyword the decoder cannot enforce."""
    if llm.engine.tool_call_ids is None:
        log.warning("tool calls not constrained: the tokenizer has no <tool_call>/</tool_call> added tokens")
        return None
    try:  # an Instruct model's answer is prefilled (see chat_job); a Thinking model writes the call's opening
        return forced_calls(tools, name, named=not llm.thinking, opened=not llm.thinking, parallel=parallel)
    except SchemaError as e:
        log.warning("tool call arguments not constrained: %s", e)
        return None


def _check_length(llm: LLM, n: int) -> None:
    limit = llm.engine.max_model_len
    if n >= limit:
        raise PromptTooLongError(f"the prompt has {n} tokens, but this model's context allows at most {limit - 1} "
                                 f"prompt tokens (max_model_len {limit}); shorten the messages or use smaller "
                                 "images (max_pixels)")


def beam_spec(llm: LLM, req: ChatCompletionRequest | CompletionRequest, params: SamplingParams) -> BeamSpec | None:
    """`use_beam_search`: `n` beams, ending at the checkpoint's EOS ids and `stop_token_ids`; a width too large for
    the candidates kept per beam is a 400 naming `n`."""
    if not req.use_beam_search:
        return None
    ends = tuple(sorted(set(llm.eos_token_ids) | set(params.stop_token_ids)))
    per_width = candidates_per_beam(1, len(ends))
    if per_width * params.n > MAX_LOGPROBS:
        raise bad_request(f"n: a beam search of {params.n} beams needs {per_width * params.n} candidates per beam; at "
                          f"most {MAX_LOGPROBS} are kept, so n can be at most {MAX_LOGPROBS // per_width}", "n")
    if not isinstance(req.length_penalty, (int, float)):
        raise bad_request("length_penalty must be a number", "length_penalty")
    return BeamSpec(params.n, float(req.length_penalty), req.early_stopping, ends)


# ------------------------------------------------------------------------------------------------- chat
def add_system_note(messages: list[dict[str, Any]], note: str) -> list[dict[str, Any]]:
    """Append `note` to the first system message (the Instruct template drops later ones), or add one."""
    if messages and messages[0].get("role") == "system":
        first = dict(messages[0])
        content = first.get("content")
        if isinstance(content, list):
            first["content"] = content + [{"type": "text", "text": "\n\n" + note}]
        else:
            first["content"] = f"{content}\n\n{note}" if content else note
        return [first] + messages[1:]
    return [{"role": "system", "content": note}] + messages


def as_system(messages: Any) -> Any:
    """OpenAI's `developer` role (what its newer clients send for instructions) read as `system`, which is all the
    Qwen templates know; anything else is left for `normalize_messages` to check."""
    if not isinstance(messages, list):
        return messages
    return [{**m, "role": "system"} if isinstance(m, dict) and m.get("role") == "developer" else m for m in messages]


def chat_job(llm: LLM, req: ChatCompletionRequest, raw_tools: list[dict[str, Any]] | None, params: SamplingParams,
             policy: MediaPolicy, check_length: bool = True) -> Callable[[], Job]:
    """The chat's prompt as the engine will run it; `check_length=False` (for /tokenize) lets a prompt longer than
    the context through."""
    messages = normalize_messages(as_system(req.messages))
    messages = apply_request_options(messages, req.media_options())
    check_media(messages, policy)

    choice = req.tool_choice or ("auto" if raw_tools else "none")
    tools = raw_tools if raw_tools and choice != "none" else None
    prefix = None
    notes = []
    if tools and (choice == "required" or isinstance(choice, NamedToolChoice)):
        name = choice.function.name if isinstance(choice, NamedToolChoice) else None
        if llm.thinking:
            notes.append(f"You must call the function {name}." if name
                         else "You must call at least one of the provided functions.")
        else:
            prefix = f"{TOOL_OPEN}\n" + (f'{{"name": {json.dumps(name, ensure_ascii=False)}, "arguments": '
                                        if name else "")
        if not params.ignore_eos:  # (ignore_eos would write past the calls: left unconstrained, as before)
            params.forced_tool_calls = constrained_calls(llm, tools, name, req.parallel_tool_calls is not False)
    fmt = req.response_format
    json_mode = fmt is not None and fmt.type in ("json_object", "json_schema")
    if json_mode:
        schema = (fmt.json_schema or {}).get("schema") if fmt.type == "json_schema" else None
        if schema is not None:
            note = ("Respond with a single valid JSON value and nothing else. It must follow this JSON schema:\n"
                    + json.dumps(schema, ensure_ascii=False))
        else:
            note = "Respond with a single valid JSON object and nothing else."
        notes.append(note)
    if json_mode and tools is None and not prefix:
        params.json_mode = True  # decoding constrained to one JSON object (engine/constrain.py)
        if schema is not None:
            params.json_schema = enforceable_schema(schema, (fmt.json_schema or {}).get("strict") is True)
        if params.ignore_eos:
            raise bad_request("ignore_eos cannot be combined with response_format json_object/json_schema (the "
                              "answer ends with its JSON document)", "ignore_eos")
    if tools and choice == "auto":  # a call the model opens fits its schema
        params.forced_tool_calls = llm.auto_tool_calls(tools, vars(params))
    if notes:
        messages = add_system_note(messages, "\n".join(notes))
    spec = ChatSpec(tools=tools, tool_choice_none=tools is None, prefix=prefix,
                    parallel_tool_calls=req.parallel_tool_calls is not False, json_mode=json_mode,
                    json_any=json_mode and schema is not None,
                    logprobs=req.logprobs)
    stream, add_vision_id = req.stream, req.add_vision_id
    beam = beam_spec(llm, req, params)
    template = {"add_generation_prompt": req.add_generation_prompt, "continue_final_message": req.continue_final_message}

    def build() -> Job:
        prepared = llm.prepare(messages, tools, add_vision_id, **template)
        ids = list(prepared.input_ids)
        if prefix:
            ids += llm.tokenizer.encode(prefix)
        if check_length:
            _check_length(llm, len(ids))
        media, kinds = media_items(prepared)
        return Job([EnginePrompt(ids, media, kinds)], params,
                   lambda seq, i: ChatChoice(llm, seq, i, spec, stream), stream, beam)

    return build


# ------------------------------------------------------------------------------------------------- completions
def completion_job(llm: LLM, req: CompletionRequest, params: SamplingParams) -> Callable[[], Job]:
    prompts = req.prompts()
    stream = req.stream
    vocab = llm.model.config.text_config.vocab_size
    sp = llm.tokenizer.special
    media_pads = {sp.image, sp.video}
    beam = beam_spec(llm, req, params)

    def build() -> Job:
        out = []
        for k, p in enumerate(prompts):
            where = "prompt" if len(prompts) == 1 else f"prompt[{k}]"
            ids = llm.tokenizer.encode(p) if isinstance(p, str) else list(p)
            if not ids:
                raise bad_request(f"{where} is empty", "prompt")
            bad = next((t for t in ids if not 0 <= t < vocab), None)
            if bad is not None:
                raise bad_request(f"{where}: {bad} is not a token id (0..{vocab - 1})", "prompt")
            if media_pads & set(ids):
                raise bad_request(f"{where} contains image/video pad tokens; this endpoint takes text only "
                                  "(send media to /v1/chat/completions)", "prompt")
            _check_length(llm, len(ids))
            out.append(EnginePrompt(ids))
        return Job(out, params, lambda seq, i: TextChoice(llm, seq, i, stream, echo=req.echo), stream, beam)

    return build
