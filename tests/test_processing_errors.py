"""Bad input: each case raises its own exception type with a message naming the item."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
from fixtures.processing.references import to_bytes, write_video
from PIL import Image

from qwen3vl.processing.errors import MediaError, MessageFormatError
from qwen3vl.processing.processor import load_processor
from qwen3vl.processing.testing import write_tiny_checkpoint


@pytest.fixture(scope="module")
def proc(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ckpt")
    write_tiny_checkpoint(folder)
    return load_processor(folder, max_image_pixels=50_000_000)


def _ask(part):
    """A conversation whose message 1, content part 1 is `part`."""
    return [{"role": "system", "content": "s"}, {"role": "user", "content": [{"type": "text", "text": "q"}, part]}]


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares width x height but carries a few bytes of pixel data."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64))


def _raises(proc, exc, part, *patterns):
    with pytest.raises(exc) as info:
        proc(_ask(part))
    message = str(info.value)
    assert message.startswith("message 1, content part 1"), message
    for pattern in patterns:
        assert pattern in message, message


def test_corrupt_image(proc):
    _raises(proc, MediaError, {"type": "image", "image": b"definitely not an image"}, "(image)", "not a recognised")


def test_truncated_image(proc):
    data = to_bytes(Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)))
    _raises(proc, MediaError, {"type": "image", "image": data[: len(data) // 2]}, "corrupt or truncated")


@pytest.mark.parametrize("src", [np.zeros((0, 5, 3), np.uint8), Image.new("RGB", (0, 5))], ids=["array", "pil"])
def test_zero_pixel_image(proc, src):
    _raises(proc, MediaError, {"type": "image", "image": src}, "no pixels")


def test_decompression_bomb_is_refused_from_the_header(proc):
    # the header declares 10000 x 10000 and no pixel data follows: only a header check can give this message
    _raises(
        proc,
        MediaError,
        {"type": "image", "image": _png_header_only(10000, 10000)},
        "decompression bomb",
        "100000000 pixels",
        "limit of 50000000",
    )
    _raises(proc, MediaError, {"type": "image", "image": _png_header_only(40000, 40000)}, "too large")


def test_extreme_aspect_ratio(proc):
    _raises(proc, MediaError, {"type": "image", "image": np.zeros((1, 300, 3), np.uint8)}, "aspect ratio 300.0")


def test_missing_file(proc, tmp_path):
    _raises(proc, MediaError, {"type": "image", "image": str(tmp_path / "nope.png")}, "file not found")


def test_bad_data_uri(proc):
    _raises(proc, MediaError, {"type": "image_url", "image_url": {"url": "data:image/png;base64"}}, "data URI")


def test_unreadable_video(proc, tmp_path):
    path = tmp_path / "bad.mp4"
    path.write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"garbage" * 100)
    _raises(proc, MediaError, {"type": "video", "video": str(path)}, "(video)", "cannot read video")


def test_video_with_no_frames(proc, tmp_path):
    path = write_video(tmp_path / "empty.mp4", 0, 10)
    _raises(proc, MediaError, {"type": "video", "video": str(path)}, "no frames")


def test_empty_frame_list(proc):
    _raises(proc, MediaError, {"type": "video", "video": []}, "frame list is empty")


def test_bad_frame_in_list(proc):
    _raises(proc, MediaError, {"type": "video", "video": [np.zeros((32, 32, 3), np.uint8), b"xx"]}, "frame 1")


def test_video_window_outside_the_video(proc, tmp_path):
    path = write_video(tmp_path / "v.mp4", 10, 10)
    _raises(proc, MediaError, {"type": "video", "video": str(path), "video_start": 5.0}, "select no frames")


def test_bad_option_value(proc):
    _raises(
        proc,
        MediaError,
        {"type": "image", "image": np.zeros((8, 8, 3), np.uint8), "max_pixels": "big"},
        "max_pixels must be a positive number",
    )
    _raises(
        proc,
        MediaError,
        {"type": "image", "image": np.zeros((64, 64, 3), np.uint8), "min_pixels": 10**6, "max_pixels": 10**5},
        "min_pixels (1000000) must not exceed",
    )


def test_unknown_content_type(proc):
    _raises(proc, MessageFormatError, {"type": "audio", "audio": "a.wav"}, "unknown content type 'audio'")


def test_media_part_without_source(proc):
    _raises(proc, MessageFormatError, {"type": "image"}, "(image)", "no source")


def test_text_part_without_string(proc):
    _raises(proc, MessageFormatError, {"type": "text", "text": 3}, "(text)", "must be a string")


def test_part_not_a_dict(proc):
    _raises(proc, MessageFormatError, 42, "a content part must be a dict")


@pytest.mark.parametrize(
    "messages,pattern",
    [
        ("hello", "messages must be a non-empty list"),
        ([], "messages must be a non-empty list"),
        ([["nested"]], "message 0: expected a dict"),
        ([{"role": "user", "content": "a"}, "b"], "message 1: expected a dict"),
        ([{"content": "a"}], "message 0: missing 'role'"),
        ([{"role": "robot", "content": "a"}], "message 0: unknown role 'robot'"),
        ([{"role": "user", "content": 5}], "message 0: content must be a string or a list"),
        ([{"role": "user"}], "message 0: user message has no 'content'"),
        (
            [{"role": "user", "content": "a"}, {"role": "assistant", "content": "", "tool_calls": [{"arguments": {}}]}],
            "message 1, tool call 0",
        ),
        ([{"role": "user", "content": "a\ue000"}], "message 0: text contains reserved characters"),
    ],
    ids=[
        "str",
        "empty",
        "nested",
        "not-dict",
        "no-role",
        "bad-role",
        "bad-content",
        "no-content",
        "tool-call",
        "sentinel",
    ],
)
def test_message_shape(proc, messages, pattern):
    with pytest.raises(MessageFormatError, match=pattern.replace("(", r"\(").replace(")", r"\)")):
        proc(messages)


def test_bad_tools(proc):
    with pytest.raises(MessageFormatError, match="tools must be a list"):
        proc([{"role": "user", "content": "a"}], tools={"name": "x"})


def test_errors_are_value_errors():
    assert issubclass(MediaError, ValueError) and issubclass(MessageFormatError, ValueError)
