"""The synthetic demo data: determinism, and that every stated truth matches the drawn pixels."""

from __future__ import annotations

import numpy as np
import pytest

from qwen3vl.train.synthetic import (
    TASKS,
    Example,
    SyntheticConfig,
    iter_examples,
    make_dataset,
    make_example,
)
from qwen3vl.train.synthetic_io import read_jsonl, write_jsonl
from qwen3vl.train.synthetic_scenes import PALETTE, shape_mask, text_mask, to_pixels
from qwen3vl.train.scoring import parse_boxes, parse_int, parse_seconds


def _media(ex: Example) -> dict:
    return ex.messages[0]["content"][0]


def _pixels(ex: Example) -> list[np.ndarray]:
    part = _media(ex)
    frames = part["video"] if part["type"] == "video" else [part["image"]]
    return [np.asarray(f) for f in frames]


def _of_task(task: str, n: int, seed: int = 11) -> list[Example]:
    return make_dataset(seed, n, tasks=(task,))


def _color_mask(arr: np.ndarray, color: str) -> np.ndarray:
    return np.all(arr == np.array(PALETTE[color], dtype=np.uint8), axis=-1)


def _tight_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero(mask)
    return (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)


def _matches_some_render(patch: np.ndarray, render, sizes) -> bool:
    """Whether the boolean `patch` is exactly the tight crop of `render(size)` for some size."""
    for size in sizes:
        mask = render(size)
        crop = np.asarray(mask.crop(mask.getbbox())) > 0
        if crop.shape == patch.shape and np.array_equal(crop, patch):
            return True
    return False


def _object_mask(arr: np.ndarray, obj: dict, others: list[dict]) -> np.ndarray:
    """Pixels of obj's colour, with every other object's box blanked out."""
    mask = _color_mask(arr, obj["color"])
    for other in others:
        if other is not obj:
            x1, y1, x2, y2 = other["box_px"]
            mask[y1:y2, x1:x2] = False
    return mask


# ----------------------------------------------------------------------------------------------------------------
# Structure and determinism


def test_every_task_builds_a_well_formed_conversation():
    for task in TASKS:
        ex = make_example(task, np.random.default_rng(0))
        assert ex.task == task
        user, assistant = ex.messages
        assert user["role"] == "user" and assistant == {"role": "assistant", "content": ex.answer}
        media, text = user["content"]
        assert text == {"type": "text", "text": ex.question} and ex.question
        assert ex.prompt == [user]
        if task == "video_time":
            assert media["type"] == "video" and media["fps"] == media["sample_fps"] == 2.0
            assert len(media["video"]) % 2 == 0
            sizes = {f.size for f in media["video"]}
        else:
            assert media["type"] == "image"
            sizes = {media["image"].size}
        for w, h in sizes:
            assert w % 32 == 0 and h % 32 == 0 and (media["resized_width"], media["resized_height"]) == (w, h)


def test_same_seed_same_data_and_other_seed_differs():
    a, b, c = make_dataset(5, 10), make_dataset(5, 10), make_dataset(6, 10)
    assert [e.task for e in a] == [t for _ in range(2) for t in TASKS]
    for x, y in zip(a, b):
        assert (x.question, x.answer, x.truth) == (y.question, y.answer, y.truth)
        assert all(np.array_equal(p, q) for p, q in zip(_pixels(x), _pixels(y)))
    differs = [not np.array_equal(_pixels(x)[0], _pixels(z)[0]) for x, z in zip(a, c)]
    assert all(differs)
    assert [x.truth for x in a] != [z.truth for z in c]


def test_examples_depend_only_on_seed_and_index():
    full = make_dataset(2, 8)
    tail = next(iter_examples(2, start=6))
    assert (tail.task, tail.answer, tail.truth) == (full[6].task, full[6].answer, full[6].truth)
    assert np.array_equal(_pixels(tail)[0], _pixels(full[6])[0])


def test_weighted_task_mix_and_bad_inputs():
    ds = make_dataset(0, 6, tasks=("ocr", "ocr", "count"))
    assert [e.task for e in ds] == ["ocr", "ocr", "count"] * 2
    with pytest.raises(ValueError, match="unknown task 'nope'"):
        make_dataset(0, 1, tasks=("nope",))
    with pytest.raises(ValueError, match="image_size=100"):
        SyntheticConfig(image_size=100)


