"""Every released size, built on the meta device, has the parameter count of spec §1.1 (and of transformers)."""

from __future__ import annotations

import pytest
import torch

from qwen3vl.config import preset
from qwen3vl.weights.loader import build_empty

SPEC_BILLIONS = {"2B": 2.128, "4B": 4.438, "8B": 8.767, "32B": 33.357, "30B-A3B": 31.071, "235B-A22B": 235.670}


def _count(model) -> int:
    return sum(p.numel() for p in model.parameters())  # parameters() yields a tied weight once


@pytest.mark.parametrize("name", list(SPEC_BILLIONS))
def test_parameter_count(name):
    cfg = preset(name)
    ours = _count(build_empty(cfg))
    assert round(ours / 1e9, 3) == SPEC_BILLIONS[name]

    from transformers import AutoConfig, AutoModelForImageTextToText

    import tempfile

    with tempfile.TemporaryDirectory() as d:
        cfg.save(d)
        hf_cfg = AutoConfig.from_pretrained(d)
    with torch.device("meta"):
        hf = AutoModelForImageTextToText.from_config(hf_cfg)
    assert ours == _count(hf)
