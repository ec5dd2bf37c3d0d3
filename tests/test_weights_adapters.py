"""peft LoRA adapters both ways: adapters made by peft on transformers' Qwen3-VL, merged into our model, give peft's
logits; adapters we train, loaded by peft onto transformers, give ours. Plus the errors a bad adapter gets."""

from __future__ import annotations

import json

import peft
import pytest
import torch
from reference import Inputs, batch, ours_kwargs, reference_model

import qwen3vl
from qwen3vl.train.lora import LoRAConfig, apply_lora, load_adapter, lora_modules, save_adapter
from qwen3vl.weights.adapters import AdapterError, merge_adapter, read_adapter
from qwen3vl.weights.hub import ModelNotFoundError


def _inputs(seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    rows = [Inputs().text(4, gen).image(4, 6).text(5, gen), Inputs().text(9, gen)]
    return batch(rows, gen)


def _base(tmp_path, tie: bool = False):
    """A random transformers Qwen3-VL saved in the official layout; returns (folder, the transformers model)."""
    model = reference_model("dense", seed=3, tie=tie)
    folder = tmp_path / "base"
    model.save_pretrained(folder)
    return folder, model


def _peft_adapter(hf_model, folder, seed: int = 0, **config):
    """Wrap `hf_model` with a random (non-identity) peft LoRA, save it; returns the peft model."""
    torch.manual_seed(seed)
    peft_model = peft.get_peft_model(hf_model, peft.LoraConfig(init_lora_weights=False, **config))
    with torch.no_grad():  # parts init_lora_weights=False leaves at zero, or at the base's values: make them count
        for name, p in peft_model.named_parameters():
            if "lora_embedding_B" in name or name.endswith("lora_B.bias"):
                p.normal_(0, 0.05)
            elif ".modules_to_save." in name:
                p.add_(torch.randn_like(p) * 0.05)
    peft_model.save_pretrained(folder)
    return peft_model.eval()


def _max_diff(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> float:
    return (a - b)[mask.bool()].abs().max().item()


CASES = {
    "attention+vision": dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "qkv", "linear_fc1"]),
    "rslora+patterns": dict(r=4, lora_alpha=16, use_rslora=True, target_modules=["q_proj", "down_proj", "o_proj"],
                            rank_pattern={"down_proj": 2}, alpha_pattern={r"layers\.1\.self_attn\.o_proj": 3}),
    "head+embeddings+saved": dict(r=2, lora_alpha=4, target_modules=["lm_head", "embed_tokens", "k_proj"],
                                  modules_to_save=["merger"]),
    "lora_bias": dict(r=3, lora_alpha=6, target_modules=["qkv", "linear_fc2"], lora_bias=True),
}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("tie", [False, True])
def test_peft_adapter_merged_into_ours_gives_peft_logits(tmp_path, case, tie):
    folder, hf = _base(tmp_path, tie=tie)
    inputs = _inputs()
    with torch.no_grad():
        base_logits = hf(**inputs).logits
    peft_model = _peft_adapter(hf, tmp_path / "adapter", **CASES[case])
    with torch.no_grad():
        want = peft_model(**inputs).logits
    ours = qwen3vl.load_model(folder)
    changed = merge_adapter(ours, tmp_path / "adapter")
    assert changed
    with torch.no_grad():
        got = ours(**ours_kwargs(inputs)).logits
    mask = inputs["attention_mask"]
    assert _max_diff(want, base_logits, mask) > 1e-2  # the adapter does change the model
    assert _max_diff(got, want, mask) <= 1e-4


def test_our_adapter_loads_in_peft_with_our_logits(tmp_path):
    folder, hf = _base(tmp_path)
    ours = qwen3vl.load_model(folder)
    cfg = LoRAConfig(rank=4, alpha=12, targets=("q_proj", "gate_proj", "qkv", "linear_fc2"))
    apply_lora(ours, cfg)
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for _, m in lora_modules(ours):
            m.lora_B.copy_(torch.randn(m.lora_B.shape, generator=gen) * 0.05)
    save_adapter(ours, tmp_path / "adapter", cfg, base_model=str(folder))
    inputs = _inputs(1)
    with torch.no_grad():
        got = ours.eval()(**ours_kwargs(inputs)).logits
        peft_model = peft.PeftModel.from_pretrained(hf, tmp_path / "adapter").eval()
        want = peft_model(**inputs).logits
        base = qwen3vl.load_model(folder)(**ours_kwargs(inputs)).logits
    mask = inputs["attention_mask"]
    assert _max_diff(got, base, mask) > 1e-2
    assert _max_diff(got, want, mask) <= 1e-4
    # and back: our own loader gives the very config and weights, and the merge path agrees with both
    fresh = qwen3vl.load_model(folder)
    assert load_adapter(fresh, tmp_path / "adapter") == cfg
    merged = qwen3vl.load_model(folder)
    merge_adapter(merged, tmp_path / "adapter")
    with torch.no_grad():
        assert torch.equal(fresh.eval()(**ours_kwargs(inputs)).logits, got)
        assert _max_diff(merged(**ours_kwargs(inputs)).logits, got, mask) <= 1e-5


