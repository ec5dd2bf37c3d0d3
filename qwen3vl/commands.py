"""Typed functions behind the generation subcommands (`run`, `chat`, `init-random`) and the flags they share
(model, dtype, media budget, sampling). `qwen3vl/cli.py` only maps subcommands to these."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

DEMO_MODEL = Path(__file__).parent / "assets" / "demo"
EXAMPLE_IMAGE = Path(__file__).parent / "assets" / "example.png"


# ------------------------------------------------------------------------------------------------- shared flags
# what --kv-cache-dtype accepts (engine.runner.parse_kv_cache_dtype; fp8_e4m3 is vLLM's name for fp8), kept here so
# building the parsers does not import torch
KV_CACHE_DTYPE_CHOICES = ("auto", "int8", "fp8", "fp8_e4m3")


def add_model_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--model", "-m", default=None,
                   help="checkpoint folder or Hugging Face hub id (default: the bundled demo model)")
    g.add_argument("--revision", default=None, help="hub revision (branch, tag or commit)")
    g.add_argument("--lora", action="append", default=None, metavar="ADAPTER",
                   help="a peft LoRA adapter folder or hub id, merged into the weights at load (repeatable)")
    g.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16", "auto"],
                   help="weights dtype (default: the checkpoint's)")
    g.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    g.add_argument("--quantization", "-q", default=None, choices=["int8"],
                   help="weight-only int8 for the decoder and LM head: half the bytes of bf16, faster CPU decoding "
                        "(docs/BENCHMARKS.md); logits close to, not equal to, the unquantized model's")
    g.add_argument("--max-model-len", type=int, default=None, help="context length limit")
    g.add_argument("--kv-cache-gb", type=float, default=2.0, help="memory for the paged KV cache")
    g.add_argument("--kv-cache-dtype", default="auto", choices=KV_CACHE_DTYPE_CHOICES,
                   help="KV cache storage: the model's dtype (auto), or int8 / fp8 (e4m3) with a scale per token and "
                        "head, about twice the tokens in the same memory; logits close to, not equal to, auto's")
    g.add_argument("--max-num-seqs", type=int, default=64, help="sequences decoded together")
    g.add_argument("--max-batch-tokens", type=int, default=2048, help="token budget per engine step")
    g.add_argument("--chat-format", default="auto", choices=["auto", "instruct", "thinking"])
    g.add_argument("--chat-template", default=None, metavar="FILE|checkpoint",
                   help="render prompts with this Jinja chat template (a file, or 'checkpoint' for the one the "
                        "checkpoint ships) instead of the built-in renderer of the official templates: for "
                        "fine-tunes whose template differs")
    g.add_argument("--prompt-lookup", type=int, default=0, metavar="K",
                   help="prompt-lookup decoding: up to K draft tokens per step copied from the prompt and output "
                        "(n-gram speculative decoding; greedy requests only, same output, faster where the answer "
                        "copies text: OCR, documents). 0: off")
    g.add_argument("--prompt-lookup-max", type=int, default=3, help="longest n-gram looked up")
    g.add_argument("--prompt-lookup-min", type=int, default=1, help="shortest n-gram looked up")
    g.add_argument("--tensor-parallel-size", type=int, default=1,
                   help="split the model over this many processes/GPUs (docs/PARALLEL.md)")
    m = p.add_argument_group("media budget")
    m.add_argument("--min-pixels", type=int, default=None, help="minimum pixels per image (after resize)")
    m.add_argument("--max-pixels", type=int, default=None, help="maximum pixels per image / video frame")
    m.add_argument("--fps", type=float, default=None, help="video sampling rate (frames per second)")
    m.add_argument("--max-frames", type=int, default=None, help="maximum sampled video frames")
    m.add_argument("--allow-remote-media", action="store_true", help="allow http(s) image/video URLs")


def add_sampling_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("sampling (defaults: the checkpoint's generation_config.json)")
    g.add_argument("--max-tokens", type=int, default=512)
    g.add_argument("--temperature", type=float, default=None, help="0 = greedy")
    g.add_argument("--top-p", type=float, default=None)
    g.add_argument("--top-k", type=int, default=None)
    g.add_argument("--min-p", type=float, default=None)
    g.add_argument("--repetition-penalty", type=float, default=None)
    g.add_argument("--presence-penalty", type=float, default=None)
    g.add_argument("--frequency-penalty", type=float, default=None)
    g.add_argument("--seed", type=int, default=None)
    g.add_argument("--stop", action="append", default=None, help="stop string (repeatable)")
    g.add_argument("--json-mode", action="store_true", default=None,
                   help="constrain the answer to one valid JSON object")
    g.add_argument("--json-schema", type=json_schema_arg, default=None, metavar="SCHEMA",
                   help="constrain the answer to JSON valid against this JSON schema (inline JSON, or a file)")
    g.add_argument("--regex", type=regex_arg, default=None, metavar="PATTERN",
                   help="constrain the whole answer to match this regular expression (vLLM's guided_regex)")
    g.add_argument("--choice", action="append", default=None, metavar="TEXT",
                   help="constrain the answer to exactly one of these strings (repeatable; vLLM's guided_choice)")


def bundled_model() -> str:
    """The bundled demo model's folder, the default wherever no model is given; FileNotFoundError if it is missing."""
    if not (DEMO_MODEL / "config.json").is_file():
        raise FileNotFoundError(f"no --model given and no bundled demo model at {DEMO_MODEL}")
    return str(DEMO_MODEL)


