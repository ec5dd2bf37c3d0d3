"""Model configuration: dataclasses whose fields are the checkpoint's own `config.json` keys.

`Qwen3VLConfig.from_dict` reads both `model_type`s (`qwen3_vl`, `qwen3_vl_moe`) and both ways of writing the
rotary settings: the legacy `rope_scaling` + `rope_theta` pair that the published checkpoints use
(transformers 4.57), and the `rope_parameters` dict that transformers 5.x writes. Unknown keys are ignored;
derived values are computed once and checked, and every error names the field that is wrong.

Presets for the six released sizes (spec §1.1) and a tiny `debug` size live at the bottom (`PRESETS`).
"""

from __future__ import annotations

import copy
import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class ConfigError(ValueError):
    """A config.json value is missing, unsupported or inconsistent."""


ROPE_TYPES = ("default", "linear", "yarn")


@dataclass
class RopeConfig:
    """Text rotary settings, normalised from either the 4.57 or the 5.x spelling."""

    rope_theta: float = 5_000_000.0
    rope_type: str = "default"
    mrope_section: list[int] = field(default_factory=lambda: [24, 20, 20])
    mrope_interleaved: bool = True
    factor: float | None = None
    original_max_position_embeddings: int | None = None
    attention_factor: float | None = None
    beta_fast: float | None = None
    beta_slow: float | None = None
    mscale: float | None = None
    mscale_all_dim: float | None = None
    truncate: bool = True

    @classmethod
    def from_text_dict(cls, d: dict[str, Any]) -> "RopeConfig":
        params = d.get("rope_parameters") or d.get("rope_scaling") or {}
        if not isinstance(params, dict):
            raise ConfigError(f"text_config.rope_parameters must be a dict, got {type(params).__name__}")
        merged = dict(params)
        # 4.57 writes rope_theta next to rope_scaling; 5.x puts it inside rope_parameters.
        if "rope_theta" not in merged:
            merged["rope_theta"] = d.get("rope_theta", 500_000.0)
        if "type" in merged and "rope_type" not in merged:
            merged["rope_type"] = merged.pop("type")
        known = {f.name for f in dataclasses.fields(cls)}
        rope = cls(**{k: v for k, v in merged.items() if k in known and v is not None})
        rope.rope_theta = float(rope.rope_theta)
        return rope


@dataclass
class VisionConfig:
    depth: int = 27
    hidden_size: int = 1152
    hidden_act: str = "gelu_pytorch_tanh"
    intermediate_size: int = 4304
    num_heads: int = 16
    in_channels: int = 3
    patch_size: int = 16
    spatial_merge_size: int = 2
    temporal_patch_size: int = 2
    out_hidden_size: int = 3584
    num_position_embeddings: int = 2304
    deepstack_visual_indexes: list[int] = field(default_factory=lambda: [8, 16, 24])
    rope_theta: float = 10000.0

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def pos_grid_side(self) -> int:
        return int(round(self.num_position_embeddings**0.5))


@dataclass
class TextConfig:
    vocab_size: int = 151936
    hidden_size: int = 4096
    intermediate_size: int = 22016
    num_hidden_layers: int = 32
    num_attention_heads: int = 32
    num_key_value_heads: int | None = 32
    head_dim: int | None = 128
    hidden_act: str = "silu"
    max_position_embeddings: int = 128000
    rms_norm_eps: float = 1e-6
    attention_bias: bool = False
    rope: RopeConfig = field(default_factory=RopeConfig)
    # MoE (qwen3_vl_moe); num_experts == 0 means dense.
    num_experts: int = 0
    num_experts_per_tok: int = 0
    moe_intermediate_size: int = 0
    decoder_sparse_step: int = 1
    mlp_only_layers: list[int] = field(default_factory=list)
    norm_topk_prob: bool = True

    def is_moe_layer(self, layer_idx: int) -> bool:
        return (
            self.num_experts > 0
            and layer_idx not in self.mlp_only_layers
            and (layer_idx + 1) % self.decoder_sparse_step == 0
        )


