"""What a demo model does with video: where its video-time answers land, how it answers the task in parts, and
whether its visual tokens say which colours are in a frame (a linear probe, against the same probe on still images).

    .venv/bin/python scripts/video_diagnosis.py [--model DIR] [--seed 2] [--clips 150] [--probe-clips 200]
                                                [--probe-images 800]

Prints one JSON object per part (docs/TRAINING.md, "Video time: from guessing to reading the clip"):

* `answers`: of `--clips` video-time questions, how many answers are within 1 s of the asked event (`hit`, the
  score), within 1 s of the clip's other event (`other`), and the most frequent answer with its share;
* `steps`: the task in parts (`demo_data.video_step_questions`), asked after the clip's own question and answer:
  "What happens at t seconds?" (`at`, `nothing`) and "Is X visible at t seconds?" (`visible`), exact answers;
* `probe_video` / `probe_images`: per colour, the test accuracy of a logistic regression from a frame pair's (or an
  image's) merged visual tokens (their mean and max) to "this colour is visible", and the accuracy of always
  guessing the majority. Three quarters of the clips (images) train it, the rest test it.
"""

from __future__ import annotations

import argparse
import itertools
import json
import re
from collections import Counter
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def seconds(text: str) -> float | None:
    m = re.search(r"\d+(\.\d+)?", text)
    return float(m.group()) if m else None


def answers(llm, examples) -> dict:
    hit = other = 0
    said = Counter()
    for ex in examples:
        p = seconds(llm.chat(ex.prompt, max_tokens=16, temperature=0).text)
        said[p] += 1
        hit += p is not None and abs(p - ex.truth["time"]) <= 1
        other += p is not None and any(abs(p - e["time"]) <= 1 for e in ex.truth["other_events"])
    top, count = said.most_common(1)[0]
    return {"clips": len(examples), "hit": hit, "other": other, "most_said": top,
            "most_said_share": count / len(examples)}


def steps(llm, examples) -> dict:
    from qwen3vl.train.demo_data import VIDEO_NOTHING, VIDEO_STEPS, video_step_questions

    def ask(key: str, **fields: str) -> str:
        return VIDEO_STEPS[key][0].format(**fields)

    hits, totals = Counter(), Counter()
    for ex in examples:
        for q, a in video_step_questions(ex.truth, ask):
            kind = "visible" if a in ("yes", "no") else "nothing" if a == VIDEO_NOTHING else "at"
            reply = llm.chat(ex.messages + [{"role": "user", "content": q}], max_tokens=16, temperature=0).text
            hits[kind] += reply.strip() == a
            totals[kind] += 1
    return {k: {"right": hits[k], "asked": totals[k], "share": round(hits[k] / totals[k], 3)} for k in totals}


def visual_tokens(llm, prompt) -> torch.Tensor:
    """The merged visual tokens of the prompt's one media item, (T, tokens per frame pair, D)."""
    prepared = llm.prepare(prompt)
    (item,) = prepared.images + prepared.videos
    with torch.no_grad():
        tokens, _ = llm.model.model.visual(item.pixel_values, [item.grid_thw])
    return tokens.reshape(item.grid_thw[0], -1, tokens.shape[-1])


def probe(features: list[torch.Tensor], labels: list[list[bool]], groups: list[int]) -> dict:
    """Logistic regression per colour, trained on the first three quarters of the groups (clips or images)."""
    from qwen3vl.train.synthetic_scenes import COLORS

    x, y, g = torch.stack(features), torch.tensor(labels, dtype=torch.float32), torch.tensor(groups)
    train = g < int(0.75 * (int(g.max()) + 1))
    mean, std = x[train].mean(0), x[train].std(0) + 1e-6
    x = (x - mean) / std
    w = torch.zeros(x.shape[1], len(COLORS), requires_grad=True)
    b = torch.zeros(len(COLORS), requires_grad=True)
    opt = torch.optim.Adam([w, b], lr=1e-2)
    for _ in range(1500):
        opt.zero_grad()
        fit = torch.nn.functional.binary_cross_entropy_with_logits(x[train] @ w + b, y[train])
        loss = fit + 1e-3 * w.square().sum()
        loss.backward()
        opt.step()
    with torch.no_grad():
        right = (((x[~train] @ w + b) > 0) == y[~train].bool()).float().mean(0)
        share = y[~train].mean(0)
        majority = torch.maximum(share, 1 - share)
    return {c: {"probe": round(float(r), 3), "majority": round(float(m), 3)}
            for c, r, m in zip(COLORS, right, majority)}


def probe_video(llm, examples) -> dict:
    from qwen3vl.train.demo_data import shown_at
    from qwen3vl.train.synthetic_scenes import COLORS

    feats, labels, groups = [], [], []
    for i, ex in enumerate(examples):
        tokens = visual_tokens(llm, ex.prompt)
        truth = ex.truth
        events = [(truth["label"], truth["event"], truth["time"])] + [
            (e["label"], e["event"], e["time"]) for e in truth["other_events"]]
        for second in range(tokens.shape[0]):  # frame pair k opens second k (2 fps)
            shown = {o["color"] for o in truth["objects"]}
            shown |= {label.split()[0] for label, event, time in events if shown_at(event, time, second)}
            feats.append(torch.cat([tokens[second].mean(0), tokens[second].amax(0)]))
            labels.append([c in shown for c in COLORS])
            groups.append(i)
    return probe(feats, labels, groups)


def probe_images(llm, examples) -> dict:
    from qwen3vl.train.synthetic_scenes import COLORS

    feats, labels = [], []
    for ex in examples:
        tokens = visual_tokens(llm, ex.prompt)
        feats.append(torch.cat([tokens[0].mean(0), tokens[0].amax(0)]))
        labels.append([c in {o["color"] for o in ex.truth["objects"]} for c in COLORS])
    return probe(feats, labels, list(range(len(examples))))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=str(ROOT / "qwen3vl" / "assets" / "demo"))
    ap.add_argument("--seed", type=int, default=2, help="a validation seed (0 trains the demo model, 1 is held out)")
    ap.add_argument("--clips", type=int, default=150)
    ap.add_argument("--step-clips", type=int, default=40)  # each count: 0 skips that part
    ap.add_argument("--probe-clips", type=int, default=200)
    ap.add_argument("--probe-images", type=int, default=800)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from qwen3vl.llm import LLM
    from qwen3vl.train.demo import synthetic_config_for
    from qwen3vl.train.synthetic import iter_examples

    llm = LLM(args.model, dtype="float32", device="cpu")
    cfg = synthetic_config_for(args.model)
    n = max(args.clips, args.step_clips, args.probe_clips)
    clips = list(itertools.islice(iter_examples(args.seed, ("video_time",), cfg), n))
    parts = (("answers", answers, args.clips), ("steps", steps, args.step_clips),
             ("probe_video", probe_video, args.probe_clips))
    for name, measure, count in parts:
        if count:  # 0 skips a part
            print(json.dumps({name: measure(llm, clips[:count])}), flush=True)
    if args.probe_images:
        images = list(itertools.islice(iter_examples(args.seed, ("count",), cfg), args.probe_images))
        print(json.dumps({"probe_images": probe_images(llm, images)}), flush=True)

if __name__ == "__main__":
    main()
