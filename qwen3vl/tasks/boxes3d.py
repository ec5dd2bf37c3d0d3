"""3-D grounding: parse `bbox_3d`, project the 8 corners with pinhole intrinsics, draw the wireframe.

Format, as the official 3d_grounding cookbook prompts and draws it:
`{"bbox_3d": [x, y, z, sx, sy, sz, a0, a1, a2], "label": ...}` with the centre and sizes in metres in
camera coordinates (x right, y down, z forward). The prompt calls the three angles "roll, pitch, yaw"
and the notebook's prose says radians, but the drawing code that produced its figures multiplies them
by 180 to get degrees: the values are **fractions of pi**. That is our default (`angle_unit="pi"`);
"rad" and "deg" are available. The cookbook applies them as successive rotations about the camera x,
then y, then z axes: `p' = Rz(a2) @ Ry(a1) @ Rx(a0) @ p`, then adds the centre.

Intrinsics come from fx, fy, cx, cy, or from a field of view the way the cookbook does it when none are
known: the same angle on both axes, `fx = W / (2 tan(fov/2))`, `fy = H / (2 tan(fov/2))`, centre at
(W/2, H/2). Corners behind the camera (z <= 0) are not projected; edges touching them are skipped.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from itertools import product
from typing import TYPE_CHECKING, Any, Sequence

from qwen3vl.tasks.jsonish import extract_json

if TYPE_CHECKING:
    from PIL import Image

Vec3 = tuple[float, float, float]
Mat3 = tuple[Vec3, Vec3, Vec3]

# corners: every sign combination of the half sizes; index = 4*bx + 2*by + bz with bit 1 meaning "-"
CORNER_SIGNS: tuple[Vec3, ...] = tuple((sx, sy, sz) for sx, sy, sz in product((1.0, -1.0), repeat=3))
# an edge joins two corners whose signs differ on exactly one axis
EDGES: tuple[tuple[int, int], ...] = tuple(
    (i, j) for i in range(8) for j in range(i + 1, 8)
    if sum(a != b for a, b in zip(CORNER_SIGNS[i], CORNER_SIGNS[j])) == 1)

_ANGLE_SCALE = {"pi": math.pi, "rad": 1.0, "deg": math.pi / 180.0}


@dataclass
class Intrinsics:
    """Pinhole camera: u = fx X/Z + cx, v = fy Y/Z + cy (pixels of the original image)."""

    fx: float
    fy: float
    cx: float
    cy: float

    @classmethod
    def from_fov(cls, width: int, height: int, fov_deg: float = 60.0) -> "Intrinsics":
        """The cookbook's stand-in camera when the real one is unknown (same fov on both axes)."""
        t = 2.0 * math.tan(math.radians(fov_deg) / 2.0)
        return cls(width / t, height / t, width / 2.0, height / 2.0)

    @classmethod
    def from_dict(cls, d: dict[str, float]) -> "Intrinsics":
        missing = [k for k in ("fx", "fy", "cx", "cy") if k not in d]
        if missing:
            raise ValueError(f"camera intrinsics lack {', '.join(missing)}; expected keys fx, fy, cx, cy")
        return cls(float(d["fx"]), float(d["fy"]), float(d["cx"]), float(d["cy"]))


@dataclass
class Box3D:
    center: Vec3
    size: Vec3
    angles: Vec3  # as the model wrote them (units given by `angle_unit` when projecting)
    label: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def parse_boxes3d(text: str) -> tuple[list[Box3D], list[str]]:
    """`bbox_3d` objects from a reply (fenced, bare, or repaired JSON), with the problems found."""
    ext = extract_json(text)
    problems = list(ext.problems)
    boxes: list[Box3D] = []
    stack: list[Any] = list(ext.values)
    objs: list[dict[str, Any]] = []
    while stack:
        v = stack.pop(0)
        if isinstance(v, list):
            stack[0:0] = v
        elif isinstance(v, dict):
            objs.append(v)
    for n, obj in enumerate((o for o in objs if "bbox_3d" in o), start=1):
        raw = obj["bbox_3d"]
        try:
            vals = [float(v) for v in raw]
        except (TypeError, ValueError):
            problems.append(f"item {n}: bbox_3d {raw!r} is not a list of numbers; skipped")
            continue
        if len(vals) == 6:
            vals += [0.0, 0.0, 0.0]
            problems.append(f"item {n}: bbox_3d has no angles; taken as 0")
        if len(vals) != 9 or not all(math.isfinite(v) for v in vals):
            problems.append(f"item {n}: bbox_3d has {len(vals)} values, expected 9; skipped")
            continue
        label = obj.get("label", "")
        extra = {k: v for k, v in obj.items() if k not in ("bbox_3d", "label")}
        boxes.append(Box3D(tuple(vals[0:3]), tuple(vals[3:6]), tuple(vals[6:9]), str(label), extra))
    return boxes, problems