@dataclass
class Qwen3VLConfig:
    model_type: str = "qwen3_vl"
    text_config: TextConfig = field(default_factory=TextConfig)
    vision_config: VisionConfig = field(default_factory=VisionConfig)
    image_token_id: int = 151655
    video_token_id: int = 151656
    vision_start_token_id: int = 151652
    vision_end_token_id: int = 151653
    tie_word_embeddings: bool = False
    dtype: str | None = None
    transformers_version: str | None = None
    quantization_config: dict | None = None  # read (weights/fp8.py), never written: exports are dequantized

    # Aliases that read naturally in model code.
    @property
    def text(self) -> TextConfig:
        return self.text_config

    @property
    def vision(self) -> VisionConfig:
        return self.vision_config

    @property
    def is_moe(self) -> bool:
        return self.text_config.num_experts > 0

    # ------------------------------------------------------------------ reading and writing
    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Qwen3VLConfig":
        model_type = d.get("model_type", "qwen3_vl")
        if model_type not in ("qwen3_vl", "qwen3_vl_moe"):
            raise ConfigError(
                f"model_type {model_type!r} is not supported; expected 'qwen3_vl' or 'qwen3_vl_moe'"
            )
        text_d = dict(d.get("text_config") or {})
        vision_d = dict(d.get("vision_config") or {})
        text = _text_from_dict(text_d, moe=model_type == "qwen3_vl_moe")
        vision = _vision_from_dict(vision_d)
        top = {f.name: d[f.name] for f in dataclasses.fields(cls) if f.name in d and f.name not in (
            "text_config", "vision_config", "model_type")}
        if "torch_dtype" in d and "dtype" not in top:
            top["dtype"] = d["torch_dtype"]
        cfg = cls(model_type=model_type, text_config=text, vision_config=vision, **top)
        cfg.validate()
        return cfg

    def to_dict(self) -> dict[str, Any]:
        """The official (4.57-style) config.json layout, which both transformers 4.57 and 5.x read."""
        t = self.text_config
        text = {
            k: v for k, v in dataclasses.asdict(t).items()
            if k != "rope" and not (k in _MOE_TEXT_KEYS and not self.is_moe)
        }
        text["model_type"] = "qwen3_vl_moe_text" if self.is_moe else "qwen3_vl_text"
        text["rope_theta"] = t.rope.rope_theta
        rope = {k: v for k, v in dataclasses.asdict(t.rope).items() if v is not None and k != "rope_theta"}
        if rope.get("truncate") is True:
            rope.pop("truncate")
        text["rope_scaling"] = rope
        if self.is_moe:
            text["num_local_experts"] = t.num_experts
        vision = dataclasses.asdict(self.vision_config)
        vision.pop("rope_theta")
        vision["model_type"] = self.model_type
        out: dict[str, Any] = {
            "architectures": [
                "Qwen3VLMoeForConditionalGeneration" if self.is_moe else "Qwen3VLForConditionalGeneration"
            ],
            "model_type": self.model_type,
            "text_config": text,
            "vision_config": vision,
            "image_token_id": self.image_token_id,
            "video_token_id": self.video_token_id,
            "vision_start_token_id": self.vision_start_token_id,
            "vision_end_token_id": self.vision_end_token_id,
            "tie_word_embeddings": self.tie_word_embeddings,
        }
        if self.dtype:
            out["torch_dtype"] = self.dtype
        return out

    def save(self, folder: str | Path) -> Path:
        path = Path(folder) / "config.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path

    # ------------------------------------------------------------------ checks
    def validate(self) -> None:
        t, v = self.text_config, self.vision_config
        _positive(t, "text_config", ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads"))
        _positive(v, "vision_config", ("depth", "hidden_size", "num_heads", "patch_size", "spatial_merge_size",
                                       "temporal_patch_size", "num_position_embeddings", "out_hidden_size"))
        if t.num_key_value_heads is None:
            t.num_key_value_heads = t.num_attention_heads
        if t.head_dim is None:
            t.head_dim = t.hidden_size // t.num_attention_heads
        if t.num_attention_heads % t.num_key_value_heads:
            raise ConfigError(
                f"text_config.num_attention_heads ({t.num_attention_heads}) must be a multiple of "
                f"text_config.num_key_value_heads ({t.num_key_value_heads})")
        if t.head_dim % 2:
            raise ConfigError(f"text_config.head_dim must be even, got {t.head_dim}")
        rope = t.rope
        if rope.rope_type not in ROPE_TYPES:
            raise ConfigError(
                f"text_config.rope_parameters.rope_type {rope.rope_type!r} is not supported; "
                f"supported: {', '.join(ROPE_TYPES)}")
        if len(rope.mrope_section) != 3 or sum(rope.mrope_section) != t.head_dim // 2:
            raise ConfigError(
                f"text_config.rope_parameters.mrope_section {rope.mrope_section} must have 3 entries summing to "
                f"head_dim/2 = {t.head_dim // 2}")
        if rope.rope_type in ("linear", "yarn") and not rope.factor:
            raise ConfigError(f"text_config.rope_parameters.factor is required for rope_type {rope.rope_type!r}")
        if v.hidden_size % v.num_heads:
            raise ConfigError(
                f"vision_config.hidden_size ({v.hidden_size}) must be divisible by vision_config.num_heads "
                f"({v.num_heads})")
        if v.head_dim % 4:
            raise ConfigError(f"vision head dim (hidden_size/num_heads = {v.head_dim}) must be a multiple of 4")
        if v.pos_grid_side**2 != v.num_position_embeddings:
            raise ConfigError(
                f"vision_config.num_position_embeddings ({v.num_position_embeddings}) must be a perfect square")
        if v.out_hidden_size != t.hidden_size:
            raise ConfigError(
                f"vision_config.out_hidden_size ({v.out_hidden_size}) must equal text_config.hidden_size "
                f"({t.hidden_size})")
        bad = [i for i in v.deepstack_visual_indexes if not 0 <= i < v.depth]
        if bad:
            raise ConfigError(
                f"vision_config.deepstack_visual_indexes {v.deepstack_visual_indexes} has entries outside "
                f"0..depth-1 (depth {v.depth})")
        if len(v.deepstack_visual_indexes) > t.num_hidden_layers:
            raise ConfigError("vision_config.deepstack_visual_indexes has more levels than the decoder has layers")
        if self.model_type == "qwen3_vl_moe":
            if t.num_experts <= 0:
                raise ConfigError("text_config.num_experts must be > 0 for model_type 'qwen3_vl_moe'")
            if not 0 < t.num_experts_per_tok <= t.num_experts:
                raise ConfigError(
                    f"text_config.num_experts_per_tok ({t.num_experts_per_tok}) must be in 1..num_experts "
                    f"({t.num_experts})")
            if t.moe_intermediate_size <= 0:
                raise ConfigError("text_config.moe_intermediate_size must be > 0")
            if t.decoder_sparse_step <= 0:
                raise ConfigError("text_config.decoder_sparse_step must be > 0")
        for name in ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id"):
            tid = getattr(self, name)
            if not 0 <= tid < t.vocab_size:
                raise ConfigError(f"{name} ({tid}) is outside the vocabulary (text_config.vocab_size {t.vocab_size})")


_MOE_TEXT_KEYS = ("num_experts", "num_experts_per_tok", "moe_intermediate_size", "decoder_sparse_step",
                  "mlp_only_layers", "norm_topk_prob")


def _positive(obj: Any, prefix: str, names: tuple[str, ...]) -> None:
    for name in names:
        value = getattr(obj, name)
        if not isinstance(value, int) or value <= 0:
            raise ConfigError(f"{prefix}.{name} must be a positive integer, got {value!r}")


def _text_from_dict(d: dict[str, Any], moe: bool) -> TextConfig:
    if moe:
        # transformers' MoE text-config defaults (spec §2.3), used only where a key is absent.
        base = dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=24, num_attention_heads=16,
                    num_key_value_heads=16, head_dim=None, moe_intermediate_size=1408, num_experts_per_tok=4,
                    num_experts=60)
    else:
        base = {}
    if "num_local_experts" in d and "num_experts" not in d:
        d["num_experts"] = d["num_local_experts"]
    known = {f.name for f in dataclasses.fields(TextConfig)} - {"rope"}
    kwargs = {**base, **{k: v for k, v in d.items() if k in known}}
    if not moe:
        for k in _MOE_TEXT_KEYS:
            kwargs.pop(k, None)
    try:
        text = TextConfig(**kwargs, rope=RopeConfig.from_text_dict(d))
    except TypeError as e:  # pragma: no cover - dataclass errors name the field already
        raise ConfigError(f"text_config: {e}") from e
    return text


