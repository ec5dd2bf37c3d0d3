"""Training data: conversations -> length-bucketed, left-padded batches with the assistant-token loss mask.

Sources are indexable: `JsonlSource` (a finite JSONL file of `{"messages": [...], "tools": [...]?}` records, the
API's message format, media paths relative to the file) and `SyntheticSource` (the endless synthetic stream,
example i a pure function of (seed, i)). Each example goes through the processor's one chat renderer
(`Processor.prepare(..., add_generation_prompt=False)`), whose `loss_mask` marks the assistant's tokens.

Batching is windowed bucketing: the epoch's example order (a seeded permutation; the stream's natural order) is cut
into windows of `batch_size * window_batches` examples; each window is sorted by length and cut into batches whose
order is then shuffled. So batches hold similar lengths (little padding; our attention has no packing), and the
whole batch sequence is a pure function of (seed, position): the data position of a run is one integer, the number
of batches consumed, and a resumed run rebuilds the window it stopped in and continues from the same batch.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from qwen3vl.jsonl import iter_jsonl
from qwen3vl.train.formats import record_to_conversation

log = logging.getLogger(__name__)

_MEDIA_KEYS = ("image", "video", "image_url", "video_url")  # a part of type t keeps its source under key t


@dataclass
class Conversation:
    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]] | None = None


class Source(Protocol):
    """`num_examples` is None for an endless source."""

    num_examples: int | None

    def __getitem__(self, index: int) -> Conversation: ...


# ------------------------------------------------------------------------------------------------ sources
def _resolve(src: Any, root: Path) -> Any:
    if isinstance(src, list):
        return [_resolve(s, root) for s in src]
    if isinstance(src, dict) and "url" in src:
        return {**src, "url": _resolve(src["url"], root)}
    if not isinstance(src, str) or src.startswith(("http://", "https://", "data:", "file://", "/")):
        return src
    return str(root / src)


def _resolve_message(message: dict[str, Any], root: Path) -> dict[str, Any]:
    content = message.get("content")
    if not isinstance(content, list):
        return message
    parts = []
    for part in content:
        key = part.get("type") if isinstance(part, dict) else None
        parts.append({**part, key: _resolve(part[key], root)} if key in _MEDIA_KEYS and key in part else part)
    return {**message, "content": parts}


class JsonlSource:
    """Conversations from a JSONL file; each line has `messages` (and optionally `tools`), or is in the LLaVA /
    ShareGPT layout (`formats.py`). Relative media paths are resolved against the file's folder, as
    `synthetic_io.write_jsonl` writes them. Media are loaded when prepared."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"training data not found: {self.path}")
        root = self.path.parent
        self.conversations: list[Conversation] = []
        for line_no, record in iter_jsonl(self.path):
            messages, tools = record_to_conversation(record, f"{self.path}:{line_no}")
            messages = [_resolve_message(m, root) for m in messages]
            self.conversations.append(Conversation(messages, tools))
        if not self.conversations:
            raise ValueError(f"{self.path} holds no conversations")
        self.num_examples = len(self.conversations)

    def __getitem__(self, index: int) -> Conversation:
        return self.conversations[index]


class SyntheticSource:
    """The endless synthetic stream (`synthetic.iter_examples` order), generated on demand."""

    num_examples = None

    def __init__(self, seed: int, tasks: Sequence[str] | None = None, config=None):
        from qwen3vl.train.synthetic import TASKS

        self.seed, self.tasks, self.config = seed, tuple(tasks or TASKS), config

    def __getitem__(self, index: int) -> Conversation:
        from qwen3vl.train.synthetic import example_rng, make_example

        task = self.tasks[index % len(self.tasks)]
        return Conversation(make_example(task, example_rng(self.seed, index), self.config).messages)


class ListSource:
    """A list of message lists (or `Conversation`s), e.g. `[ex.messages for ex in make_dataset(...)]`."""

    def __init__(self, items: Sequence[Any]):
        self.items = [it if isinstance(it, Conversation) else Conversation(list(it)) for it in items]
        if not self.items:
            raise ValueError("ListSource got no conversations")
        self.num_examples = len(self.items)

    def __getitem__(self, index: int) -> Conversation:
        return self.items[index]


