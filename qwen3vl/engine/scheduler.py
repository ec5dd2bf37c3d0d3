"""Continuous batching: which sequences run this step, and how many of their tokens. No torch here.

Each step has a token budget. Running sequences go first, in arrival order (a decoding sequence needs one
token; one still in prefill takes a chunk), so a long prompt never stalls everyone's decoding: it is fed in chunks
between decode steps. Then waiting sequences are admitted while blocks and budget last. Prompt-lookup drafts
(engine/speculative.py) take only the budget left after that.

When the cache runs out of blocks, the newest running sequence is preempted: its blocks are freed and it
goes back to the front of the queue; later it recomputes its keys/values from its tokens (prompt plus what it
generated), so its output is unchanged.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from qwen3vl.engine.block_manager import BlockManager
from qwen3vl.engine.sequence import Sequence, Status


@dataclass
class Chunk:
    seq: Sequence
    start: int
    num_tokens: int
    draft: tuple[int, ...] = ()  # prompt-lookup draft tokens fed after the chunk's own (engine/speculative.py)

    @property
    def end(self) -> int:
        return self.start + self.num_tokens

    @property
    def samples(self) -> bool:
        """Whether this chunk reaches the sequence's last known token, so its logits give the next token."""
        return self.end == self.seq.num_tokens


class Scheduler:
    def __init__(self, blocks: BlockManager, max_num_seqs: int = 64, max_batch_tokens: int = 2048,
                 draft: Callable[[Sequence, int], list[int]] | None = None):
        """`draft(seq, at_most)`: draft tokens for a decoding sequence (prompt lookup), or None: never."""
        if max_batch_tokens < 1:
            raise ValueError("max_batch_tokens must be >= 1")
        self.blocks = blocks
        self.draft = draft
        self.max_num_seqs = max_num_seqs
        self.max_batch_tokens = max_batch_tokens
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.num_preemptions = 0

    def add(self, seq: Sequence) -> None:
        seq.status = Status.WAITING
        self.waiting.append(seq)

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def _preempt(self, seq: Sequence) -> None:
        self.blocks.release(seq)
        self.running.remove(seq)
        seq.status = Status.WAITING
        self.waiting.appendleft(seq)
        self.num_preemptions += 1

    def schedule(self) -> list[Chunk]:
        budget = self.max_batch_tokens
        chunks: list[Chunk] = []
        scheduled: set[int] = set()
        # decoding sequences (one token each) first, then those still in prefill
        order = sorted(self.running, key=lambda s: (s.num_tokens - s.num_computed > 1, s.arrival))
        for seq in order:
            if budget == 0:
                break
            if seq.status is not Status.RUNNING:
                continue  # preempted earlier in this loop
            n = min(seq.num_tokens - seq.num_computed, budget)
            while not self.blocks.ensure_slots(seq, seq.num_computed + n):
                victim = next((s for s in reversed(self.running) if s is not seq and s.seq_id not in scheduled),
                              None)
                if victim is None:
                    self._preempt(seq)
                    break
                self._preempt(victim)
            if seq.status is not Status.RUNNING:
                continue
            chunks.append(Chunk(seq, seq.num_computed, n))
            scheduled.add(seq.seq_id)
            budget -= n
        blocked = False
        for seq in list(self.waiting):
            if budget == 0 or len(self.running) >= self.max_num_seqs:
                break
            # first come, first served; but beam-search forks (a token each, holding their parents' blocks, which
            # the search frees when it ends) may pass a request that waits for those blocks
            if blocked and seq.fork is None:
                continue
            if not self.blocks.can_allocate(seq, seq.num_tokens):
                blocked = True
                continue
            self.waiting.remove(seq)
            self.blocks.allocate(seq, seq.num_tokens)
            seq.status = Status.RUNNING
            self.running.append(seq)
            n = min(seq.num_tokens - seq.num_computed, budget)
            chunks.append(Chunk(seq, seq.num_computed, n))
            scheduled.add(seq.seq_id)
            budget -= n
        if self.draft is not None and budget > 0:
            self._add_drafts(chunks, budget)
        return chunks

    def _add_drafts(self, chunks: list[Chunk], budget: int) -> None:
        """Prompt-lookup drafts for the chunks that end on their sequence's last token, from the budget everyone's
        own tokens left over, in arrival order; only where the blocks they need leave one free for every running
        sequence's next token, so drafting never preempts anyone this step."""
        for i, c in enumerate(chunks):
            seq = c.seq
            if budget <= 0:
                return
            if c.num_tokens != 1 or c.end != seq.num_tokens:
                continue
            draft = tuple(self.draft(seq, budget))
            if not draft:
                continue
            extra = self.blocks.blocks_needed(c.end + len(draft)) - len(seq.block_table)
            if extra > 0 and self.blocks.num_free - extra < len(self.running):
                continue
            if self.blocks.ensure_slots(seq, c.end + len(draft)):
                chunks[i] = Chunk(seq, c.start, 1, draft)
                budget -= len(draft)

    def finish(self, seq: Sequence, reason: str) -> None:
        seq.status = Status.FINISHED
        seq.finish_reason = reason
        if seq in self.running:
            self.running.remove(seq)
        else:
            try:
                self.waiting.remove(seq)
            except ValueError:
                pass
        if not (seq.keep_blocks and reason != "abort"):  # kept to fork from: `Engine.abort` releases them
            self.blocks.release(seq)