def resolve_model_arg(model: str | None) -> str:
    if model:
        return model
    try:
        return bundled_model()
    except FileNotFoundError as e:
        raise SystemExit(f"error: {e}; pass --model PATH_OR_HUB_ID (or create one with `qwen3vl init-random DIR`)")


def build_llm(args: argparse.Namespace):
    from qwen3vl.engine.speculative import check_lookup
    from qwen3vl.llm import LLM
    from qwen3vl.weights.adapters import AdapterError
    from qwen3vl.weights.hub import ModelNotFoundError

    media = {"min_pixels": args.min_pixels, "max_pixels": args.max_pixels, "fps": args.fps,
             "max_frames": args.max_frames}
    template = getattr(args, "chat_template", None)
    if template not in (None, "checkpoint") and not os.path.isfile(os.path.expanduser(template)):
        raise SystemExit(f"error: --chat-template {template}: no such file (or 'checkpoint' for the shipped one)")
    try:  # (before the model loads)
        check_lookup(args.prompt_lookup, args.prompt_lookup_min, args.prompt_lookup_max)
    except ValueError as e:
        raise SystemExit(f"error: {str(e).replace('prompt_lookup', '--prompt-lookup').replace('_', '-')}") from None
    try:
        return LLM(resolve_model_arg(args.model), dtype=None if args.dtype == "auto" else args.dtype,
                   device=args.device, revision=args.revision, max_model_len=args.max_model_len,
                   kv_cache_gb=args.kv_cache_gb, max_num_seqs=args.max_num_seqs,
                   max_batch_tokens=args.max_batch_tokens, chat_format=args.chat_format, media=media,
                   allow_remote_media=args.allow_remote_media, progress=sys.stderr.isatty(),
                   tensor_parallel_size=args.tensor_parallel_size, lora=args.lora,
                   quantization=getattr(args, "quantization", None),
                   kv_cache_dtype=getattr(args, "kv_cache_dtype", "auto"),
                   prompt_lookup=args.prompt_lookup, prompt_lookup_min=args.prompt_lookup_min,
                   prompt_lookup_max=args.prompt_lookup_max, chat_template=template,
                   lora_modules=lora_modules_arg(getattr(args, "lora_modules", None)))
    except (ModelNotFoundError, AdapterError) as e:
        raise SystemExit(f"error: {e}") from None
    except ValueError as e:
        if "chat template" in str(e) or "chat_template" in str(e):
            raise SystemExit(f"error: {e}") from None
        raise


def lora_modules_arg(items: list[str] | None) -> dict[str, str] | None:
    """NAME=ADAPTER items (vLLM's --lora-modules) -> {name: adapter}."""
    if not items:
        return None
    out: dict[str, str] = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise SystemExit(f"error: --lora-modules takes NAME=ADAPTER items, got {item!r}")
        if name in out:
            raise SystemExit(f"error: --lora-modules names {name!r} twice")
        out[name] = path
    return out


