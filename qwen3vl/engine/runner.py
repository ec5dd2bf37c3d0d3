"""The model runner: the only place the engine builds tensors.

One step packs every scheduled chunk into a single row of T tokens (B = 1), runs the decoder once with a
`PagedAttention` backend, and returns the logits of the chunks that sample.

Legend: T packed tokens this step, L layers, NB blocks, BS block size, K kv heads, H query heads, Dh head dim.

KV cache: per layer one (NB*BS, K, Dh) tensor for keys and one for values (in the model's dtype, or int8 / fp8 with a
scale per token and kv head: `KVCache`); a token's slot is `block_table[pos // BS] * BS + pos % BS`.

Vision: each media item (by content hash) is encoded once and kept in an LRU cache bounded in bytes, so the
same image across turns or requests, or a long prompt prefilled in several chunks, costs one ViT pass.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from qwen3vl.engine.adapters import AdapterSet
from qwen3vl.engine.scheduler import Chunk
from qwen3vl.engine.sequence import MediaItem


@dataclass
class _SeqAttn:
    q_start: int
    n: int
    ctx: int
    slots: torch.Tensor  # (ctx,) cache slots of the sequence's tokens 0..ctx-1


class PagedAttention:
    """Attention backend for one engine step: writes new keys/values into their slots, then attends each
    chunk's queries over its sequence's cached keys/values (causal within the chunk)."""

    def __init__(self, cache: "KVCache", new_slots: torch.Tensor, seqs: list[_SeqAttn]):
        self.cache = cache
        self.new_slots = new_slots
        self.seqs = seqs
        self.decodes = [s for s in seqs if s.n == 1]
        self.others = [s for s in seqs if s.n != 1]
        if self.decodes:
            # one batched call for all single-token chunks: gather into (B, maxctx) with a padding mask
            maxctx = max(s.ctx for s in self.decodes)
            slots = torch.zeros(len(self.decodes), maxctx, dtype=torch.long)
            mask = torch.zeros(len(self.decodes), maxctx, dtype=torch.bool)
            for i, s in enumerate(self.decodes):
                slots[i, :s.ctx] = s.slots
                slots[i, s.ctx:] = s.slots[0]  # padding reads a slot this sequence wrote (masked out anyway)
                mask[i, :s.ctx] = True
            device = cache.device
            self._dec_slots = slots.to(device)
            self._dec_mask = None if bool(mask.all()) else mask.to(device)
            self._dec_q = torch.tensor([s.q_start for s in self.decodes], device=device)

    def attend(self, layer_idx: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
        cache = self.cache
        cache.write(layer_idx, self.new_slots, k[0], v[0])
        out = torch.empty_like(q)
        gqa = q.shape[2] != k.shape[2]
        if self.decodes:
            flat = self._dec_slots.view(-1)
            kd, vd = cache.read(layer_idx, flat, q.dtype)
            kd = kd.view(*self._dec_slots.shape, *kd.shape[1:]).transpose(1, 2)  # (B, K, ctx, Dh)
            vd = vd.view(*self._dec_slots.shape, *vd.shape[1:]).transpose(1, 2)
            out[0, self._dec_q] = decode_attention(q[0, self._dec_q], kd, vd, self._dec_mask, scale)
        for s in self.others:
            qs = q[0, s.q_start:s.q_start + s.n].transpose(0, 1)[None]  # (1, H, n, Dh)
            ks, vs = cache.read(layer_idx, s.slots, q.dtype)
            ks, vs = ks.transpose(0, 1)[None], vs.transpose(0, 1)[None]  # (1, K, ctx, Dh)
            if s.n == s.ctx:
                o = F.scaled_dot_product_attention(qs, ks, vs, is_causal=True, scale=scale, enable_gqa=gqa)
            else:
                qpos = torch.arange(s.ctx - s.n, s.ctx, device=q.device)
                mask = torch.arange(s.ctx, device=q.device)[None, :] <= qpos[:, None]
                o = F.scaled_dot_product_attention(qs, ks, vs, attn_mask=mask, scale=scale, enable_gqa=gqa)
            out[0, s.q_start:s.q_start + s.n] = o[0].transpose(0, 1)
        return out


def decode_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
                     scale: float) -> torch.Tensor:
    """One query token per sequence: q (B, H, Dh), k/v (B, K, ctx, Dh), mask (B, ctx) or None -> (B, H, Dh).

    Written out instead of SDPA: on CPU, SDPA with a single query (and worse, with a mask or GQA) runs 10-30x slower
    than these two small matmuls, which made attention cost as much as reading the weights at a few thousand tokens
    of context. Precision follows the reference's eager attention: scores in the model dtype, softmax in float32,
    probabilities cast back before the product with v (so fp32 models stay fp32 throughout).
    """
    b, h, d = q.shape
    kv = k.shape[1]
    qg = q.view(b, kv, h // kv, d)  # (B, K, G, Dh): the G query heads sharing one kv head
    scores = torch.matmul(qg, k.transpose(-1, -2)).float() * scale  # (B, K, G, ctx)
    if mask is not None:
        scores = scores.masked_fill(~mask[:, None, None, :], float("-inf"))
    out = torch.matmul(scores.softmax(-1).to(v.dtype), v)  # (B, K, G, Dh)
    return out.reshape(b, h, d)


KV_CACHE_DTYPES = ("auto", "int8", "fp8")
_FP8 = torch.float8_e4m3fn
_FP8_MAX = float(torch.finfo(_FP8).max)  # 448


def parse_kv_cache_dtype(name: str | None) -> str:
    """'auto' (the model's dtype), 'int8' or 'fp8' (vLLM's 'fp8_e4m3' is the same); ValueError for anything else."""
    name = (name or "auto").lower()
    name = {"fp8_e4m3": "fp8", "float8_e4m3fn": "fp8"}.get(name, name)
    if name not in KV_CACHE_DTYPES:
        raise ValueError(f"kv_cache_dtype {name!r} is not supported; choose one of {', '.join(KV_CACHE_DTYPES)} "
                         "(fp8_e4m3 is accepted for fp8)")
    return name


def quantize_kv(x: torch.Tensor, kind: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Vectors along the last dimension, each with its own float32 scale (absmax / 127 for "int8", absmax / 448 for
    "fp8" e4m3, held as uint8 bytes): (codes, scales with a last dimension of 1)."""
    x = x.float()
    top = 127.0 if kind == "int8" else _FP8_MAX
    scale = x.abs().amax(-1, keepdim=True).clamp(min=1e-30) / top
    y = x / scale
    if kind == "int8":
        return y.round_().clamp_(-127, 127).to(torch.int8), scale
    return y.clamp_(-_FP8_MAX, _FP8_MAX).to(_FP8).view(torch.uint8), scale


