"""Task subcommands as typed functions, plus one argparse hook per command for `qwen3vl.cli` to mount.

    ground    IMAGE QUERY      boxes/points as JSON + annotated PNG
    ground3d  IMAGE QUERY      3-D boxes as JSON + wireframe PNG
    document  FILE             qwenvl html/markdown per page (images or PDF): raw, clean, annotated
    ocr       IMAGE            text spotting as JSON + annotated PNG
    clip      VIDEO QUERY      find the moment, cut it out with PyAV
    captions  VIDEO            dense captions as SRT / WebVTT
    agent     --url URL TASK   browser GUI agent (headless Chromium via Playwright)
    eval      FILE.jsonl       metrics over a JSONL dataset
    eval      synthetic        the demo tasks on fresh scenes: --seed S --n N, JSON scores on the last line

Each command talks to `--model PATH` (local `qwen3vl.LLM`) or `--endpoint URL` (OpenAI-compatible);
`--response TEXT|@FILE` (or `--script FILE` for the agent) replays a saved reply instead, which makes
every command usable and testable without a model. Functions return the process exit code.
"""

from __future__ import annotations

import argparse
import inspect
import json
import sys
from pathlib import Path
from typing import Any, Callable

from qwen3vl.tasks.backends import (
    ChatBackend,
    ScriptedBackend,
    image_message,
    make_backend,
)

# ---------------------------------------------------------------------------------------------- helpers

def _read_response(response: str) -> str:
    return Path(response[1:]).read_text(encoding="utf-8") if response.startswith("@") else response


def _backend(model: str | None, endpoint: str | None, response: str | None, served_model: str = "default") -> ChatBackend:
    if response is not None:
        text = _read_response(response)
        return ScriptedBackend(lambda _messages: text)
    return make_backend(model, endpoint, served_model=served_model)


def _print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2, ensure_ascii=False))


def _default_out(src: str, suffix: str) -> str:
    p = Path(src)
    return str(Path.cwd() / f"{p.stem}{suffix}")


# ---------------------------------------------------------------------------------------------- commands

def ground(image: str, query: str, *, mode: str = "box", model: str | None = None, endpoint: str | None = None,
           response: str | None = None, out: str | None = None, served_model: str = "default",
           max_tokens: int = 1024, min_pixels: int | None = None, max_pixels: int | None = None) -> int:
    """Locate `query` in `image`; print the boxes/points in pixels and write the annotated image."""
    from PIL import Image

    from qwen3vl.tasks import grounding
    from qwen3vl.tasks.draw import draw_grounding

    prompts = {"box": grounding.refer_prompt, "point": grounding.point_prompt,
               "detect": lambda q: grounding.detect_prompt([c.strip() for c in q.split(",") if c.strip()])}
    if mode not in prompts:
        raise ValueError(f"mode {mode!r} unknown; expected box, point or detect")
    prompt = prompts[mode](query)
    with Image.open(image) as im:
        img = im.convert("RGB")
    reply = _backend(model, endpoint, response, served_model).chat(
        image_message(image, prompt, min_pixels=min_pixels, max_pixels=max_pixels), max_tokens=max_tokens)
    parsed = grounding.parse_grounding_output(reply.text, *img.size)
    out = out or _default_out(image, "_ground.png")
    draw_grounding(img, parsed.items).save(out)
    _print_json({"image": image, "width": img.width, "height": img.height, "prompt": prompt, "response": reply.text,
                 "items": parsed.to_dicts(), "problems": parsed.problems, "truncated": parsed.truncated,
                 "annotated": out})
    return 0