def sampling_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    return {k: getattr(args, k) for k in ("max_tokens", "temperature", "top_p", "top_k", "min_p",
                                          "repetition_penalty", "presence_penalty", "frequency_penalty", "seed",
                                          "stop", "json_mode", "json_schema", "regex", "choice")}


def regex_arg(value: str) -> str:
    """--regex: checked here so a pattern we cannot enforce is a usage error naming the construct."""
    from qwen3vl.engine.regex import RegexError, RegexMachine

    try:
        RegexMachine(value)
    except RegexError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return value


def json_schema_arg(value: str) -> Any:
    """--json-schema: inline JSON, or the path of a JSON file; checked here so a bad schema is a usage error."""
    from qwen3vl.engine.schema import SchemaError, compile_schema

    text = value
    if not value.lstrip().startswith(("{", "[")) and value not in ("true", "false"):
        try:
            text = Path(value).read_text()
        except OSError as e:
            raise argparse.ArgumentTypeError(f"not inline JSON and not a readable file: {e}") from None
    try:
        schema = json.loads(text)
        compile_schema(schema)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"not valid JSON ({e})") from None
    except SchemaError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return schema


def user_message(prompt: str, images: list[str], videos: list[str]) -> dict[str, Any]:
    parts: list[dict[str, Any]] = [{"type": "image", "image": i} for i in images]
    parts += [{"type": "video", "video": v} for v in videos]
    parts.append({"type": "text", "text": prompt})
    return {"role": "user", "content": parts}


# ------------------------------------------------------------------------------------------------- run
def add_run_parser(sub) -> None:
    p = sub.add_parser("run", help="answer one prompt (with --image/--video) and print the answer")
    p.add_argument("prompt", help="the question or instruction")
    p.add_argument("--image", "-i", action="append", default=[], help="image path or URL (repeatable)")
    p.add_argument("--video", "-v", action="append", default=[], help="video path or URL (repeatable)")
    p.add_argument("--system", default=None, help="system prompt")
    p.add_argument("--json", action="store_true", help="print the structured result as JSON")
    p.add_argument("--no-stream", action="store_true", help="print the answer only when complete")
    add_model_flags(p)
    add_sampling_flags(p)
    b = p.add_argument_group("beam search (transformers' num_beams semantics; replaces sampling)")
    b.add_argument("--beam-width", type=int, default=None, metavar="N", help="search N beams, print the best")
    b.add_argument("--length-penalty", type=float, default=1.0,
                   help="a hypothesis scores its summed logprob / length ** this (default 1.0)")
    p.set_defaults(func=lambda a: run(a))


def _beam_search(llm, messages: list[dict[str, Any]], args: argparse.Namespace):
    """`run --beam-width`: the best hypothesis. Sampling flags do not apply to a search over the raw distribution,
    so giving one is an error rather than silently ignored."""
    given = [k for k, v in sampling_kwargs(args).items() if k != "max_tokens" and v is not None]
    if given:
        raise ValueError(f"--beam-width searches the model's raw distribution; drop --{given[0].replace('_', '-')}")
    return llm.beam_search(messages, beam_width=args.beam_width, n=1, max_tokens=args.max_tokens,
                           length_penalty=args.length_penalty)


