"""scripts/grounding_diagnosis.py sorts grounding answers right: a scripted model answers each scene with the asked
object's box, a loose box around it, another object's box, an empty corner, or no box, and the counts say so."""

from __future__ import annotations

import importlib.util
import itertools
from pathlib import Path
from types import SimpleNamespace

from qwen3vl.train.synthetic import SyntheticConfig, format_grounding, iter_examples, to_relative

ROOT = Path(__file__).resolve().parents[1]


def _script():
    spec = importlib.util.spec_from_file_location("grounding_diagnosis", ROOT / "scripts" / "grounding_diagnosis.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_answers_are_sorted_by_where_they_land():
    cfg = SyntheticConfig()
    examples = [ex for ex in itertools.islice(iter_examples(5, ("grounding",), cfg), 200)
                if len(ex.truth["objects"]) >= 2][:5]
    assert len(examples) == 5
    side = cfg.image_size
    plans = ["right", "loose", "other", "corner", "none"]
    replies = {}
    expected_share = None
    for ex, plan in zip(examples, plans):
        t = ex.truth
        x1, y1, x2, y2 = t["box_px"]
        other = next(o for o in t["objects"] if o["box_px"] != t["box_px"])
        target = next(o for o in t["objects"] if o["box_px"] == t["box_px"])
        box = {"right": t["box_px"], "loose": [x1, y1, x1 + 2 * (x2 - x1), y1 + 2 * (y2 - y1)],
               "other": other["box_px"], "corner": [0, 0, 1, 1]}.get(plan)
        if plan == "other":
            expected_share = ("same colour" if other["color"] == target["color"] else
                              "same shape" if other["shape"] == target["shape"] else "neither")
        replies[repr(ex.prompt)] = "no idea" if box is None else format_grounding([(to_relative(box, side, side),
                                                                                   t["label"])])
    llm = SimpleNamespace(chat=lambda prompt, **kw: SimpleNamespace(text=replies[repr(prompt)]))
    out = _script().diagnose(llm, examples)
    assert sum(v["questions"] for v in out["by_objects"].values()) == 5
    assert sum(v["hits"] for v in out["by_objects"].values()) == 1
    assert out["misses"] == {"on_target": 1, "other_object": 1, "nothing": 1, "unparsed": 1}
    assert out["other_object_shares"] == {expected_share: 1}
    assert sum(out["on_target_iou"].values()) == 1