def test_config_sizes_are_used():
    cfg = SyntheticConfig(image_size=128, video_size=64, min_seconds=3, max_seconds=3, second_event_p=0.0)
    img = make_example("grounding", np.random.default_rng(1), cfg)
    vid = make_example("video_time", np.random.default_rng(1), cfg)
    assert _media(img)["image"].size == (128, 128)
    assert len(_media(vid)["video"]) == 6 and _media(vid)["video"][0].size == (64, 64)
    assert vid.truth["other_events"] == []


# ----------------------------------------------------------------------------------------------------------------
# Truth against pixels


def test_objects_are_drawn_as_named_and_boxes_are_tight():
    """Every listed object is exactly its named shape in its colour, and its box is the tight box of those pixels."""
    checked = 0
    for ex in _of_task("color_shape", 10) + _of_task("count", 10) + _of_task("grounding", 10):
        arr = _pixels(ex)[0]
        objects = ex.truth["objects"]
        for obj in objects:
            mask = _object_mask(arr, obj, objects)
            x1, y1, x2, y2 = obj["box_px"]
            assert _tight_box(mask) == (x1, y1, x2, y2), obj
            patch = mask[y1:y2, x1:x2]
            assert _matches_some_render(patch, lambda s, shape=obj["shape"]: shape_mask(shape, s), range(8, 120)), obj
            checked += 1
    assert checked > 40


def test_no_objects_overlap():
    for ex in _of_task("count", 20):
        boxes = [o["box_px"] for o in ex.truth["objects"]]
        for i, a in enumerate(boxes):
            for b in boxes[i + 1:]:
                assert a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1], (a, b)


def test_color_shape_answers_are_unique_and_true():
    for ex in _of_task("color_shape", 20):
        objects = ex.truth["objects"]
        if ex.truth["asked"] == "color":
            (match,) = [o for o in objects if o["shape"] == ex.truth["shape"]]
            assert ex.answer == match["color"] and match["shape"] in ex.question
        else:
            (match,) = [o for o in objects if o["color"] == ex.truth["color"]]
            assert ex.answer == match["shape"] and match["color"] in ex.question


def _components(mask: np.ndarray) -> int:
    """Number of 4-connected components of a boolean mask (small images only)."""
    seen = np.zeros_like(mask)
    count = 0
    h, w = mask.shape
    for y0, x0 in zip(*np.nonzero(mask)):
        if seen[y0, x0]:
            continue
        count += 1
        stack = [(y0, x0)]
        seen[y0, x0] = True
        while stack:
            y, x = stack.pop()
            for ny, nx in ((y + 1, x), (y - 1, x), (y, x + 1), (y, x - 1)):
                if 0 <= ny < h and 0 <= nx < w and mask[ny, nx] and not seen[ny, nx]:
                    seen[ny, nx] = True
                    stack.append((ny, nx))
    return count


def test_count_matches_the_drawn_objects():
    for ex in _of_task("count", 12):
        arr = _pixels(ex)[0]
        by, value = ex.truth["by"], ex.truth["value"]
        if by == "color":
            drawn = _components(_color_mask(arr, value))
        else:
            colored = np.zeros(arr.shape[:2], bool)
            for c in PALETTE:
                colored |= _color_mask(arr, c)
            boxes = [o["box_px"] for o in ex.truth["objects"] if o["shape"] == value]
            drawn = 0
            for x1, y1, x2, y2 in boxes:  # each target box holds one shape blob and nothing else
                drawn += _components(colored[y1:y2, x1:x2]) == 1
            assert _components(colored) == len(ex.truth["objects"])
        assert drawn == ex.truth["count"] == parse_int(ex.answer) == int(ex.answer)
        assert value in ex.question or value + "s" in ex.question