def run(args: argparse.Namespace) -> int:
    from qwen3vl.processing.errors import MediaError, MessageFormatError

    if args.beam_width is None and args.length_penalty != 1.0:
        print("error: --length-penalty scores beams: give --beam-width too", file=sys.stderr)
        return 2
    llm = build_llm(args)
    messages = ([{"role": "system", "content": args.system}] if args.system else [])
    messages.append(user_message(args.prompt, args.image, args.video))
    try:
        if args.json or args.no_stream or args.beam_width is not None:
            if args.beam_width is not None:
                result = _beam_search(llm, messages, args)
            else:
                result = llm.chat(messages, **sampling_kwargs(args))
            if args.json:
                c = result.choices[0]
                print(json.dumps({"text": c.text, "reasoning": c.reasoning, "tool_calls": c.tool_calls,
                                  "finish_reason": c.finish_reason, "token_ids": c.token_ids,
                                  **({"score": c.score} if c.score is not None else {}),
                                  "usage": result.usage.to_dict()}, ensure_ascii=False))
            else:
                if result.reasoning:
                    print(f"[reasoning]\n{result.reasoning}\n[answer]", file=sys.stderr)
                print(result.text)
            return 0
        in_reasoning = False
        for delta in llm.chat_stream(messages, **sampling_kwargs(args)):
            if delta.reasoning:
                if not in_reasoning:
                    print("[reasoning] ", end="", file=sys.stderr)
                    in_reasoning = True
                print(delta.reasoning, end="", file=sys.stderr, flush=True)
            if delta.text:
                if in_reasoning:
                    print("\n[answer]", file=sys.stderr)
                    in_reasoning = False
                print(delta.text, end="", flush=True)
            if delta.tool_calls:
                print("\n" + json.dumps({"tool_calls": delta.tool_calls}, ensure_ascii=False), end="")
        print()
        return 0
    except (MediaError, MessageFormatError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


# ------------------------------------------------------------------------------------------------- chat
def add_chat_parser(sub) -> None:
    p = sub.add_parser("chat", help="interactive chat; /image PATH and /video PATH attach media, /reset, /exit")
    p.add_argument("--system", default=None, help="system prompt")
    add_model_flags(p)
    add_sampling_flags(p)
    p.set_defaults(func=lambda a: chat(a))


def chat(args: argparse.Namespace, stdin=None, stdout=None) -> int:
    from qwen3vl.processing.errors import MediaError, MessageFormatError

    stdin, stdout = stdin or sys.stdin, stdout or sys.stdout
    llm = build_llm(args)
    history: list[dict[str, Any]] = [{"role": "system", "content": args.system}] if args.system else []
    images: list[str] = []
    videos: list[str] = []
    print("qwen3vl chat — /image PATH, /video PATH, /reset, /exit", file=stdout)
    while True:
        print("> ", end="", file=stdout, flush=True)
        line = stdin.readline()
        if not line:
            return 0
        line = line.strip()
        if not line:
            continue
        if line in ("/exit", "/quit"):
            return 0
        if line == "/reset":
            history = history[:1] if args.system else []
            images, videos = [], []
            print("(history cleared)", file=stdout)
            continue
        if line.startswith(("/image ", "/video ")):
            kind, path = line.split(" ", 1)
            if not Path(path.strip()).expanduser().exists() and "://" not in path:
                print(f"(no such file: {path.strip()})", file=stdout)
                continue
            (images if kind == "/image" else videos).append(path.strip())
            print(f"(attached {path.strip()} to the next message)", file=stdout)
            continue
        message = user_message(line, images, videos)
        try:
            text = []
            for delta in llm.chat_stream(history + [message], **sampling_kwargs(args)):
                if delta.text:
                    text.append(delta.text)
                    print(delta.text, end="", file=stdout, flush=True)
            print(file=stdout)
        except (MediaError, MessageFormatError, ValueError) as e:
            print(f"(error: {e})", file=stdout)
            continue
        history += [message, {"role": "assistant", "content": "".join(text)}]
        images, videos = [], []


# ------------------------------------------------------------------------------------------------- init-random
def add_init_random_parser(sub) -> None:
    p = sub.add_parser("init-random", help="write a complete checkpoint folder with random weights (for tests, "
                                           "benchmarks, and trying the tools without real weights)")
    p.add_argument("folder")
    p.add_argument("--kind", default="dense", choices=["dense", "moe"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--chat-format", default="instruct", choices=["instruct", "thinking"])
    p.set_defaults(func=lambda a: init_random(a.folder, a.kind, a.seed, a.chat_format))


def init_random(folder: str, kind: str = "dense", seed: int = 0, chat_format: str = "instruct") -> int:
    from qwen3vl.model.testing import write_tiny_model

    write_tiny_model(folder, kind=kind, seed=seed, chat_template=chat_format, sharpen=3.0)
    print(f"wrote a tiny random-weight {kind} checkpoint to {folder} (its answers are gibberish by design)")
    return 0
