"""The demo model in one command: a tiny Qwen3-VL (same architecture: DeepStack on two levels, interleaved MRoPE)
trained from scratch on CPU on the synthetic tasks (docs/DEMO_DATA.md).

`build_demo(DemoConfig(out=...))`:
  1. trains the byte-level BPE tokenizer (`tokenizer_train.train_tokenizer`);
  2. builds the config (vocab = the tokenizer's size, vision token ids from it) and writes random initial weights
     with every side file a checkpoint folder needs (tokenizer, preprocessor configs for 256x256 images and 96x96
     frames, greedy generation_config.json, the Instruct chat template);
  3. runs `train_sft` on the endless synthetic stream of `seed` (generated on the fly, so no example repeats; each
     scene also asked `extra_turns` more questions, see `demo_data.py`), with the held-out loss (single questions, as
     scored) on a fixed set from `eval_seed`;
  4. exports the model to `out`.
`evaluate_demo(folder, seed, n)` scores it with `scoring.evaluate` through `qwen3vl.LLM(folder).chat(...,
temperature=0)`. Use a test seed that training and tuning never saw.

Work files (tokenizer, initial weights, checkpoints, metrics.jsonl) go to `work_dir`; a stopped run continues from
its last checkpoint with `resume=True`. `init_from` starts from a trained demo model instead (a new stretch with a
fresh optimizer and schedule, e.g. on a GPU with a larger batch: docs/TRAINING.md).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

log = logging.getLogger(__name__)

# Harder tasks drawn more often (a task listed twice is drawn twice as often; see synthetic.iter_examples).
DEMO_TASKS: tuple[str, ...] = ("color_shape", "count", "count", "grounding", "grounding", "grounding", "ocr", "ocr",
                               "ocr", "video_time", "video_time")


@dataclass
class DemoConfig:
    out: str = "qwen3vl/assets/demo"
    work_dir: str | None = None  # default: <out>.work next to `out`
    seed: int = 0  # training stream
    eval_seed: int = 1  # held-out loss during training
    tasks: tuple[str, ...] = DEMO_TASKS
    image_size: int = 256  # side of the still images (SyntheticConfig.image_size); 128 read the image far slower
    video_size: int = 96  # side of the video frames
    second_event_p: float = 1.0  # every clip has a second change, so video_time needs the label (DEMO_DATA.md)
    extra_turns: int = 8  # further questions about each scene (demo_data.MultiTurnSource); 0: one question
    shuffle_turns: float = 0.0  # chance that the scored question moves to a later turn (demo_data.MultiTurnSource)
    video_steps: bool = False  # clips also get the video task in parts (demo_data.video_step_questions)
    steps: int = 8000  # ~75 min on 2 idle CPU cores (0.55 s/step), more when the cores are shared
    batch_size: int = 16
    lr: float = 5e-4  # 2e-3 left the image unused for 2,000+ steps (docs/TRAINING.md); 5e-4 reads it by step 600
    min_lr_ratio: float = 0.05
    warmup_steps: int = 100
    weight_decay: float = 0.01
    bf16: bool = True
    num_workers: int = 1
    eval_every: int = 300
    eval_examples: int = 110
    save_every: int = 300
    resume: bool = False
    # model size
    hidden_size: int = 256
    intermediate_size: int = 768
    num_layers: int = 4
    num_heads: int = 4
    num_kv_heads: int = 2
    vision_hidden_size: int = 128
    vision_intermediate_size: int = 512
    vision_depth: int = 4
    vision_heads: int = 2
    deepstack: tuple[int, ...] = (1, 2)
    rope_theta: float = 10000.0
    init_seed: int = 0
    export_dtype: str = "float32"
    device: str = "cpu"
    init_from: str | None = None  # start from this demo model folder (same tokenizer) instead of random weights

    @property
    def work(self) -> Path:
        return Path(self.work_dir) if self.work_dir else Path(str(Path(self.out)) + ".work")


def demo_model_config(d: DemoConfig, tokenizer_dir: str | Path):
    """Qwen3-VL config of the demo size; vocab and vision token ids from the tokenizer."""
    from qwen3vl.config import Qwen3VLConfig, RopeConfig, TextConfig, VisionConfig
    from qwen3vl.train.testing import config_for_tokenizer

    head_dim = d.hidden_size // d.num_heads
    half = head_dim // 2  # the official split is [24, 20, 20] of 64; keep its proportions
    hw = round(half * 20 / 64)
    text = TextConfig(vocab_size=1, hidden_size=d.hidden_size, intermediate_size=d.intermediate_size,
                      num_hidden_layers=d.num_layers, num_attention_heads=d.num_heads,
                      num_key_value_heads=d.num_kv_heads, head_dim=head_dim, max_position_embeddings=4096,
                      rope=RopeConfig(rope_theta=d.rope_theta, mrope_section=[half - 2 * hw, hw, hw]))
    vision = VisionConfig(depth=d.vision_depth, hidden_size=d.vision_hidden_size,
                          intermediate_size=d.vision_intermediate_size, num_heads=d.vision_heads,
                          out_hidden_size=d.hidden_size, num_position_embeddings=256,  # 16 x 16 patches = 256 px
                          deepstack_visual_indexes=list(d.deepstack))
    base = Qwen3VLConfig(text_config=text, vision_config=vision, tie_word_embeddings=True, image_token_id=0,
                         video_token_id=0, vision_start_token_id=0, vision_end_token_id=0)
    return config_for_tokenizer(tokenizer_dir, base)


def write_side_files(folder: str | Path, tokenizer_dir: str | Path, image_size: int = 256,
                     video_size: int = 96) -> None:
    """Tokenizer, preprocessor configs sized for the synthetic media, greedy generation config, chat template."""
    import shutil

    from qwen3vl.processing.chat_template import builtin_template
    from tokenizers import Tokenizer

    folder, tokenizer_dir = Path(folder), Path(tokenizer_dir)
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copyfile(tokenizer_dir / name, folder / name)
    tk = Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json"))
    common = {"patch_size": 16, "temporal_patch_size": 2, "merge_size": 2, "image_mean": [0.5] * 3,
              "image_std": [0.5] * 3, "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
              "do_convert_rgb": True, "resample": 3, "processor_class": "Qwen3VLProcessor"}
    side = image_size * image_size  # every training image is this size: resize any image to about that area
    image = {**common, "size": {"shortest_edge": side, "longest_edge": side},
             "image_processor_type": "Qwen2VLImageProcessorFast"}
    frames = video_size * video_size  # training clips: square frames of this side, 16-32 of them
    video = {**common, "size": {"shortest_edge": frames * 4, "longest_edge": frames * 32}, "fps": 2,
             "min_frames": 4, "max_frames": 32, "do_sample_frames": True,
             "video_processor_type": "Qwen3VLVideoProcessor"}
    eos, pad = tk.token_to_id("<|im_end|>"), tk.token_to_id("<|endoftext|>")
    gen = {"bos_token_id": pad, "eos_token_id": [eos, pad], "pad_token_id": pad, "do_sample": False}
    files = {"preprocessor_config.json": image, "video_preprocessor_config.json": video,
             "generation_config.json": gen, "chat_template.json": {"chat_template": builtin_template("instruct")}}
    for name, obj in files.items():
        (folder / name).write_text(json.dumps(obj, indent=2) + "\n")


def build_demo(d: DemoConfig) -> dict:
    """Tokenizer -> initial checkpoint -> training -> `d.out`. Returns a summary (sizes, losses, times)."""
    import torch

    from qwen3vl.model.testing import random_model
    from qwen3vl.train.data import ListSource, SyntheticSource
    from qwen3vl.train.demo_data import MultiTurnSource
    from qwen3vl.train.export import export_model
    from qwen3vl.train.sft import SFTConfig, train_sft
    from qwen3vl.train.synthetic import TASKS, SyntheticConfig, make_dataset
    from qwen3vl.train.tokenizer_train import train_tokenizer
    from qwen3vl.weights.export import save_checkpoint

    work = d.work
    work.mkdir(parents=True, exist_ok=True)
    (work / "demo_config.json").write_text(json.dumps(asdict(d), indent=2) + "\n")
    t0 = time.perf_counter()
    if d.init_from:
        init = Path(d.init_from)
        if not (init / "config.json").is_file():
            raise FileNotFoundError(f"init_from: {init} is no model folder (no config.json)")
        trained = synthetic_config_for(init)  # its preprocessor files come along: the scenes must be its sizes
        if (trained.image_size, trained.video_size) != (d.image_size, d.video_size):
            raise ValueError(f"init_from: {init} was trained on {trained.image_size}-px images and "
                             f"{trained.video_size}-px frames, but this run asks for {d.image_size} and {d.video_size}")
    else:
        tok_dir = work / "tokenizer"
        if not (tok_dir / "tokenizer.json").is_file():
            train_tokenizer(tok_dir)
        init = work / "init"
        if not (init / "model.safetensors").is_file():
            model = random_model(demo_model_config(d, tok_dir), seed=d.init_seed)
            save_checkpoint(model, init)
            write_side_files(init, tok_dir, d.image_size, d.video_size)

    synth = SyntheticConfig(image_size=d.image_size, video_size=d.video_size, second_event_p=d.second_event_p)
    eval_set = ListSource([ex.messages for ex in make_dataset(d.eval_seed, d.eval_examples, TASKS, synth)])
    sft = SFTConfig(model=str(init), out_dir=str(work / "run"), batch_size=d.batch_size, max_steps=d.steps, lr=d.lr,
                    min_lr_ratio=d.min_lr_ratio, warmup_steps=d.warmup_steps, weight_decay=d.weight_decay,
                    bf16=d.bf16, num_workers=d.num_workers, seed=d.seed, eval_every=d.eval_every,
                    save_every=d.save_every, resume="auto" if d.resume else None, export=False, device=d.device)
    t1 = time.perf_counter()
    source = (MultiTurnSource(d.seed, d.tasks, synth, d.extra_turns, d.shuffle_turns, d.video_steps) if d.extra_turns
              else SyntheticSource(d.seed, d.tasks, synth))
    result = train_sft(sft, source=source, eval_source=eval_set)
    t2 = time.perf_counter()
    n_params = sum(p.numel() for p in result.model.parameters())
    out = export_model(result.model.cpu(), d.out, init, dtype={"float32": torch.float32, "bfloat16": torch.bfloat16}[
        d.export_dtype])
    size = sum(f.stat().st_size for f in Path(out).glob("*.safetensors"))
    write_synthetic_config(out, synth)
    summary = {"parameters": n_params, "weights_bytes": size, "train_seconds": t2 - t1,
               "total_seconds": time.perf_counter() - t0, "steps": result.step,
               "final_loss": result.losses.get(result.step), "eval_losses": result.eval_losses, "out": str(out),
               "demo_config": asdict(d)}
    text = json.dumps(summary, indent=2) + "\n"
    (work / "summary.json").write_text(text)
    (Path(out) / "training_summary.json").write_text(text)
    return summary


SYNTHETIC_CONFIG_FILE = "synthetic_config.json"  # the media sizes a demo model was trained on, beside its weights


def write_synthetic_config(folder: str | Path, synth) -> None:
    sizes = {k: v for k, v in asdict(synth).items() if k != "second_event_p"}  # the test's choice, not the model's
    (Path(folder) / SYNTHETIC_CONFIG_FILE).write_text(json.dumps(sizes, indent=2) + "\n")


def synthetic_config_for(folder: str | Path | None, second_event_p: float = 1.0):
    """The scenes to test a model on: those it was trained on (`synthetic_config.json` in its folder) if it says,
    else `SyntheticConfig()`'s, with `second_event_p` (1.0: every clip has a second change, so the label matters)."""
    from qwen3vl.train.synthetic import SyntheticConfig

    path = Path(folder) / SYNTHETIC_CONFIG_FILE if folder is not None else None
    saved = json.loads(path.read_text()) if path is not None and path.is_file() else {}
    return SyntheticConfig(**saved, second_event_p=second_event_p)


def evaluate_demo(folder: str | Path, seed: int, n: int = 200, records: list | None = None,
                  second_event_p: float = 1.0, progress: bool = True, dtype: str = "float32",
                  quantization: str | None = None, kv_cache_dtype: str = "auto",
                  blind: bool = False) -> dict[str, float]:
    """Per-task accuracy of the model in `folder` on n fresh synthetic examples of `seed` (greedy decoding), drawn at
    the sizes the model was trained on. `blind`: every picture and frame greyed out (`scoring.grey_out`), so the
    scores are what the model answers from the question alone."""
    from qwen3vl.llm import LLM
    from qwen3vl.train.scoring import evaluate, grey_out

    llm = LLM(str(folder), dtype=dtype, device="cpu", quantization=quantization, kv_cache_dtype=kv_cache_dtype)

    def generate(messages: list[dict]) -> str:
        return llm.chat(grey_out(messages) if blind else messages, max_tokens=64, temperature=0).text

    return evaluate(generate, seed, n, config=synthetic_config_for(folder, second_event_p), records=records,
                    progress=progress)