def test_grounding_box_maps_back_onto_the_shape():
    for ex in _of_task("grounding", 20):
        arr = _pixels(ex)[0]
        t = ex.truth
        (rel, label), = parse_boxes(ex.answer)
        assert rel == t["bbox_2d"] and label == t["label"] and t["label"] in ex.question
        assert all(0 <= v <= 1000 for v in rel)
        x1, y1, x2, y2 = to_pixels(rel, t["width"], t["height"])
        assert np.allclose((x1, y1, x2, y2), t["box_px"], atol=0.5)
        color, shape = label.split()
        (target,) = [o for o in t["objects"] if (o["color"], o["shape"]) == (color, shape)]
        mask = _object_mask(arr, target, t["objects"])
        ix1, iy1, ix2, iy2 = round(x1), round(y1), round(x2), round(y2)
        inside = mask[iy1:iy2, ix1:ix2].sum()
        assert inside == mask.sum() > 0.3 * (ix2 - ix1) * (iy2 - iy1)  # all of the shape, and it fills the box
        assert mask[iy1:iy2, ix1].any() and mask[iy1:iy2, ix2 - 1].any()  # tight on every side
        assert mask[iy1, ix1:ix2].any() and mask[iy2 - 1, ix1:ix2].any()


def test_ocr_text_is_really_drawn():
    for ex in _of_task("ocr", 16):
        arr = _pixels(ex)[0].astype(int)
        t = ex.truth
        assert ex.answer == t["text"]
        assert t["text"].isdigit() == (t["kind"] == "number")
        dark = arr.max(axis=-1) < 110  # text colours are near black; background and palette are not
        x1, y1, x2, y2 = t["box_px"]
        assert _tight_box(dark) == (x1, y1, x2, y2)  # no dark pixel anywhere but the text
        patch = dark[y1:y2, x1:x2]
        assert _matches_some_render(patch, lambda s, text=t["text"]: text_mask(text, s), range(12, 60))
        background = np.median(arr.reshape(-1, 3), axis=0)
        assert np.abs(arr[y1:y2, x1:x2] - background).max(axis=-1).mean() > 40


def test_video_events_happen_at_the_stated_times():
    seen_second_event = False
    for ex in _of_task("video_time", 12):
        frames = [f.astype(int) for f in _pixels(ex)]
        t = ex.truth
        assert len(frames) == t["num_frames"] and t["time"] == t["event_frame"] / t["fps"] == parse_seconds(ex.answer)
        assert t["label"] in ex.question and t["event"] in ex.question
        events = [t, *t["other_events"]]
        seen_second_event |= len(events) == 2
        for e in events:
            assert e["event_frame"] % 2 == 0 and 0 < e["event_frame"] < len(frames)
        for e in t["other_events"]:
            assert abs(e["time"] - t["time"]) > 1.0 and e["label"] != t["label"]
        changes = {i for i in range(1, len(frames)) if not np.array_equal(frames[i - 1], frames[i])}
        assert changes == {e["event_frame"] for e in events}  # nothing else ever changes
        for e in events:
            k = e["event_frame"]
            x1, y1, x2, y2 = e["box_px"]
            changed = np.abs(frames[k - 1] - frames[k]).max(axis=-1) > 0
            assert _tight_box(changed) == (x1, y1, x2, y2)
            color = e["label"].split()[0]
            shown, hidden = (frames[k], frames[k - 1]) if e["event"] == "appear" else (frames[k - 1], frames[k])
            assert _color_mask(shown[y1:y2, x1:x2].astype(np.uint8), color).any()
            assert not _color_mask(hidden[y1:y2, x1:x2].astype(np.uint8), color).any()
    assert seen_second_event


# ----------------------------------------------------------------------------------------------------------------
# On disk


@pytest.mark.parametrize("video_format", ["frames", "mp4"])
def test_jsonl_round_trip(tmp_path, video_format):
    ds = make_dataset(3, 5)
    path = write_jsonl(ds, tmp_path / "train.jsonl", video_format=video_format, progress=False)
    lines = path.read_text().splitlines()
    assert len(lines) == 5 and (tmp_path / "train_media").is_dir()
    lazy = read_jsonl(path, load_media=False)
    stored = _media(lazy[4])["video"]
    assert isinstance(stored, list if video_format == "frames" else str)
    assert isinstance(_media(lazy[0])["image"], str) and not _media(lazy[0])["image"].startswith("/")
    back = read_jsonl(path)
    for a, b in zip(ds, back):
        assert (a.task, a.answer, a.truth, a.question) == (b.task, b.answer, b.truth, b.question)
        pa, pb = _pixels(a), _pixels(b)
        assert len(pa) == len(pb) and all(np.array_equal(x, y) for x, y in zip(pa, pb))
