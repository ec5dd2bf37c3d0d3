"""Use-case layer: grounding, 3-D boxes, documents, video moments, GUI agent and evaluation.

Everything is exported lazily so `import qwen3vl.tasks` costs nothing: Pillow, PyAV, Playwright and
pypdfium2 load only in the function that needs them.

    from qwen3vl.tasks import parse_grounding
    parse_grounding(reply_text, width, height)  # -> [{"label": ..., "bbox": [x1, y1, x2, y2]}, ...]
"""

from __future__ import annotations

from qwen3vl._lazy import lazy_exports

_EXPORTS = {
    # grounding
    "parse_grounding": "qwen3vl.tasks.grounding",
    "parse_grounding_output": "qwen3vl.tasks.grounding",
    "Box2D": "qwen3vl.tasks.grounding",
    "Point2D": "qwen3vl.tasks.grounding",
    "draw_grounding": "qwen3vl.tasks.draw",
    "extract_json": "qwen3vl.tasks.jsonish",
    # 3-D
    "parse_boxes3d": "qwen3vl.tasks.boxes3d",
    "Intrinsics": "qwen3vl.tasks.boxes3d",
    "draw_boxes3d": "qwen3vl.tasks.boxes3d",
    # documents
    "parse_qwenvl_html": "qwen3vl.tasks.documents",
    "parse_qwenvl_markdown": "qwen3vl.tasks.documents",
    "parse_ocr_spotting": "qwen3vl.tasks.documents",
    "render_pdf": "qwen3vl.tasks.pdf",
    # video
    "parse_timestamp": "qwen3vl.tasks.video_time",
    "parse_time_range": "qwen3vl.tasks.video_time",
    "parse_dense_captions": "qwen3vl.tasks.video_time",
    "cut_clip": "qwen3vl.tasks.video_clip",
    # tool calls, backends
    "parse_tool_calls": "qwen3vl.tasks.toolcalls",
    "ChatBackend": "qwen3vl.tasks.backends",
    "ChatReply": "qwen3vl.tasks.backends",
    "make_backend": "qwen3vl.tasks.backends",
}


__getattr__, __dir__ = lazy_exports(__name__, globals(), _EXPORTS)
