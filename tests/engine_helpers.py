"""Hand-built engine prompts (token ids + media items) and the naive no-cache greedy loop they are checked against."""

from __future__ import annotations

import torch

from qwen3vl.engine.sequence import MediaItem


class Prompt:
    """Token ids with images/videos laid out as the processor does (4.57 video layout)."""

    def __init__(self, cfg, gen: torch.Generator):
        self.cfg, self.gen = cfg, gen
        self.ids: list[int] = []
        self.media: list[MediaItem] = []
        self.kinds: list[str] = []
        self.images: list[tuple[torch.Tensor, tuple]] = []
        self.videos: list[tuple[torch.Tensor, tuple]] = []

    def text(self, n: int) -> "Prompt":
        self.ids += torch.randint(0, 250, (n,), generator=self.gen).tolist()
        return self

    def _item(self, kind: str, key: str, grid: tuple, pixels: torch.Tensor) -> None:
        c = self.cfg
        pad = c.image_token_id if kind == "image" else c.video_token_id
        n = grid[0] * grid[1] * grid[2] // 4
        self.ids.append(c.vision_start_token_id)
        self.media.append(MediaItem(key=key, grid_thw=grid, offset=len(self.ids), num_tokens=n, pixel_values=pixels))
        self.kinds.append(kind)
        self.ids += [pad] * n + [c.vision_end_token_id]

    def image(self, h: int, w: int, key: str | None = None, pixels: torch.Tensor | None = None) -> "Prompt":
        pv = pixels if pixels is not None else torch.randn(h * w, 1536, generator=self.gen)
        self._item("image", key or f"img{len(self.media)}-{float(pv.sum()):.6f}", (1, h, w), pv)
        self.images.append((pv, (1, h, w)))
        return self

    def video(self, t: int, h: int, w: int) -> "Prompt":
        pv = torch.randn(t * h * w, 1536, generator=self.gen)
        key = f"vid-{float(pv.sum()):.6f}"
        for k in range(t):
            self.text(2)  # the timestamp text
            self._item("video", f"{key}:{k}", (1, h, w), pv[k * h * w:(k + 1) * h * w])
        self.videos.append((pv, (t, h, w)))
        return self

    def forward_kwargs(self) -> dict:
        out = {}
        if self.images:
            out["pixel_values"] = torch.cat([p for p, _ in self.images])
            out["image_grid_thw"] = torch.tensor([g for _, g in self.images])
        if self.videos:
            out["pixel_values_videos"] = torch.cat([p for p, _ in self.videos])
            out["video_grid_thw"] = torch.tensor([g for _, g in self.videos])
        return out


@torch.no_grad()
def naive_greedy(model, prompt: Prompt, steps: int) -> list[int]:
    """Full recompute every step through the transformers-style forward: no cache of any kind."""
    ids = list(prompt.ids)
    out = []
    kwargs = prompt.forward_kwargs()
    for _ in range(steps):
        logits = model(torch.tensor([ids]), **kwargs).logits[0, -1]
        token = int(logits.argmax())
        out.append(token)
        ids.append(token)
    return out


def engine_greedy(model, prompts: list[Prompt], steps: int) -> list[list[int]]:
    """Our engine's greedy tokens for hand-built prompts, all submitted at once."""
    from qwen3vl.engine.engine import Engine, EngineConfig
    from qwen3vl.engine.sampling import SamplingParams

    eng = Engine(model, eos_token_ids=[], config=EngineConfig(block_size=8, num_blocks=64))
    for i, p in enumerate(prompts):
        eng.add_request(str(i), p.ids, SamplingParams(max_tokens=steps, temperature=0), p.media, p.kinds)
    eng.run_until_done()
    return [eng.requests[str(i)][0].output_ids for i in range(len(prompts))]


@torch.no_grad()
def reference_greedy(ref, prompt: Prompt, steps: int, image_id: int, video_id: int) -> list[int]:
    """transformers' `generate` (greedy) on a hand-built prompt: the new token ids."""
    ids = torch.tensor([prompt.ids])
    mm = torch.zeros_like(ids)
    mm[ids == image_id] = 1
    mm[ids == video_id] = 2
    out = ref.generate(input_ids=ids, attention_mask=torch.ones_like(ids), mm_token_type_ids=mm,
                       max_new_tokens=steps, do_sample=False, **prompt.forward_kwargs())
    return out[0, len(prompt.ids):].tolist()


def sharpen(model, factor: float = 4.0):
    """Scale weight matrices so a random model's greedy choices are decisive (no near-ties), and zero the LM-head
    rows of ids >= 256 so it never generates a special token (a generated image pad would make the naive loop's
    pad count disagree with its pixels; the maximum over 256 random logits is positive, so zero never wins)."""
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.mul_(factor)
        model.lm_head.weight[256:] = 0
    return model
