"""The modules that need communication once their weights are split: row-parallel linear, vocabulary-parallel
embedding and LM head, expert-parallel MoE experts. Column-parallel layers need no module of their own: they are
plain `nn.Linear`s holding fewer output rows.

Legend: T tokens, D width, V vocabulary, Vr this rank's vocabulary rows, E experts, Er this rank's experts,
k top-k, I expert width.

Parameter names stay the checkpoint's (`weight`, `bias`, `gate_up_proj`, `down_proj`), so a sharded model loads
with the same names as a whole one.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from qwen3vl.model.text import Experts, mix_experts


def all_reduce_(x: torch.Tensor, group) -> torch.Tensor:
    dist.all_reduce(x, group=group)
    return x


class RowParallelLinear(nn.Module):
    """y = sum over ranks of x_r @ W_r^T, then the (whole, replicated) bias once: the layer after a
    column-parallel one, whose input columns are this rank's share (o_proj, down_proj)."""

    def __init__(self, weight: nn.Parameter, bias: nn.Parameter | None, group):
        super().__init__()
        self.weight = weight  # (out, in / N)
        self.bias = bias  # (out,) or None
        self.group = group

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = all_reduce_(F.linear(x, self.weight), self.group)
        return y + self.bias if self.bias is not None else y


class VocabParallelEmbedding(nn.Module):
    """Rows [start, stop) of the embedding table; ids outside look up zeros and the all-reduce fills them in."""

    def __init__(self, weight: nn.Parameter, start: int, group):
        super().__init__()
        self.weight = weight  # (Vr, D)
        self.start = start
        self.group = group

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        local = ids - self.start
        outside = (local < 0) | (local >= self.weight.shape[0])
        x = F.embedding(local.masked_fill(outside, 0), self.weight)
        return all_reduce_(x.masked_fill(outside[..., None], 0), self.group)


class VocabParallelLMHead(nn.Module):
    """Logits of this rank's vocabulary rows, gathered from every rank and concatenated in vocabulary order."""

    def __init__(self, weight: nn.Parameter, vocab_size: int, group):
        super().__init__()
        self.weight = weight  # (Vr, D)
        self.vocab_size = vocab_size
        self.group = group
        self.chunk = -(-vocab_size // dist.get_world_size(group))  # rows per rank; the last rank may hold fewer

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        y = F.linear(h, self.weight)  # (..., Vr)
        if y.shape[-1] < self.chunk:  # all_gather needs equal sizes
            y = F.pad(y, (0, self.chunk - y.shape[-1]))
        y = y.contiguous()
        parts = [torch.empty_like(y) for _ in range(dist.get_world_size(self.group))]
        dist.all_gather(parts, y, group=self.group)
        return torch.cat(parts, dim=-1)[..., :self.vocab_size]  # (..., V)


class ParallelExperts(Experts):
    """Experts [first, first + Er) of E. Every rank routes every token (activations are replicated under tensor
    parallelism), runs only the (token, slot) pairs routed to its experts, and the all-reduce adds the ranks'
    partial sums: for replicated activations this is the dispatch to the experts' ranks and the combine back."""

    def __init__(self, gate_up_proj: nn.Parameter, down_proj: nn.Parameter, first: int, group):
        nn.Module.__init__(self)
        self.gate_up_proj = gate_up_proj  # (Er, D, 2I)
        self.down_proj = down_proj  # (Er, I, D)
        self.first = first
        self.group = group

    def forward(self, x_TD: torch.Tensor, idx_Tk: torch.Tensor, w_Tk: torch.Tensor) -> torch.Tensor:
        out = mix_experts(x_TD, idx_Tk, w_Tk, self.gate_up_proj.shape[0], self.expert, self.first)
        return all_reduce_(out, self.group)
