"""Logits parity against transformers 5.23 on random weights, through our real checkpoint loader (fp32, 1e-4)."""

from __future__ import annotations

import pytest
import torch

import qwen3vl
from reference import Inputs, batch, ours_kwargs, reference_model

TOL = 1e-4


@pytest.fixture(scope="module", params=["dense", "moe"])
def pair(request, tmp_path_factory):
    ref = reference_model(request.param, seed=1)
    folder = tmp_path_factory.mktemp(request.param)
    ref.save_pretrained(folder)
    ours = qwen3vl.load_model(folder, dtype=torch.float32)
    return request.param, ref, ours


def _cases(gen: torch.Generator) -> dict[str, list[Inputs]]:
    return {
        "text only": [Inputs().text(23, gen)],
        "one image": [Inputs().text(7, gen).image(14, 20).text(5, gen)],
        "two awkward images": [Inputs().text(4, gen).image(6, 34).text(3, gen).image(22, 8).text(6, gen)],
        "one video": [Inputs().text(5, gen).video(3, 4, 6, gen).text(4, gen)],
        "video, 5.23 outer wrapper": [Inputs().text(5, gen).video(2, 6, 4, gen, outer=True).text(4, gen)],
        "image and video": [Inputs().text(3, gen).video(2, 4, 4, gen).text(2, gen).image(10, 12).text(5, gen)],
        "left-padded batch of two": [Inputs().text(6, gen).image(8, 10).text(9, gen),
                                     Inputs().text(4, gen).video(2, 4, 6, gen).text(3, gen)],
        "left-padded text batch": [Inputs().text(30, gen), Inputs().text(11, gen)],
        # same-size items apart from each other share attention calls (vision.attention_windows regroups rows)
        "same sizes interleaved": [Inputs().text(3, gen).image(8, 8).video(2, 4, 6, gen).text(2, gen).image(8, 8),
                                   Inputs().text(5, gen).video(3, 4, 6, gen).image(4, 6).text(2, gen).image(8, 8)],
    }


CASES = list(_cases(torch.Generator().manual_seed(0)))


@pytest.mark.parametrize("case", CASES)
def test_logits_match_reference(pair, case):
    kind, ref, ours = pair
    gen = torch.Generator().manual_seed(123)
    inputs = batch(_cases(gen)[case], gen)
    with torch.no_grad():
        expected = ref(**inputs).logits
        got = ours(**ours_kwargs(inputs)).logits
    keep = inputs["attention_mask"].bool()
    diff = (expected[keep] - got[keep]).abs().max().item()
    print(f"{kind} / {case}: max |logits diff| = {diff:.2e}")
    assert diff <= TOL, f"{kind} / {case}: max logits difference {diff:.3e} > {TOL}"


def test_padded_rows_equal_unpadded(pair):
    """A row's logits do not depend on the left padding it was given."""
    _, _, ours = pair
    gen = torch.Generator().manual_seed(5)
    rows = [Inputs().text(6, gen).image(8, 10).text(9, gen), Inputs().text(4, gen).image(4, 6).text(3, gen)]
    both = batch(rows, gen)
    with torch.no_grad():
        padded = ours(**ours_kwargs(both)).logits
        g2 = torch.Generator().manual_seed(5)
        rows2 = [Inputs().text(6, g2).image(8, 10).text(9, g2), Inputs().text(4, g2).image(4, 6).text(3, g2)]
        b2 = batch(rows2, g2)  # same pixels, same ids
        first = rows2[0]
        n0 = first.image_grids[0][1] * first.image_grids[0][2]
        alone = ours(input_ids=torch.tensor([rows2[1].input_ids]),
                     pixel_values=b2["pixel_values"][n0:], image_grid_thw=b2["image_grid_thw"][1:]).logits
    n = len(rows[1].input_ids)
    assert (padded[1, -n:] - alone[0]).abs().max().item() <= TOL


