"""3-D boxes: cookbook convention (angles in units of pi, x-then-y-then-z), projection by hand, drawing."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from PIL import Image

from qwen3vl.tasks.boxes3d import (
    EDGES,
    Box3D,
    Intrinsics,
    box_corners,
    draw_boxes3d,
    parse_boxes3d,
    project,
    project_box,
    rotation_matrix,
)

FIX = Path(__file__).parent / "fixtures" / "tasks"


def apply(r, v):
    return tuple(sum(r[i][k] * v[k] for k in range(3)) for i in range(3))


def test_parse_cookbook_reply_and_report_bad_item():
    boxes, problems = parse_boxes3d((FIX / "boxes3d_cookbook.txt").read_text())
    assert [b.label for b in boxes] == ["table", "chair"]
    assert boxes[0].center == (0.27, 0.13, 2.21) and boxes[0].size == (0.69, 0.76, 1.8)
    assert boxes[0].angles == (0.87, 0.09, 0.94)
    assert any("5 values, expected 9" in p for p in problems)


def test_twelve_edges_each_joining_corners_that_differ_on_one_axis():
    assert len(EDGES) == 12
    assert sorted(d for e in EDGES for d in e).count(0) == 3  # every corner has 3 edges


def test_projection_by_hand():
    # cube of side 2 centred 5 m ahead, no rotation; fx = fy = 100, principal point (50, 50)
    cube = Box3D((0.0, 0.0, 5.0), (2.0, 2.0, 2.0), (0.0, 0.0, 0.0))
    cam = Intrinsics(100.0, 100.0, 50.0, 50.0)
    pts = project_box(cube, cam)
    # corner (+1, +1, +1): X=1, Y=1, Z=6 -> u = 100*1/6 + 50 = 66.667, v = 66.667
    assert pts[0] == pytest.approx((50 + 100 / 6, 50 + 100 / 6))
    # corner (+1, +1, -1): Z=4 -> u = v = 100/4 + 50 = 75
    assert pts[1] == pytest.approx((75.0, 75.0))
    # corner (-1, -1, -1): u = v = -100/4 + 50 = 25
    assert pts[7] == pytest.approx((25.0, 25.0))


def test_angles_are_fractions_of_pi_and_other_units_agree():
    # 0.5 (pi units) about z = 90 degrees: (1, 0, 0) -> (0, 1, 0)
    assert apply(rotation_matrix((0, 0, 0.5)), (1, 0, 0)) == pytest.approx((0, 1, 0), abs=1e-12)
    r_pi = rotation_matrix((0.1, 0.2, 0.3), "pi")
    r_deg = rotation_matrix((18.0, 36.0, 54.0), "deg")
    r_rad = rotation_matrix((0.1 * math.pi, 0.2 * math.pi, 0.3 * math.pi), "rad")
    for a, b, c in zip(r_pi, r_deg, r_rad):
        assert a == pytest.approx(b) and a == pytest.approx(c)
    with pytest.raises(ValueError, match="angle_unit"):
        rotation_matrix((0, 0, 0), "turns")


def test_rotation_order_is_x_then_y_then_z():
    # (0, 1, 0) -Rx(90)-> (0, 0, 1) -Ry(90)-> (1, 0, 0); the other order would give (0, 0, 1)
    assert apply(rotation_matrix((0.5, 0.5, 0.0)), (0, 1, 0)) == pytest.approx((1, 0, 0), abs=1e-12)


def test_rotated_corner_by_hand():
    # box 2 x 1 x 1 at (0, 0, 5) turned 90 degrees about z: corner (+1, +0.5, +0.5) -> (-0.5, 1, 5.5)
    box = Box3D((0.0, 0.0, 5.0), (2.0, 1.0, 1.0), (0.0, 0.0, 0.5))
    assert box_corners(box)[0] == pytest.approx((-0.5, 1.0, 5.5))


def test_intrinsics_from_field_of_view_like_the_cookbook():
    cam = Intrinsics.from_fov(640, 480, 60.0)
    # 2 tan(30 deg) = 1.154701; fx = 640 / 1.154701 = 554.256, fy = 480 / 1.154701 = 415.692
    assert (cam.fx, cam.fy, cam.cx, cam.cy) == pytest.approx((554.256, 415.692, 320.0, 240.0), abs=1e-3)
    with pytest.raises(ValueError, match="fy"):
        Intrinsics.from_dict({"fx": 1, "cx": 2, "cy": 3})


def test_points_behind_the_camera_are_not_projected():
    assert project([(0.0, 0.0, -1.0), (0.0, 0.0, 0.0), (1.0, 1.0, 2.0)], Intrinsics(10, 10, 0, 0)) == [None, None, (5.0, 5.0)]


def test_wireframe_drawn_on_the_projected_edges():
    img = Image.new("RGB", (100, 100), (255, 255, 255))
    cube = Box3D((0.0, 0.0, 5.0), (2.0, 2.0, 2.0), (0.0, 0.0, 0.0), label="")
    out = draw_boxes3d(img, [cube], Intrinsics(100.0, 100.0, 50.0, 50.0), colors=[(0, 128, 0)], line_width=1)
    # near face spans 25..75 on both axes: its right edge is the line x = 75
    assert out.getpixel((75, 50)) == (0, 128, 0)
    assert out.getpixel((25, 40)) == (0, 128, 0)
    # the centre and the outside are untouched
    assert out.getpixel((50, 50)) == (255, 255, 255)
    assert out.getpixel((5, 95)) == (255, 255, 255)
