"""Sampling parameters and the sampler: a small pure function over logits.

Order of operations (as transformers and vLLM do): penalties on raw logits, then temperature, then top-k,
top-p and min-p filtering, then a draw from each request's own generator. Temperature 0 means greedy.
Penalties follow the usual semantics: `repetition_penalty` (multiplicative, over prompt and output tokens),
`presence_penalty` and `frequency_penalty` (additive, OpenAI-style, over output tokens only). `logit_bias` is added
to the raw logits first, as OpenAI does.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch


# alternatives a sequence may report per token: beam search asks for (1 + end tokens) x its width of them (the
# server keeps OpenAI's limit of 20 on its own fields)
MAX_LOGPROBS = 64


@dataclass
class SamplingParams:
    max_tokens: int = 256
    temperature: float = 1.0
    top_k: int = 0  # 0 or -1: off
    top_p: float = 1.0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)
    ignore_eos: bool = False
    min_tokens: int = 0
    n: int = 1
    logprobs: int | None = None  # how many top alternatives to report per token (0: only the chosen one)
    # the prompt's tokens too (vLLM's prompt_logprobs): each prompt token after the first, scored by the model's raw
    # distribution, with this many top alternatives; such a prompt is computed in full (no prefix-cache reuse)
    prompt_logprobs: int | None = None
    json_mode: bool = False  # constrain the answer to one valid JSON object (engine/constrain.py)
    json_schema: dict | bool | None = None  # constrain it to a document valid against this schema (engine/schema.py)
    regex: str | None = None  # the answer must match this regular expression as a whole (engine/regex.py)
    choice: list[str] | None = None  # the answer must be exactly one of these strings
    forced_tool_calls: Any = None  # tool_constraint.ForcedCalls: the answer is tool calls valid against their schemas
    adapter: str | None = None  # a LoRA adapter loaded by name (engine/adapters.py); None: the base model
    logit_bias: dict[int, float] | None = None  # token id -> added to its logit (OpenAI's logit_bias, -100..100)

    def validate(self) -> "SamplingParams":
        def bad(name: str, why: str):
            raise ValueError(f"{name} {why}, got {getattr(self, name)!r}")

        if not isinstance(self.max_tokens, int) or self.max_tokens < 1:
            bad("max_tokens", "must be an integer >= 1")
        if self.temperature < 0:
            bad("temperature", "must be >= 0")
        if not 0 < self.top_p <= 1:
            bad("top_p", "must be in (0, 1]")
        if not 0 <= self.min_p <= 1:
            bad("min_p", "must be in [0, 1]")
        if self.top_k < -1:
            bad("top_k", "must be -1, 0 (off) or a positive integer")
        if not self.repetition_penalty >= 1e-6:  # (a smaller one is 0 in float32: the logits become inf)
            bad("repetition_penalty", "must be >= 1e-6 (the logits are divided or multiplied by it)")
        if not -2 <= self.presence_penalty <= 2:
            bad("presence_penalty", "must be in [-2, 2]")
        if not -2 <= self.frequency_penalty <= 2:
            bad("frequency_penalty", "must be in [-2, 2]")
        if not isinstance(self.n, int) or self.n < 1:
            bad("n", "must be an integer >= 1")
        if self.logprobs is not None and not 0 <= self.logprobs <= MAX_LOGPROBS:
            bad("logprobs", f"must be in [0, {MAX_LOGPROBS}]")
        if self.prompt_logprobs is not None and not 0 <= self.prompt_logprobs <= 20:
            bad("prompt_logprobs", "must be in [0, 20]")
        if self.min_tokens < 0:
            bad("min_tokens", "must be >= 0")
        if self.logit_bias is not None:
            if not all(isinstance(k, int) and k >= 0 and -100 <= v <= 100 for k, v in self.logit_bias.items()):
                bad("logit_bias", "must map token ids (integers >= 0) to biases in [-100, 100]")
        if self.json_schema is not None:
            from qwen3vl.engine.schema import compile_schema

            compile_schema(self.json_schema)  # SchemaError (a ValueError) names what cannot be enforced
            self.json_mode = True
        if self.regex is not None or self.choice is not None:
            from qwen3vl.engine.regex import compile_constraint

            if self.regex is not None and self.choice is not None:
                bad("regex", "cannot be combined with choice")
            name = "regex" if self.regex is not None else "choice"
            if self.json_mode:
                bad(name, "cannot be combined with json_mode / json_schema")
            if self.forced_tool_calls is not None and not self.forced_tool_calls.lazy:
                bad(name, "cannot be combined with forced tool calls")
            if self.ignore_eos:
                bad("ignore_eos", f"cannot be combined with {name} (the answer ends with its match)")
            compile_constraint(self.regex, self.choice)  # RegexError (a ValueError) names what cannot be enforced
        if self.forced_tool_calls is not None and not self.forced_tool_calls.lazy:
            if self.json_mode:
                bad("json_mode", "cannot be combined with forced tool calls")
            if self.ignore_eos:
                bad("ignore_eos", "cannot be combined with forced tool calls (the answer ends after its calls)")
        if self.json_mode and self.ignore_eos:
            bad("ignore_eos", "cannot be combined with json_mode (the answer ends with its JSON object)")
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        return self

    @property
    def greedy(self) -> bool:
        return self.temperature < 1e-5  # (dividing logits by a smaller one overflows them)

    @property
    def longest_stop(self) -> int:
        """Length of the longest stop string (0: none): a stream holds back one character less of its text."""
        return max(map(len, self.stop), default=0)


def from_generation_config(cfg: dict) -> dict:
    """Sampling defaults from a checkpoint's generation_config.json (greedy when do_sample is false)."""
    out: dict = {}
    if cfg.get("do_sample") is False:
        out["temperature"] = 0.0
    else:
        for key in ("temperature", "top_k", "top_p", "repetition_penalty", "min_p"):
            if cfg.get(key) is not None:
                out[key] = cfg[key]
    return out


