"""The generation engine: requests in, token-by-token outputs out, over a paged KV cache.

`Engine.add_request` turns a prepared prompt (token ids + media items) into one sequence per sample (`n`),
computing its MRoPE positions once. `Engine.step` schedules, runs the model once, samples, applies stop
rules and returns what each sequence produced this step. The engine is single-threaded; a server drives it
from one background loop.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from qwen3vl.engine.block_manager import BlockManager
from qwen3vl.engine.constrain import JsonConstraint
from qwen3vl.engine.schema import compile_schema
from qwen3vl.engine.tool_constraint import ToolCallConstraint
from qwen3vl.engine.runner import KVCache, ModelRunner, assign_prompt_logprobs
from qwen3vl.engine.sampling import SamplingParams, sample
from qwen3vl.engine.scheduler import Scheduler
from qwen3vl.engine.sequence import MediaItem, Sequence, Status
from qwen3vl.engine.speculative import TokenBuffer, check_lookup, ngram_draft
from qwen3vl.model.positions import IMAGE, TEXT, VIDEO, sequence_positions

log = logging.getLogger(__name__)


class PromptTooLongError(ValueError):
    """A prompt does not fit the context window or the KV cache."""


@dataclass
class EngineConfig:
    block_size: int = 16
    num_blocks: int | None = None  # None: from kv_cache_bytes
    kv_cache_bytes: int = 2 * 1024**3
    max_num_seqs: int = 64
    max_batch_tokens: int = 2048
    max_model_len: int | None = None  # None: the model's max_position_embeddings, capped by the cache
    enable_prefix_cache: bool = True
    vision_cache_bytes: int = 512 * 1024**2
    kv_cache_dtype: str = "auto"  # "auto" (the model's dtype), "int8" or "fp8": `runner.KVCache`
    # prompt-lookup decoding for greedy requests (engine/speculative.py): draft tokens per step (0: off), and the
    # n-gram sizes looked up (vLLM's prompt_lookup_min / prompt_lookup_max)
    prompt_lookup: int = 0
    prompt_lookup_min: int = 1
    prompt_lookup_max: int = 3


@dataclass
class StepOutput:
    seq: Sequence
    new_tokens: list[int] = field(default_factory=list)
    finished: bool = False


class Engine:
    def __init__(self, model, eos_token_ids: list[int], config: EngineConfig | None = None,
                 decode: Callable[[list[int]], str] | None = None, runner=None,
                 token_bytes: Callable[[int], bytes | None] | None = None, json_after: int | None = None,
                 tool_call_ids: tuple[int, int] | None = None,
                 reasoning_open: Callable[[list[int]], bool] | None = None):
        """`token_bytes(id)` (a token's bytes, None for special tokens) enables JSON mode (`params.json_mode`);
        `json_after` is the token after which the JSON starts (a Thinking model's `</think>`), None: at once;
        `tool_call_ids` (the ids of `<tool_call>`, `</tool_call>`) enables `params.forced_tool_calls`."""
        self.model = model
        self.token_bytes = token_bytes
        self.json_after = json_after
        # whether a prompt's answer starts inside reasoning (`LLM.reasoning_open`): constraints wait for `json_after`
        # only then; None: always, when `json_after` is set
        self.reasoning_open = reasoning_open
        self.tool_call_ids = tool_call_ids
        self.config = cfg = config or EngineConfig()
        tc = model.config.text_config
        num_blocks = cfg.num_blocks or max(
            2, cfg.kv_cache_bytes // KVCache.bytes_per_block(tc.num_hidden_layers, cfg.block_size,
                                                             tc.num_key_value_heads, tc.head_dim, model.dtype,
                                                             cfg.kv_cache_dtype))
        self.capacity = num_blocks * cfg.block_size
        self.max_model_len = min(cfg.max_model_len or tc.max_position_embeddings, self.capacity)
        self.blocks = BlockManager(num_blocks, cfg.block_size, cfg.enable_prefix_cache)
        check_lookup(cfg.prompt_lookup, cfg.prompt_lookup_min, cfg.prompt_lookup_max)
        self.scheduler = Scheduler(self.blocks, cfg.max_num_seqs, cfg.max_batch_tokens,
                                   draft=self._draft if cfg.prompt_lookup else None)
        # a runner passed in (tensor parallelism: `qwen3vl.parallel`) was built for `cfg.num_blocks` blocks
        self.runner = runner if runner is not None else ModelRunner(model, num_blocks, cfg.block_size,
                                                                    cfg.vision_cache_bytes, cfg.kv_cache_dtype)
        # per-request LoRA adapters (None with a tensor-parallel runner: not supported there)
        self.adapters = getattr(self.runner, "adapters", None)
        self.eos_token_ids = set(eos_token_ids)
        self.decode_fn = decode
        self.requests: dict[str, list[Sequence]] = {}
        self.merge = model.config.vision_config.spatial_merge_size
        self.stats = {"prompt_tokens": 0, "generated_tokens": 0, "steps": 0, "draft_tokens": 0,
                      "accepted_draft_tokens": 0}

    # ------------------------------------------------------------------ requests
    def add_request(self, request_id: str, prompt_ids: list[int], params: SamplingParams,
                    media: list[MediaItem] | None = None, kinds: list[str] | None = None, *,
                    fork_from: Sequence | None = None, keep_blocks: bool = False,
                    adapter_id: int | None = None) -> list[Sequence]:
        """Queue a prompt. `media` items carry their pad-token ranges; `kinds` says 'image' or 'video' per item.

        Beam search: `keep_blocks=True` keeps a sequence's cache blocks when it finishes (until `abort(request_id)`),
        and `fork_from=` such a finished sequence, whose tokens this prompt starts with, reuses its keys and values
        (its full blocks shared, its last block copied), so only the tokens after them are computed. `adapter_id`
        (an earlier request's) pins the LoRA adapter load instead of looking `params.adapter` up by name, so a search
        ends on the adapter it began with even if that one is unloaded or replaced meanwhile."""
        params.validate()
        if fork_from is not None:
            if not hasattr(self.runner, "copy_blocks"):
                raise ValueError("this engine's runner cannot copy cache blocks, so it cannot fork sequences")
            done = fork_from.num_computed
            if not (fork_from.keep_blocks and fork_from.status is Status.FINISHED and fork_from.block_table):
                raise ValueError("fork_from must be a finished sequence added with keep_blocks=True, not yet aborted")
            if len(prompt_ids) <= done or list(prompt_ids[:done]) != fork_from.tokens(0, done):
                raise ValueError("a fork's prompt must extend the tokens of the sequence it forks from")
        if request_id in self.requests:
            raise ValueError(f"request id {request_id!r} is already in use")
        if not prompt_ids:
            raise ValueError("the prompt is empty")
        vocab = self.model.config.text_config.vocab_size
        bad = next((t for t in (params.logit_bias or {}) if not 0 <= t < vocab), None)
        if bad is not None:
            raise ValueError(f"logit_bias: {bad} is not a token id (0..{vocab - 1})")
        if adapter_id is None and params.adapter is None:
            adapter_id = 0
        elif adapter_id is None:
            if self.adapters is None:
                raise ValueError("per-request LoRA adapters are not supported with tensor parallelism")
            adapter_id = self.adapters.id_of(params.adapter)  # ValueError naming the loaded ones
        media = sorted(media or [], key=lambda m: m.offset)
        kinds = kinds or ["image"] * len(media)
        n = len(prompt_ids)
        if n >= self.max_model_len:
            raise PromptTooLongError(
                f"the prompt has {n} tokens, but the context allows at most {self.max_model_len - 1} prompt tokens "
                f"(max_model_len {self.max_model_len}, KV cache {self.capacity} tokens)")
        positions, delta = self._positions(n, media, kinds)
        if params.json_mode and self.token_bytes is None:
            raise ValueError("json_mode needs the engine to know the token bytes (Engine(token_bytes=...))")
        schema = compile_schema(params.json_schema) if params.json_mode and params.json_schema is not None else None
        pattern = None
        if params.regex is not None or params.choice is not None:
            if self.token_bytes is None:
                raise ValueError("regex / choice need the engine to know the token bytes (Engine(token_bytes=...))")
            from qwen3vl.engine.regex import compile_constraint

            # one machine for the request's sequences: its lazily built steps are shared
            pattern = compile_constraint(params.regex, params.choice)
        forced = params.forced_tool_calls
        if forced is not None:
            if self.token_bytes is None or self.tool_call_ids is None:
                raise ValueError("forced_tool_calls needs the engine to know the token bytes and the <tool_call> ids")
            machines = forced.machines()  # shared by the request's sequences
        after = self.json_after
        if after is not None and self.reasoning_open is not None and not self.reasoning_open(list(prompt_ids)):
            after = None  # (an answer continued past </think>: constrained from its first token)
        seqs = []
        for i in range(params.n):
            gen = None
            if not params.greedy:
                gen = torch.Generator(device="cpu")
                gen.manual_seed(params.seed + i if params.seed is not None else torch.seed())
            seq = Sequence(prompt_ids=list(prompt_ids), params=params, prompt_positions=positions, rope_delta=delta,
                           media=media, request_id=request_id, generator=gen, arrival=time.monotonic(),
                           adapter_id=adapter_id, keep_blocks=keep_blocks)
            if fork_from is not None:
                seq.fork = (list(fork_from.block_table), fork_from.num_computed)
                self.blocks.hold(seq.fork[0])
            if params.json_mode:
                seq.constraint = JsonConstraint(self.token_bytes, self.eos_token_ids | set(params.stop_token_ids),
                                                activate_after=after, schema=schema)
            elif pattern is not None:
                seq.constraint = JsonConstraint(self.token_bytes, self.eos_token_ids | set(params.stop_token_ids),
                                                activate_after=after, machine=pattern)
            elif forced is not None:
                seq.constraint = ToolCallConstraint(
                    self.token_bytes, self.eos_token_ids | set(params.stop_token_ids), forced, *self.tool_call_ids,
                    activate_after=None if forced.opened and not forced.lazy else after, machines=machines)
            seqs.append(seq)
            self.scheduler.add(seq)
        self.requests[request_id] = seqs
        self.stats["prompt_tokens"] += n * params.n
        return seqs

    def _positions(self, n: int, media: list[MediaItem], kinds: list[str]) -> tuple[np.ndarray, int]:
        types = np.full(n, TEXT, dtype=np.int64)
        images, videos = [], []
        for m, kind in zip(media, kinds):
            t, h, w = m.grid_thw
            expected = t * (h // self.merge) * (w // self.merge)
            if m.num_tokens != expected or m.end > n:
                raise ValueError(f"{kind} at token {m.offset} spans {m.num_tokens} tokens but its grid "
                                 f"{t}x{h}x{w} needs {expected}")
            types[m.offset:m.end] = VIDEO if kind == "video" else IMAGE
            (videos if kind == "video" else images).append(m.grid_thw)
        return sequence_positions(types, images, videos, self.merge)

    def abort(self, request_id: str) -> None:
        """Stop a request now and free its cache blocks (e.g. a client disconnected)."""
        for seq in self.requests.pop(request_id, []):
            if seq.status is not Status.FINISHED:
                self.scheduler.finish(seq, "abort")
            elif seq.keep_blocks:  # finished, its blocks kept to fork from
                self.blocks.release(seq)
                seq.keep_blocks = False
        self._release_adapters()

    def adapters_in_use(self) -> set[int]:
        """Ids of the LoRA adapter loads that waiting or running sequences use, or that finished sequences kept to
        fork from (a beam search under way) do."""
        kept = (s for seqs in self.requests.values() for s in seqs if s.keep_blocks)
        return {s.adapter_id for s in (*self.scheduler.waiting, *self.scheduler.running, *kept) if s.adapter_id}

    def _release_adapters(self) -> None:
        if self.adapters is not None and self.adapters.retiring:  # removed adapters nobody runs with any more
            self.adapters.release(self.adapters_in_use())

    def has_work(self) -> bool:
        return self.scheduler.has_work()

    # ------------------------------------------------------------------ stepping
    def step(self) -> list[StepOutput]:
        chunks = self.scheduler.schedule()
        if not chunks:
            if self.scheduler.waiting and not self.scheduler.running:
                # nothing runs and the head of the queue cannot get blocks: it can never run
                seq = self.scheduler.waiting[0]
                self.scheduler.finish(seq, "length")
                self._release_adapters()
                return [StepOutput(seq, [], True)]
            return []
        if self.blocks.pending_copies:  # forks' own copies of shared blocks, before anything writes to them
            pairs, self.blocks.pending_copies = self.blocks.pending_copies, []
            self.runner.copy_blocks(pairs)
        logits = self.runner.execute(chunks)
        assign_prompt_logprobs(chunks, self.runner.scores)
        self.stats["steps"] += 1
        outputs: list[StepOutput] = []
        row = 0
        for c in chunks:
            seq = c.seq
            seq.num_computed = c.end
            self.blocks.register_full_blocks(seq)
            if not c.samples:
                continue
            new: list[int] = []
            for i in range(1 + len(c.draft)):  # as plain decoding would, token by token, while the drafts hold
                token, finished = self._sample(seq, logits[row + i])
                new.append(token)
                if finished or i == len(c.draft) or token != c.draft[i]:
                    break
                seq.num_computed += 1  # draft i is the sequence's token now: its keys and values stand
            row += 1 + len(c.draft)
            if c.draft:
                self.stats["draft_tokens"] += len(c.draft)
                self.stats["accepted_draft_tokens"] += len(new) - 1
                if not finished:
                    self.blocks.register_full_blocks(seq)
            outputs.append(StepOutput(seq, new, finished))
        self._release_adapters()
        return outputs

    def _draft(self, seq: Sequence, at_most: int) -> list[int]:
        """Prompt-lookup drafts for a decoding greedy sequence: only as many as it could still accept."""
        p = seq.params
        if not p.greedy or seq.keep_blocks:
            return []
        room = min(at_most, self.config.prompt_lookup, p.max_tokens - len(seq.output_ids) - 1,
                   self.max_model_len - seq.num_tokens - 1)
        if room <= 0:
            return []
        cfg = self.config
        if seq.lookup_tokens is None:
            seq.lookup_tokens = TokenBuffer()
        tokens = seq.lookup_tokens.view(seq.prompt_ids, seq.output_ids)
        return ngram_draft(tokens, room, cfg.prompt_lookup_min, cfg.prompt_lookup_max)

    def _sample(self, seq: Sequence, logits: torch.Tensor) -> tuple[int, bool]:
        """The sequence's next token from `logits`, appended, with the stop rules applied; (token, finished)."""
        p = seq.params
        constraint = seq.constraint
        banned = None
        if len(seq.output_ids) < p.min_tokens and not (constraint is not None and constraint.complete):
            banned = sorted(self.eos_token_ids | set(p.stop_token_ids))  # a finished JSON object ends regardless
        s = sample(logits, p, seq.prompt_ids, seq.output_ids, seq.generator, banned,
                   allowed=constraint.allows if constraint is not None and constraint.constrains else None)
        if constraint is not None:
            constraint.advance(s.token)
        seq.output_ids.append(s.token)
        if p.logprobs is not None:
            seq.logprobs.append((s.logprob, s.top))
        self.stats["generated_tokens"] += 1
        reason = None
        if (s.token in self.eos_token_ids and not p.ignore_eos) or s.token in p.stop_token_ids:
            reason = "stop"
        elif p.stop and self.decode_fn is not None and self._hit_stop_string(seq):
            reason = "stop"
        elif len(seq.output_ids) >= p.max_tokens or seq.num_tokens >= self.max_model_len:
            reason = "length"
        if reason is not None:
            self.scheduler.finish(seq, reason)
        return s.token, reason is not None

    def _hit_stop_string(self, seq: Sequence) -> bool:
        # only the tail can contain a new match: decode a window long enough for the longest stop string
        longest = max(len(s) for s in seq.params.stop)
        tail = self.decode_fn(seq.output_ids[-(longest + 8):])
        for s in seq.params.stop:
            if s in tail:
                text = self.decode_fn(seq.output_ids)
                seq.stop_text = s
                return s in text
        return False

    def run_until_done(self) -> None:
        while self.has_work():
            self.step()