def test_llm_and_cli_merge_an_adapter(tmp_path):
    from transformers import Qwen3VLForConditionalGeneration

    from qwen3vl.train.cli import main as train_main
    from qwen3vl.train.testing import write_tiny_base
    from qwen3vl.weights.export import state_for_export

    folder = write_tiny_base(tmp_path / "base")  # with tokenizer and processor files, as LLM needs
    hf = Qwen3VLForConditionalGeneration.from_pretrained(folder)
    _peft_adapter(hf, tmp_path / "adapter", r=4, lora_alpha=8, target_modules=["q_proj", "up_proj"])
    expected = qwen3vl.load_model(folder)
    merge_adapter(expected, tmp_path / "adapter")
    expected_state = state_for_export(expected)

    llm = qwen3vl.LLM(str(folder), lora=str(tmp_path / "adapter"), device="cpu", kv_cache_gb=0.05)
    for name, t in state_for_export(llm.model).items():
        assert torch.equal(t, expected_state[name]), name
    assert llm.chat([{"role": "user", "content": "hi"}], max_tokens=3).finish_reason in ("length", "stop")

    assert train_main(["merge", "--model", str(folder), "--adapter", str(tmp_path / "adapter"),
                       "--out", str(tmp_path / "merged")]) == 0
    reloaded = state_for_export(qwen3vl.load_model(tmp_path / "merged"))
    assert reloaded.keys() == expected_state.keys()
    for name, t in reloaded.items():
        assert torch.equal(t, expected_state[name]), name


def _write_adapter(folder, config: dict, tensors: dict[str, torch.Tensor]) -> None:
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "adapter_config.json").write_text(json.dumps(config))
    save_file(tensors, folder / "adapter_model.safetensors")


Q0 = "base_model.model.model.language_model.layers.0.self_attn.q_proj"


@pytest.mark.parametrize("config, tensors, message", [
    ({"peft_type": "LORA", "r": 2, "lora_alpha": 4, "use_dora": True}, {}, "DoRA"),
    ({"peft_type": "IA3", "r": 2, "lora_alpha": 4}, {}, "peft_type 'IA3'"),
    ({"peft_type": "LORA", "r": 2, "lora_alpha": 4, "target_parameters": ["experts.gate_up_proj"]}, {},
     "target_parameters"),
    ({"peft_type": "LORA", "r": 2, "lora_alpha": 4}, {f"{Q0}.lora_A.weight": torch.zeros(2, 64)}, "no matching"),
    ({"peft_type": "LORA", "r": 2, "lora_alpha": 4},
     {f"{Q0}.lora_A.weight": torch.zeros(3, 64), f"{Q0}.lora_B.weight": torch.zeros(64, 3)}, "has rank 3"),
    ({"peft_type": "LORA", "r": 2, "lora_alpha": 4},
     {f"{Q0}.lora_A.weight": torch.zeros(2, 64), f"{Q0}.lora_B.weight": torch.zeros(64, 2),
      f"{Q0}.lora_magnitude_vector": torch.ones(64)}, "DoRA"),
    ({"peft_type": "LORA", "r": 0, "lora_alpha": 4}, {}, "r must be a positive"),
    ({"peft_type": "LORA", "r": 2, "lora_alpha": 4, "init_lora_weights": "pissa_niter_4"}, {},
     "init_lora_weights='pissa_niter_4' changes the base weights"),
    ({"peft_type": "LORA", "r": 2, "lora_alpha": 4, "init_lora_weights": "olora"}, {}, "olora"),
])
def test_unsupported_or_broken_adapters_are_refused_by_name(tmp_path, config, tensors, message):
    _write_adapter(tmp_path / "a", config, tensors or {f"{Q0}.lora_A.weight": torch.zeros(2, 64),
                                                       f"{Q0}.lora_B.weight": torch.zeros(64, 2)})
    with pytest.raises(AdapterError, match=message):
        read_adapter(tmp_path / "a")