@dataclass
class SampleOutput:
    token: int
    logprob: float | None = None
    top: list[tuple[int, float]] | None = None


def apply_penalties(logits: torch.Tensor, p: SamplingParams, prompt_ids: list[int], output_ids: list[int]) -> torch.Tensor:
    """logits (V,) float32 -> penalised (and `logit_bias`ed) logits (a new tensor when anything applies)."""
    if p.logit_bias:
        ids = torch.tensor(list(p.logit_bias), dtype=torch.long, device=logits.device)
        logits = logits.index_add(0, ids, torch.tensor(list(p.logit_bias.values()), dtype=logits.dtype,
                                                         device=logits.device))
    if p.repetition_penalty != 1.0:
        seen = torch.tensor(sorted(set(prompt_ids) | set(output_ids)), dtype=torch.long, device=logits.device)
        if len(seen):
            vals = logits[seen]
            logits = logits.clone()
            logits[seen] = torch.where(vals > 0, vals / p.repetition_penalty, vals * p.repetition_penalty)
    if (p.presence_penalty or p.frequency_penalty) and output_ids:
        ids = torch.tensor(output_ids, dtype=torch.long, device=logits.device)
        counts = torch.bincount(ids, minlength=logits.shape[-1])[: logits.shape[-1]].to(logits.dtype)
        logits = logits - p.frequency_penalty * counts - p.presence_penalty * (counts > 0).to(logits.dtype)
    return logits


def filter_logits(logits: torch.Tensor, p: SamplingParams) -> torch.Tensor:
    """Temperature-scaled logits (V,) with tokens outside top-k / top-p / min-p set to -inf."""
    x = logits / p.temperature
    if p.top_k and p.top_k > 0 and p.top_k < x.shape[-1]:
        kth = torch.topk(x, p.top_k).values[-1]
        x = x.masked_fill(x < kth, float("-inf"))
    if p.top_p < 1.0:
        sorted_x, order = torch.sort(x, descending=True)
        probs = sorted_x.softmax(-1)
        # drop a token when the mass strictly before it already reaches top_p (always keeps the first)
        drop = (probs.cumsum(-1) - probs) >= p.top_p
        drop[0] = False  # (a top_p below float32's smallest value compares as 0, which the first token's 0 reaches)
        x = x.masked_fill(torch.zeros_like(drop).scatter(0, order, drop), float("-inf"))
    if p.min_p > 0:
        probs = x.softmax(-1)
        x = x.masked_fill(probs < p.min_p * probs.max(), float("-inf"))
    return x


