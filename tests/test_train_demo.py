"""The demo pipeline: multi-turn scene questions agree with the truth; one tiny end-to-end build loads and scores."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import replace

import pytest
import torch

from qwen3vl.train.demo import DemoConfig, build_demo, evaluate_demo
from qwen3vl.train.demo_data import MultiTurnSource
from qwen3vl.train.scoring import box_iou, parse_grounding_builtin
from qwen3vl.train.synthetic import TASKS, SyntheticConfig, iter_examples
from qwen3vl.train.testing import tiny_synthetic_config


def _check_turn(question: str, answer: str, truth: dict, side: int) -> None:
    objects = truth.get("objects", [])
    if question.startswith(("When does", "At what time")):
        event = next(e for e in truth["other_events"] if e["label"] in question)
        assert answer == f"At {event['time']:.1f} seconds." and event["event"] in question
    elif question.startswith("Locate"):
        (box,) = parse_grounding_builtin(answer, side, side)
        label = json.loads(answer.split("\n")[2].strip().rstrip(","))["label"]
        (match,) = [o for o in objects if f"{o['color']} {o['shape']}" == label]
        assert label in question and box_iou(box["bbox"], match["box_px"]) > 0.95
    elif question.startswith(("How many", "Count")):
        by_shape = Counter(o["shape"] + "s" for o in objects)
        by_color = Counter(o["color"] for o in objects)
        word = question.split()[-1].rstrip(".?") if question.startswith("Count") else question.split()[2]
        assert int(answer) == (by_shape[word] if word in by_shape else by_color[word]) > 0
    elif "color is the" in question:
        shape = question.rstrip("?").split()[-1]
        (match,) = [o for o in objects if o["shape"] == shape]
        assert answer == match["color"]
    else:  # What shape is the {color} object? / Which shape is {color}?
        color = next(o["color"] for o in objects if o["color"] in question.rstrip("?").split())
        (match,) = [o for o in objects if o["color"] == color]
        assert answer == match["shape"]


def test_multi_turn_scene_questions_agree_with_the_truth():
    cfg = tiny_synthetic_config()
    src = MultiTurnSource(seed=4, tasks=TASKS, config=cfg, extra_turns=6)
    examples = iter_examples(4, TASKS, cfg)
    extra = 0
    for i in range(40):
        ex, conv = next(examples), src[i]
        assert conv.messages[:2] == ex.messages  # the first turn is the scored task, unchanged
        turns = conv.messages[2:]
        assert len(turns) % 2 == 0 and len(turns) <= 12
        for user, assistant in zip(turns[::2], turns[1::2]):
            assert assistant["content"] != ex.answer
            side = cfg.video_size if ex.task == "video_time" else cfg.image_size
            _check_turn(user["content"], assistant["content"], ex.truth, side)
            extra += 1
    assert extra > 60


def test_shuffled_turns_keep_the_same_questions_with_the_media_first():
    cfg = tiny_synthetic_config()
    plain = MultiTurnSource(seed=4, tasks=TASKS, config=cfg, extra_turns=6)
    shuffled = MultiTurnSource(seed=4, tasks=TASKS, config=cfg, extra_turns=6, shuffle_turns=0.5)
    examples = iter_examples(4, TASKS, cfg)
    moved = 0
    for i in range(40):
        ex, a, b = next(examples), plain[i].messages, shuffled[i].messages

        def qa(messages):  # (question text, answer) per turn
            return [(u["content"] if isinstance(u["content"], str) else u["content"][-1]["text"], r["content"])
                    for u, r in zip(messages[::2], messages[1::2])]

        assert sorted(qa(a)) == sorted(qa(b))  # the same turns, in another order
        assert b[0]["content"][:-1] == ex.messages[0]["content"][:-1]  # the media, in the first turn only
        assert all(isinstance(m["content"], str) for m in b[1:])
        own = ex.messages[0]["content"][-1]["text"]
        k = [q for q, _ in qa(b)].index(own)
        assert qa(b)[k][1] == ex.answer
        moved += k > 0
    assert 10 < moved < 30  # about half moved (the chance is 0.5)


def _tiny_demo(out, steps: int = 2) -> DemoConfig:
    return DemoConfig(out=str(out), steps=steps, batch_size=2, warmup_steps=1, eval_every=0, eval_examples=2,
                      save_every=1, num_workers=0, extra_turns=1, hidden_size=32, intermediate_size=64, num_layers=2,
                      num_heads=2, num_kv_heads=1, vision_hidden_size=32, vision_intermediate_size=64, vision_depth=2,
                      vision_heads=1, deepstack=(0, 1))


def _train_records(work) -> dict[int, dict]:
    """The training records of metrics.jsonl by step; each step must be logged once."""
    lines = (work / "run" / "metrics.jsonl").read_text().splitlines()
    records = [r for r in map(json.loads, lines) if "loss" in r]
    steps = [r["step"] for r in records]
    assert len(steps) == len(set(steps)), steps
    return {r["step"]: r for r in records}


def test_tiny_demo_builds_loads_and_scores(tmp_path, capsys):
    d = replace(_tiny_demo(tmp_path / "demo"), eval_every=1, eval_examples=5, save_every=0)
    summary = build_demo(d)
    assert summary["steps"] == 2 and set(summary["eval_losses"]) == {1, 2}
    out = tmp_path / "demo"
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
                 "preprocessor_config.json", "video_preprocessor_config.json", "generation_config.json",
                 "chat_template.json"):
        assert (out / name).is_file(), name
    config = json.loads((out / "config.json").read_text())
    from tokenizers import Tokenizer

    vocab = Tokenizer.from_file(str(out / "tokenizer.json")).get_vocab_size(with_added_tokens=True)
    assert config["text_config"]["vocab_size"] == vocab == 683  # 657 learned + 26 Qwen special tokens
    assert config["vision_config"]["deepstack_visual_indexes"] == [0, 1]
    assert json.loads((out / "generation_config.json").read_text())["do_sample"] is False
    saved = json.loads((out / "synthetic_config.json").read_text())
    assert saved["image_size"] == d.image_size and saved["video_size"] == d.video_size
    assert json.loads((out / "training_summary.json").read_text())["steps"] == 2
    scores = evaluate_demo(out, seed=5, n=5, progress=False)
    assert set(scores) == set(TASKS) and all(0.0 <= v <= 1.0 for v in scores.values())

    # the command line: the same scores, one JSON object on the last line
    from qwen3vl.cli import main

    rows = tmp_path / "rows.jsonl"
    assert main(["eval", "synthetic", "--seed", "5", "--n", "5", "--model", str(out), "--out", str(rows),
                 "--no-progress"]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert json.loads(last) == {task: round(scores[task], 4) for task in TASKS}
    assert [json.loads(line)["task"] for line in rows.read_text().splitlines()] == list(TASKS)
    assert main(["eval", "synthetic", "--n", "5", "--model", str(out)]) == 2
    assert "--seed" in capsys.readouterr().err
    assert main(["eval", "synthetic", "--seed", "1", "--model", str(tmp_path / "nope")]) == 2
    assert "no such folder" in capsys.readouterr().err


def test_synthetic_scenes_follow_the_models_saved_sizes(tmp_path):
    from qwen3vl.train.demo import synthetic_config_for, write_synthetic_config

    assert synthetic_config_for(tmp_path) == SyntheticConfig(second_event_p=1.0)
    write_synthetic_config(tmp_path, SyntheticConfig(image_size=192, video_size=64))
    cfg = synthetic_config_for(tmp_path, second_event_p=0.5)
    assert (cfg.image_size, cfg.video_size, cfg.second_event_p) == (192, 64, 0.5)


def test_a_finished_demo_run_extends_with_resume(tmp_path, caplog):
    """`train demo --resume --steps N` with N above a finished run's length (how the shipped model got its second
    stretch) goes on from the last checkpoint with the schedule of the new length and exports again. With one warmup
    step, the first two steps of a 2-step and a 4-step schedule are the same, so the extended run must end exactly
    where an uninterrupted 4-step run ends."""
    import logging

    from safetensors.torch import load_file

    first = _tiny_demo(tmp_path / "a")
    build_demo(first)
    two = load_file(tmp_path / "a" / "model.safetensors")
    kept = _train_records(first.work)

    with caplog.at_level(logging.INFO, logger="qwen3vl.train.sft"):
        assert build_demo(replace(first, steps=4, resume=True))["steps"] == 4
    assert "at step 2" in caplog.text  # went on from the checkpoint, did not start over
    records = _train_records(first.work)
    assert sorted(records) == [1, 2, 3, 4]
    assert [records[s]["loss"] for s in (1, 2)] == [kept[s]["loss"] for s in (1, 2)]
    extended = load_file(tmp_path / "a" / "model.safetensors")
    assert any(not (two[k] == extended[k]).all() for k in two)  # the export holds the longer run

    fresh = _tiny_demo(tmp_path / "b", steps=4)
    build_demo(fresh)
    uninterrupted = _train_records(fresh.work)
    for s in (3, 4):
        assert records[s]["loss"] == uninterrupted[s]["loss"] and records[s]["lr"] == uninterrupted[s]["lr"], s
    straight = load_file(tmp_path / "b" / "model.safetensors")
    assert all((straight[k] == extended[k]).all() for k in straight)


def test_a_stretch_starts_from_a_trained_model_with_a_worker_pool(tmp_path):
    """`init_from` (how the GPU stretch began from the shipped model): the run starts from that model's weights, not
    random ones. With lr 0 nothing moves, so the export must equal the starting model exactly, and its side files
    come along; the data comes from a pool of two processes."""
    from safetensors.torch import load_file

    first = _tiny_demo(tmp_path / "a")
    build_demo(first)
    start = load_file(tmp_path / "a" / "model.safetensors")
    stretch = replace(_tiny_demo(tmp_path / "b"), init_from=str(tmp_path / "a"), lr=0.0, num_workers=2,
                      work_dir=str(tmp_path / "b.work"))
    assert build_demo(stretch)["steps"] == 2
    after = load_file(tmp_path / "b" / "model.safetensors")
    assert sorted(after) == sorted(start) and all(torch.equal(after[k], start[k]) for k in start)
    assert (tmp_path / "b" / "tokenizer.json").read_bytes() == (tmp_path / "a" / "tokenizer.json").read_bytes()
    assert not (tmp_path / "b.work" / "tokenizer").exists()  # no tokenizer trained, no random model written
    random_start = replace(stretch, init_from=None, out=str(tmp_path / "c"), work_dir=str(tmp_path / "c.work"))
    build_demo(random_start)
    other = load_file(tmp_path / "c" / "model.safetensors")
    assert any(not torch.equal(other[k], start[k]) for k in start)
    with pytest.raises(FileNotFoundError, match="init_from"):
        build_demo(replace(stretch, init_from=str(tmp_path / "nowhere")))
    with pytest.raises(ValueError, match="256-px images"):  # its preprocessor files say 256 px: scenes must agree
        build_demo(replace(stretch, image_size=192))


def _shown(frame, color: str, box) -> bool:
    """Whether `frame` holds a patch of palette colour `color` inside `box` (the pixels, not the truth)."""
    import numpy as np

    from qwen3vl.train.synthetic_scenes import PALETTE

    x0, y0, x1, y1 = (int(v) for v in box)
    region = np.asarray(frame, dtype=np.int16)[y0:y1, x0:x1]
    close = (np.abs(region - np.array(PALETTE[color])).max(axis=-1) <= 2).sum()
    return close >= 0.2 * region.shape[0] * region.shape[1]


def test_video_step_questions_agree_with_the_frames():
    """`video_steps`: "what happens at t" and "is X visible at t", checked on the rendered frames themselves."""
    cfg = SyntheticConfig(video_size=96, min_seconds=4, max_seconds=8, second_event_p=1.0)
    src = MultiTurnSource(seed=5, tasks=("video_time",), config=cfg, extra_turns=20, video_steps=True)
    plain = MultiTurnSource(seed=5, tasks=("video_time",), config=cfg, extra_turns=20)
    examples = iter_examples(5, ("video_time",), cfg)
    seen = Counter()
    for i in range(12):
        ex, conv = next(examples), src[i]
        assert conv.messages[:2] == ex.messages
        frames, fps = ex.messages[0]["content"][0]["video"], ex.truth["fps"]
        boxes = {ex.truth["label"]: ex.truth["box_px"]} | {e["label"]: e["box_px"] for e in ex.truth["other_events"]}
        # frame 2s opens second s: changes happen on such frames, so "visible at s" reads frame 2s
        for user, assistant in zip(conv.messages[2::2], conv.messages[3::2]):
            q, a = user["content"], assistant["content"]
            if q.startswith(("Is the", "Can you see")):
                label = next(k for k in boxes if k in q)
                s = float(q.rstrip("?").split()[-2])
                assert a == ("yes" if _shown(frames[int(s * fps)], label.split()[0], boxes[label]) else "no"), q
                seen[a] += 1
            elif q.startswith(("What happens", "What changes")):
                s = int(float(q.rstrip("?").split()[-2]) * fps)
                changed = [k for k, box in boxes.items()
                           if _shown(frames[s], k.split()[0], box) != _shown(frames[s - 1], k.split()[0], box)]
                if a == "Nothing changes.":
                    assert not changed and frames[s].tobytes() == frames[s - 1].tobytes()
                else:
                    (label,) = changed
                    now = _shown(frames[s], label.split()[0], boxes[label])
                    assert a == f"The {label} {'appears' if now else 'disappears'}."
                seen[a == "Nothing changes."] += 1
            else:
                _check_turn(q, a, ex.truth, cfg.video_size)
        # without the option the stream is what it was
        assert len(plain[i].messages) == 2 + 2 * len(ex.truth["other_events"])
    assert seen["yes"] > 5 and seen["no"] > 5 and seen[True] > 3 and seen[False] > 10


def test_video_steps_keep_the_clip_question_first_while_stills_still_move():
    cfg = tiny_synthetic_config()
    src = MultiTurnSource(seed=4, tasks=TASKS, config=cfg, extra_turns=6, shuffle_turns=1.0, video_steps=True)
    examples = iter_examples(4, TASKS, cfg)
    moved = Counter()
    for i in range(30):
        ex, messages = next(examples), src[i].messages
        moved[ex.task] += messages[1]["content"] != ex.answer
    assert moved["video_time"] == 0 and moved["count"] + moved["color_shape"] + moved["grounding"] >= 12
