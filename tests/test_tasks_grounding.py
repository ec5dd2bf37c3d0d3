"""2-D grounding: parsing real and broken replies, coordinate round trips, drawings read back."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from qwen3vl.tasks import parse_grounding
from qwen3vl.tasks.coords import box_px_to_rel, px_to_rel, rel_to_px
from qwen3vl.tasks.draw import draw_grounding
from qwen3vl.tasks.grounding import (
    Box2D,
    Point2D,
    detect_prompt,
    format_grounding,
    parse_grounding_output,
    point_prompt,
    refer_prompt,
)

FIX = Path(__file__).parent / "fixtures" / "tasks"
W, H = 333, 997  # odd sizes on purpose


def fixture(name: str) -> str:
    return (FIX / name).read_text(encoding="utf-8")


def test_public_name_returns_dicts_in_original_pixels():
    items = parse_grounding(fixture("grounding_dining_table.txt"), W, H)
    assert len(items) == 4
    # 74/1000*333 = 24.642, 361/1000*997 = 359.917, 324/1000*333 = 107.892, 808/1000*997 = 805.576
    assert items[0] == {"label": "plate/dish", "bbox": [24.64, 359.92, 107.89, 805.58]}
    # extra keys are kept
    assert items[2]["color"] == "green" and items[2]["label"] == "wine bottle"
    for it in items:
        x1, y1, x2, y2 = it["bbox"]
        assert 0 <= x1 <= x2 <= W and 0 <= y1 <= y2 <= H


def test_broken_reply_is_repaired_clamped_swapped_and_reported():
    res = parse_grounding_output(fixture("grounding_broken.txt"), W, H)
    car, bus, light = res.items
    # x1 > x2 (612 > 388): swapped, then mapped: 388/1000*333 = 129.204, 612/1000*333 = 203.796
    assert isinstance(car, Box2D) and car.rel == (388, 140, 612, 520)
    assert car.x1 == pytest.approx(129.204) and car.x2 == pytest.approx(203.796)
    assert any("swapped" in f for f in car.flags)
    # -12 -> 0 and 1034 -> 1000, both flagged; unquoted keys and extra key "type" survive
    assert bus.rel == (0, 300, 250, 1000) and bus.extra == {"type": "vehicle"}
    assert bus.y2 == pytest.approx(H) and len([f for f in bus.flags if "clamped" in f]) == 2
    assert isinstance(light, Point2D) and light.rel == (1000, 455)
    # the 3-number box is skipped with a reason, the repairs are listed
    problems = " ".join(res.problems)
    assert "has 3 numbers, expected 4" in problems
    assert "trailing comma" in problems and "single-quoted" in problems
    # dict form carries the flags only where something was corrected
    dicts = res.to_dicts()
    assert "flags" in dicts[0] and dicts[1]["type"] == "vehicle"


def test_truncated_reply_keeps_complete_items():
    res = parse_grounding_output(fixture("grounding_truncated.txt"), 640, 480)
    assert [b.label for b in res.boxes] == ["person", "person"]
    assert res.truncated and any("truncated" in p for p in res.problems)


def test_two_fenced_blocks_boxes_and_points():
    res = parse_grounding_output(fixture("grounding_two_blocks.txt"), 1000, 1000)
    assert [type(i).__name__ for i in res.items] == ["Box2D", "Point2D"]
    assert parse_grounding(fixture("grounding_two_blocks.txt"), 1000, 1000)[1] == {"label": "pedestrian", "point": [500.0, 600.0]}


def test_wrapped_object_and_string_coordinates():
    text = '{"objects": [{"bbox_2d": ["10", "20", "30", "40"], "label": "x"}]}'
    assert parse_grounding(text, 1000, 1000) == [{"label": "x", "bbox": [10.0, 20.0, 30.0, 40.0]}]


def test_no_objects_is_an_empty_list_with_a_reason():
    res = parse_grounding_output("There is no red car in this image.", W, H)
    assert res.items == [] and res.problems
    assert parse_grounding("[]", W, H) == []


def test_empty_image_size_is_refused():
    with pytest.raises(ValueError, match="0x10"):
        parse_grounding("[]", 0, 10)


def test_relative_pixel_round_trip_on_odd_sizes():
    for size in (W, H):
        for rel in range(0, 1001):
            assert px_to_rel(rel_to_px(rel, size), size) == rel
    # and through the rounded dicts of the public API
    text = '[{"bbox_2d": [1, 2, 999, 998], "label": "a"}, {"point_2d": [333, 667], "label": "p"}]'
    box, point = parse_grounding(text, W, H)
    assert box_px_to_rel(box["bbox"], W, H) == (1, 2, 999, 998)
    assert (px_to_rel(point["point"][0], W), px_to_rel(point["point"][1], H)) == (333, 667)
    # pixels -> relative -> pixels moves a pixel by at most half a relative unit (333/1000/2 px)
    for p in range(W):
        assert abs(rel_to_px(px_to_rel(p, W), W) - p) <= W / 2000 + 1e-9


def test_prompts_follow_the_official_wording():
    assert detect_prompt(["car", "bus"]) == ('Locate every instance that belongs to the following categories: '
                                             '"car, bus". Report bbox coordinates in JSON format.')
    assert "Report bbox coordinates in JSON format." in refer_prompt("red car")
    assert "point coordinates in JSON format" in point_prompt("the handle")


def test_format_grounding_round_trips_through_the_parser():
    res = parse_grounding_output(fixture("grounding_dining_table.txt"), W, H)
    again = parse_grounding_output(format_grounding(res.items), W, H)
    assert [i.rel for i in again.items] == [i.rel for i in res.items]
    assert again.items[2].extra == {"color": "green"}


def test_drawing_puts_box_edges_and_points_where_they_belong():
    bg = (120, 120, 120)
    img = Image.new("RGB", (W, H), bg)
    text = '[{"bbox_2d": [74, 361, 324, 808], "label": "plate"}, {"point_2d": [800, 150], "label": "p"}]'
    items = parse_grounding_output(text, W, H).items
    red, blue = (255, 0, 0), (0, 0, 255)
    out = draw_grounding(img, items, colors=[red, blue], line_width=3)
    # box in pixels (24.64, 359.92, 107.89, 805.58) -> drawn at (25, 360, 108, 806), 3 px inward
    mid_y = (360 + 806) // 2
    assert out.getpixel((25, mid_y)) == red  # left edge
    assert out.getpixel((27, mid_y)) == red  # still inside the 3-px outline
    assert out.getpixel((108, mid_y)) == red  # right edge
    assert out.getpixel((66, 806)) == red  # bottom edge
    assert out.getpixel((28, mid_y)) == bg  # just inside: untouched
    assert out.getpixel((66, mid_y)) == bg  # box interior
    assert out.getpixel((24, mid_y)) == bg  # just outside
    # point (800, 150) -> (266.4, 149.5): filled disc of the point colour
    assert out.getpixel((266, 150)) == blue
    # far corner untouched, and the input image is not modified
    assert out.getpixel((W - 3, H - 3)) == bg
    assert img.getpixel((25, mid_y)) == bg
