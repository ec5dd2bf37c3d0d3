"""The Qwen3 decoder (`model.language_model`): dense SwiGLU and MoE layers share one code path.

Legend: B batch, S tokens, D width, H query heads, K kv heads, Dh head dim, E experts, I expert width,
k top-k.

Attention itself is delegated to an `AttentionBackend` passed into `forward`: the model computes q, k, v
(after QK-norm and rotary) and the backend decides how keys and values are stored and attended (a plain
causal pass with a padding mask for `forward`, a paged KV cache in the engine). The model holds no cache
and no position state. Head counts are read off the weights at run time, so tensor parallelism can shard
the projections from outside without touching this file.

MoE experts are kept in the published checkpoint layout: `gate_up_proj` (E, D, 2I) and `down_proj` (E, I, D),
applied as `x @ W`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from qwen3vl.config import TextConfig
from qwen3vl.model.rope import apply_rotary, mrope_axis_map, mrope_cos_sin, text_inv_freq


class AttentionBackend(Protocol):
    """Stores this step's keys/values for a layer and returns the attention output."""

    def attend(self, layer_idx: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
               scale: float) -> torch.Tensor:
        """q (B, S, H, Dh), k/v (B, S, K, Dh) -> (B, S, H, Dh)."""
        ...


class CausalAttention:
    """Full causal attention over the given tokens only (no cache), with an optional (B, S) padding mask."""

    def __init__(self, attention_mask: torch.Tensor | None = None):
        self.attention_mask = attention_mask
        self._mask_cache: torch.Tensor | None = None

    def _mask(self, s: int, device: torch.device) -> torch.Tensor | None:
        if self.attention_mask is None:
            return None
        if self._mask_cache is None:
            causal = torch.ones(s, s, dtype=torch.bool, device=device).tril()
            keep = causal[None, None] & self.attention_mask.bool().to(device)[:, None, None, :]
            # A query at a padding position would see no key at all; let it see itself so softmax stays finite
            # (its output is never used).
            eye = torch.eye(s, dtype=torch.bool, device=device)[None, None]
            self._mask_cache = keep | eye
        return self._mask_cache

    def attend(self, layer_idx, q, k, v, scale):
        h, kv = q.shape[2], k.shape[2]
        qt, kt, vt = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, heads, S, Dh)
        mask = self._mask(q.shape[1], q.device)
        out = F.scaled_dot_product_attention(qt, kt, vt, attn_mask=mask, is_causal=mask is None, scale=scale,
                                             enable_gqa=h != kv)
        return out.transpose(1, 2)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        y = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * y.to(x.dtype)  # cast back before the weight multiply, as the reference does


