"""The Qwen3-VL vision encoder (`model.visual`): ViT with native dynamic resolution and DeepStack taps.

Legend: N patches (rows of `pixel_values`, merge-block order, spec §3.3), Dv vision width, D text width,
Hv heads, Dh head dim, M = merge**2 patches per merged token.

Module and parameter names are the checkpoint's (spec §11.1), so loading is a plain name match.

Per item (image, or video of gt temporal patches) with patch grid (t, h, w):
  * a learned 48x48 position table is resampled bilinearly (align_corners=True) to (h, w);
  * 2-D rotary angles come from each patch's (row, col);
  * attention is full within one temporal patch of one item and never crosses items; windows of the same size, from
    any items, run as one batched attention call (`attention_windows`).
Grid-derived tensors are cached per (h, w), so a video or repeated image sizes cost nothing extra.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from qwen3vl.config import VisionConfig
from qwen3vl.model.rope import apply_rotary_vision, vision_cos_sin, vision_inv_freq


class VisionPatchEmbed(nn.Module):
    def __init__(self, cfg: VisionConfig):
        super().__init__()
        k = (cfg.temporal_patch_size, cfg.patch_size, cfg.patch_size)
        self.proj = nn.Conv3d(cfg.in_channels, cfg.hidden_size, kernel_size=k, stride=k, bias=True)

    def forward(self, x_NP: torch.Tensor) -> torch.Tensor:
        # A stride-equal-to-kernel Conv3d over one patch cube is a matmul with the flattened kernel; the row
        # layout (c, t, py, px) of pixel_values is exactly the kernel's flattening order.
        w = self.proj.weight
        return F.linear(x_NP.to(w.dtype), w.reshape(w.shape[0], -1), self.proj.bias)


@dataclass
class Windows:
    """Where vision attention runs: each item's temporal patch is one window of h*w rows, never crossing another.
    Windows of the same length, from any items, share one attention call: `groups` holds (start, count, length) runs
    of `count` back-to-back windows in the row order `order` (None: the input order already is), and `inverse`
    puts the rows back. A batch of 100 same-size images costs one call per layer, not 100."""

    groups: list[tuple[int, int, int]]
    order: torch.Tensor | None = None
    inverse: torch.Tensor | None = None


def attention_windows(grids: list[list[int]], device: torch.device | str = "cpu") -> Windows:
    """The `Windows` of items with patch grids (t, h, w), in the order of `pixel_values`."""
    starts, by_length = 0, {}
    for t, h, w in grids:
        by_length.setdefault(h * w, []).append((starts, t))
        starts += t * h * w
    groups, pieces, at, in_order = [], [], 0, True
    for length, items in by_length.items():
        count = sum(t for _, t in items)
        groups.append((at, count, length))
        for start, t in items:
            in_order = in_order and start == at
            pieces.append(torch.arange(start, start + t * length))
            at += t * length
    if in_order:
        return Windows(groups)
    order = torch.cat(pieces)
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(order.numel())
    return Windows(groups, order.to(device), inverse.to(device))


class VisionAttention(nn.Module):
    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.head_dim = cfg.head_dim
        self.qkv = nn.Linear(cfg.hidden_size, 3 * cfg.hidden_size, bias=True)
        self.proj = nn.Linear(cfg.hidden_size, cfg.hidden_size, bias=True)

    def forward(self, x_ND: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, windows: Windows) -> torch.Tensor:
        n = x_ND.shape[0]
        q, k, v = self.qkv(x_ND).view(n, 3, -1, self.head_dim).unbind(1)  # each (N, Hv, Dh)
        q, k = apply_rotary_vision(q, cos, sin), apply_rotary_vision(k, cos, sin)
        if windows.order is not None:  # rows grouped by window length
            q, k, v = (t.index_select(0, windows.order) for t in (q, k, v))
        outs = []
        for start, count, length in windows.groups:  # `count` back-to-back windows of `length` rows: one call
            end = start + count * length

            def window(t: torch.Tensor) -> torch.Tensor:  # (count, Hv, length, Dh)
                return t[start:end].view(count, length, -1, self.head_dim).transpose(1, 2)

            o = F.scaled_dot_product_attention(window(q), window(k), window(v))
            outs.append(o.transpose(1, 2).reshape(count * length, -1, self.head_dim))
        out = outs[0] if len(outs) == 1 else torch.cat(outs)
        if windows.order is not None:
            out = out.index_select(0, windows.inverse)
        return self.proj(out.reshape(n, -1))


class VisionMLP(nn.Module):
    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.linear_fc1 = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=True)
        self.linear_fc2 = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=True)
        if cfg.hidden_act not in ("gelu_pytorch_tanh", "gelu"):
            raise ValueError(f"vision_config.hidden_act {cfg.hidden_act!r} is not supported")
        self.approximate = "tanh" if cfg.hidden_act == "gelu_pytorch_tanh" else "none"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_fc2(F.gelu(self.linear_fc1(x), approximate=self.approximate))


class VisionBlock(nn.Module):
    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.hidden_size, eps=1e-6)
        self.norm2 = nn.LayerNorm(cfg.hidden_size, eps=1e-6)
        self.attn = VisionAttention(cfg)
        self.mlp = VisionMLP(cfg)

    def forward(self, x, cos, sin, windows):
        x = x + self.attn(self.norm1(x), cos, sin, windows)
        return x + self.mlp(self.norm2(x))


class PatchMerger(nn.Module):
    """2x2 patches -> one text-width token. The final merger normalises each patch before the shuffle;
    the DeepStack mergers normalise the concatenated 4*Dv vector after it (spec §5.6-5.7)."""

    def __init__(self, cfg: VisionConfig, postshuffle_norm: bool):
        super().__init__()
        self.merged = cfg.hidden_size * cfg.spatial_merge_size**2
        self.postshuffle_norm = postshuffle_norm
        self.norm = nn.LayerNorm(self.merged if postshuffle_norm else cfg.hidden_size, eps=1e-6)
        self.linear_fc1 = nn.Linear(self.merged, self.merged, bias=True)
        self.linear_fc2 = nn.Linear(self.merged, cfg.out_hidden_size, bias=True)

    def forward(self, x_ND: torch.Tensor) -> torch.Tensor:
        if self.postshuffle_norm:
            y = self.norm(x_ND.reshape(-1, self.merged))
        else:
            y = self.norm(x_ND).reshape(-1, self.merged)
        return self.linear_fc2(F.gelu(self.linear_fc1(y)))  # exact (erf) GELU here, unlike the blocks


@functools.lru_cache(maxsize=256)
def _grid_tables(h: int, w: int, merge: int, side: int) -> tuple[torch.Tensor, ...]:
    """For one (h, w) patch grid in merge-block order: (rows, cols) and bilinear taps/weights (h*w, 4)."""
    idx = torch.arange(h * w)
    in_col, in_row = idx % merge, (idx // merge) % merge
    block_col = (idx // (merge * merge)) % (w // merge)
    block_row = idx // (merge * merge * (w // merge))
    rows, cols = block_row * merge + in_row, block_col * merge + in_col

    def axis(i: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        s = i.to(torch.float32) * (side - 1) / max(n - 1, 1)
        f = torch.floor(s)
        taps = torch.stack([f.long(), (f.long() + 1).clamp(max=side - 1)], dim=1)
        a = s - f
        return taps, torch.stack([1 - a, a], dim=1)

    tr, wr = axis(rows, h)
    tc, wc = axis(cols, w)
    taps = (tr[:, :, None] * side + tc[:, None, :]).reshape(-1, 4)
    weights = (wr[:, :, None] * wc[:, None, :]).reshape(-1, 4)
    return rows, cols, taps, weights


class VisionModel(nn.Module):
    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.cfg = cfg
        self.patch_embed = VisionPatchEmbed(cfg)
        self.pos_embed = nn.Embedding(cfg.num_position_embeddings, cfg.hidden_size)
        self.blocks = nn.ModuleList(VisionBlock(cfg) for _ in range(cfg.depth))
        self.merger = PatchMerger(cfg, postshuffle_norm=False)
        self.deepstack_merger_list = nn.ModuleList(
            PatchMerger(cfg, postshuffle_norm=True) for _ in cfg.deepstack_visual_indexes)

    @property
    def dtype(self) -> torch.dtype:
        return self.pos_embed.weight.dtype

    def grid_inputs(self, grid_thw: list[list[int]], device: torch.device):
        """Position embedding (N, Dv) in the hidden dtype, rotary cos/sin (N, Dh) and the attention `Windows`."""
        cfg = self.cfg
        side = cfg.pos_grid_side
        rows, cols, taps, weights = [], [], [], []
        for t, h, w in grid_thw:
            if h % cfg.spatial_merge_size or w % cfg.spatial_merge_size:
                raise ValueError(f"grid {t}x{h}x{w} is not a multiple of the merge size {cfg.spatial_merge_size}")
            r, c, tp, wt = _grid_tables(int(h), int(w), cfg.spatial_merge_size, side)
            rows.append(r.repeat(t))
            cols.append(c.repeat(t))
            taps.append(tp.repeat(t, 1))
            weights.append(wt.repeat(t, 1))
        taps_t = torch.cat(taps).to(device)
        weights_t = torch.cat(weights).to(device)
        table = self.pos_embed.weight
        # float32 weights times table rows (promoted to float32), summed, then cast to the hidden dtype
        pos = (F.embedding(taps_t, table) * weights_t[:, :, None]).sum(1).to(table.dtype)
        inv_freq = vision_inv_freq(cfg.head_dim, cfg.rope_theta).to(device)
        cos, sin = vision_cos_sin(torch.cat(rows).to(device), torch.cat(cols).to(device), inv_freq)
        return pos, cos, sin, attention_windows([[int(v) for v in g] for g in grid_thw], device)

    def forward(self, pixel_values: torch.Tensor, grid_thw: torch.Tensor | list) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """pixel_values (N, C*Tp*P*P) -> merged tokens (N/M, D) and one (N/M, D) tensor per DeepStack level."""
        grids = grid_thw.tolist() if isinstance(grid_thw, torch.Tensor) else [list(g) for g in grid_thw]
        expected = sum(t * h * w for t, h, w in grids)
        if pixel_values.shape[0] != expected:
            raise ValueError(f"pixel_values has {pixel_values.shape[0]} rows but the grids describe {expected} patches")
        x = self.patch_embed(pixel_values)
        pos, cos, sin, windows = self.grid_inputs(grids, x.device)
        x = x + pos.to(x.dtype)
        deep: list[torch.Tensor] = []
        levels = self.cfg.deepstack_visual_indexes
        for i, block in enumerate(self.blocks):
            x = block(x, cos, sin, windows)
            if i in levels:
                deep.append(self.deepstack_merger_list[levels.index(i)](x))
        return self.merger(x), deep