def ground3d(image: str, query: str, *, camera: str | None = None, fov: float = 60.0, model: str | None = None,
             endpoint: str | None = None, response: str | None = None, out: str | None = None,
             served_model: str = "default", max_tokens: int = 1024) -> int:
    """3-D boxes for `query`; `camera` is a JSON file or string with fx, fy, cx, cy (else a `fov` camera)."""
    from PIL import Image

    from qwen3vl.tasks.boxes3d import (
        Intrinsics,
        draw_boxes3d,
        parse_boxes3d,
        project_box,
    )

    with Image.open(image) as im:
        img = im.convert("RGB")
    if camera:
        raw = Path(camera).read_text() if Path(camera).is_file() else camera
        cam = Intrinsics.from_dict(json.loads(raw))
    else:
        cam = Intrinsics.from_fov(img.width, img.height, fov)
    prompt = (f"Locate the {query} in the image and provide 3D bounding boxes in JSON format: "
              '[{"bbox_3d":[x_center, y_center, z_center, x_size, y_size, z_size, roll, pitch, yaw],"label":"category"}].')
    reply = _backend(model, endpoint, response, served_model).chat(image_message(image, prompt), max_tokens=max_tokens)
    boxes, problems = parse_boxes3d(reply.text)
    out = out or _default_out(image, "_ground3d.png")
    draw_boxes3d(img, boxes, cam).save(out)
    items = [{"label": b.label, "bbox_3d": [*b.center, *b.size, *b.angles],
              "corners_px": [None if p is None else [round(p[0], 2), round(p[1], 2)] for p in project_box(b, cam)]}
             for b in boxes]
    _print_json({"image": image, "camera": vars(cam), "prompt": prompt, "response": reply.text, "items": items,
                 "problems": problems, "annotated": out})
    return 0


def document(path: str, *, fmt: str = "html", out_dir: str | None = None, pages: str | None = None,
             model: str | None = None, endpoint: str | None = None, response: str | None = None,
             served_model: str = "default", max_tokens: int = 8192, min_pixels: int | None = None,
             max_pixels: int | None = None) -> int:
    """Parse an image or PDF with the qwenvl html/markdown prompt; per page write the reply, the clean
    document and the annotated page into `out_dir`."""
    from qwen3vl.tasks import documents, pdf

    if fmt not in ("html", "markdown"):
        raise ValueError(f"format {fmt!r} unknown; expected html or markdown")
    budget = {k: v for k, v in (("min_pixels", min_pixels), ("max_pixels", max_pixels)) if v}
    page_ids = [int(p) for p in pages.split(",")] if pages else None
    images = (pdf.render_pdf(path, pages=page_ids, **budget) if path.lower().endswith(".pdf")
              else pdf.load_pages(path))
    out = Path(out_dir or _default_out(path, "_parsed"))
    out.mkdir(parents=True, exist_ok=True)
    backend = _backend(model, endpoint, response, served_model)
    prompt = documents.HTML_PROMPT if fmt == "html" else documents.MARKDOWN_PROMPT
    summary = []
    for i, img in enumerate(images):
        reply = backend.chat(image_message(img, prompt), max_tokens=max_tokens)
        parse = (documents.parse_qwenvl_html if fmt == "html" else documents.parse_qwenvl_markdown)(reply.text, *img.size)
        clean = documents.clean_html(reply.text) if fmt == "html" else documents.clean_markdown(reply.text)
        stem = f"page_{i:03d}"
        (out / f"{stem}.raw.txt").write_text(reply.text, encoding="utf-8")
        (out / f"{stem}.{'html' if fmt == 'html' else 'md'}").write_text(clean, encoding="utf-8")
        documents.draw_document(img, parse.elements).save(out / f"{stem}.png")
        summary.append({"page": i, "size": list(img.size), "elements": len(parse.elements),
                        "problems": parse.problems, "truncated": parse.truncated})
    _print_json({"input": path, "format": fmt, "out_dir": str(out), "pages": summary})
    return 0


def ocr(image: str, *, level: str = "line", model: str | None = None, endpoint: str | None = None,
        response: str | None = None, out: str | None = None, served_model: str = "default",
        max_tokens: int = 8192) -> int:
    """Text spotting: print every text line (or word) with its pixel box; write the annotated image."""
    from PIL import Image

    from qwen3vl.tasks.documents import (
        OCR_SPOTTING_PROMPT,
        draw_ocr,
        parse_ocr_spotting,
    )

    if level not in ("line", "word"):
        raise ValueError(f"level {level!r} unknown; expected line or word")
    prompt = OCR_SPOTTING_PROMPT.replace("line-level", f"{level}-level")
    with Image.open(image) as im:
        img = im.convert("RGB")
    reply = _backend(model, endpoint, response, served_model).chat(image_message(image, prompt), max_tokens=max_tokens)
    spots, problems = parse_ocr_spotting(reply.text, *img.size)
    out = out or _default_out(image, "_ocr.png")
    draw_ocr(img, spots).save(out)
    _print_json({"image": image, "spots": [s.to_dict() for s in spots], "problems": problems, "annotated": out})
    return 0


