"""Position ids for interleaved MRoPE (spec §8) as pure functions.

A sequence splits into runs of text, image tokens and video tokens. Text advances one position per token on
all three axes; a visual group of a merged grid (h', w') puts every token at t = start, h = start + y,
w = start + x, and then advances by max(h', w'). A video of `gt` temporal patches is `gt` separate groups:
time order comes only from the timestamp text between frames (Qwen3-VL has no fps-scaled temporal axis).

`rope_delta` is what decoding adds to a token's plain index: position = index + delta on all axes. It lives
with the sequence, never on the model.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

TEXT, IMAGE, VIDEO = 0, 1, 2


def token_types(ids: np.ndarray, image_token_id: int, video_token_id: int) -> np.ndarray:
    types = np.zeros(ids.shape, dtype=np.int64)
    types[ids == image_token_id] = IMAGE
    types[ids == video_token_id] = VIDEO
    return types


def sequence_positions(types: np.ndarray, image_grids: Sequence[Sequence[int]], video_grids: Sequence[Sequence[int]],
                       merge: int) -> tuple[np.ndarray, int]:
    """Positions (3, S) int64 and rope delta for one unpadded sequence.

    `types` holds 0/1/2 per token; `image_grids`/`video_grids` are the (t, h, w) patch grids of the items in
    the order they appear. Raises ValueError when the pad-token runs do not match the grids.
    """
    n = len(types)
    out = np.empty((3, n), dtype=np.int64)
    queues = {IMAGE: [(1, h, w) for (t, h, w) in image_grids],
              VIDEO: [(1, h, w) for (t, h, w) in video_grids for _ in range(int(t))]}
    heads = {IMAGE: 0, VIDEO: 0}
    cur = 0
    i = 0
    while i < n:
        kind = types[i]
        j = i + 1
        while j < n and types[j] == kind:
            j += 1
        if kind == TEXT:
            out[:, i:j] = np.arange(cur, cur + j - i)
            cur += j - i
            i = j
            continue
        # A run of pad tokens can hold several consecutive groups (e.g. two frames with nothing between).
        while i < j:
            q = queues[kind]
            if heads[kind] >= len(q):
                name = "image" if kind == IMAGE else "video"
                raise ValueError(f"more {name} pad tokens in the sequence than the {name} grids describe")
            _, h, w = q[heads[kind]]
            heads[kind] += 1
            hh, ww = int(h) // merge, int(w) // merge
            size = hh * ww
            if i + size > j:
                raise ValueError(
                    f"a visual group of {hh}x{ww} tokens does not fit the {j - i} pad tokens left in its run")
            ys, xs = np.divmod(np.arange(size), ww)
            out[0, i:i + size] = cur
            out[1, i:i + size] = cur + ys
            out[2, i:i + size] = cur + xs
            cur += max(hh, ww)
            i += size
    delta = int(out.max()) + 1 - n if n else 0
    return out, delta


def get_rope_index(input_ids: torch.Tensor, attention_mask: torch.Tensor | None, image_grid_thw: torch.Tensor | None,
                   video_grid_thw: torch.Tensor | None, image_token_id: int, video_token_id: int,
                   merge: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Batched positions (3, B, S) and deltas (B,) in the layout the reference produces.

    Grids are consumed in row-major (batch, sequence) order. Padding positions get 0 on all axes.
    """
    ids = input_ids.cpu().numpy()
    mask = np.ones_like(ids, dtype=bool) if attention_mask is None else attention_mask.cpu().numpy().astype(bool)
    images = [] if image_grid_thw is None else image_grid_thw.tolist()
    videos = [] if video_grid_thw is None else video_grid_thw.tolist()
    b, s = ids.shape
    pos = np.zeros((3, b, s), dtype=np.int64)
    deltas = np.zeros(b, dtype=np.int64)
    img_i = vid_i = 0
    for row in range(b):
        kept = ids[row][mask[row]]
        types = token_types(kept, image_token_id, video_token_id)
        n_img, n_vid = _count_items(types, images[img_i:], videos[vid_i:], merge)
        p, d = sequence_positions(types, images[img_i:img_i + n_img], videos[vid_i:vid_i + n_vid], merge)
        img_i += n_img
        vid_i += n_vid
        pos[:, row, mask[row]] = p
        deltas[row] = d
    return torch.from_numpy(pos).to(input_ids.device), torch.from_numpy(deltas).to(input_ids.device)


def _count_items(types: np.ndarray, images: list, videos: list, merge: int) -> tuple[int, int]:
    """How many images and videos one row's pad tokens use up, taking grids in order."""
    counts = []
    for kind, grids in ((IMAGE, images), (VIDEO, videos)):
        need = int((types == kind).sum())
        used = k = 0
        while used < need:
            if k >= len(grids):
                raise ValueError(f"{'image' if kind == IMAGE else 'video'} pad tokens exceed the grids given")
            t, h, w = grids[k]
            used += int(t) * (int(h) // merge) * (int(w) // merge)
            k += 1
        if used != need:
            raise ValueError(f"{'image' if kind == IMAGE else 'video'} pad tokens do not match the grids given")
        counts.append(k)
    return counts[0], counts[1]


def decode_positions(index: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """Positions (3, ...) of generated tokens at plain indices `index`: index + delta on every axis."""
    return (index + delta).unsqueeze(0).expand(3, *index.shape)