def test_an_adapter_for_another_model_leaves_the_model_unchanged(tmp_path):
    folder, _ = _base(tmp_path)
    model = qwen3vl.load_model(folder)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ok = {f"{Q0}.lora_A.weight": torch.ones(2, 64), f"{Q0}.lora_B.weight": torch.ones(64, 2)}
    wide = "base_model.model.model.language_model.layers.1.self_attn.v_proj"
    _write_adapter(tmp_path / "wide", {"peft_type": "LORA", "r": 2, "lora_alpha": 4},
                   dict(ok, **{f"{wide}.lora_A.weight": torch.ones(2, 128), f"{wide}.lora_B.weight": torch.ones(32, 2)}))
    with pytest.raises(AdapterError, match=r"layers\.1\.self_attn\.v_proj is 32x128, but the model's weight is 32x64"):
        merge_adapter(model, tmp_path / "wide")
    gone = "base_model.model.model.language_model.layers.7.mlp.up_proj"
    _write_adapter(tmp_path / "deep", {"peft_type": "LORA", "r": 2, "lora_alpha": 4},
                   dict(ok, **{f"{gone}.lora_A.weight": torch.ones(2, 64), f"{gone}.lora_B.weight": torch.ones(128, 2)}))
    with pytest.raises(AdapterError, match=r"targets model\.language_model\.layers\.7\.mlp\.up_proj, which this model "
                                           "does not have"):
        merge_adapter(model, tmp_path / "deep")
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_missing_adapter_files(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelNotFoundError, match="no adapter_config.json"):
        read_adapter(tmp_path / "empty")
    (tmp_path / "noweights").mkdir()
    (tmp_path / "noweights" / "adapter_config.json").write_text('{"peft_type": "LORA", "r": 2, "lora_alpha": 4}')
    with pytest.raises(AdapterError, match="has no adapter_model.safetensors"):
        read_adapter(tmp_path / "noweights")
    (tmp_path / "noweights" / "adapter_model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(AdapterError, match="not a readable safetensors file"):
        read_adapter(tmp_path / "noweights")
    with pytest.raises(ModelNotFoundError, match="LoRA adapter"):
        read_adapter(tmp_path / "nowhere")


def test_cli_run_with_an_adapter_and_with_a_bad_one(tmp_path, capsys):
    from transformers import Qwen3VLForConditionalGeneration

    from qwen3vl.cli import main
    from qwen3vl.train.testing import write_tiny_base

    folder = write_tiny_base(tmp_path / "base")
    _peft_adapter(Qwen3VLForConditionalGeneration.from_pretrained(folder), tmp_path / "adapter", r=2, lora_alpha=4,
                  target_modules=["v_proj"])
    assert main(["run", "--model", str(folder), "--lora", str(tmp_path / "adapter"), "--max-tokens", "2",
                 "--no-stream", "hi"]) == 0
    with pytest.raises(SystemExit, match="no adapter_config.json; is it a LoRA adapter"):
        main(["run", "--model", str(folder), "--lora", str(tmp_path), "hi"])
    _write_adapter(tmp_path / "dora", {"peft_type": "LORA", "r": 2, "lora_alpha": 4, "use_dora": True}, {})
    with pytest.raises(SystemExit, match="DoRA"):
        main(["run", "--model", str(folder), "--lora", str(tmp_path / "dora"), "hi"])
    with pytest.raises(SystemExit, match="tensor_parallel_size > 1 are not supported"):
        main(["run", "--model", str(folder), "--lora", str(tmp_path / "adapter"), "--tensor-parallel-size", "2", "hi"])


def test_fan_in_fan_out_is_ignored_as_peft_ignores_it_for_linear_layers(tmp_path):
    folder, hf = _base(tmp_path)
    _peft_adapter(hf, tmp_path / "adapter", r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"])
    plain = qwen3vl.load_model(folder)
    merge_adapter(plain, tmp_path / "adapter")
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    (tmp_path / "adapter" / "adapter_config.json").write_text(json.dumps(dict(config, fan_in_fan_out=True)))
    flagged = qwen3vl.load_model(folder)
    merge_adapter(flagged, tmp_path / "adapter")
    for (name, a), (_, b) in zip(plain.state_dict().items(), flagged.state_dict().items()):
        assert torch.equal(a, b), name


def test_a_peft_rslora_adapter_can_be_trained_further(tmp_path):
    folder, hf = _base(tmp_path)
    inputs = _inputs(2)
    peft_model = _peft_adapter(hf, tmp_path / "adapter", r=4, lora_alpha=8, use_rslora=True,
                               target_modules=["q_proj", "up_proj"])
    with torch.no_grad():
        want = peft_model(**inputs).logits
    ours = qwen3vl.load_model(folder)
    cfg = load_adapter(ours, tmp_path / "adapter")
    assert cfg.rank == 4 and abs(cfg.scaling - 8 / 2) < 1e-9  # rsLoRA: alpha / sqrt(r)
    assert all(p.requires_grad == n.endswith((".lora_A", ".lora_B")) for n, p in ours.named_parameters())
    with torch.no_grad():
        got = ours.eval()(**ours_kwargs(inputs)).logits
    assert _max_diff(got, want, inputs["attention_mask"]) <= 1e-4