def _video_message(video: str, text: str, fps: float) -> list[dict[str, Any]]:
    return [{"role": "user", "content": [{"type": "video", "video": video, "fps": fps}, {"type": "text", "text": text}]}]


def clip(video: str, query: str, *, out: str | None = None, model: str | None = None, endpoint: str | None = None,
         response: str | None = None, served_model: str = "default", fps: float = 2.0, pad: float = 0.0,
         max_tokens: int = 256) -> int:
    """Ask when `query` happens in `video`, then cut that range (widened by `pad` seconds) into `out`."""
    from qwen3vl.tasks.video_clip import cut_clip, probe
    from qwen3vl.tasks.video_time import moment_prompt, parse_time_range

    prompt = moment_prompt(query)
    reply = _backend(model, endpoint, response, served_model).chat(_video_message(video, prompt, fps), max_tokens=max_tokens)
    r = parse_time_range(reply.text)
    if r is None:
        print(f"error: no time range in the answer: {reply.text!r}", file=sys.stderr)
        return 1
    duration, _, _ = probe(video)
    start, end = max(0.0, r.start - pad), r.end + pad
    if duration:
        end = min(end, duration)
    if end <= start:  # a single instant: keep one second around it
        start, end = max(0.0, start - 0.5), start + 0.5
    out = out or _default_out(video, "_clip.mp4")
    info = cut_clip(video, out, start, end)
    _print_json({"video": video, "prompt": prompt, "response": reply.text, "range": r.to_dict(),
                 "clip": {"path": info.path, "start": info.start, "end": info.end, "frames": info.frames}})
    return 0


def captions(video: str, *, srt: str | None = None, vtt: str | None = None, model: str | None = None,
             endpoint: str | None = None, response: str | None = None, served_model: str = "default",
             fps: float = 2.0, max_tokens: int = 4096) -> int:
    """Dense captions of `video` written as SRT and/or WebVTT (both next to the video name by default)."""
    from qwen3vl.tasks.video_time import (
        DENSE_CAPTION_PROMPT,
        parse_dense_captions,
        to_srt,
        to_webvtt,
    )

    reply = _backend(model, endpoint, response, served_model).chat(
        _video_message(video, DENSE_CAPTION_PROMPT, fps), max_tokens=max_tokens)
    caps = parse_dense_captions(reply.text)
    if not caps:
        print(f"error: no timed captions in the answer: {reply.text[:200]!r}", file=sys.stderr)
        return 1
    srt = srt or (None if vtt else _default_out(video, ".srt"))
    if srt:
        Path(srt).write_text(to_srt(caps), encoding="utf-8")
    if vtt:
        Path(vtt).write_text(to_webvtt(caps), encoding="utf-8")
    _print_json({"video": video, "captions": [vars(c) for c in caps], "srt": srt, "vtt": vtt})
    return 0


def agent(task: str, *, url: str, model: str | None = None, endpoint: str | None = None, script: str | None = None,
          served_model: str = "default", tool: str = "computer_use", max_steps: int = 15, dry_run: bool = False,
          log_dir: str | None = None, viewport: str = "1280x800", chromium: str | None = None,
          max_tokens: int = 1024) -> int:
    """Run the GUI agent on `url` until it terminates or hits `max_steps`; exit 0 only on success."""
    from qwen3vl.tasks.agent.browser import BrowserEnv
    from qwen3vl.tasks.agent.loop import AgentConfig, run_agent
    from qwen3vl.tasks.agent.policy import ModelPolicy, load_script

    try:
        w, h = (int(v) for v in viewport.lower().split("x"))
    except ValueError:
        raise ValueError(f"viewport {viewport!r} should look like 1280x800") from None
    policy = (load_script(script, tool=tool) if script else
              ModelPolicy(make_backend(model, endpoint, served_model=served_model), tool=tool, max_tokens=max_tokens))
    log_dir = log_dir or str(Path.cwd() / "agent_run")
    with BrowserEnv(url, viewport=(w, h), executable=chromium) as env:
        result = run_agent(task, env, policy, AgentConfig(max_steps=max_steps, dry_run=dry_run, log_dir=log_dir))
    _print_json(result.to_dict())
    return 0 if result.status == "success" else 1


