"""Beam search with transformers' semantics: what `generate(num_beams=W, do_sample=False)` returns.

The search is written against one callable, `expand(beams, k)`: for each live beam (its tokens so far) the top `k`
next tokens with their log-probabilities. `LLM.beam_search` answers it with the engine (one-token requests whose
prompt is the prompt plus the beam, the prefix cache serving the blocks the beams share), so this module holds only
the selection rules, which are transformers' (generation/utils.py, `_beam_search`), step by step:

* the candidates are every live beam's score plus each of its next-token log-probabilities; the best
  `k = max(2, 1 + number of end tokens) * W` of them are kept (so at least W of them do not end);
* a candidate among the best W that ends (an end token, or the length limit) becomes a finished hypothesis, scored
  by its summed log-probability over `len(tokens) ** length_penalty`; the best W finished ones are kept;
* the best W candidates that do not end are the next live beams;
* the search stops when every candidate ends (the length limit), when `early_stopping=True` and W hypotheses are
  finished, or when W are finished and the best live beam, normalised by its current length (by `max_tokens` with
  `early_stopping="never"` and a positive `length_penalty`), cannot beat the worst of them.

Scores are kept in Python floats (float64); transformers keeps float32, so two candidates within ~1e-6 of each other
may be ordered differently.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass

Expand = Callable[[list[list[int]], int], list[list[tuple[int, float]]]]


@dataclass
class Hypothesis:
    tokens: list[int]
    score: float  # summed log-probability / len(tokens) ** length_penalty
    finish_reason: str  # "stop": it ends with an end token; "length": it reached max_tokens


def candidates_per_beam(width: int, num_end_ids: int) -> int:
    """How many next tokens a beam must offer: transformers keeps max(2, 1 + end tokens) x width candidates."""
    return max(2, 1 + num_end_ids) * width


def beam_search(expand: Expand, width: int, max_tokens: int, end_ids: Collection[int], length_penalty: float = 1.0,
                early_stopping: bool | str = False) -> list[Hypothesis]:
    """The `width` best finished hypotheses, best first."""
    search = BeamSearch(width, max_tokens, end_ids, length_penalty, early_stopping)
    while (beams := search.beams()) is not None:
        search.advance(expand(beams, search.k))
    return search.finished


class BeamSearch:
    """The search as a state machine, for callers that run the expansions themselves (the server's engine thread,
    between steps of other requests): `beams()` are the live beams to expand next (None once done), `advance(tops)`
    takes each one's top `k` next tokens, and `finished` is the answer."""

    def __init__(self, width: int, max_tokens: int, end_ids: Collection[int], length_penalty: float = 1.0,
                 early_stopping: bool | str = False):
        if not isinstance(width, int) or isinstance(width, bool) or width < 1:
            raise ValueError(f"beam width must be an integer >= 1, got {width!r}")
        if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
            raise ValueError(f"max_tokens must be an integer >= 1, got {max_tokens!r}")
        if early_stopping not in (True, False, "never"):
            raise ValueError(f"early_stopping must be True, False or 'never', got {early_stopping!r}")
        self.width, self.max_tokens = width, max_tokens
        self.ends = set(end_ids)
        self.length_penalty, self.early_stopping = length_penalty, early_stopping
        self.k = candidates_per_beam(width, len(self.ends))
        self.live: list[tuple[list[int], float]] = [([], 0.0)]  # (transformers' other first beams: -1e9, unused)
        self.finished: list[Hypothesis] = []
        self.step = 0
        self.done = False

    def beams(self) -> list[list[int]] | None:
        return None if self.done else [tokens for tokens, _ in self.live]

    def advance(self, tops: list[list[tuple[int, float]]]) -> None:
        if self.done:
            raise RuntimeError("the search is over")
        if len(tops) != len(self.live):
            raise ValueError(f"expand answered for {len(tops)} beams, asked for {len(self.live)}")
        width, live, finished = self.width, self.live, self.finished
        self.step += 1
        length = self.step
        scored = [(score + logprob, b, token) for b, ((_, score), top) in enumerate(zip(live, tops))
                  for token, logprob in top]
        scored.sort(key=lambda c: (-c[0], c[1], c[2]))
        best = scored[:self.k]
        at_limit = length >= self.max_tokens
        ends_here = [at_limit or token in self.ends for _, _, token in best]
        for (score, b, token), ended in zip(best[:width], ends_here[:width]):
            if ended:
                finished.append(Hypothesis(live[b][0] + [token], score / length ** self.length_penalty,
                                           "stop" if token in self.ends else "length"))
        finished.sort(key=lambda h: -h.score)
        del finished[width:]
        if all(ends_here):
            self.done = True
            return
        self.live = [(live[b][0] + [token], score)
                     for (score, b, token), ended in zip(best, ends_here) if not ended][:width]
        if len(finished) == width:
            if self.early_stopping is True:
                self.done = True
                return
            hoped = self.max_tokens if self.early_stopping == "never" and self.length_penalty > 0 else length
            if self.live[0][1] / hoped ** self.length_penalty <= finished[-1].score:
                self.done = True