def test_vision_features_per_deepstack_level(pair):
    kind, ref, ours = pair
    gen = torch.Generator().manual_seed(7)
    grids = torch.tensor([[1, 6, 34], [2, 4, 6], [1, 22, 8]])
    pv = torch.randn(int(grids.prod(-1).sum()), 1536, generator=gen)
    with torch.no_grad():
        out = ref.model.visual(pv, grid_thw=grids)
        feats = ours.encode_vision(pv, grids)
    assert (out.pooler_output - feats.embeds).abs().max().item() <= TOL
    assert len(out.deepstack_features) == len(feats.deepstack) == 2
    for level, (a, b) in enumerate(zip(out.deepstack_features, feats.deepstack)):
        diff = (a - b).abs().max().item()
        assert diff <= TOL, f"{kind}: DeepStack level {level} differs by {diff:.3e}"


def test_bf16_difference_is_reported(pair, tmp_path):
    """bf16 is not bit-exact across implementations; print the gap and only guard against gross errors."""
    kind, ref, _ = pair
    ref.save_pretrained(tmp_path)
    ours16 = qwen3vl.load_model(tmp_path, dtype=torch.bfloat16)
    ref16 = type(ref)(ref.config).to(torch.bfloat16).eval()
    ref16.load_state_dict(ref.state_dict())
    gen = torch.Generator().manual_seed(9)
    inputs = batch([Inputs().text(5, gen).image(8, 8).text(6, gen)], gen)
    with torch.no_grad():
        a = ref16(**inputs).logits.float()
        b = ours16(**ours_kwargs(inputs)).logits.float()
        full = ref(**inputs).logits
    diff, scale = (a - b).abs().max().item(), full.abs().max().item()
    print(f"{kind} bf16: max |ours - reference| = {diff:.3e} (logit scale {scale:.2f}); "
          f"reference bf16 vs fp32 = {(a - full).abs().max().item():.3e}")
    assert diff < 0.1 * scale + 0.05


def test_attention_windows_group_equal_sizes_and_undo_the_order():
    from qwen3vl.model.vision import attention_windows

    same = attention_windows([[1, 4, 4], [2, 4, 4], [1, 2, 4]])  # lengths 16, 16, 8: already grouped
    assert same.groups == [(0, 3, 16), (48, 1, 8)] and same.order is None
    mixed = attention_windows([[1, 4, 4], [2, 2, 4], [1, 4, 4]])  # 16, 8, 16: the last image joins the first
    assert mixed.groups == [(0, 2, 16), (32, 2, 8)]
    assert mixed.order.tolist() == list(range(16)) + list(range(32, 48)) + list(range(16, 32))
    rows = torch.arange(48)
    assert torch.equal(rows.index_select(0, mixed.order).index_select(0, mixed.inverse), rows)


def test_grouped_vision_attention_equals_one_call_per_window():
    """The batched calls give what attention over each window alone gives (the definition), to float rounding."""
    from qwen3vl.config import VisionConfig
    from qwen3vl.model.vision import VisionAttention, attention_windows

    torch.manual_seed(0)
    attn = VisionAttention(VisionConfig(hidden_size=32, num_heads=2, intermediate_size=64, depth=1))
    grids = [[1, 4, 4], [2, 2, 4], [1, 4, 4], [3, 2, 2], [1, 2, 4]]
    n = sum(t * h * w for t, h, w in grids)
    x, cos, sin = torch.randn(n, 32), torch.randn(n, 16).cos(), torch.randn(n, 16).sin()
    got = attn(x, cos, sin, attention_windows(grids))
    singles, start = [], 0
    for t, h, w in grids:
        for _ in range(t):
            rows = slice(start, start + h * w)
            singles.append(attn(x[rows], cos[rows], sin[rows], attention_windows([[1, h, w]])))
            start += h * w
    assert torch.allclose(got, torch.cat(singles), atol=1e-6, rtol=0)