MAX_REDRAWS = 16  # constrained sampling: rejected draws before the candidates are checked all at once
CANDIDATES = 1024  # ... that many of the best tokens


def _first_allowed(x: torch.Tensor, allowed: Callable[[int], bool]) -> int:
    """The highest-scoring allowed token: the top 64 first, then the whole vocabulary in order. When none is allowed
    (min_tokens banning the end of a finished object, say), the best token: the constraint then gives up."""
    x = x.float().cpu()  # one transfer, not one device sync per candidate
    top = torch.topk(x, min(64, x.shape[-1])).indices.tolist()
    for token in top:
        if x[token] != float("-inf") and allowed(token):
            return token
    tried = set(top)
    finite = torch.nonzero(x > float("-inf")).flatten()
    for token in finite[torch.argsort(x[finite], descending=True)].tolist():
        if token not in tried and allowed(token):
            return token
    return int(torch.argmax(x))


def _draw(probs: torch.Tensor, generator: torch.Generator | None, allowed: Callable[[int], bool] | None) -> int | None:
    """A draw from `probs` restricted to allowed tokens. Rejected draws are removed and redrawn, which samples exactly
    the restricted distribution; after MAX_REDRAWS rejections the best CANDIDATES tokens with mass are checked at
    once and the draw is made among the allowed ones. None when none of them is allowed."""
    if allowed is None:
        return int(torch.multinomial(probs, 1, generator=generator))
    probs = probs.detach().to("cpu", torch.float32, copy=True)  # redraws then cost no device syncs
    for _ in range(MAX_REDRAWS):
        if not probs.sum() > 0:
            return None
        token = int(torch.multinomial(probs, 1, generator=generator))
        if allowed(token):
            return token
        probs[token] = 0
    top = torch.topk(probs, min(CANDIDATES, probs.shape[-1]))
    keep = [i for v, i in zip(top.values.tolist(), top.indices.tolist()) if v > 0 and allowed(i)]
    if not keep:
        return None
    weights = probs[keep]
    return keep[int(torch.multinomial(weights, 1, generator=generator))]


def sample(logits: torch.Tensor, p: SamplingParams, prompt_ids: list[int], output_ids: list[int],
           generator: torch.Generator | None, banned: list[int] | None = None,
           allowed: Callable[[int], bool] | None = None) -> SampleOutput:
    """Pick the next token from one sequence's logits (V,) (any float dtype). `allowed(token)`, when given, is a
    constraint (JSON mode): only tokens it accepts are picked; it is asked about candidates only, best first."""
    x = apply_penalties(logits.float(), p, prompt_ids, output_ids)
    if banned:
        x = x.clone()
        x[banned] = float("-inf")
    if p.greedy:
        token = int(torch.argmax(x))
        if allowed is not None and not allowed(token):
            token = _first_allowed(x, allowed)
    else:
        probs = filter_logits(x, p).softmax(-1)
        token = _draw(probs, generator, allowed)
        if token is None:  # the filtered set holds no allowed token (or it is very unlikely): the best allowed one
            token = _first_allowed(x, allowed)
    if p.logprobs is None:
        return SampleOutput(token)
    logprobs = x.log_softmax(-1)  # reported on the penalised, unscaled distribution
    top = None
    if p.logprobs > 0:
        vals, ids = logprobs.topk(p.logprobs)
        top = list(zip(ids.tolist(), vals.tolist()))
    return SampleOutput(token, float(logprobs[token]), top)