def _vision_from_dict(d: dict[str, Any]) -> VisionConfig:
    known = {f.name for f in dataclasses.fields(VisionConfig)}
    kwargs = {k: v for k, v in d.items() if k in known}
    if "num_heads" not in kwargs and "num_attention_heads" in d:
        kwargs["num_heads"] = d["num_attention_heads"]
    rp = d.get("rope_parameters") or {}
    if isinstance(rp, dict):
        if rp.get("rope_type", "axial") != "axial":
            raise ConfigError(
                f"vision_config.rope_parameters.rope_type {rp.get('rope_type')!r} is not supported; only 'axial'")
        if "rope_theta" in rp:
            kwargs["rope_theta"] = float(rp["rope_theta"])
    kwargs["deepstack_visual_indexes"] = list(kwargs.get("deepstack_visual_indexes", [8, 16, 24]))
    return VisionConfig(**kwargs)


def load_config(path: str | Path) -> Qwen3VLConfig:
    """Read `config.json` from a checkpoint folder (or the file itself)."""
    p = Path(path)
    if p.is_dir():
        p = p / "config.json"
    if not p.exists():
        raise FileNotFoundError(f"no config.json at {p}")
    try:
        d = json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"{p} is not valid JSON: {e}") from e
    return Qwen3VLConfig.from_dict(d)