def run_eval(file: str, *, model: str | None = None, endpoint: str | None = None, served_model: str = "default",
             out: str | None = None, limit: int | None = None, max_tokens: int = 1024, progress: bool = True,
             seed: int | None = None, n: int = 200, dtype: str | None = None,
             quantization: str | None = None, kv_cache_dtype: str | None = None, blind: bool = False) -> int:
    """Score a backend on a JSONL dataset; print the table and write per-record rows to `out`.

    `file == "synthetic"` (and no such file) scores the demo tasks on fresh scenes instead: `run_synthetic_eval`
    (`dtype`, `quantization`, `kv_cache_dtype` and `blind` are for it)."""
    from qwen3vl.tasks.eval.runner import evaluate, load_dataset

    if file == SYNTHETIC and not Path(file).exists():
        if endpoint:
            raise ValueError("eval synthetic runs a local model (--model PATH, default: the bundled demo model); "
                             "--endpoint is not supported for it")
        return run_synthetic_eval(seed, n, model=model, out=out, progress=progress, dtype=dtype or "float32",
                                  quantization=quantization, kv_cache_dtype=kv_cache_dtype or "auto", blind=blind)
    if seed is not None:
        raise ValueError("--seed is for `qwen3vl eval synthetic`; a JSONL dataset is scored as it is")
    if dtype is not None or quantization is not None or kv_cache_dtype is not None or blind:
        raise ValueError("--dtype / --quantization / --kv-cache-dtype / --blind are for `qwen3vl eval synthetic`; "
                         "for a dataset, serve the model with them (qwen3vl serve -q int8 ...) and pass --endpoint")

    records = load_dataset(file, limit=limit)
    backend = make_backend(model, endpoint, served_model=served_model)
    report = evaluate(records, backend, max_tokens=max_tokens, out_path=out, progress=progress)
    print(report.table())
    return 0


SYNTHETIC = "synthetic"