# ------------------------------------------------------------------------------------------------ batches
@dataclass
class Batch:
    """Model keyword tensors plus `loss_mask` (B, S), aligned with `input_ids` (1 on assistant target tokens).
    The next-token targets are `input_ids[:, 1:]` where `loss_mask[:, 1:]` is 1. `position` is the number of
    batches consumed once this one is."""

    inputs: dict[str, torch.Tensor]
    loss_mask: torch.Tensor
    position: int

    @property
    def num_targets(self) -> int:
        return int(self.loss_mask[:, 1:].sum())

    @property
    def num_tokens(self) -> int:
        return int(self.inputs["attention_mask"].sum())


def prepare(processor, conv: Conversation, max_length: int | None = None, where: str = ""):
    """One conversation through the chat renderer; an over-long one is cut on the right if no media is cut."""
    p = processor.prepare(conv.messages, add_generation_prompt=False, tools=conv.tools)
    if max_length is not None and len(p.input_ids) > max_length:
        media_end = max([e for _, e in p.image_spans] + [e for spans in p.video_spans for _, e in spans] + [0])
        if media_end > max_length:
            raise ValueError(f"{where}: {len(p.input_ids)} tokens with media up to token {media_end}, over "
                             f"max_length {max_length}; raise max_length or shrink the media")
        p.input_ids, p.loss_mask = p.input_ids[:max_length], p.loss_mask[:max_length]
    return p


def collate(processor, prepared: list, position: int = 0) -> Batch:
    """Left-padded model inputs (the processor's `collate`) and the loss mask padded the same way."""
    inputs = processor.collate(prepared)
    width = inputs["input_ids"].shape[1]
    mask = torch.zeros(len(prepared), width, dtype=torch.long)
    for row, p in enumerate(prepared):
        mask[row, width - len(p.loss_mask):] = torch.tensor(p.loss_mask, dtype=torch.long)
    return Batch(inputs, mask, position)


class BucketedBatches(torch.utils.data.IterableDataset):
    """The endless, deterministic batch sequence of a source (see the module docstring); iterating starts at
    batch `start` (set it, or pass it, before building the iterator)."""

    def __init__(self, source: Source, processor, batch_size: int, *, window_batches: int = 8, seed: int = 0,
                 shuffle: bool = True, max_length: int | None = None, start: int = 0,
                 pixel_dtype: torch.dtype | None = None):
        super().__init__()
        # bfloat16 under bf16 autocast: exact (the patch embedding's matmul rounds its input to bf16 anyway) and half
        # the bytes to move between processes and to the GPU
        self.pixel_dtype = pixel_dtype
        if batch_size <= 0 or window_batches <= 0:
            raise ValueError(f"batch_size ({batch_size}) and window_batches ({window_batches}) must be positive")
        self.source, self.processor = source, processor
        self.batch_size, self.window = batch_size, batch_size * window_batches
        self.seed, self.shuffle, self.max_length, self.start = seed, shuffle, max_length, start

    # -- the plan: which examples make up batch k, without preparing anything
    @property
    def batches_per_epoch(self) -> int | None:
        n = self.source.num_examples
        if n is None:
            return None
        full, rest = divmod(n, self.window)
        return full * (self.window // self.batch_size) + math.ceil(rest / self.batch_size)

    def locate(self, k: int) -> tuple[int, int, int]:
        """Batch k -> (epoch, window, batch within the window)."""
        per_window = self.window // self.batch_size
        per_epoch = self.batches_per_epoch
        epoch, k = (0, k) if per_epoch is None else divmod(k, per_epoch)
        return epoch, k // per_window, k % per_window

    def window_size(self, window: int) -> int:
        """How many examples window `window` holds (the last window of a finite epoch may hold fewer)."""
        n = self.source.num_examples
        return self.window if n is None else min(self.window, n - window * self.window)

    def window_indices(self, epoch: int, window: int) -> list[int]:
        lo = window * self.window
        n = self.source.num_examples
        if n is None:
            return list(range(lo, lo + self.window))
        order = np.random.default_rng([self.seed, epoch]).permutation(n) if self.shuffle else np.arange(n)
        return [int(i) for i in order[lo:lo + self.window]]

    def _window(self, epoch: int, window: int) -> list[list]:
        """The window's batches of prepared examples, in the order they are served."""
        indices = self.window_indices(epoch, window)
        prepared = [prepare(self.processor, self.source[i], self.max_length, f"example {i}") for i in indices]
        order = sorted(range(len(prepared)), key=lambda j: (len(prepared[j].input_ids), j))
        groups = [order[s:s + self.batch_size] for s in range(0, len(order), self.batch_size)]
        if self.shuffle:
            perm = np.random.default_rng([self.seed, epoch, window, 1]).permutation(len(groups))
            groups = [groups[int(g)] for g in perm]
        return [[prepared[j] for j in g] for g in groups]

    def plan(self) -> Iterator[tuple[int, int, int, int]]:
        """The windows to serve from batch `start` on: (epoch, window, first batch served in it, batches before)."""
        k = self.start
        epoch, window, offset = self.locate(k)
        while True:
            yield epoch, window, offset, k
            k += math.ceil(self.window_size(window) / self.batch_size) - offset
            offset = 0
            epoch, window, _ = self.locate(k)

    def serve(self, epoch: int, window: int, offset: int, before: int) -> list[Batch]:
        """One `plan` entry's batches, collated."""
        batches = [collate(self.processor, b, before + i + 1)
                   for i, b in enumerate(self._window(epoch, window)[offset:])]
        if self.pixel_dtype is not None:
            for b in batches:
                for key in ("pixel_values", "pixel_values_videos"):
                    if key in b.inputs:
                        b.inputs[key] = b.inputs[key].to(self.pixel_dtype)
        return batches

    def __iter__(self) -> Iterator[Batch]:
        for task in self.plan():
            yield from self.serve(*task)

    def epoch(self, epoch: int = 0) -> Iterator[Batch]:
        """One pass over a finite source (for evaluation)."""
        per_epoch = self.batches_per_epoch
        if per_epoch is None:
            raise ValueError("an endless source has no epochs")
        k = epoch * per_epoch
        for window in range(math.ceil(self.source.num_examples / self.window)):
            for b in self._window(epoch, window):
                k += 1
                yield collate(self.processor, b, k)


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)  # the trainer owns the cores; the worker only renders, resizes and tokenizes