# ---------------------------------------------------------------------------------------------- presets
def _dense(layers, d, ffn, heads, kv, tie, v_depth, v_d, v_ffn, ds) -> Qwen3VLConfig:
    return Qwen3VLConfig(
        model_type="qwen3_vl",
        text_config=TextConfig(vocab_size=151936, hidden_size=d, intermediate_size=ffn, num_hidden_layers=layers,
                               num_attention_heads=heads, num_key_value_heads=kv, head_dim=128,
                               max_position_embeddings=262144, rope=RopeConfig()),
        vision_config=VisionConfig(depth=v_depth, hidden_size=v_d, intermediate_size=v_ffn, num_heads=16,
                                   out_hidden_size=d, deepstack_visual_indexes=list(ds)),
        tie_word_embeddings=tie, dtype="bfloat16")


def _moe(layers, d, heads, kv, experts, topk, moe_ffn, ffn) -> Qwen3VLConfig:
    cfg = _dense(layers, d, ffn, heads, kv, False, 27, 1152, 4304, (8, 16, 24))
    cfg.model_type = "qwen3_vl_moe"
    t = cfg.text_config
    t.num_experts, t.num_experts_per_tok, t.moe_intermediate_size = experts, topk, moe_ffn
    return cfg


def _debug() -> Qwen3VLConfig:
    """A tiny config with the full architecture (DeepStack on two levels, interleaved MRoPE) for tests."""
    return Qwen3VLConfig(
        model_type="qwen3_vl",
        text_config=TextConfig(vocab_size=320, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                               num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                               max_position_embeddings=4096,
                               rope=RopeConfig(rope_theta=5e6, mrope_section=[2, 3, 3])),
        vision_config=VisionConfig(depth=3, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64,
                                   num_position_embeddings=64, deepstack_visual_indexes=[0, 1]),
        image_token_id=261, video_token_id=262, vision_start_token_id=259, vision_end_token_id=260,
        tie_word_embeddings=False)


_PRESET_BUILDERS = {
    "2B": lambda: _dense(28, 2048, 6144, 16, 8, True, 24, 1024, 4096, (5, 11, 17)),
    "4B": lambda: _dense(36, 2560, 9728, 32, 8, True, 24, 1024, 4096, (5, 11, 17)),
    "8B": lambda: _dense(36, 4096, 12288, 32, 8, False, 27, 1152, 4304, (8, 16, 24)),
    "32B": lambda: _dense(64, 5120, 25600, 64, 8, False, 27, 1152, 4304, (8, 16, 24)),
    "30B-A3B": lambda: _moe(48, 2048, 32, 4, 128, 8, 768, 6144),
    "235B-A22B": lambda: _moe(94, 4096, 64, 4, 128, 8, 1536, 12288),
    "debug": _debug,
}

PRESETS: tuple[str, ...] = tuple(_PRESET_BUILDERS)


def preset(name: str) -> Qwen3VLConfig:
    """A fresh config for a released size ("2B", "4B", "8B", "32B", "30B-A3B", "235B-A22B") or "debug"."""
    key = name.removeprefix("Qwen3-VL-").removesuffix("-Instruct").removesuffix("-Thinking")
    if key not in _PRESET_BUILDERS:
        raise KeyError(f"unknown preset {name!r}; choose from {', '.join(PRESETS)}")
    cfg = _PRESET_BUILDERS[key]()
    cfg.validate()
    return copy.deepcopy(cfg)