def run_synthetic_eval(seed: int | None, n: int = 200, *, model: str | None = None, out: str | None = None,
                       progress: bool = True, dtype: str = "float32", quantization: str | None = None,
                       kv_cache_dtype: str = "auto", blind: bool = False) -> int:
    """The five demo tasks on `n` fresh scenes from `seed`, scored as `qwen3vl.train.scoring` says.

    Prints a table, then the scores as one JSON object on the last line (keys: the task names). The scenes are
    drawn at the sizes the model was trained on (its `synthetic_config.json`, when it has one). `blind` greys out
    every picture and frame: the scores of the question alone, the floor that seeing must clear."""
    from qwen3vl.train.demo import evaluate_demo
    from qwen3vl.train.synthetic import TASKS

    if seed is None:
        raise ValueError("eval synthetic needs --seed S (pick one that training never saw; the demo model trained "
                         "on seed 0 and measured its held-out loss on seed 1)")
    if n < len(TASKS):
        raise ValueError(f"--n {n}: needs at least {len(TASKS)}, one example per task")
    folder = resolve_local_model(model)
    rows: list[dict] = []
    scores = evaluate_demo(folder, seed, n, records=rows, progress=progress, dtype=dtype, quantization=quantization,
                           kv_cache_dtype=kv_cache_dtype, blind=blind)
    if out:
        with open(out, "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
    counts = {task: sum(r["task"] == task for r in rows) for task in TASKS}
    if blind:
        print("blind: every picture and frame greyed out")
    print(f"{'task':<12} {'n':>4} {'score':>6}")
    for task in TASKS:
        print(f"{task:<12} {counts[task]:>4} {scores[task]:>6.3f}")
    print(json.dumps({task: round(scores[task], 4) for task in TASKS}))
    return 0


def resolve_local_model(model: str | None) -> str:
    """`model` as given, or the bundled demo model; a folder that does not exist is an error naming it."""
    from qwen3vl.commands import bundled_model

    if model is None:
        return bundled_model()
    if not Path(model).is_dir():
        raise FileNotFoundError(f"--model {model}: no such folder (eval synthetic needs a local checkpoint)")
    return model


# ---------------------------------------------------------------------------------------------- argparse

def _runner(fn: Callable[..., int]) -> Callable[[argparse.Namespace], int]:
    """Call `fn` with the parsed arguments its signature names; input errors become exit code 2."""
    names = set(inspect.signature(fn).parameters)

    def run(args: argparse.Namespace) -> int:
        kwargs = {k: v for k, v in vars(args).items() if k in names}
        try:
            return fn(**kwargs)
        except (ValueError, FileNotFoundError, ImportError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    return run


def _model_args(p: argparse.ArgumentParser, *, replay: bool = True) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--model", help="local checkpoint path or hub id (qwen3vl.LLM)")
    g.add_argument("--endpoint", help="OpenAI-compatible server URL, e.g. http://localhost:8000/v1")
    g.add_argument("--served-model", dest="served_model", default="default", help="model name sent to the endpoint")
    if replay:
        g.add_argument("--response", help="use this reply (or @FILE) instead of asking a model")


def add_ground_parser(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser("ground", help="2-D grounding: boxes or points for a query")
    p.add_argument("query", help='what to find, e.g. "red car" (comma-separated categories with --mode detect)')
    p.add_argument("--image", required=True)
    p.add_argument("--mode", choices=["box", "point", "detect"], default="box")
    p.add_argument("--out", help="annotated PNG (default: <image>_ground.png in the current folder)")
    p.add_argument("--max-tokens", dest="max_tokens", type=int, default=1024)
    p.add_argument("--min-pixels", dest="min_pixels", type=int)
    p.add_argument("--max-pixels", dest="max_pixels", type=int)
    _model_args(p)
    p.set_defaults(func=_runner(ground))
    return p


def add_ground3d_parser(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser("ground3d", help="3-D boxes for a query, drawn with camera intrinsics")
    p.add_argument("query")
    p.add_argument("--image", required=True)
    p.add_argument("--camera", help='JSON file or string {"fx":..,"fy":..,"cx":..,"cy":..}')
    p.add_argument("--fov", type=float, default=60.0, help="field of view (degrees) when no --camera is given")
    p.add_argument("--out")
    p.add_argument("--max-tokens", dest="max_tokens", type=int, default=1024)
    _model_args(p)
    p.set_defaults(func=_runner(ground3d))
    return p


def add_document_parser(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser("document", help="document parsing (qwenvl html / markdown) of an image or PDF")
    p.add_argument("path", help="page image or PDF")
    p.add_argument("--format", dest="fmt", choices=["html", "markdown"], default="html")
    p.add_argument("--out-dir", dest="out_dir")
    p.add_argument("--pages", help="0-based PDF pages, comma-separated (default: all)")
    p.add_argument("--min-pixels", dest="min_pixels", type=int, help="per-page pixel floor when rendering a PDF")
    p.add_argument("--max-pixels", dest="max_pixels", type=int, help="per-page pixel budget when rendering a PDF")
    p.add_argument("--max-tokens", dest="max_tokens", type=int, default=8192)
    _model_args(p)
    p.set_defaults(func=_runner(document))
    return p


def add_ocr_parser(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser("ocr", help="text spotting: text lines or words with boxes")
    p.add_argument("image")
    p.add_argument("--level", choices=["line", "word"], default="line")
    p.add_argument("--out")
    p.add_argument("--max-tokens", dest="max_tokens", type=int, default=8192)
    _model_args(p)
    p.set_defaults(func=_runner(ocr))
    return p


def add_clip_parser(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser("clip", help="find a moment in a video and cut it out")
    p.add_argument("video")
    p.add_argument("query", help="the moment to find")
    p.add_argument("--out", help="output .mp4 (default: <video>_clip.mp4)")
    p.add_argument("--fps", type=float, default=2.0, help="frame sampling rate for the model")
    p.add_argument("--pad", type=float, default=0.0, help="seconds added before and after the answer")
    p.add_argument("--max-tokens", dest="max_tokens", type=int, default=256)
    _model_args(p)
    p.set_defaults(func=_runner(clip))
    return p


def add_captions_parser(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser("captions", help="dense video captions as SRT / WebVTT")
    p.add_argument("video")
    p.add_argument("--srt")
    p.add_argument("--vtt")
    p.add_argument("--fps", type=float, default=2.0)
    p.add_argument("--max-tokens", dest="max_tokens", type=int, default=4096)
    _model_args(p)
    p.set_defaults(func=_runner(captions))
    return p


def add_agent_parser(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser("agent", help="GUI agent in headless Chromium")
    p.add_argument("task", help="what the agent should do")
    p.add_argument("--url", required=True)
    p.add_argument("--tool", choices=["computer_use", "mobile_use"], default="computer_use")
    p.add_argument("--max-steps", dest="max_steps", type=int, default=15)
    p.add_argument("--dry-run", dest="dry_run", action="store_true", help="log actions without executing them")
    p.add_argument("--log-dir", dest="log_dir", help="actions.jsonl + screenshots (default: ./agent_run)")
    p.add_argument("--viewport", default="1280x800")
    p.add_argument("--chromium", help="Chromium binary (default: $QWEN3VL_CHROMIUM or /usr/bin/chromium)")
    p.add_argument("--script", help="JSON list of replies / tool calls to replay instead of a model")
    p.add_argument("--max-tokens", dest="max_tokens", type=int, default=1024)
    _model_args(p, replay=False)
    p.set_defaults(func=_runner(agent))
    return p


def add_eval_parser(sub: Any) -> argparse.ArgumentParser:
    from qwen3vl.commands import KV_CACHE_DTYPE_CHOICES

    p = sub.add_parser("eval", help="metrics over a JSONL dataset, or `eval synthetic`: the demo tasks")
    p.add_argument("file", help="dataset .jsonl, or the word `synthetic`: the five demo tasks on fresh scenes")
    p.add_argument("--out", help="per-record results .jsonl")
    p.add_argument("--limit", type=int)
    p.add_argument("--seed", type=int, help="eval synthetic: the seed the scenes are drawn from")
    p.add_argument("--n", type=int, default=200, help="eval synthetic: number of scenes (split evenly over tasks)")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], help="eval synthetic: the model's dtype (default float32)")
    p.add_argument("--quantization", "-q", choices=["int8"], help="eval synthetic: weight-only int8 (docs/ENGINE.md)")
    p.add_argument("--kv-cache-dtype", choices=KV_CACHE_DTYPE_CHOICES,
                   help="eval synthetic: quantized KV cache (docs/ENGINE.md)")
    p.add_argument("--blind", action="store_true",
                   help="eval synthetic: grey out every picture and frame (what the model answers from the text alone)")
    p.add_argument("--max-tokens", dest="max_tokens", type=int, default=1024)
    p.add_argument("--no-progress", dest="progress", action="store_false")
    _model_args(p, replay=False)
    p.set_defaults(func=_runner(run_eval))
    return p


PARSERS = {"ground": add_ground_parser, "ground3d": add_ground3d_parser, "document": add_document_parser,
           "ocr": add_ocr_parser, "clip": add_clip_parser, "captions": add_captions_parser,
           "agent": add_agent_parser, "eval": add_eval_parser}


def add_parsers(sub: Any) -> None:
    """Mount every task subcommand on `sub` (from `ArgumentParser.add_subparsers()`)."""
    for add in PARSERS.values():
        add(sub)


def main(argv: list[str] | None = None) -> int:
    """Standalone entry for the task commands (the project CLI mounts `add_parsers` instead)."""
    parser = argparse.ArgumentParser(prog="qwen3vl")
    add_parsers(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
