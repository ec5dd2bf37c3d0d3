"""`qwen3vl serve`: flags -> `ServeSettings` + an `LLM` -> uvicorn running `create_app`.

Model, media-budget and sampling flags are the ones `run`/`chat` take (`qwen3vl.commands`); the sampling flags
become the server's defaults for fields a request leaves out (so `--max-tokens` caps requests that send none).
The API key may come from `--api-key` or the `QWEN3VL_API_KEY` environment variable (which keeps it out of `ps`).
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os

log = logging.getLogger(__name__)


def add_serve_parser(sub) -> None:
    from qwen3vl.commands import add_model_flags, add_sampling_flags

    p = sub.add_parser("serve", help="OpenAI-compatible HTTP server (chat completions, completions, models, "
                                     "health, Prometheus metrics)")
    g = p.add_argument_group("server")
    g.add_argument("--host", default="127.0.0.1", help="interface to bind (default: loopback only)")
    g.add_argument("--port", type=int, default=8000)
    g.add_argument("--api-key", default=None,
                   help="require 'Authorization: Bearer KEY' on every route but /health (default: "
                        "$QWEN3VL_API_KEY, else no key)")
    _add_model_names(g)
    g.add_argument("--allow-runtime-lora", action="store_true",
                   help="enable POST /v1/load_lora_adapter and /v1/unload_lora_adapter (vLLM's API): clients may "
                        "then make the server read any adapter path it can reach; use with --api-key")
    g.add_argument("--max-queue", type=int, default=256,
                   help="requests that may wait beyond --max-num-seqs running ones; more get 429")
    _add_request_limits(g, timeout=600.0)
    g.add_argument("--responses-store", type=int, default=1000,
                   help="finished Responses API responses kept in memory for previous_response_id and GET "
                        "/v1/responses/{id}; the oldest go first (0: keep none)")
    g.add_argument("--responses-store-mb", type=float, default=256.0,
                   help="the most memory the kept responses' conversations may take")
    g.add_argument("--access-log", action="store_true", help="log every request (uvicorn access log)")
    add_model_flags(p)
    add_sampling_flags(p)
    p.set_defaults(func=lambda a: serve(a))


def _add_model_names(g) -> None:
    g.add_argument("--served-model-name", nargs="+", default=None,
                   help="model name(s) clients send (default: the --model argument); the first is reported")
    g.add_argument("--lora-modules", nargs="+", default=None, metavar="NAME=ADAPTER",
                   help="peft LoRA adapters (folders or hub ids) served unmerged next to the base model: a request "
                        "whose `model` is NAME uses that adapter; others keep the base model, in the same batch")


def _add_request_limits(g, timeout: float) -> None:
    g.add_argument("--request-timeout", type=float, default=timeout,
                   help="seconds a request may take from arrival; then 504 and it is aborted")
    g.add_argument("--allowed-local-media-path", default=None,
                   help="folder whose files (paths or file:// URLs) messages may reference (default: none)")
    g.add_argument("--remote-media-timeout", type=float, default=10.0,
                   help="seconds to fetch one http(s) image/video (with --allow-remote-media)")
    g.add_argument("--max-remote-media-mb", type=float, default=64.0, help="size limit of one fetched media file")
    g.add_argument("--max-request-mb", type=float, default=64.0, help="size limit of a request body (413 above)")
    g.add_argument("--preprocess-workers", type=int, default=2,
                   help="threads that render, tokenise and decode media before generation")


def add_run_batch_parser(sub) -> None:
    from qwen3vl.commands import add_model_flags, add_sampling_flags

    p = sub.add_parser("run-batch", help="run a file of OpenAI Batch API requests (JSONL) offline and write the "
                                         "results (JSONL), as vLLM's run-batch does")
    g = p.add_argument_group("batch")
    g.add_argument("--input-file", "-i", required=True,
                   help="JSONL, one request a line: {custom_id, method: POST, url: /v1/chat/completions | "
                        "/v1/completions | /v1/responses, body} ('-': standard input)")
    g.add_argument("--output-file", "-o", required=True,
                   help="JSONL results, in input order, one line per request as it finishes ('-': standard output)")
    g.add_argument("--max-concurrency", type=int, default=None,
                   help="requests in flight at once (default: twice --max-num-seqs)")
    g.add_argument("--resume", action="store_true",
                   help="keep the output file's answered (200) lines and run only the other requests")
    g.add_argument("--overwrite", action="store_true", help="replace a non-empty output file")
    g.add_argument("--no-progress", action="store_true", help="no progress bar on standard error")
    _add_model_names(g)
    _add_request_limits(g, timeout=3600.0)
    add_model_flags(p)
    add_sampling_flags(p)
    p.set_defaults(func=lambda a: run_batch(a))


def run_batch(args: argparse.Namespace) -> int:
    import importlib.util
    import sys
    import time

    from qwen3vl.serve import batch

    if importlib.util.find_spec("fastapi") is None:  # (the requests run through the server's app)
        raise SystemExit("error: `qwen3vl run-batch` needs the serve extra: pip install 'qwen3vl[serve]'")

    try:
        if args.input_file == "-":
            requests = batch.read_requests(sys.stdin, "standard input")
        else:
            with open(args.input_file, encoding="utf-8") as f:
                requests = batch.read_requests(f, args.input_file)
    except OSError as e:
        raise SystemExit(f"error: cannot read --input-file: {e}") from None
    except batch.BatchFileError as e:
        raise SystemExit(f"error: {e}") from None
    if args.max_concurrency is not None and args.max_concurrency < 1:
        raise SystemExit("error: --max-concurrency must be at least 1")
    if args.allowed_local_media_path and not os.path.isdir(args.allowed_local_media_path):
        raise SystemExit(f"error: --allowed-local-media-path {args.allowed_local_media_path} is not a folder")
    concurrency = args.max_concurrency or 2 * args.max_num_seqs
    settings = settings_from_args(args, max_queue=concurrency)
    try:  # (checked before the model loads, so a wrong path costs nothing; written only once it has loaded)
        done = batch.check_output(args.output_file, args.input_file, requests, args.resume, args.overwrite)
    except OSError as e:
        raise SystemExit(f"error: cannot read --output-file: {e}") from None
    except batch.BatchFileError as e:
        raise SystemExit(f"error: {e}") from None
    from qwen3vl.commands import build_llm
    from qwen3vl.serve.app import create_app

    llm = build_llm(args)
    try:
        try:
            app = create_app(llm, settings)
            out = batch.open_output(args.output_file, done, args.resume)
        except ValueError as e:
            raise SystemExit(f"error: {e}") from None
        except OSError as e:
            raise SystemExit(f"error: cannot write --output-file: {e}") from None
        start = time.monotonic()
        try:
            counts = batch.run_batch(app, requests, out, concurrency, done, show_progress=not args.no_progress)
        except KeyboardInterrupt:
            print(f"interrupted: the finished results are in {args.output_file}; run again with --resume for the "
                  "rest", file=sys.stderr, flush=True)
            return 130
        finally:
            if out is not sys.stdout:
                out.close()
    finally:
        close = getattr(llm, "close", None)
        if close is not None:
            close()
    print(counts.summary(time.monotonic() - start), file=sys.stderr, flush=True)
    return 0


def settings_from_args(args: argparse.Namespace, max_queue: int | None = None):
    """The server's settings from its flags; `max_queue` given: run-batch's settings (its queue holds the whole
    concurrency)."""
    from qwen3vl.commands import sampling_kwargs
    from qwen3vl.serve.app import ServeSettings

    names = args.served_model_name or [args.model or "qwen3vl-demo"]
    defaults = sampling_kwargs(args)
    if defaults.pop("json_mode", None) or defaults.pop("json_schema", None) is not None:
        raise SystemExit("error: --json-mode/--json-schema are chosen per request when serving: send "
                         'response_format {"type": "json_object"} or {"type": "json_schema", ...}')
    if defaults.pop("regex", None) is not None or defaults.pop("choice", None) is not None:
        raise SystemExit("error: --regex/--choice are chosen per request when serving: send guided_regex / "
                         "guided_choice (or structured_outputs) in the request body")
    batch = max_queue is not None  # run-batch: no HTTP clients, no key, no runtime adapters, no stored responses
    return ServeSettings(
        served_model_names=names, api_key=None if batch else args.api_key or os.environ.get("QWEN3VL_API_KEY") or None,
        max_queue=max_queue if batch else args.max_queue, request_timeout=args.request_timeout,
        allow_remote_media=args.allow_remote_media, allowed_local_media_path=args.allowed_local_media_path,
        remote_media_timeout=args.remote_media_timeout, max_remote_media_mb=args.max_remote_media_mb,
        max_request_mb=args.max_request_mb, preprocess_workers=args.preprocess_workers, sampling_defaults=defaults,
        allow_runtime_lora=False if batch else args.allow_runtime_lora,
        responses_store=0 if batch else args.responses_store,
        responses_store_mb=0.0 if batch else args.responses_store_mb)


def serve(args: argparse.Namespace) -> int:
    try:
        import uvicorn
    except ImportError:
        raise SystemExit("error: `qwen3vl serve` needs the serve extra: pip install 'qwen3vl[serve]'") from None
    from qwen3vl.commands import build_llm
    from qwen3vl.serve.app import create_app

    settings = settings_from_args(args)
    if not _is_loopback(args.host) and settings.api_key is None:
        log.warning("serving on %s without an API key: anyone who can reach this address can use the model",
                    args.host)
    if args.allowed_local_media_path and not os.path.isdir(args.allowed_local_media_path):
        raise SystemExit(f"error: --allowed-local-media-path {args.allowed_local_media_path} is not a folder")
    llm = build_llm(args)
    try:
        app = create_app(llm, settings)
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None
    config = uvicorn.Config(app, host=args.host, port=args.port, access_log=args.access_log,
                            log_level=logging.getLevelName(min(logging.getLogger().level, logging.INFO)).lower(),
                            timeout_graceful_shutdown=30)
    server = _make_server(config, app.state.engine_loop)
    print(f"serving {settings.served_model_names[0]} on http://{args.host}:{args.port}/v1", flush=True)
    try:
        server.run()
    except KeyboardInterrupt:  # uvicorn re-raises the signal once it has shut down gracefully
        pass
    finally:
        close = getattr(llm, "close", None)  # stops tensor-parallel worker ranks, if any
        if close is not None:
            close()
    return 0


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _make_server(config, engine_loop):
    import uvicorn

    class Server(uvicorn.Server):
        """Stops taking new requests (503) as soon as a shutdown signal arrives; running ones may finish."""

        def handle_exit(self, sig, frame) -> None:
            engine_loop.begin_shutdown()
            super().handle_exit(sig, frame)

    return Server(config)

