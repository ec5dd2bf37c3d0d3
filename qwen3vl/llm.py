"""The Python API: `LLM(model).chat(messages)`, `chat_stream`, `chat_batch`.

One `LLM` owns a model, its processor and an engine. Messages are OpenAI-style (content parts `text`, `image`,
`image_url`, `video`, `video_url`); sampling defaults come from the checkpoint's `generation_config.json`
unless given. Results carry the text, token ids, a Thinking model's reasoning, tool calls, the finish reason
and token usage.
"""

from __future__ import annotations

import itertools
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from qwen3vl.engine.engine import Engine, EngineConfig, PromptTooLongError, StepOutput
from qwen3vl.engine.output import ParsedOutput, ReasoningSplitter, ToolBlockFilter, parse_output
from qwen3vl.engine.sampling import SamplingParams, from_generation_config
from qwen3vl.engine.sequence import MediaItem, Sequence
from qwen3vl.engine.tool_constraint import ForcedCalls, forced_calls
from qwen3vl.tasks.toolcalls import TOOL_CLOSE, TOOL_OPEN
from qwen3vl.weights.adapters import AdapterError

log = logging.getLogger(__name__)

_SAMPLING_KEYS = ("max_tokens", "temperature", "top_k", "top_p", "min_p", "repetition_penalty", "presence_penalty",
                  "frequency_penalty", "seed", "stop", "stop_token_ids", "ignore_eos", "min_tokens", "n", "logprobs",
                  "prompt_logprobs", "json_mode", "json_schema", "regex", "choice", "forced_tool_calls", "adapter",
                  "logit_bias")
_MEDIA_KEYS = ("min_pixels", "max_pixels", "fps", "max_frames", "min_frames", "total_pixels")


@dataclass
class Usage:
    prompt_tokens: int
    completion_tokens: int

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def to_dict(self) -> dict[str, int]:
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                "total_tokens": self.total_tokens}


@dataclass
class Choice:
    text: str
    token_ids: list[int]
    reasoning: str | None
    tool_calls: list[dict[str, Any]]
    finish_reason: str
    tool_call_error: str | None = None
    logprobs: list | None = None
    raw_text: str = ""
    score: float | None = None  # beam search: the hypothesis's summed logprob / len(token_ids) ** length_penalty


@dataclass
class ChatResult:
    """The first choice's fields directly (`.text`, `.tool_calls`, ...), all of them in `.choices`."""

    choices: list[Choice]
    usage: Usage
    prompt_token_ids: list[int] = field(default_factory=list)
    # with prompt_logprobs=k: per prompt token, None for the first, then (logprob, top k [(id, logprob)] or None)
    prompt_logprobs: list | None = None

    def __getattr__(self, name: str):
        if name in Choice.__dataclass_fields__:
            return getattr(self.choices[0], name)
        raise AttributeError(name)


@dataclass
class ChatDelta:
    """One streamed piece: new answer text, new reasoning text, the new token ids; the last delta of a choice
    carries `finish_reason` and (parsed from the whole text) `tool_calls`."""

    text: str = ""
    reasoning: str = ""
    token_ids: list[int] = field(default_factory=list)
    index: int = 0
    finish_reason: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    usage: Usage | None = None


_request_ids = itertools.count()


