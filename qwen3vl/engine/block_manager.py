"""Paged KV-cache bookkeeping: fixed-size blocks, reference counts and a prefix cache. No torch here.

A full block's identity is a hash chained over every token before it, so equal hashes mean equal prefixes.
Image and video pad tokens all share one id, so the hash also covers which media item (by content hash)
and which rows of it a block holds; two prompts with different pictures never share blocks.

Freed blocks keep their hash until they are handed out again, oldest first (LRU), so a later request with
the same prefix (a second turn, a shared system prompt, the same image) finds them.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict

from qwen3vl.engine.sequence import Sequence


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int, enable_prefix_cache: bool = True):
        if num_blocks < 1 or block_size < 1:
            raise ValueError("num_blocks and block_size must be >= 1")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.prefix_cache = enable_prefix_cache
        self.ref = [0] * num_blocks
        self.block_hash: list[bytes | None] = [None] * num_blocks
        self.free: OrderedDict[int, None] = OrderedDict((i, None) for i in range(num_blocks))
        self.by_hash: dict[bytes, int] = {}
        self.hits = 0  # tokens served from the prefix cache, for metrics
        self.queries = 0
        self.pending_copies: list[tuple[int, int]] = []  # (source, destination) blocks the runner must copy first

    # ------------------------------------------------------------------ queries
    @property
    def num_free(self) -> int:
        return len(self.free)

    @property
    def num_used(self) -> int:
        return self.num_blocks - len(self.free)

    def blocks_needed(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    def block_hashes(self, seq: Sequence, upto: int) -> list[bytes]:
        """Chained hashes of seq's full blocks among its first `upto` tokens (memoised on the sequence:
        a sequence's tokens only ever grow)."""
        out = seq.block_hashes
        bs = self.block_size
        for b in range(len(out), upto // bs):
            s, e = b * bs, (b + 1) * bs
            # the chain starts from the request's LoRA adapter load: it changes every key and value
            h = hashlib.blake2b(out[-1] if out else (f"lora:{seq.adapter_id}".encode() if seq.adapter_id else b""),
                                digest_size=16)
            h.update(repr(seq.tokens(s, e)).encode())
            for m in seq.media_in(s, e):
                h.update(f"|{m.key}:{max(s, m.offset) - m.offset}:{min(e, m.end) - m.offset}".encode())
            out.append(h.digest())
        return out[: upto // bs]

    # ------------------------------------------------------------------ allocation
    def _take(self) -> int:
        block, _ = self.free.popitem(last=False)
        old = self.block_hash[block]
        if old is not None and self.by_hash.get(old) == block:
            del self.by_hash[old]
        self.block_hash[block] = None
        self.ref[block] = 1
        return block

    def can_allocate(self, seq: Sequence, num_tokens: int) -> bool:
        """Whether blocks for seq's first `num_tokens` tokens fit (ignoring prefix hits, so it is conservative; a
        fork's shared blocks are its already)."""
        have = len(seq.block_table) or (seq.fork[1] // self.block_size if seq.fork is not None else 0)
        return self.blocks_needed(num_tokens) - have <= self.num_free

    def allocate(self, seq: Sequence, num_tokens: int) -> None:
        """Give a waiting sequence blocks for its first `num_tokens` tokens, reusing cached prefix blocks.

        Sets `seq.num_computed` to the number of tokens whose keys/values are already cached. At least one
        token is always left to compute, so the step that finishes the prompt produces logits.
        """
        assert not seq.block_table
        if seq.fork is not None:
            self._allocate_fork(seq, num_tokens)
            return
        hashes = self.block_hashes(seq, num_tokens) if self.prefix_cache else []
        # prompt logprobs need the logits of every prompt position not yet scored: reuse no block past those
        scored = len(seq.prompt_logprobs) if seq.params.prompt_logprobs is not None else num_tokens
        cached = 0
        table: list[int] = []
        for h in hashes:
            block = self.by_hash.get(h)
            end = (len(table) + 1) * self.block_size
            if block is None or end >= num_tokens or end > scored:
                break
            if self.ref[block] == 0:
                self.free.pop(block)
            self.ref[block] += 1
            table.append(block)
            cached += self.block_size
        self.queries += num_tokens
        self.hits += cached
        while len(table) < self.blocks_needed(num_tokens):
            table.append(self._take())
        seq.block_table = table
        seq.num_computed = cached
        seq.num_cached_prefix = cached

    def hold(self, blocks: list[int]) -> None:
        """Keep blocks from being handed out (a fork's parent blocks, until the fork is allocated)."""
        for block in blocks:
            if self.ref[block] == 0:
                self.free.pop(block)
            self.ref[block] += 1

    def _unref(self, blocks: list[int]) -> None:
        # in reverse so a sequence's tail blocks are reused before its (more shareable) head blocks
        for block in reversed(blocks):
            self.ref[block] -= 1
            if self.ref[block] == 0:
                self.free[block] = None

    def _allocate_fork(self, seq: Sequence, num_tokens: int) -> None:
        """A fork shares its parent's full blocks and gets a copy of the partly filled last one (copy on write:
        the runner copies it before the step), so only its own new tokens are computed."""
        blocks, computed = seq.fork
        seq.fork = None
        full = computed // self.block_size
        table = blocks[:full]  # the holds on these become the fork's references
        if computed % self.block_size:
            copy = self._take()
            self.pending_copies.append((blocks[full], copy))
            table.append(copy)
        self._unref(blocks[full:])  # the partly filled block (copied before anything writes) and any beyond
        while len(table) < self.blocks_needed(num_tokens):
            table.append(self._take())
        seq.block_table = table
        seq.num_computed = seq.num_cached_prefix = computed
        self.queries += num_tokens
        self.hits += computed

    def ensure_slots(self, seq: Sequence, num_tokens: int) -> bool:
        """Grow seq's table to hold `num_tokens` tokens; False (and no change) if blocks run out."""
        need = self.blocks_needed(num_tokens) - len(seq.block_table)
        if need > self.num_free:
            return False
        for _ in range(max(need, 0)):
            seq.block_table.append(self._take())
        return True

    def register_full_blocks(self, seq: Sequence) -> None:
        """After a step, publish the hashes of seq's newly completed blocks so later requests can reuse them."""
        if not self.prefix_cache:
            return
        hashes = self.block_hashes(seq, seq.num_computed)
        for block, h in zip(seq.block_table, hashes):
            if self.block_hash[block] is None and h not in self.by_hash:
                self.block_hash[block] = h
                self.by_hash[h] = block

    def release(self, seq: Sequence) -> None:
        self._unref(seq.block_table)
        seq.block_table = []
        seq.num_computed = 0
        if seq.fork is not None:  # a fork that never ran: its holds on the parent's blocks
            self._unref(seq.fork[0])
            seq.fork = None
