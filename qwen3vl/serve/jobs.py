"""What passes between the HTTP side and the engine thread: a `Job` (prompts, sampling, how to turn a sequence into
a choice) one way, and batches of events (`Admitted`, `Deltas`, `Finished`, `Failed`) the other. Plain data."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from qwen3vl.engine.sampling import SamplingParams
from qwen3vl.engine.sequence import MediaItem, Sequence
from qwen3vl.serve.errors import APIError
from qwen3vl.serve.outputs import ChoiceDelta, ChoiceResult


@dataclass
class EnginePrompt:
    prompt_ids: list[int]
    media: list[MediaItem] = field(default_factory=list)
    kinds: list[str] = field(default_factory=list)


@dataclass
class BeamSpec:
    """A beam search (`use_beam_search`): `width` beams, all returned; the search runs on the engine thread
    (loop.py), one round of one-token requests at a time, between the steps of other requests."""

    width: int
    length_penalty: float
    early_stopping: bool | str
    end_ids: tuple[int, ...]


@dataclass
class Job:
    """What the engine thread runs for one HTTP request: one or more prompts (a completions request may send a
    list), each sampled `params.n` times; `make_choice(seq, index)` builds the object that turns a sequence
    into deltas and a final choice (`outputs.ChatChoice` / `TextChoice`)."""

    prompts: list[EnginePrompt]
    params: SamplingParams
    make_choice: Callable[[Sequence, int], Any]
    stream: bool
    beam: BeamSpec | None = None


@dataclass
class Admitted:
    prompt_tokens: int


@dataclass
class Deltas:
    deltas: list[ChoiceDelta]


@dataclass
class Usage:
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0
    reasoning_tokens: int = 0  # of completion_tokens: a Thinking model's, up to its </think> (Responses API)

    def to_dict(self) -> dict[str, Any]:
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                "total_tokens": self.prompt_tokens + self.completion_tokens,
                "prompt_tokens_details": {"cached_tokens": self.cached_tokens}}


@dataclass
class Finished:
    choices: list[ChoiceResult] | None  # None for streams (their choices went out as deltas)
    usage: Usage


@dataclass
class Failed:
    error: APIError
