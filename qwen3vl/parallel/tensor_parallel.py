"""`parallelize(model, group)`: tensor and expert parallelism applied to a built model from outside.

Works on a model on the meta device (parameters become meta tensors of the shard's shape, to be filled by
`qwen3vl.parallel.loading.load_shard`) or on a loaded one (parameters are replaced by copies of their slice, and
the whole tensors are freed). Returns the plan: parameter name -> `Shard`, for every split parameter.

What is split (N ranks of `group`):
  * attention: q/k/v column-parallel by heads, o_proj row-parallel + all-reduce. `TextAttention` reads its head
    counts off the weights, and the engine's KV cache is sized from the k_proj shard, so both see only this rank's
    heads without knowing about parallelism.
  * dense MLP: gate/up column-parallel, down row-parallel + all-reduce.
  * MoE: the router is replicated, experts are spread E/N per rank (`ParallelExperts`) + all-reduce.
  * embedding and LM head: vocabulary-parallel (masked lookup + all-reduce; local logits + all-gather). A tied head
    stays tied to the sharded embedding.
What is replicated: the vision encoder (every rank encodes the same media; see docs/PARALLEL.md for why and what
it costs), norms, the MoE router, rotary tables.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from qwen3vl.model.text import DenseMLP, SparseMoE
from qwen3vl.parallel.layers import ParallelExperts, RowParallelLinear, VocabParallelEmbedding, VocabParallelLMHead
from qwen3vl.parallel.plan import Shard, check_split, chunk, kv_head_range, vocab_chunk

ShardPlan = dict[str, Shard]


def _take(p: nn.Parameter, shard: Shard) -> nn.Parameter:
    """The shard of `p`: a meta tensor of the shard's shape, or a copy of the selected slices."""
    if p.is_meta:
        value = torch.empty(shard.shape, dtype=p.dtype, device="meta")
    else:
        value = torch.cat([p.data[shard.index(a, b)] for a, b in shard.ranges], dim=shard.dim)
    return nn.Parameter(value, requires_grad=p.requires_grad)


class _Splitter:
    def __init__(self):
        self.plan: ShardPlan = {}

    def take(self, module: nn.Module, leaf: str, name: str, dim: int, a: int, b: int) -> nn.Parameter:
        p = getattr(module, leaf)
        shard = Shard(dim, ((a, b),), tuple(p.shape))
        self.plan[name] = shard
        return _take(p, shard)

    def column(self, linear: nn.Linear, name: str, a: int, b: int) -> None:
        """Keep output rows [a, b) of `linear` (and of its bias)."""
        linear.weight = self.take(linear, "weight", f"{name}.weight", 0, a, b)
        if linear.bias is not None:
            linear.bias = self.take(linear, "bias", f"{name}.bias", 0, a, b)
        linear.out_features = b - a

    def row(self, linear: nn.Linear, name: str, a: int, b: int, group) -> RowParallelLinear:
        """Keep input columns [a, b) of `linear`; the bias stays whole and is added after the all-reduce."""
        return RowParallelLinear(self.take(linear, "weight", f"{name}.weight", 1, a, b), linear.bias, group)


def parallelize(model, group=None) -> ShardPlan:
    """Split `model` (a `Qwen3VLForConditionalGeneration`) in place over the ranks of `group` (default: the world).

    Every rank must call this with the same model config. Raises `ParallelSplitError` when the config does not
    split over the group's size.
    """
    n, r = dist.get_world_size(group), dist.get_rank(group)
    cfg = model.config
    t = cfg.text_config
    check_split(cfg, n)
    s = _Splitter()
    dh = t.head_dim
    q0, q1 = chunk(t.num_attention_heads, n, r)
    k0, k1 = kv_head_range(t.num_key_value_heads, n, r)
    text = model.model.language_model
    for i, layer in enumerate(text.layers):
        prefix = f"model.language_model.layers.{i}"
        attn = layer.self_attn
        s.column(attn.q_proj, f"{prefix}.self_attn.q_proj", q0 * dh, q1 * dh)
        s.column(attn.k_proj, f"{prefix}.self_attn.k_proj", k0 * dh, k1 * dh)
        s.column(attn.v_proj, f"{prefix}.self_attn.v_proj", k0 * dh, k1 * dh)
        attn.o_proj = s.row(attn.o_proj, f"{prefix}.self_attn.o_proj", q0 * dh, q1 * dh, group)
        mlp = layer.mlp
        if isinstance(mlp, DenseMLP):
            i0, i1 = chunk(t.intermediate_size, n, r)
            s.column(mlp.gate_proj, f"{prefix}.mlp.gate_proj", i0, i1)
            s.column(mlp.up_proj, f"{prefix}.mlp.up_proj", i0, i1)
            mlp.down_proj = s.row(mlp.down_proj, f"{prefix}.mlp.down_proj", i0, i1, group)
        elif isinstance(mlp, SparseMoE):
            e0, e1 = chunk(t.num_experts, n, r)
            ex, name = mlp.experts, f"{prefix}.mlp.experts"
            mlp.experts = ParallelExperts(s.take(ex, "gate_up_proj", f"{name}.gate_up_proj", 0, e0, e1),
                                          s.take(ex, "down_proj", f"{name}.down_proj", 0, e0, e1), e0, group)
        else:  # pragma: no cover - the decoder has only these two
            raise TypeError(f"layer {i} has an MLP of unknown type {type(mlp).__name__}")
    v0, v1 = vocab_chunk(t.vocab_size, n, r)
    embed = s.take(text.embed_tokens, "weight", "model.language_model.embed_tokens.weight", 0, v0, v1)
    text.embed_tokens = VocabParallelEmbedding(embed, v0, group)
    if cfg.tie_word_embeddings:
        head = embed
    else:
        head = s.take(model.lm_head, "weight", "lm_head.weight", 0, v0, v1)
    model.lm_head = VocabParallelLMHead(head, t.vocab_size, group)
    return s.plan
