"""Prompt-lookup decoding (n-gram speculative decoding), for greedy requests.

Each decode step, a greedy sequence may carry up to `k` draft tokens: the tokens that followed the most recent
earlier occurrence of its last n tokens (n from `max_n` down to `min_n`) in its prompt and output. The step feeds
the last real token and the drafts together (one chunk of 1 + d tokens), and the engine then samples position by
position exactly as plain decoding would (penalties, constraints, stop rules, logprobs), keeping draft i only while
the token sampled there equals it. The first token that differs, or the one after the last draft, is the step's
last new token. So the output is plain greedy decoding's, while text the model copies (OCR, a document's
numbers, a quoted passage, a repeated JSON key) comes several tokens per model pass. Drafts cost their slots and
compute: where they miss, the step did more work for one token.

Keys and values written for rejected drafts sit past the sequence's `num_computed` and are overwritten when those
positions are computed for real; nothing in the prefix cache ever covers them.
"""

from __future__ import annotations

from collections.abc import Sequence as Seq

import numpy as np


def ngram_draft(tokens: Seq[int] | np.ndarray, k: int, min_n: int = 1, max_n: int = 3) -> list[int]:
    """Up to `k` tokens that followed the most recent earlier occurrence of the last n tokens of `tokens` (the
    longest n in max_n..min_n that occurs); [] when none does. One pass over the tokens finds where the last token
    occurs before; longer n-grams are checked at those places only."""
    arr = np.asarray(tokens, dtype=np.int64)
    size = len(arr)
    if k <= 0 or size < 2:
        return []
    ends = np.flatnonzero(arr[:size - 1] == arr[size - 1])  # earlier places of the last token, each followed by one
    for n in range(min(max_n, size - 1), min_n - 1, -1):
        at = ends[ends >= n - 1]
        match = np.ones(len(at), dtype=bool)
        for j in range(1, n):
            match &= arr[at - j] == arr[size - 1 - j]
        if match.any():
            start = int(at[match][-1]) + 1
            return arr[start:start + k].tolist()
    return []


class TokenBuffer:
    """A sequence's tokens as a growing int64 array, so a lookup does not rebuild it from lists every step."""

    def __init__(self) -> None:
        self.array = np.empty(0, dtype=np.int64)
        self.size = 0

    def view(self, prompt: list[int], output: list[int]) -> np.ndarray:
        total = len(prompt) + len(output)
        if total > len(self.array):
            grown = np.empty(max(total, 2 * len(self.array), 64), dtype=np.int64)
            grown[:self.size] = self.array[:self.size]
            self.array = grown
        if self.size < total:
            p = len(prompt)
            if self.size < p:
                self.array[self.size:p] = prompt[self.size:]
            start = max(self.size, p)
            self.array[start:total] = output[start - p:]
            self.size = total
        return self.array[:total]


def check_lookup(k: int, min_n: int, max_n: int) -> None:
    if k < 0:
        raise ValueError(f"prompt_lookup (draft tokens per step) must be >= 0, got {k}")
    if k and not 1 <= min_n <= max_n:
        raise ValueError(f"prompt lookup n-gram sizes need 1 <= prompt_lookup_min <= prompt_lookup_max, got "
                         f"{min_n} and {max_n}")