def _matmul(a: Mat3, b: Mat3) -> Mat3:
    return tuple(tuple(sum(a[i][k] * b[k][j] for k in range(3)) for j in range(3)) for i in range(3))  # type: ignore[return-value]


def rotation_matrix(angles: Sequence[float], angle_unit: str = "pi") -> Mat3:
    """R = Rz(a2) @ Ry(a1) @ Rx(a0), the cookbook's order (x first)."""
    if angle_unit not in _ANGLE_SCALE:
        raise ValueError(f"angle_unit {angle_unit!r} unknown; expected one of {sorted(_ANGLE_SCALE)}")
    a, b, c = (float(v) * _ANGLE_SCALE[angle_unit] for v in angles)
    ca, sa, cb, sb, cc, sc = math.cos(a), math.sin(a), math.cos(b), math.sin(b), math.cos(c), math.sin(c)
    rx: Mat3 = ((1, 0, 0), (0, ca, -sa), (0, sa, ca))
    ry: Mat3 = ((cb, 0, sb), (0, 1, 0), (-sb, 0, cb))
    rz: Mat3 = ((cc, -sc, 0), (sc, cc, 0), (0, 0, 1))
    return _matmul(rz, _matmul(ry, rx))


def box_corners(box: Box3D, angle_unit: str = "pi") -> list[Vec3]:
    """The 8 corners in camera coordinates, ordered as CORNER_SIGNS."""
    r = rotation_matrix(box.angles, angle_unit)
    half = [s / 2.0 for s in box.size]
    out = []
    for signs in CORNER_SIGNS:
        local = [s * h for s, h in zip(signs, half)]
        out.append(tuple(box.center[i] + sum(r[i][k] * local[k] for k in range(3)) for i in range(3)))
    return out  # type: ignore[return-value]


def project(points: Sequence[Vec3], cam: Intrinsics) -> list[tuple[float, float] | None]:
    """Pixel positions, None for points at or behind the camera plane."""
    out: list[tuple[float, float] | None] = []
    for x, y, z in points:
        out.append(None if z <= 0 else (cam.fx * x / z + cam.cx, cam.fy * y / z + cam.cy))
    return out


def project_box(box: Box3D, cam: Intrinsics, angle_unit: str = "pi") -> list[tuple[float, float] | None]:
    return project(box_corners(box, angle_unit), cam)


def draw_boxes3d(image: "Image.Image", boxes: Sequence[Box3D], cam: Intrinsics, *, angle_unit: str = "pi",
                 colors: Sequence[tuple[int, int, int]] | None = None, line_width: int | None = None,
                 show_labels: bool = True) -> "Image.Image":
    """Wireframes of `boxes` on a copy of `image` (12 edges each; edges with a corner behind the camera skipped)."""
    from PIL import ImageDraw

    from qwen3vl.tasks.draw import color_for, draw_label, load_font

    out = image.convert("RGB")
    draw = ImageDraw.Draw(out)
    lw = line_width or max(2, round(min(out.size) / 250))
    font = load_font(max(10, lw * 6))
    for i, box in enumerate(boxes):
        color = tuple(colors[i % len(colors)]) if colors else color_for(i)
        pts = project_box(box, cam, angle_unit)
        for a, b in EDGES:
            if pts[a] is not None and pts[b] is not None:
                draw.line([pts[a], pts[b]], fill=color, width=lw)
        visible = [p for p in pts if p is not None]
        if show_labels and box.label and visible:
            top = min(visible, key=lambda p: p[1])
            draw_label(draw, top, box.label, color, font, image_size=out.size)
    return out