def batch_loader(batches: BucketedBatches, num_workers: int = 0, prefetch: int = 4) -> Iterator[Batch]:
    """An iterator over `batches` from `batches.start`: in this process (0 workers), in one background process (1),
    or in a pool of `num_workers` processes that prepare whole windows side by side (a GPU eats batches faster than
    one core makes them). Every choice serves the same batches in the same order."""
    if num_workers < 0:
        raise ValueError(f"num_workers must be 0 or more, got {num_workers}")
    if num_workers == 0:
        return iter(batches)
    if num_workers == 1:
        loader = torch.utils.data.DataLoader(batches, batch_size=None, num_workers=1, prefetch_factor=prefetch,
                                             worker_init_fn=_worker_init)
        return iter(loader)
    return _pooled(batches, num_workers, prefetch)


_POOL_BATCHES: BucketedBatches | None = None  # a pool worker's copy (inherited through the fork, never pickled)


def _pool_init(batches: BucketedBatches) -> None:
    global _POOL_BATCHES
    _POOL_BATCHES = batches
    _worker_init(0)


def _pool_serve(task: tuple[int, int, int, int]) -> list[Batch]:
    return _POOL_BATCHES.serve(*task)


def _pooled(batches: BucketedBatches, num_workers: int, prefetch: int) -> Iterator[Batch]:
    """Windows in flight on `num_workers` forked processes, collected in plan order. A window is `window_batches`
    batches, so `prefetch` (in batches) adds ceil(prefetch / window_batches) windows to the `num_workers` in flight;
    memory holds about that many windows of prepared batches at once."""
    import collections
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    pool = ProcessPoolExecutor(num_workers, mp_context=multiprocessing.get_context("fork"), initializer=_pool_init,
                               initargs=(batches,))
    try:
        plan = batches.plan()
        ahead = num_workers + max(1, math.ceil(prefetch * batches.batch_size / batches.window))
        pending = collections.deque(pool.submit(_pool_serve, next(plan)) for _ in range(ahead))
        while True:
            ready = pending.popleft().result()
            pending.append(pool.submit(_pool_serve, next(plan)))
            yield from ready
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