def dequantize_kv(codes: torch.Tensor, scale: torch.Tensor, kind: str, dtype: torch.dtype) -> torch.Tensor:
    """Codes times scales, in `dtype`. A 16-bit dtype multiplies in that dtype (the codes are exact in it, the
    scale rounds once more, as the unquantized cache rounds each value once): a third less time on CPU than going
    through float32, which matters since every decode step reads the whole context back."""
    if kind == "fp8":
        codes = codes.view(_FP8)
    if dtype in (torch.bfloat16, torch.float16):
        return codes.to(dtype) * scale.to(dtype)
    return (codes.float() * scale).to(dtype)


class KVCache:
    """Per layer one (NB*BS, K, Dh) tensor of keys and one of values.

    `kv_dtype` "auto" stores them in the model's dtype. "int8" and "fp8" (e4m3) store each token's key (and value)
    vector per kv head quantized with its own float32 scale (absmax / 127, absmax / 448): 1 byte an element plus 4
    bytes per head vector, about half of bf16's bytes, so twice the tokens fit the same memory. A token is quantized
    once, when it is written; readers get it back in the model's dtype.
    """

    def __init__(self, num_layers: int, num_blocks: int, block_size: int, kv_heads: int, head_dim: int,
                 dtype: torch.dtype, device: torch.device, kv_dtype: str = "auto"):
        slots = num_blocks * block_size
        self.block_size = block_size
        self.device = device
        self.kv_dtype = parse_kv_cache_dtype(kv_dtype)
        # fp8 is held as its bytes (uint8): CPU index_copy_ has no float8 kernel
        store = {"auto": dtype, "int8": torch.int8, "fp8": torch.uint8}[self.kv_dtype]
        # allocated and touched up front (zeros), like vLLM: the server's memory is known at start and stays flat
        self.k = [torch.zeros(slots, kv_heads, head_dim, dtype=store, device=device) for _ in range(num_layers)]
        self.v = [torch.zeros(slots, kv_heads, head_dim, dtype=store, device=device) for _ in range(num_layers)]
        self.k_scale: list[torch.Tensor] = []
        self.v_scale: list[torch.Tensor] = []
        if self.kv_dtype != "auto":
            self.k_scale = [torch.zeros(slots, kv_heads, 1, device=device) for _ in range(num_layers)]
            self.v_scale = [torch.zeros(slots, kv_heads, 1, device=device) for _ in range(num_layers)]

    @staticmethod
    def bytes_per_block(num_layers: int, block_size: int, kv_heads: int, head_dim: int, dtype: torch.dtype,
                        kv_dtype: str = "auto") -> int:
        kv_dtype = parse_kv_cache_dtype(kv_dtype)
        if kv_dtype == "auto":
            per_vector = head_dim * torch.empty((), dtype=dtype).element_size()
        else:
            per_vector = head_dim + 4  # one byte an element and a float32 scale
        return 2 * num_layers * block_size * kv_heads * per_vector

    def write(self, layer: int, slots: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        """Store the keys and values (T, K, Dh) of T new tokens in their slots."""
        if self.kv_dtype == "auto":
            self.k[layer].index_copy_(0, slots, k.to(self.k[layer].dtype))
            self.v[layer].index_copy_(0, slots, v.to(self.v[layer].dtype))
            return
        for data, scales, x in ((self.k, self.k_scale, k), (self.v, self.v_scale, v)):
            q, scale = quantize_kv(x, self.kv_dtype)
            data[layer].index_copy_(0, slots, q)
            scales[layer].index_copy_(0, slots, scale)

    def copy_blocks(self, pairs: list[tuple[int, int]]) -> None:
        """Copy whole blocks (source, destination), in every layer: a forked sequence's own copy of a shared block."""
        bs = self.block_size
        offsets = torch.arange(bs, device=self.device)
        src = torch.cat([offsets + s * bs for s, _ in pairs])
        dst = torch.cat([offsets + d * bs for _, d in pairs])
        for tensors in (self.k, self.v, self.k_scale, self.v_scale):
            for t in tensors:
                t.index_copy_(0, dst, t.index_select(0, src))

    def read(self, layer: int, slots: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """The keys and values (n, K, Dh) in `slots`, in `dtype`."""
        if self.kv_dtype == "auto":
            return self.k[layer].index_select(0, slots), self.v[layer].index_select(0, slots)
        out = [dequantize_kv(data[layer].index_select(0, slots), scales[layer].index_select(0, slots), self.kv_dtype,
                             dtype) for data, scales in ((self.k, self.k_scale), (self.v, self.v_scale))]
        return out[0], out[1]


class VisionCache:
    """LRU of vision features by content hash, bounded in bytes."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self.items: OrderedDict[str, tuple[torch.Tensor, list[torch.Tensor]]] = OrderedDict()
        self.bytes = 0
        self.hits = 0
        self.misses = 0

    @staticmethod
    def _size(value) -> int:
        embeds, deep = value
        return sum(t.numel() * t.element_size() for t in [embeds, *deep])

    def get(self, key: str):
        value = self.items.get(key)
        if value is not None:
            self.items.move_to_end(key)
        return value

    def put(self, key: str, value) -> None:
        if key in self.items:
            return
        size = self._size(value)
        if size > self.max_bytes:
            return
        self.items[key] = value
        self.bytes += size
        while self.bytes > self.max_bytes:
            _, old = self.items.popitem(last=False)
            self.bytes -= self._size(old)


class ModelRunner:
    def __init__(self, model, num_blocks: int, block_size: int, vision_cache_bytes: int = 512 * 1024**2,
                 kv_cache_dtype: str = "auto"):
        cfg = model.config.text_config
        self.model = model
        self.device = model.device
        self.dtype = model.dtype
        self.block_size = block_size
        # kv heads from the weights, not the config: a tensor-parallel shard holds only its share of them
        kv_heads = model.model.language_model.layers[0].self_attn.k_proj.out_features // cfg.head_dim
        self.cache = KVCache(cfg.num_hidden_layers, num_blocks, block_size, kv_heads, cfg.head_dim,
                             self.dtype, self.device, kv_cache_dtype)
        self.vision_cache = VisionCache(vision_cache_bytes)
        self.merge = model.config.vision_config.spatial_merge_size
        self.adapters = AdapterSet(model)  # LoRA adapters chosen per request (SamplingParams.adapter)
        self.scores: list = []  # the last step's prompt scores (`assign_prompt_logprobs`)

    def copy_blocks(self, pairs: list[tuple[int, int]]) -> None:
        self.cache.copy_blocks(pairs)

    def _slots(self, table: list[int], start: int, end: int) -> torch.Tensor:
        pos = torch.arange(start, end)
        blocks = torch.tensor(table, dtype=torch.long)[pos // self.block_size]
        return blocks * self.block_size + pos % self.block_size

    def _vision_work(self, chunks: list[Chunk]) -> list[tuple[str, tuple, torch.Tensor]]:
        """The media items touched this step whose features are not cached: (key, grid, pixels)."""
        missing: dict[str, MediaItem] = {}
        seen: set[str] = set()
        for c in chunks:
            for m in c.seq.media_in(c.start, c.end):
                if m.key in seen:
                    continue
                seen.add(m.key)
                if m.key in self.vision_cache.items:
                    self.vision_cache.hits += 1
                else:
                    self.vision_cache.misses += 1
                    missing[m.key] = m
        return [(m.key, m.grid_thw, m.pixel_values) for m in missing.values()]

    def _features(self, inputs: "StepInputs") -> dict[str, tuple[torch.Tensor, list[torch.Tensor]]]:
        """Features of every item this step needs: encode the missing ones in one ViT call, the rest from cache."""
        found: dict[str, tuple] = {}
        fresh = {key for key, _, _ in inputs.encode}
        for key, _, _ in inputs.vis_rows:  # take cached ones first: the puts below may evict them
            if key not in fresh and key not in found:
                found[key] = self.vision_cache.get(key)
        if inputs.encode:
            pixels = torch.cat([p for _, _, p in inputs.encode]).to(self.device)
            feats = self.model.encode_vision(pixels, [list(g) for _, g, _ in inputs.encode])
            sizes = [g[0] * g[1] * g[2] // self.merge**2 for _, g, _ in inputs.encode]
            embeds = feats.embeds.split(sizes)
            deep = [level.split(sizes) for level in feats.deepstack]
            for i, (key, _, _) in enumerate(inputs.encode):
                found[key] = (embeds[i], [d[i] for d in deep])
                self.vision_cache.put(key, found[key])
        return found

    def prepare(self, chunks: list[Chunk]) -> "StepInputs":
        """Everything one step needs, as plain CPU tensors and lists (what rank 0 sends to other ranks)."""
        ids: list[int] = []
        positions: list[np.ndarray] = []
        new_slots: list[torch.Tensor] = []
        attn: list[_SeqAttn] = []
        vis_rows: list[tuple[str, int, int]] = []
        vis_index: list[int] = []
        sample_rows: list[int] = []
        score_rows: list[int] = []
        score_targets: list[int] = []
        score_top = 0
        adapter_rows: list[tuple[int, int]] = []  # (adapter id, tokens), per chunk
        for c in chunks:
            seq, q_start = c.seq, len(ids)
            end = c.end + len(c.draft)  # drafts sit after the chunk's tokens, at the positions they would take
            ids += seq.tokens(c.start, c.end) + list(c.draft)
            adapter_rows.append((seq.adapter_id, end - c.start))
            positions.append(seq.positions(c.start, end))
            slots = self._slots(seq.block_table, 0, end)
            new_slots.append(slots[c.start:])
            attn.append(_SeqAttn(q_start, end - c.start, end, slots))
            for m in seq.media_in(c.start, c.end):
                lo, hi = max(c.start, m.offset), min(c.end, m.end)
                vis_rows.append((m.key, lo - m.offset, hi - m.offset))
                vis_index.extend(range(q_start + lo - c.start, q_start + hi - c.start))
            if c.samples:  # the last real token's logits, then each draft's
                sample_rows.extend(range(len(ids) - 1 - len(c.draft), len(ids)))
            for j in score_positions(c):
                score_rows.append(q_start + j - c.start)
                score_targets.append(seq.prompt_ids[j + 1])
                score_top = max(score_top, seq.params.prompt_logprobs)
        return StepInputs(ids=torch.tensor(ids, dtype=torch.long),
                          positions=torch.from_numpy(np.concatenate(positions, axis=1)),
                          new_slots=torch.cat(new_slots), seqs=attn, vis_rows=vis_rows,
                          vis_index=torch.tensor(vis_index, dtype=torch.long), sample_rows=sample_rows,
                          encode=self._vision_work(chunks), adapters=_token_adapters(adapter_rows),
                          score_rows=score_rows, score_targets=score_targets, score_top=score_top)

    @torch.inference_mode()
    def run(self, inputs: "StepInputs") -> torch.Tensor:
        """Run one prepared step; returns float32 logits (number of sampling chunks, V)."""
        dev = self.device
        input_ids = inputs.ids.to(dev)[None]
        pos = inputs.positions.to(dev)[:, None, :]  # (3, 1, T)
        seqs = [_SeqAttn(s.q_start, s.n, s.ctx, s.slots.to(dev)) for s in inputs.seqs]
        backend = PagedAttention(self.cache, inputs.new_slots.to(dev), seqs)
        x = self.model.model.language_model.embed_tokens(input_ids)
        visual_mask = deepstack = None
        if inputs.vis_rows:
            feats = self._features(inputs)
            embeds = torch.cat([feats[k][0][a:b] for k, a, b in inputs.vis_rows])
            levels = len(next(iter(feats.values()))[1])
            deepstack = [torch.cat([feats[k][1][lvl][a:b] for k, a, b in inputs.vis_rows]) for lvl in range(levels)]
            visual_mask = torch.zeros(1, input_ids.shape[1], dtype=torch.bool, device=dev)
            visual_mask[0, inputs.vis_index.to(dev)] = True
            x = x.masked_scatter(visual_mask[..., None], embeds.to(x.dtype))
        elif inputs.encode:  # nothing of these items is in this step's tokens, but keep caches in step
            self._features(inputs)
        self.adapters.begin(inputs.adapters, dev)
        try:
            hidden = self.model.decode(x, pos, backend, visual_mask, deepstack)
        finally:
            self.adapters.end()
        self.scores = self._score(hidden[0], inputs) if inputs.score_rows else []
        if not inputs.sample_rows:
            return torch.empty(0, self.model.config.text_config.vocab_size)
        rows = hidden[0, torch.tensor(inputs.sample_rows, device=dev)]
        return self.model.logits(rows).float()

    def _score(self, hidden: torch.Tensor, inputs: "StepInputs", rows_per_call: int = 256) -> list:
        """(logprob, top alternatives or None) of each scored prompt token under the raw distribution; the LM head
        runs on `rows_per_call` rows at a time, so a long prompt never holds (T, V) logits at once."""
        out = []
        targets = torch.tensor(inputs.score_targets, device=hidden.device)
        rows = torch.tensor(inputs.score_rows, device=hidden.device)
        for a in range(0, len(inputs.score_rows), rows_per_call):
            lp = self.model.logits(hidden[rows[a:a + rows_per_call]]).float().log_softmax(-1)
            chosen = lp.gather(1, targets[a:a + rows_per_call, None])[:, 0].tolist()
            if inputs.score_top:
                vals, ids = lp.topk(inputs.score_top)
                tops = [list(zip(i, v)) for i, v in zip(ids.tolist(), vals.tolist())]
            else:
                tops = [None] * len(chosen)
            out += list(zip(chosen, tops))
        return out

    def execute(self, chunks: list[Chunk]) -> torch.Tensor:
        """Run one step; returns float32 logits in chunk order: per sampling chunk 1 + its drafts rows (R, V)."""
        return self.run(self.prepare(chunks))


def score_positions(c: Chunk) -> range:
    """The positions j of chunk c whose logits score prompt token j + 1 (prompt logprobs), each scored once: a chunk
    recomputed after preemption does not score again what an earlier step did."""
    seq = c.seq
    if seq.params.prompt_logprobs is None:
        return range(0)
    return range(max(c.start, len(seq.prompt_logprobs)), min(c.end, seq.num_prompt - 1))


def assign_prompt_logprobs(chunks: list[Chunk], scores: list) -> None:
    """Hand a step's prompt scores (in `prepare`'s order) to their sequences, each with the number of alternatives
    it asked for (the step computed the largest any asked for)."""
    at = 0
    for c in chunks:
        n = len(score_positions(c))
        if n:
            k = c.seq.params.prompt_logprobs
            c.seq.prompt_logprobs.extend((lp, top[:k] if k else None) for lp, top in scores[at:at + n])
            at += n


@dataclass
class StepInputs:
    """One step's inputs. Legend: T tokens, S sequences. Plain CPU data, so it can be sent to other ranks."""

    ids: torch.Tensor  # (T,)
    positions: torch.Tensor  # (3, T)
    new_slots: torch.Tensor  # (T,) cache slot of each token
    seqs: list[_SeqAttn]  # per chunk: where its queries sit and which slots its context occupies
    vis_rows: list[tuple[str, int, int]]  # (media key, first row, end row) in token order
    vis_index: torch.Tensor  # positions among the T tokens that take visual features
    sample_rows: list[int]  # token indices whose logits are returned: per sampling chunk 1 + its drafts
    encode: list[tuple[str, tuple, torch.Tensor]]  # media to run through the ViT this step
    adapters: torch.Tensor | None = None  # (T,) LoRA adapter id per token (0: none); None when no token has one
    score_rows: list[int] = field(default_factory=list)  # token index whose logits score the next prompt token
    score_targets: list[int] = field(default_factory=list)  # that next prompt token
    score_top: int = 0  # top alternatives to report per scored token


def _token_adapters(rows: list[tuple[int, int]]) -> torch.Tensor | None:
    if not any(aid for aid, _ in rows):
        return None
    return torch.cat([torch.full((n,), aid, dtype=torch.long) for aid, n in rows])
