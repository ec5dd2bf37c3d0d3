"""Images: grids and pixel_values against transformers 5.23's PIL image processor, resize sizes against
qwen-vl-utils 0.0.14, mode conversion, and every supported source."""

from __future__ import annotations

import base64

import numpy as np
import pytest
import torch
from fixtures.processing.references import hf_image_processor, qwen_vl_utils, to_bytes, unpatchify
from PIL import Image

from qwen3vl.processing.image import ImageSize, array_to_image, load_image, process_image, target_size, to_rgb
from qwen3vl.processing.preprocessor_config import ImageConfig
from qwen3vl.processing.resize import smart_resize
from qwen3vl.processing.sources import FetchOptions

CFG = ImageConfig()
SIZES = [  # (width, height): ordinary, tiny, below min_pixels, extreme aspect ratios (<= 200), above max_pixels
    (100, 70),
    (640, 480),
    (1, 1),
    (7, 3),
    (33, 17),
    (5, 1000),
    (1000, 5),
    (3000, 20),
    (20, 3000),
    (15, 2100),
    (333, 1000),
    (1920, 1080),
    (255, 257),
    (48, 48),
    (200, 1),
    (4000, 4300),
]


def _random(width: int, height: int, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def hf():
    return hf_image_processor()


@pytest.mark.parametrize("size", SIZES, ids=[f"{w}x{h}" for w, h in SIZES])
def test_matches_transformers_pil_processor(hf, size):
    img = _random(*size)
    ref = hf(images=[img], return_tensors="np")
    ours = process_image(load_image(img), CFG)
    assert list(ours.grid_thw) == ref["image_grid_thw"][0].tolist()
    assert ours.pixel_values.dtype == torch.float32
    np.testing.assert_allclose(ours.pixel_values.numpy(), ref["pixel_values"], atol=1e-6, rtol=0)
    assert ours.num_tokens == np.prod(ref["image_grid_thw"][0]) // 4


def test_spec_examples():
    # spec §3.2, (W x H) -> (W x H)
    for (w, h), (rw, rh) in {
        (100, 70): (320, 224),
        (640, 480): (640, 480),
        (333, 1000): (320, 992),
        (4000, 5000): (3648, 4576),
        (1920, 1080): (1920, 1088),
    }.items():
        assert smart_resize(h, w, 32, 65536, 16777216) == (rh, rw)


def test_smart_resize_equals_qwen_vl_utils_sweep():
    qvu = qwen_vl_utils()
    rng = np.random.default_rng(1)
    budgets = [
        (4096, 16777216),
        (65536, 16777216),
        (256 * 28 * 28, 1280 * 28 * 28),
        (3136, 12845056),
        (100_000, 100_000),
    ]
    checked = 0
    for _ in range(3000):
        h, w = (int(v) for v in np.exp(rng.uniform(0, np.log(9000), 2)).round().clip(1))
        if max(h, w) / min(h, w) > 200:
            continue
        lo, hi = budgets[checked % len(budgets)]
        ref = qvu.smart_resize(h, w, factor=32, min_pixels=lo, max_pixels=hi)
        if min(ref) <= 0:  # qwen-vl-utils' own corner case (shrinks a side to 0); we raise instead
            continue
        assert smart_resize(h, w, 32, lo, hi, rule="qwen-vl-utils") == ref, (h, w, lo, hi)
        checked += 1
    assert checked > 2000


def test_per_item_overrides_follow_qwen_vl_utils():
    qvu = qwen_vl_utils()
    img = _random(333, 1000)
    for item in (
        {"min_pixels": 4096},
        {"max_pixels": 200_000},
        {"min_pixels": 300_000, "max_pixels": 400_000},
        {"resized_height": 280, "resized_width": 420},
    ):
        ele = {"image": img, **item}
        ref = qvu.fetch_image(ele, image_patch_size=16)
        ours = process_image(load_image(img), CFG, ImageSize.from_item(item))
        assert ours.grid_thw == (1, ref.size[1] // 16, ref.size[0] // 16), item
        # qwen-vl-utils resizes with PIL's default (bicubic); the pixels are then normalised the same way
        expected = np.asarray(ref, dtype=np.float64) / 255
        got = unpatchify(ours.pixel_values, ours.grid_thw)[0].permute(1, 2, 0).numpy()
        np.testing.assert_allclose(got * 0.5 + 0.5, expected, atol=1e-6)


def test_default_min_pixels_is_the_checkpoints_not_qwen_vl_utils():
    assert target_size(70, 100, CFG, ImageSize()) == (224, 320)  # 65536 minimum (qwen-vl-utils alone: 96x128)


MODES = ["1", "L", "LA", "P", "PA", "RGBA", "CMYK", "YCbCr", "I;16", "I", "F", "La", "RGBa"]


@pytest.mark.parametrize("mode", MODES)
def test_any_mode_converts_to_rgb(mode):
    rgb = _random(40, 30)
    if mode in ("I;16", "I", "F"):
        gray = np.asarray(rgb.convert("L"), dtype=np.float64)
        if mode == "F":
            img = Image.fromarray((gray / 255).astype(np.float32))
        else:
            img = Image.fromarray((gray * 257).astype(np.uint16 if mode == "I;16" else np.int32))
        if mode == "I;16":
            assert img.mode == "I;16"
        out = to_rgb(img)
        np.testing.assert_array_equal(np.asarray(out)[..., 0], gray.astype(np.uint8))  # scaled, not clipped
    else:
        base = {"La": "LA", "RGBa": "RGBA"}.get(mode, mode)  # premultiplied modes are made from their base
        out = to_rgb(rgb.convert(base).convert(mode))
    assert out.mode == "RGB" and out.size == (40, 30)


def test_alpha_is_composited_on_white():
    img = Image.new("RGBA", (8, 8), (255, 0, 0, 0))  # fully transparent red
    assert np.asarray(to_rgb(img)).tolist() == [[[255, 255, 255]] * 8] * 8
    half = np.asarray(to_rgb(Image.new("RGBA", (2, 2), (0, 0, 0, 128))))
    assert half[0, 0].tolist() == [127, 127, 127]
    pal = Image.new("P", (4, 4), 0)
    pal.putpalette([0, 0, 0] * 256)
    pal.info["transparency"] = 0
    assert np.asarray(to_rgb(pal))[0, 0].tolist() == [255, 255, 255]


def test_exif_rotation_is_applied():
    img = _random(40, 20)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    loaded = load_image(to_bytes(img, "JPEG", exif=exif.tobytes()))
    assert loaded.size == (20, 40)


def test_sources(tmp_path):
    img = _random(64, 48)
    png = to_bytes(img)
    path = tmp_path / "a b.png"
    path.write_bytes(png)
    uri = "data:image/png;base64," + base64.b64encode(png).decode()
    arr = np.asarray(img)
    sources = [
        img,
        str(path),
        path,
        f"file://{path}",
        uri,
        png,
        arr,
        arr.transpose(2, 0, 1),
        torch.from_numpy(arr.copy()),
        arr.astype(np.float32) / 255,
        (arr.astype(np.uint16) * 257),
    ]
    for src in sources:
        np.testing.assert_array_equal(np.asarray(load_image(src)), arr)


def test_grayscale_and_bool_arrays():
    gray = np.random.default_rng(0).integers(0, 256, (10, 12), dtype=np.uint8)
    assert np.asarray(array_to_image(gray))[..., 1].tolist() == gray.tolist()
    assert np.asarray(array_to_image(gray[..., None])).shape == (10, 12, 3)
    assert np.asarray(array_to_image(gray > 128)).max() == 255


def test_remote_is_off_by_default():
    from qwen3vl.processing.errors import MediaError

    with pytest.raises(MediaError, match="remote media is disabled"):
        load_image("https://example.com/a.png")
    with pytest.raises(MediaError, match="could not fetch"):  # enabled, but nothing is listening there
        load_image("http://127.0.0.1:9/a.png", FetchOptions(allow_remote=True, timeout_s=2))


def test_content_hash_names_the_processed_pixels():
    a, b = _random(64, 48, seed=1), _random(64, 48, seed=2)
    ha, ha2 = process_image(a, CFG).content_hash, process_image(a.copy(), CFG).content_hash
    assert ha == ha2 and len(ha) == 64
    assert process_image(b, CFG).content_hash != ha
    assert process_image(a, CFG, ImageSize(min_pixels=4096)).content_hash != ha  # same source, other size


def test_remote_fetch_with_limits(tmp_path):
    import http.server
    import threading

    from qwen3vl.processing.errors import MediaError

    png = to_bytes(_random(40, 30))
    (tmp_path / "a.png").write_bytes(png)

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(tmp_path), **kwargs)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/a.png"
    try:
        loaded = load_image(url, FetchOptions(allow_remote=True, timeout_s=5))
        np.testing.assert_array_equal(np.asarray(loaded), np.asarray(_random(40, 30)))
        with pytest.raises(MediaError, match="above the limit of 100"):
            load_image(url, FetchOptions(allow_remote=True, timeout_s=5, max_remote_bytes=100))
    finally:
        server.shutdown()
        server.server_close()
