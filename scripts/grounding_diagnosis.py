"""Where a demo model's grounding answers land: by the number of objects in the scene, and, for each miss, whether
the box is on the asked object (too loose or too tight), on another object (which one: same colour, same shape, or
neither), or on nothing.

    .venv/bin/python scripts/grounding_diagnosis.py [--model DIR] [--seed 2] [--n 200]

Prints one JSON object (docs/TRAINING.md, "Why grounding stays near 55-63%"):

* `by_objects`: for scenes of 1, 2, 3 and 4 objects, how many questions and how many hits (IoU >= 0.5, the score);
* `misses`: `on_target` (the box overlaps the asked object more than any other, IoU < 0.5), `other_object` (it
  overlaps another object more, IoU >= 0.1 with it), `nothing` (IoU < 0.1 with every object), `unparsed`;
* `other_object_shares`: of the boxes on another object, whether that object has the asked colour, the asked shape,
  or neither;
* `on_target_iou`: the IoUs of the on-target misses, in tenths.
"""

from __future__ import annotations

import argparse
import itertools
import json
from collections import Counter
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def diagnose(llm, examples) -> dict:
    from qwen3vl.train.scoring import IOU_THRESHOLD, box_iou, predicted_box

    by_objects: dict[int, list[int]] = {}
    misses = Counter()
    shares = Counter()
    on_target = Counter()
    for ex in examples:
        truth = ex.truth
        objects = truth["objects"]
        count = by_objects.setdefault(len(objects), [0, 0])
        count[0] += 1
        pred = llm.chat(ex.prompt, max_tokens=64, temperature=0).text
        box = predicted_box(pred, ex)  # the box `qwen3vl eval synthetic` scores
        if box is None:
            misses["unparsed"] += 1
            continue
        if box_iou(box, truth["box_px"]) >= IOU_THRESHOLD:
            count[1] += 1
            continue
        ious = [box_iou(box, o["box_px"]) for o in objects]
        best = max(range(len(objects)), key=ious.__getitem__)
        target = next(i for i, o in enumerate(objects) if o["box_px"] == truth["box_px"])
        if ious[best] < 0.1:
            misses["nothing"] += 1
        elif best == target:
            misses["on_target"] += 1
            on_target[round(ious[best], 1)] += 1
        else:
            misses["other_object"] += 1
            o, t = objects[best], objects[target]
            shares["same colour" if o["color"] == t["color"] else "same shape" if o["shape"] == t["shape"]
                   else "neither"] += 1
    return {"by_objects": {k: {"questions": v[0], "hits": v[1]} for k, v in sorted(by_objects.items())},
            "misses": dict(misses), "other_object_shares": dict(shares),
            "on_target_iou": dict(sorted(on_target.items()))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=str(ROOT / "qwen3vl" / "assets" / "demo"))
    ap.add_argument("--seed", type=int, default=2)
    ap.add_argument("--n", type=int, default=200, help="grounding questions")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from qwen3vl.llm import LLM
    from qwen3vl.train.demo import synthetic_config_for
    from qwen3vl.train.synthetic import iter_examples

    llm = LLM(args.model, dtype="float32", device="cpu", kv_cache_gb=0.05)
    examples = itertools.islice(iter_examples(args.seed, ("grounding",), synthetic_config_for(args.model, 1.0)),
                                args.n)
    print(json.dumps(diagnose(llm, examples)))


if __name__ == "__main__":
    main()