class LLM:
    def __init__(self, model: str | Path, dtype: torch.dtype | str | None = None, device: str | None = None, *,
                 revision: str | None = None, max_model_len: int | None = None, kv_cache_gb: float = 2.0,
                 num_blocks: int | None = None, block_size: int = 16, max_num_seqs: int = 64,
                 max_batch_tokens: int = 2048, enable_prefix_cache: bool = True, vision_cache_mb: int = 512,
                 chat_format: str = "auto", media: dict[str, Any] | None = None, allow_remote_media: bool = False,
                 progress: bool = False, tensor_parallel_size: int = 1,
                 lora: str | Path | list[str | Path] | None = None,
                 lora_modules: dict[str, str | Path] | None = None, quantization: str | None = None,
                 kv_cache_dtype: str = "auto", prompt_lookup: int = 0, prompt_lookup_min: int = 1,
                 prompt_lookup_max: int = 3, chat_template: str | None = None):
        from qwen3vl.engine.runner import parse_kv_cache_dtype
        from qwen3vl.model.qwen3vl import load_model
        from qwen3vl.processing.processor import load_processor
        from qwen3vl.weights.hub import resolve_checkpoint

        folder = resolve_checkpoint(model, revision=revision)
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.path = folder
        config = EngineConfig(block_size=block_size, num_blocks=num_blocks, kv_cache_bytes=int(kv_cache_gb * 1024**3),
                              max_num_seqs=max_num_seqs, max_batch_tokens=max_batch_tokens,
                              max_model_len=max_model_len, enable_prefix_cache=enable_prefix_cache,
                              vision_cache_bytes=vision_cache_mb * 1024**2,
                              kv_cache_dtype=parse_kv_cache_dtype(kv_cache_dtype), prompt_lookup=prompt_lookup,
                              prompt_lookup_min=prompt_lookup_min, prompt_lookup_max=prompt_lookup_max)
        adapters = [lora] if isinstance(lora, (str, Path)) else list(lora or [])
        if (adapters or lora_modules) and tensor_parallel_size > 1:
            raise AdapterError("LoRA adapters with tensor_parallel_size > 1 are not supported: merge them into a "
                               "model folder first (qwen3vl train merge --model M --adapter A --out DIR) and load that")
        if quantization is not None and tensor_parallel_size > 1:
            raise ValueError("quantization with tensor_parallel_size > 1 is not supported")
        # chat_template: None, our renderer (the official templates); "checkpoint" or a file / text: that template
        # (loaded before the weights, so a bad template fails at once)
        self.processor = load_processor(folder, chat_format=chat_format, allow_remote_media=allow_remote_media,
                                        chat_template=chat_template)
        self._parallel = None
        if tensor_parallel_size > 1:  # other torchrun ranks never return from here (docs/PARALLEL.md)
            from qwen3vl.parallel.launch import start_tensor_parallel

            self._parallel = start_tensor_parallel(folder, tensor_parallel_size, dtype, device, config, progress)
            self.model = self._parallel.model
        else:
            self.model = load_model(folder, dtype=dtype, device=device, progress=progress)
            if adapters:
                from qwen3vl.weights.adapters import merge_adapter

                for adapter in adapters:  # peft LoRA adapters, folded into the weights in the order given
                    merge_adapter(self.model, adapter)
            if quantization is not None:  # after merging: adapters fold into float weights
                from qwen3vl.model.quant import quantize_model

                quantize_model(self.model, quantization)
        self.tokenizer = self.processor.tokenizer
        self.thinking = self.processor.chat_format == "thinking"
        self.media_defaults = {k: v for k, v in (media or {}).items() if v is not None}
        gen_cfg = _read_json(folder / "generation_config.json")
        self.sampling_defaults = from_generation_config(gen_cfg)
        eos = gen_cfg.get("eos_token_id", list(self.tokenizer.special.stop))
        self.eos_token_ids = sorted({eos} if isinstance(eos, int) else set(eos) or set(self.tokenizer.special.stop))
        think_end = self.tokenizer.token_to_id("</think>") if self.thinking else None
        call_ids = (self.tokenizer.token_to_id(TOOL_OPEN), self.tokenizer.token_to_id(TOOL_CLOSE))
        # forced calls need the tags as added tokens of their own (text_bytes is None only for those)
        tags = all(i is not None and self.tokenizer.text_bytes(i) is None for i in call_ids)
        self.engine = Engine(self.model, self.eos_token_ids, config, decode=self._decode,
                             runner=self._parallel.runner if self._parallel else None,
                             token_bytes=self.tokenizer.text_bytes, json_after=think_end,
                             tool_call_ids=call_ids if tags else None, reasoning_open=self.reasoning_open)
        for name, path in (lora_modules or {}).items():
            try:
                self.add_lora(name, path, revision=None)
            except AdapterError as e:
                raise AdapterError(f"LoRA adapter {name!r}: {e}") from None

    # ------------------------------------------------------------------ per-request LoRA adapters
    def add_lora(self, name: str, adapter: str | Path, revision: str | None = None) -> None:
        """Load a peft LoRA adapter (folder or hub id) under `name`, unmerged: a request uses it with
        `adapter=name` (`chat(..., adapter="name")`), others keep the base model, in the same batch
        (qwen3vl/engine/adapters.py). Adapters on the vision encoder, embeddings or LM head are refused
        (AdapterError): merge those at load with `LLM(lora=...)`."""
        self._adapter_set().add(name, adapter, revision)

    def remove_lora(self, name: str) -> None:
        """Unload an adapter added with `add_lora`. New requests cannot use the name any more; requests already
        running with it finish with it, and its weights are freed after the last of them."""
        self._adapter_set().remove(name, self.engine.adapters_in_use())

    def _adapter_set(self):
        if self.engine.adapters is None:
            raise AdapterError("per-request LoRA adapters are not supported with tensor parallelism")
        return self.engine.adapters

    @property
    def loras(self) -> list[str]:
        """Names of the adapters loaded with `add_lora` / `lora_modules`."""
        return self.engine.adapters.names() if self.engine.adapters is not None else []

    def close(self) -> None:
        """Stop the tensor-parallel worker ranks (nothing to do for a single-process LLM); safe to call twice."""
        if self._parallel is not None:
            self._parallel.close()

    # ------------------------------------------------------------------ helpers
    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def sampling_params(self, **kwargs) -> SamplingParams:
        unknown = set(kwargs) - set(_SAMPLING_KEYS)
        if unknown:
            raise TypeError(f"unknown sampling argument(s): {', '.join(sorted(unknown))}")
        values = {**self.sampling_defaults, **{k: v for k, v in kwargs.items() if v is not None}}
        if isinstance(values.get("stop"), str):
            values["stop"] = [values["stop"]]
        return SamplingParams(**values).validate()

    def _with_media_defaults(self, messages: Any) -> Any:
        if not self.media_defaults or not isinstance(messages, list):
            return messages
        out = []
        for m in messages:
            if isinstance(m, dict) and isinstance(m.get("content"), list):
                parts = []
                for p in m["content"]:
                    if isinstance(p, dict) and p.get("type") in ("image", "image_url", "video", "video_url"):
                        p = {**{k: v for k, v in self.media_defaults.items() if k in _MEDIA_KEYS}, **p}
                    parts.append(p)
                m = {**m, "content": parts}
            out.append(m)
        return out

    def prepare(self, messages: Any, tools: Any = None, add_vision_id: bool = False, *,
                add_generation_prompt: bool | None = None, continue_final_message: bool = False):
        """The prompt: the chat rendered with the generation prompt (an assistant turn opened), or, with
        `continue_final_message=True`, ending inside the final message so the answer continues it (a prefill, as
        transformers and vLLM do; `add_generation_prompt` then defaults to False)."""
        if add_generation_prompt is None:
            add_generation_prompt = not continue_final_message
        return self.processor.prepare(self._with_media_defaults(messages), add_generation_prompt=add_generation_prompt,
                                      tools=tools, add_vision_id=add_vision_id,
                                      continue_final_message=continue_final_message)

    def submit(self, messages: Any, tools: Any = None, add_vision_id: bool = False,
               request_id: str | None = None, add_generation_prompt: bool | None = None,
               continue_final_message: bool = False, **sampling) -> tuple[str, list[Sequence], int]:
        """Queue one conversation in the engine (no stepping); returns (request id, sequences, prompt length)."""
        params = self.sampling_params(**sampling)
        prepared = self.prepare(messages, tools, add_vision_id, add_generation_prompt=add_generation_prompt,
                                continue_final_message=continue_final_message)
        media, kinds = media_items(prepared)
        rid = request_id or f"req-{next(_request_ids)}"
        seqs = self.engine.add_request(rid, prepared.input_ids, params, media, kinds)
        return rid, seqs, len(prepared.input_ids)

    def reasoning_open(self, prompt_ids: list[int]) -> bool:
        """Whether what the model writes after this prompt starts as reasoning: a Thinking model's prompt whose last
        turn is an assistant turn with `<think>` opened and not closed (the generation prompt; or an assistant
        message continued inside its reasoning). An answer continued after `</think>` is answer from the start."""
        if not self.thinking:
            return False
        start = self.tokenizer.token_to_id("<|im_start|>")
        last = len(prompt_ids) - 1 - prompt_ids[::-1].index(start) if start in prompt_ids else 0
        turn = self.tokenizer.decode(prompt_ids[last:])
        return turn.startswith("<|im_start|>assistant") and turn.rfind("<think>") > turn.rfind("</think>")

    def finish_choice(self, seq: Sequence, tools: Any) -> Choice:
        raw = self._decode(seq.output_ids)
        if seq.stop_text is not None and seq.stop_text in raw:
            raw = raw[:raw.index(seq.stop_text)]
        return self._choice(raw, list(seq.output_ids), seq.finish_reason or "length", tools,
                            self.reasoning_open(seq.prompt_ids),
                            logprobs=list(seq.logprobs) if seq.params.logprobs is not None else None)

    def _choice(self, raw: str, token_ids: list[int], finish_reason: str, tools: Any, thinking: bool,
                **extra) -> Choice:
        parsed: ParsedOutput = parse_output(raw, thinking, parse_tools=bool(tools) or TOOL_OPEN in raw)
        return Choice(text=parsed.content, token_ids=token_ids, reasoning=parsed.reasoning,
                      tool_calls=parsed.tool_calls, finish_reason=finish_reason,
                      tool_call_error=parsed.tool_call_error, raw_text=raw, **extra)

    def _result(self, seqs: list[Sequence], prompt_len: int, tools: Any, prompt_ids: list[int]) -> ChatResult:
        choices = [self.finish_choice(s, tools) for s in seqs]
        scored = [None, *seqs[0].prompt_logprobs] if seqs[0].params.prompt_logprobs is not None else None
        return ChatResult(choices, Usage(prompt_len, sum(len(c.token_ids) for c in choices)), prompt_ids, scored)

    # ------------------------------------------------------------------ public API
    def chat(self, messages: Any, *, tools: Any = None, add_vision_id: bool = False, tool_choice: str | None = None,
             **sampling) -> ChatResult:
        """One conversation's answer. Besides sampling: `continue_final_message=True` continues the final message
        instead of opening a new turn (a prefilled answer; `prepare`)."""
        return self.chat_batch([messages], tools=tools, add_vision_id=add_vision_id, tool_choice=tool_choice,
                               **sampling)[0]

    def _tool_choice(self, tools: Any, tool_choice: str | None, sampling: dict) -> tuple[Any, dict]:
        """`tool_choice`: None/"auto" (the model decides), "none" (tools hidden), "required" (at least one call)
        or a function's name (a call to it). Forced calls are constrained to the tools' schemas; a function whose
        parameters cannot be enforced (a `multipleOf`, say) is a SchemaError naming it (pass tool_choice=None to let
        the model decide). With "auto" a call the model chooses to open is constrained the same way
        (`auto_tool_calls`), or left free when the schemas cannot be enforced."""
        if tool_choice in (None, "auto"):
            return tools, {**sampling, "forced_tool_calls": self.auto_tool_calls(tools, sampling)}
        if tool_choice == "none":
            return None, sampling
        if not tools:
            raise ValueError(f"tool_choice {tool_choice!r} needs tools")
        if self.engine.tool_call_ids is None:
            raise ValueError("this tokenizer has no <tool_call>/</tool_call> tokens to force a call with")
        forced = forced_calls(tools, None if tool_choice == "required" else tool_choice, opened=False)
        return tools, {**sampling, "forced_tool_calls": forced}

    def auto_tool_calls(self, tools: Any, sampling: dict) -> ForcedCalls | None:
        """The lazy constraint for tool_choice "auto": a call the model opens is valid against its function's schema
        (tool_constraint.py). None (unconstrained) without tools, beside another constraint, when
        the tokenizer has no <tool_call> tokens, or when some function's parameters cannot be enforced."""
        if not tools or self.engine.tool_call_ids is None or self.engine.token_bytes is None:
            return None
        if any(sampling.get(k) for k in ("json_mode", "json_schema", "regex", "choice", "forced_tool_calls")):
            return sampling.get("forced_tool_calls")
        try:
            return forced_calls(tools, lazy=True)
        except ValueError:  # a SchemaError: that function's parameters cannot be enforced
            return None

    def chat_batch(self, conversations: list[Any], *, tools: Any = None, add_vision_id: bool = False,
                   progress: bool = False, tool_choice: str | None = None, **sampling) -> list[ChatResult]:
        """Run many conversations at once through the engine (continuous batching)."""
        template, sampling = _template_options(sampling, tool_choice)
        tools, sampling = self._tool_choice(tools, tool_choice, sampling)
        submitted = []
        try:
            for messages in conversations:
                submitted.append(self.submit(messages, tools, add_vision_id, **template, **sampling))
            bar = None
            if progress:
                from tqdm import tqdm

                bar = tqdm(total=len(submitted), desc="generating", unit="conv")
            while any(s.finish_reason is None for _, seqs, _ in submitted for s in seqs):
                done = sum(all(s.finish_reason for s in seqs) for _, seqs, _ in submitted)
                self.engine.step()
                if bar is not None:
                    bar.update(sum(all(s.finish_reason for s in seqs) for _, seqs, _ in submitted) - done)
            if bar is not None:
                bar.close()
        except BaseException:
            for rid, _, _ in submitted:
                self.engine.abort(rid)
            raise
        results = []
        for rid, seqs, n in submitted:
            results.append(self._result(seqs, n, tools, seqs[0].prompt_ids))
            self.engine.requests.pop(rid, None)
        return results

    def beam_search(self, messages: Any, *, beam_width: int = 4, n: int | None = None, max_tokens: int | None = None,
                    length_penalty: float = 1.0, early_stopping: bool | str = False,
                    stop_token_ids: list[int] | None = None, tools: Any = None, add_vision_id: bool = False,
                    adapter: str | None = None, add_generation_prompt: bool | None = None,
                    continue_final_message: bool = False) -> ChatResult:
        """The `n` (default: all `beam_width`) best hypotheses of a beam search, best first, each with its `score`;
        what transformers' `generate(num_beams=beam_width, num_return_sequences=n, do_sample=False, length_penalty=,
        early_stopping=)` returns (engine/beam.py). Candidates are scored on the model's raw distribution: no
        temperature, penalties or constraints. The end tokens are the checkpoint's EOS ids plus `stop_token_ids`;
        `max_tokens` defaults as in `chat` and is capped by the context. Each round runs the live beams as
        one-token requests, each forked from the beam it grew from (`EngineExpander`): a decode step per round."""
        from qwen3vl.engine.beam import EngineExpander, beam_search, candidates_per_beam
        from qwen3vl.engine.sampling import MAX_LOGPROBS

        n = beam_width if n is None else n
        if not isinstance(beam_width, int) or isinstance(beam_width, bool) or beam_width < 1:
            raise ValueError(f"beam_width must be an integer >= 1, got {beam_width!r}")
        if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= beam_width:
            raise ValueError(f"n must be an integer in [1, beam_width={beam_width}], got {n!r}")
        ends = set(self.eos_token_ids) | set(stop_token_ids or [])
        k = candidates_per_beam(beam_width, len(ends))
        if k > MAX_LOGPROBS:
            raise ValueError(f"beam_width {beam_width} needs {k} candidates per beam ({len(ends)} end tokens); at most "
                             f"{MAX_LOGPROBS} are kept, so beam_width can be at most "
                             f"{MAX_LOGPROBS // candidates_per_beam(1, len(ends))}")
        prepared = self.prepare(messages, tools, add_vision_id, add_generation_prompt=add_generation_prompt,
                                continue_final_message=continue_final_message)
        media, kinds = media_items(prepared)
        prompt = list(prepared.input_ids)
        room = self.engine.max_model_len - len(prompt)
        if room < 1:
            raise PromptTooLongError(f"the prompt has {len(prompt)} tokens, but the context allows at most "
                                     f"{self.engine.max_model_len - 1} prompt tokens")
        limit = min(max_tokens or self.sampling_defaults.get("max_tokens", 256), room)
        expand = EngineExpander(self.engine, prompt, media, kinds, adapter)
        found = beam_search(expand, beam_width, limit, ends, length_penalty, early_stopping)[:n]
        thinking = self.reasoning_open(prompt)
        choices = [self._choice(self._decode(h.tokens), h.tokens, h.finish_reason, tools, thinking, score=h.score)
                   for h in found]
        return ChatResult(choices, Usage(len(prompt), sum(len(h.tokens) for h in found)), prompt)

    def chat_stream(self, messages: Any, *, tools: Any = None, add_vision_id: bool = False,
                    tool_choice: str | None = None, **sampling) -> Iterator[ChatDelta]:
        """Yield text deltas token by token (never splitting a character); the last delta of each choice has
        `finish_reason` and `tool_calls`, and the very last one `usage`. Joined, the deltas equal `chat`'s text
        and reasoning. Text that may start a stop string or a tool call is held back until it is known."""
        template, sampling = _template_options(sampling, tool_choice)
        tools, sampling = self._tool_choice(tools, tool_choice, sampling)
        rid, seqs, n_prompt = self.submit(messages, tools, add_vision_id, **template, **sampling)
        states = [_StreamState(self, seq, tools) for seq in seqs]
        index = {s.seq_id: i for i, s in enumerate(seqs)}
        try:
            while any(s.finish_reason is None for s in seqs):
                for out in self.engine.step():
                    i = index.get(out.seq.seq_id)
                    if i is not None:
                        delta = states[i].advance(out)
                        if delta is not None:
                            delta.index = i
                            yield delta
        finally:
            self.engine.abort(rid)
        yield ChatDelta(usage=Usage(n_prompt, sum(len(s.output_ids) for s in seqs)))