class TextAttention(nn.Module):
    def __init__(self, cfg: TextConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.head_dim = cfg.head_dim
        self.scale = cfg.head_dim**-0.5
        bias = cfg.attention_bias
        self.q_proj = nn.Linear(cfg.hidden_size, cfg.num_attention_heads * cfg.head_dim, bias=bias)
        self.k_proj = nn.Linear(cfg.hidden_size, cfg.num_key_value_heads * cfg.head_dim, bias=bias)
        self.v_proj = nn.Linear(cfg.hidden_size, cfg.num_key_value_heads * cfg.head_dim, bias=bias)
        self.o_proj = nn.Linear(cfg.num_attention_heads * cfg.head_dim, cfg.hidden_size, bias=bias)
        self.q_norm = RMSNorm(cfg.head_dim, cfg.rms_norm_eps)
        self.k_norm = RMSNorm(cfg.head_dim, cfg.rms_norm_eps)

    def forward(self, x_BSD: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                backend: AttentionBackend) -> torch.Tensor:
        b, s, _ = x_BSD.shape
        q = self.q_norm(self.q_proj(x_BSD).view(b, s, -1, self.head_dim))  # (B, S, H, Dh)
        k = self.k_norm(self.k_proj(x_BSD).view(b, s, -1, self.head_dim))  # (B, S, K, Dh)
        v = self.v_proj(x_BSD).view(b, s, -1, self.head_dim)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        out = backend.attend(self.layer_idx, q, k, v, self.scale)  # (B, S, H, Dh)
        return self.o_proj(out.reshape(b, s, -1))


class DenseMLP(nn.Module):
    def __init__(self, hidden: int, inner: int):
        super().__init__()
        self.gate_proj = nn.Linear(hidden, inner, bias=False)
        self.up_proj = nn.Linear(hidden, inner, bias=False)
        self.down_proj = nn.Linear(inner, hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Experts(nn.Module):
    """E SwiGLU experts stacked in the published layout (no per-expert modules, no `.weight` suffix)."""

    def __init__(self, num_experts: int, hidden: int, inner: int):
        super().__init__()
        self.gate_up_proj = nn.Parameter(torch.empty(num_experts, hidden, 2 * inner))  # (E, D, 2I)
        self.down_proj = nn.Parameter(torch.empty(num_experts, inner, hidden))  # (E, I, D)

    def forward(self, x_TD: torch.Tensor, idx_Tk: torch.Tensor, w_Tk: torch.Tensor) -> torch.Tensor:
        return mix_experts(x_TD, idx_Tk, w_Tk, self.gate_up_proj.shape[0], self.expert)

    def expert(self, e: int, x_nD: torch.Tensor) -> torch.Tensor:
        gate, up = (x_nD @ self.gate_up_proj[e]).chunk(2, dim=-1)
        return (F.silu(gate) * up) @ self.down_proj[e]  # (n, D)


def mix_experts(x_TD: torch.Tensor, idx_Tk: torch.Tensor, w_Tk: torch.Tensor, num_experts: int,
                expert: Callable[[int, torch.Tensor], torch.Tensor], first: int = 0) -> torch.Tensor:
    """Each token's output: the sum over its k routed experts of weight * expert(e, its rows), one call per expert
    that has tokens. Only experts [first, first + num_experts) are run, as local ids e (a tensor-parallel rank's
    share; the others contribute nothing here)."""
    k = idx_Tk.shape[1]
    flat = idx_Tk.reshape(-1) - first  # local expert id of each (token, slot); outside [0, num_experts): elsewhere
    pairs = ((flat >= 0) & (flat < num_experts)).nonzero().squeeze(1)  # (P,) flat (token, slot) indices
    local = flat[pairs]
    pairs = pairs[local.argsort(stable=True)]  # grouped by expert, in token order within each
    counts = torch.bincount(local, minlength=num_experts).tolist()
    w_flat = w_Tk.reshape(-1)
    out = torch.zeros_like(x_TD)
    start = 0
    for e, n in enumerate(counts):
        if n == 0:
            continue
        sel = pairs[start:start + n]
        rows = sel // k  # token row of each selected (token, slot)
        start += n
        out.index_add_(0, rows, expert(e, x_TD[rows]) * w_flat[sel, None])
    return out


class SparseMoE(nn.Module):
    def __init__(self, cfg: TextConfig):
        super().__init__()
        self.top_k = cfg.num_experts_per_tok
        self.norm_topk = cfg.norm_topk_prob
        self.gate = nn.Linear(cfg.hidden_size, cfg.num_experts, bias=False)  # router
        self.experts = Experts(cfg.num_experts, cfg.hidden_size, cfg.moe_intermediate_size)

    def route(self, x_TD: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        logits = self.gate(x_TD)  # (T, E)
        probs = logits.float().softmax(-1)
        w, idx = probs.topk(self.top_k, dim=-1)  # (T, k)
        if self.norm_topk:
            w = w / w.sum(-1, keepdim=True)
        return w.to(logits.dtype), idx, logits

    def forward(self, x_BSD: torch.Tensor) -> torch.Tensor:
        shape = x_BSD.shape
        x = x_BSD.reshape(-1, shape[-1])
        w, idx, _ = self.route(x)
        return self.experts(x, idx, w).view(shape)


class DecoderLayer(nn.Module):
    def __init__(self, cfg: TextConfig, layer_idx: int):
        super().__init__()
        self.self_attn = TextAttention(cfg, layer_idx)
        self.mlp = SparseMoE(cfg) if cfg.is_moe_layer(layer_idx) else DenseMLP(cfg.hidden_size, cfg.intermediate_size)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

    def forward(self, x, cos, sin, backend):
        h = x + self.self_attn(self.input_layernorm(x), cos, sin, backend)
        return h + self.mlp(self.post_attention_layernorm(h))


class TextModel(nn.Module):
    def __init__(self, cfg: TextConfig):
        super().__init__()
        self.cfg = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(cfg, i) for i in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        inv_freq, self.rope_scaling = text_inv_freq(cfg.rope, cfg.head_dim, cfg.max_position_embeddings)
        # plain attributes, not buffers: they are derived from the config and must survive meta-device builds
        self._inv_freq = inv_freq
        self._axis_map = mrope_axis_map(cfg.head_dim // 2, cfg.rope.mrope_section)

    def rotary(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """positions (3, B, S) -> cos, sin (B, S, Dh) in `dtype`."""
        return mrope_cos_sin(positions, self._inv_freq, self._axis_map, self.rope_scaling, dtype)

    def forward(self, inputs_embeds: torch.Tensor, positions: torch.Tensor, backend: AttentionBackend,
                visual_mask: torch.Tensor | None = None,
                deepstack: list[torch.Tensor] | None = None) -> torch.Tensor:
        """inputs_embeds (B, S, D), positions (3, B, S) -> final-normed hidden states (B, S, D).

        `deepstack[i]` (Nvis, D) is added at the `visual_mask` positions after decoder layer i.
        """
        x = inputs_embeds
        cos, sin = self.rotary(positions, x.dtype)
        for i, layer in enumerate(self.layers):
            x = layer(x, cos, sin, backend)
            if deepstack is not None and i < len(deepstack) and visual_mask is not None:
                x = x.clone()
                x[visual_mask] = x[visual_mask] + deepstack[i].to(x.dtype)
        return self.norm(x)
