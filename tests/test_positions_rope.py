"""Position ids and rotary tables, checked alone against the reference's functions."""

from __future__ import annotations

import pytest
import torch

from qwen3vl.config import RopeConfig
from qwen3vl.model.positions import get_rope_index, sequence_positions, token_types
from qwen3vl.model.rope import mrope_axis_map, mrope_cos_sin, text_inv_freq, vision_cos_sin, vision_inv_freq
from reference import IMG, VID, Inputs, batch, reference_model


@pytest.fixture(scope="module")
def ref():
    return reference_model("dense", seed=0)


@pytest.mark.parametrize("outer", [False, True])
def test_positions_match_reference(ref, outer):
    gen = torch.Generator().manual_seed(0)
    rows = [Inputs().text(7, gen).image(14, 20).text(3, gen).video(3, 4, 6, gen, outer=outer).text(2, gen),
            Inputs().text(4, gen).image(6, 34).image(4, 4).text(5, gen),
            Inputs().text(9, gen)]
    inp = batch(rows, gen)
    expected, exp_delta = ref.model.get_rope_index(
        inp["input_ids"], inp["mm_token_type_ids"], image_grid_thw=inp.get("image_grid_thw"),
        video_grid_thw=inp.get("video_grid_thw"), attention_mask=inp["attention_mask"])
    got, delta = get_rope_index(inp["input_ids"], inp["attention_mask"], inp.get("image_grid_thw"),
                                inp.get("video_grid_thw"), IMG, VID, 2)
    assert torch.equal(got, expected)
    assert torch.equal(delta, exp_delta.view(-1))


def test_worked_example_from_spec():
    # 7 text tokens, then a 7x10 merged image (grid 14x20): t=7, h=7..13, w=7..16; next text at 17.
    types = torch.tensor([0] * 7 + [1] * 70 + [0] * 23).numpy()
    pos, delta = sequence_positions(types, [[1, 14, 20]], [], 2)
    assert pos[:, 7].tolist() == [7, 7, 7] and pos[:, 76].tolist() == [7, 13, 16]
    assert pos[:, 77].tolist() == [17, 17, 17]
    assert delta == -60  # max position 39, 100 tokens


def test_video_frames_share_time_within_a_frame():
    ids = torch.tensor([5, 5] + [VID] * 6 + [5] + [VID] * 6).numpy()
    pos, _ = sequence_positions(token_types(ids, IMG, VID), [], [[2, 4, 6]], 2)
    assert set(pos[0, 2:8].tolist()) == {2} and pos[2, 2:8].tolist() == [2, 3, 4, 2, 3, 4]
    assert pos[0, 8] == 5 and set(pos[0, 9:].tolist()) == {6}


def test_mismatched_pads_raise():
    types = torch.tensor([0, 1, 1, 1]).numpy()
    with pytest.raises(ValueError, match="does not fit"):
        sequence_positions(types, [[1, 4, 4]], [], 2)


def test_text_rotary_matches_reference(ref):
    rotary = ref.model.language_model.rotary_emb
    pos = torch.randint(0, 5000, (3, 2, 17))
    x = torch.zeros(1, dtype=torch.float32)
    cos_r, sin_r = rotary(x, pos)
    cfg = RopeConfig(rope_theta=5e6, mrope_section=[2, 3, 3])
    inv, scale = text_inv_freq(cfg, 16, 4096)
    cos, sin = mrope_cos_sin(pos, inv, mrope_axis_map(8, [2, 3, 3]), scale, torch.float32)
    assert torch.allclose(cos, cos_r, atol=1e-6) and torch.allclose(sin, sin_r, atol=1e-6)


def test_interleaved_axis_pattern_for_released_sizes():
    axis = mrope_axis_map(64, [24, 20, 20]).tolist()
    assert axis[:6] == [0, 1, 2, 0, 1, 2] and axis[57:60] == [0, 1, 2] and axis[60:] == [0, 0, 0, 0]
    assert axis.count(0) == 24 and axis.count(1) == 20 and axis.count(2) == 20


def test_yarn_rotary_matches_reference():
    text = {"rope_parameters": {"rope_type": "yarn", "factor": 3.0, "original_max_position_embeddings": 1024,
                                "rope_theta": 5e6, "mrope_section": [2, 3, 3], "mrope_interleaved": True}}
    ref = reference_model("dense", seed=0, text_overrides=text)
    rotary = ref.model.language_model.rotary_emb
    pos = torch.randint(0, 3000, (3, 1, 9))
    cos_r, sin_r = rotary(torch.zeros(1), pos)
    cfg = RopeConfig.from_text_dict(text)
    inv, scale = text_inv_freq(cfg, 16, 4096)
    cos, sin = mrope_cos_sin(pos, inv, mrope_axis_map(8, [2, 3, 3]), scale, torch.float32)
    assert scale != 1.0
    assert torch.allclose(cos, cos_r, atol=1e-5) and torch.allclose(sin, sin_r, atol=1e-5)


def test_vision_rotary_matches_reference(ref):
    from transformers.vision_utils import get_vision_position_ids

    grid = torch.tensor([[2, 4, 6]])
    pos_ids = get_vision_position_ids(grid, 2)
    cos_r, sin_r = ref.model.visual.rotary_pos_emb(torch.zeros(1), pos_ids)
    cos, sin = vision_cos_sin(pos_ids[:, 0], pos_ids[:, 1], vision_inv_freq(16, 10000.0))
    assert torch.allclose(cos, cos_r, atol=1e-6) and torch.allclose(sin, sin_r, atol=1e-6)
