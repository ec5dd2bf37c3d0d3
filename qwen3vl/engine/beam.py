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

import itertools
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any

Expand = Callable[[list[list[int]], int], list[list[tuple[int, float]]]]
_rids = itertools.count()


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
    try:
        while (beams := search.beams()) is not None:
            search.advance(expand(beams, search.k))
    finally:
        close = getattr(expand, "close", None)  # an EngineExpander: the last round's kept blocks
        if close is not None:
            close()
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


class EngineExpander:
    """`expand` answered by an `Engine` (engine.py): every live beam is a one-token greedy request whose prompt is
    the prompt plus the beam, reporting its top `k` next tokens. A beam forks from the request of the beam it grew
    from (`add_request(fork_from=)`: that one's cache blocks shared, its last block copied), so a round computes one
    token per beam, as a batched decode step; a runner that cannot copy blocks (tensor parallelism) gets plain
    requests instead, which the prefix cache serves up to the last full block.

    Call it (`expand(beams, k)`, stepping the engine until the round is done), or `submit` a round and `collect` it
    once its sequences have finished (the server, stepping for everyone). `close()` frees the last round's blocks."""

    def __init__(self, engine: Any, prompt_ids: list[int], media: list | None = None, kinds: list[str] | None = None,
                 adapter: str | None = None, fork: bool | None = None):
        self.engine, self.prompt = engine, list(prompt_ids)
        self.media, self.kinds, self.adapter = media, kinds, adapter
        # fork: None (whenever the runner can), or False (plain requests; for comparison)
        self.forks = hasattr(engine.runner, "copy_blocks") and fork is not False
        self.rids: list[str] = []  # the current round's requests (their blocks kept to fork from)
        self.seqs: list[Any] = []
        self._by_tokens: dict[tuple[int, ...], Any] = {}
        self._adapter_id: int | None = None  # the first round's adapter load, kept by every later round

    def submit(self, beams: list[list[int]], k: int) -> list[Any]:
        from qwen3vl.engine.sampling import SamplingParams

        params = SamplingParams(max_tokens=1, temperature=0, logprobs=k, ignore_eos=True, adapter=self.adapter)
        parents, old = self._by_tokens, self.rids
        self.rids, self.seqs = [], []
        try:
            for tokens in beams:
                parent = parents.get(tuple(tokens[:-1])) if tokens and self.forks else None
                self.rids.append(f"beam-{next(_rids)}")
                self.seqs += self.engine.add_request(self.rids[-1], self.prompt + tokens, params, self.media,
                                                     self.kinds, fork_from=parent, keep_blocks=self.forks,
                                                     adapter_id=self._adapter_id)
                self._adapter_id = self.seqs[-1].adapter_id
        finally:
            for rid in old:  # the parents: each fork holds what it needs of them
                self.engine.abort(rid)
        self._by_tokens = {tuple(tokens): seq for tokens, seq in zip(beams, self.seqs)}
        return self.seqs

    def collect(self) -> list[list[tuple[int, float]]]:
        if any(not s.logprobs for s in self.seqs):  # the engine gave up on one: it never got cache blocks
            raise RuntimeError(f"{len(self.seqs)} beams do not fit the KV cache at once")
        return [s.logprobs[0][1] for s in self.seqs]

    def close(self) -> None:
        for rid in self.rids:
            self.engine.abort(rid)
        self.rids, self.seqs, self._by_tokens = [], [], {}

    def __call__(self, beams: list[list[int]], k: int) -> list[list[tuple[int, float]]]:
        try:
            seqs = self.submit(beams, k)
            while any(s.finish_reason is None for s in seqs):
                self.engine.step()
            return self.collect()
        except BaseException:
            self.close()
            raise
