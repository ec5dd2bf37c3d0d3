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
from numpy.lib.stride_tricks import sliding_window_view


def ngram_draft(tokens: Seq[int] | np.ndarray, k: int, min_n: int = 1, max_n: int = 3) -> list[int]:
    """Up to `k` tokens that followed the most recent earlier occurrence of the last n tokens of `tokens` (the
    longest n in max_n..min_n that occurs); [] when none does."""
    if k <= 0:
        return []
    arr = np.asarray(tokens, dtype=np.int64)
    size = len(arr)
    for n in range(min(max_n, size - 1), min_n - 1, -1):
        suffix = arr[size - n:]
        # windows starting at 0 .. size - n - 1: every occurrence but the suffix itself, each followed by a token
        windows = sliding_window_view(arr[:size - 1], n)
        hits = np.flatnonzero((windows == suffix).all(axis=1))
        if len(hits):
            start = int(hits[-1]) + n
            return arr[start:start + k].tolist()
    return []


def check_lookup(k: int, min_n: int, max_n: int) -> None:
    if k < 0:
        raise ValueError(f"prompt_lookup (draft tokens per step) must be >= 0, got {k}")
    if k and not 1 <= min_n <= max_n:
        raise ValueError(f"prompt lookup n-gram sizes need 1 <= prompt_lookup_min <= prompt_lookup_max, got "
                         f"{min_n} and {max_n}")