def _template_options(kwargs: dict[str, Any], tool_choice: str | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split the chat template's options (`add_generation_prompt`, `continue_final_message`) from sampling's. A
    continued message cannot take a constraint: it would start a document (or a forced call) of its own after the
    prefilled text instead of continuing it."""
    keys = ("add_generation_prompt", "continue_final_message")
    template, sampling = {k: kwargs[k] for k in keys if k in kwargs}, {k: v for k, v in kwargs.items() if k not in keys}
    if template.get("continue_final_message"):
        given = [k for k in ("json_mode", "json_schema", "regex", "choice") if sampling.get(k)]
        if tool_choice not in (None, "auto", "none"):
            given.append(f"tool_choice={tool_choice!r}")
        if given:
            raise ValueError(f"continue_final_message cannot be combined with {given[0]}: the constraint would start "
                             "anew after the prefilled text instead of continuing it")
    return template, sampling


class _StreamState:
    """Per-choice streaming: incremental detokenizing, hold-back of possible stop strings, the reasoning split,
    readable tool-call blocks taken out of the content as they complete (`ToolBlockFilter`), and a final
    reconciliation with the parsed result. `parse_tools=False` (tool_choice "none" in the server) streams a
    `<tool_call>` the model writes anyway as text, as the server's answer keeps it."""

    def __init__(self, llm: LLM, seq: Sequence, tools: Any, parse_tools: bool = True):
        self.llm, self.seq, self.tools = llm, seq, tools
        self.decoder = llm.tokenizer.incremental_decoder(skip_special_tokens=True)
        self.splitter = ReasoningSplitter(llm.reasoning_open(seq.prompt_ids))
        self.blocks = ToolBlockFilter(parse_tools)
        self.hold = max(seq.params.longest_stop - 1, 0)
        self.emitted = 0
        self.text = ""
        self.reasoning = ""

    def advance(self, out: StepOutput) -> ChatDelta | None:
        self.decoder.add(out.new_tokens)
        if out.finished:
            self.decoder.flush()
            choice = self.llm.finish_choice(self.seq, self.tools)
            reasoning = _rest(choice.reasoning or "", self.reasoning)
            text = _rest(choice.text, self.text)
            return ChatDelta(text=text, reasoning=reasoning, token_ids=out.new_tokens,
                             finish_reason=choice.finish_reason, tool_calls=choice.tool_calls)
        full = self.decoder.text
        end = len(full) - self.hold
        while end > self.emitted and full[end - 1].isspace():
            end -= 1  # trailing whitespace waits: the parsed reasoning or answer may strip it
        piece = full[self.emitted:end] if end > self.emitted else ""
        self.emitted = max(self.emitted, end)
        reasoning, text = self.splitter.feed(piece)
        text = self.blocks.feed(text)
        self.reasoning += reasoning
        self.text += text
        return ChatDelta(text=text, reasoning=reasoning, token_ids=out.new_tokens)


def _rest(final: str, streamed: str) -> str:
    """What is left to send so the stream joins to `final` (nothing if the stream already diverged)."""
    return final[len(streamed):] if final.startswith(streamed) else ""


def media_items(prepared) -> tuple[list[MediaItem], list[str]]:
    """Engine media items from a processed conversation: one per image, one per video temporal patch (the ViT
    never mixes temporal patches, so encoding them apart gives the same features and lets each be cached)."""
    items: list[MediaItem] = []
    kinds: list[str] = []
    for img, (start, end) in zip(prepared.images, prepared.image_spans):
        items.append(MediaItem(img.content_hash, tuple(img.grid_thw), start, end - start, img.pixel_values))
        kinds.append("image")
    for vid, spans in zip(prepared.videos, prepared.video_spans):
        t, h, w = vid.grid_thw
        rows = h * w
        for k, (start, end) in enumerate(spans):
            items.append(MediaItem(f"{vid.content_hash}:{k}", (1, h, w), start, end - start,
                                   vid.pixel_values[k * rows:(k + 1) * rows]))
            kinds.append("video")
    order = sorted(range(len(items)), key=lambda j: items[j].offset)
    return [items[j] for j in order], [kinds[j] for j in order]


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from e
