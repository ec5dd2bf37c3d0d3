"""A request's state as the engine sees it: tokens, media, positions, cache blocks. Plain data, no torch.

Positions: prompt tokens use the MRoPE positions computed once at admission (`prompt_positions`, 3 x P);
every later token (generated, or re-fed after preemption) sits at index + rope_delta on all three axes.
"""

from __future__ import annotations

import enum
import itertools
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from qwen3vl.engine.sampling import SamplingParams


class Status(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


@dataclass
class MediaItem:
    """One image or video in a prompt: its pixels (any object the runner understands), grid and where its
    pad tokens sit. `key` is a content hash: equal keys mean equal vision features."""

    key: str
    grid_thw: tuple[int, int, int]
    offset: int  # index of the first pad token in the prompt
    num_tokens: int
    pixel_values: Any = None

    @property
    def end(self) -> int:
        return self.offset + self.num_tokens


_ids = itertools.count()


@dataclass
class Sequence:
    prompt_ids: list[int]
    params: SamplingParams
    prompt_positions: np.ndarray  # (3, P) int64
    rope_delta: int
    media: list[MediaItem] = field(default_factory=list)
    request_id: str = ""
    seq_id: int = field(default_factory=lambda: next(_ids))
    output_ids: list[int] = field(default_factory=list)
    status: Status = Status.WAITING
    block_table: list[int] = field(default_factory=list)
    num_computed: int = 0  # tokens whose keys/values are in the cache
    num_cached_prefix: int = 0  # of those, how many came from the prefix cache at admission
    finish_reason: str | None = None
    generator: Any = None
    arrival: float = 0.0
    logprobs: list = field(default_factory=list)
    prompt_logprobs: list = field(default_factory=list)  # (logprob, top) of prompt tokens 1.. (params.prompt_logprobs)
    stop_text: str | None = None
    block_hashes: list = field(default_factory=list)  # memo for BlockManager.block_hashes
    constraint: Any = None  # JSON mode: a constrain.JsonConstraint
    adapter_id: int = 0  # the LoRA adapter load this request runs with (engine/adapters.py); 0: the base model
    # a sequence forked from a finished one (beam search): the parent's blocks, held until this one is allocated, and
    # how many leading tokens they hold keys/values of (`Engine.add_request(fork_from=)`)
    fork: tuple[list[int], int] | None = None
    keep_blocks: bool = False  # finishing keeps the cache blocks (to fork from) until `Engine.abort`
    lookup_tokens: Any = None  # prompt lookup: the tokens as an array (speculative.TokenBuffer), made on first use

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_ids) + len(self.output_ids)

    @property
    def num_prompt(self) -> int:
        return len(self.prompt_ids)

    def token(self, i: int) -> int:
        p = len(self.prompt_ids)
        return self.prompt_ids[i] if i < p else self.output_ids[i - p]

    def tokens(self, start: int, end: int) -> list[int]:
        p = len(self.prompt_ids)
        if end <= p:
            return self.prompt_ids[start:end]
        return (self.prompt_ids[start:p] if start < p else []) + self.output_ids[max(start - p, 0):end - p]

    def positions(self, start: int, end: int) -> np.ndarray:
        """(3, end - start) positions of tokens start..end-1."""
        p = len(self.prompt_ids)
        parts = []
        if start < p:
            parts.append(self.prompt_positions[:, start:min(end, p)])
        if end > p:
            idx = np.arange(max(start, p), end, dtype=np.int64) + self.rope_delta
            parts.append(np.broadcast_to(idx, (3, len(idx))))
        return np.concatenate(parts, axis=1) if len(parts) > 1 else parts[0]

    def media_in(self, start: int, end: int) -> list[MediaItem]:
        return [m for m in self.media if m.offset < end and m.end > start]
