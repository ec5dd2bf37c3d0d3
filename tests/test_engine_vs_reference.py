"""Greedy tokens from our engine equal transformers' `generate` on the same random checkpoint."""

from __future__ import annotations

import pytest
import torch

import qwen3vl
from engine_helpers import Prompt, engine_greedy, reference_greedy, sharpen
from reference import IMG, VID, reference_model


@pytest.mark.parametrize("kind", ["dense", "moe"])
def test_greedy_equals_transformers_generate(kind, tmp_path):
    ref = sharpen(reference_model(kind, seed=21), factor=2.0)
    ref.save_pretrained(tmp_path)
    ours = qwen3vl.load_model(tmp_path)
    g = torch.Generator().manual_seed(4)
    prompts = [Prompt(ours.config, g).text(6).image(8, 10).text(4),
               Prompt(ours.config, g).text(3).video(2, 4, 6).text(2).image(4, 4).text(5)]
    for got, p in zip(engine_greedy(ours, prompts, 10), prompts):
        assert got == reference_greedy(ref, p, 10, IMG, VID)
