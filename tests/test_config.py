"""Config reading: both rope spellings, both model types, presets, and errors that name the field."""

from __future__ import annotations

import json

import pytest

from qwen3vl.config import ConfigError, Qwen3VLConfig, load_config, preset, PRESETS

PUBLISHED_8B = {  # the 4.57 layout the checkpoints ship (rope_scaling + rope_theta)
    "architectures": ["Qwen3VLForConditionalGeneration"], "model_type": "qwen3_vl",
    "image_token_id": 151655, "video_token_id": 151656, "vision_start_token_id": 151652,
    "vision_end_token_id": 151653, "tie_word_embeddings": False, "transformers_version": "4.57.0.dev0",
    "text_config": {"model_type": "qwen3_vl_text", "hidden_size": 4096, "intermediate_size": 12288,
                    "num_hidden_layers": 36, "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128,
                    "vocab_size": 151936, "max_position_embeddings": 262144, "rms_norm_eps": 1e-6,
                    "rope_scaling": {"mrope_interleaved": True, "mrope_section": [24, 20, 20], "rope_type": "default"},
                    "rope_theta": 5000000, "dtype": "bfloat16", "some_future_key": 1},
    "vision_config": {"model_type": "qwen3_vl", "depth": 27, "hidden_size": 1152, "intermediate_size": 4304,
                      "num_heads": 16, "out_hidden_size": 4096, "deepstack_visual_indexes": [8, 16, 24],
                      "num_position_embeddings": 2304, "patch_size": 16, "spatial_merge_size": 2,
                      "temporal_patch_size": 2, "hidden_act": "gelu_pytorch_tanh", "in_channels": 3},
}


def test_published_layout_equals_preset():
    cfg = Qwen3VLConfig.from_dict(PUBLISHED_8B)
    p = preset("8B")
    assert cfg.text_config == p.text_config and cfg.vision_config == p.vision_config
    assert cfg.text_config.rope.rope_theta == 5e6 and cfg.text_config.rope.mrope_section == [24, 20, 20]


def test_transformers5_rope_parameters_spelling():
    d = json.loads(json.dumps(PUBLISHED_8B))
    t = d["text_config"]
    t["rope_parameters"] = dict(t.pop("rope_scaling"), rope_theta=t.pop("rope_theta"))
    assert Qwen3VLConfig.from_dict(d).text_config == Qwen3VLConfig.from_dict(PUBLISHED_8B).text_config


def test_moe_alias_and_roundtrip(tmp_path):
    cfg = preset("30B-A3B")
    assert cfg.is_moe and cfg.text_config.num_experts == 128 and cfg.text_config.moe_intermediate_size == 768
    cfg.save(tmp_path)
    again = load_config(tmp_path)
    assert again == cfg
    d = json.loads((tmp_path / "config.json").read_text())
    d["text_config"].pop("num_experts")  # published MoE configs may say num_local_experts
    assert Qwen3VLConfig.from_dict(d).text_config.num_experts == 128


def test_our_config_json_is_read_by_transformers(tmp_path):
    from transformers import AutoConfig

    for name in ("8B", "30B-A3B"):
        preset(name).save(tmp_path)
        hf = AutoConfig.from_pretrained(tmp_path)
        assert hf.text_config.num_hidden_layers == preset(name).text_config.num_hidden_layers
        assert hf.text_config.rope_parameters["rope_theta"] == 5e6


@pytest.mark.parametrize("path, value, field", [
    (("model_type",), "qwen2_vl", "model_type"),
    (("text_config", "rope_scaling", "mrope_section"), [24, 20, 10], "mrope_section"),
    (("text_config", "rope_scaling", "rope_type"), "dynamic", "rope_type"),
    (("text_config", "num_key_value_heads"), 5, "num_key_value_heads"),
    (("vision_config", "out_hidden_size"), 2048, "out_hidden_size"),
    (("vision_config", "deepstack_visual_indexes"), [8, 40], "deepstack_visual_indexes"),
    (("vision_config", "num_position_embeddings"), 2300, "num_position_embeddings"),
    (("text_config", "hidden_size"), 0, "hidden_size"),
    (("image_token_id",), 10**7, "image_token_id"),
])
def test_errors_name_the_field(path, value, field):
    d = json.loads(json.dumps(PUBLISHED_8B))
    target = d
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    with pytest.raises(ConfigError, match=field):
        Qwen3VLConfig.from_dict(d)


def test_presets_and_unknown_preset():
    assert set(PRESETS) == {"2B", "4B", "8B", "32B", "30B-A3B", "235B-A22B", "debug"}
    assert preset("Qwen3-VL-2B-Instruct").tie_word_embeddings
    with pytest.raises(KeyError, match="unknown preset"):
        preset("7B")
