"""The OpenAI-compatible HTTP app: `create_app(llm, settings)` -> a FastAPI app the official `openai` client uses
unchanged.

Routes: `POST /v1/chat/completions`, `POST /v1/completions`, `POST /v1/responses` (OpenAI's Responses API,
run as the chat request it translates to; all three streamed as server-sent events or not), `GET`/`DELETE
/v1/responses/{id}` and `GET /v1/responses/{id}/input_items` (the responses kept for `previous_response_id`),
`GET /v1/models`, `GET /health`, `GET /version`, `GET /metrics` (Prometheus text), vLLM's `POST /tokenize` /
`POST /detokenize`, and, with `allow_runtime_lora`, vLLM's `POST /v1/load_lora_adapter` /
`POST /v1/unload_lora_adapter`. All generation goes through one `EngineLoop`.

Request bodies are read (size-limited; NaN/Infinity rejected) and validated with the pydantic models in
`schemas.py`, so every bad input is an OpenAI-shaped 4xx naming the field; `transport.py` holds the HTTP plumbing
(the disconnect-aware SSE response, the API-key / error guard).
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from qwen3vl import __version__
from qwen3vl.engine.adapters import UnknownAdapterError
from qwen3vl.llm import LLM
from qwen3vl.processing.errors import MediaError, MessageFormatError
from qwen3vl.processing.sources import FetchOptions
from qwen3vl.serve import responses as R
from qwen3vl.serve import responses_api as RA
from qwen3vl.serve.errors import APIError, bad_request, error_body, is_small_int
from qwen3vl.serve.jobs import Deltas, Finished, Job
from qwen3vl.serve.loop import EngineLoop, RequestHandle
from qwen3vl.serve.media import MediaPolicy
from qwen3vl.serve.metrics import Metrics
from qwen3vl.serve.prompts import chat_job, completion_job, sampling_params
from qwen3vl.serve.schemas import (ChatCompletionRequest, CompletionRequest, DetokenizeRequest, LoadLoRARequest,
                                   TokenizeText, UnloadLoRARequest, parse)
from qwen3vl.serve.transport import EventStream, Guard, read_json, stream_events, wait_finished
from qwen3vl.weights.adapters import AdapterError, read_adapter


@dataclass
class ServeSettings:
    served_model_names: list[str]
    api_key: str | None = None
    max_queue: int = 256  # requests that may wait beyond the engine's max_num_seqs; then 429
    request_timeout: float = 600.0  # seconds from arrival; then 504 and the request is aborted
    allow_remote_media: bool = False
    allowed_local_media_path: str | None = None
    remote_media_timeout: float = 10.0
    max_remote_media_mb: float = 64.0
    max_request_mb: float = 64.0
    preprocess_workers: int = 2
    sampling_defaults: dict[str, Any] = field(default_factory=dict)  # for fields a request leaves out
    allow_runtime_lora: bool = False  # the load/unload LoRA adapter routes (they read any path the server can)
    responses_store: int = 1000  # finished Responses API responses kept for previous_response_id (0: none)
    responses_store_mb: float = 256.0  # and the most memory their conversations may take


def create_app(llm: LLM, settings: ServeSettings) -> FastAPI:
    """The app for one LLM. It owns the LLM's engine while it runs (one `EngineLoop` thread, started and stopped
    with the app's lifespan) and sets the processor's remote-media options from `settings`."""
    llm.processor.fetch = FetchOptions(settings.allow_remote_media, settings.remote_media_timeout,
                                       int(settings.max_remote_media_mb * 2**20))
    root = settings.allowed_local_media_path
    policy = MediaPolicy(
        allow_remote=settings.allow_remote_media,
        local_root=Path(root).expanduser().resolve() if root else None,
        max_image_pixels=llm.media_defaults.get("max_pixels") or llm.processor.image_config.max_pixels,
        max_video_pixels=llm.media_defaults.get("max_pixels") or llm.processor.video_config.max_pixels,
        max_frames=llm.media_defaults.get("max_frames") or llm.processor.video_config.max_frames)
    metrics = Metrics()
    engine_loop = EngineLoop(llm, metrics, max_queue=settings.max_queue, request_timeout=settings.request_timeout,
                             preprocess_workers=settings.preprocess_workers)
    names = settings.served_model_names
    if settings.allow_runtime_lora and llm.engine.adapters is None:
        raise ValueError("loading LoRA adapters at run time is not supported with tensor parallelism")
    if set(names) & set(llm.loras):
        raise ValueError(f"LoRA adapter names {sorted(set(names) & set(llm.loras))} are also served model names")
    max_body = int(settings.max_request_mb * 2**20)
    stored = RA.ResponseStore(settings.responses_store, settings.responses_store_mb)

    # side work (tokenize / detokenize, reading or downloading adapter files) runs on threads of its own: never on
    # the event loop, never holding up the chats' preprocessing pool; at most `max_queue` such jobs at once
    side_pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="qwen3vl-side")
    side_jobs = 0

    async def on_side_pool(fn: Callable[..., Any], *args: Any) -> Any:
        nonlocal side_jobs
        if side_jobs >= settings.max_queue:
            raise APIError(429, f"the server is busy ({side_jobs} tokenize/adapter jobs waiting); retry later",
                           code="queue_full")
        side_jobs += 1
        try:
            async with asyncio.timeout(settings.request_timeout):
                return await asyncio.get_running_loop().run_in_executor(side_pool, fn, *args)
        except TimeoutError:
            raise APIError(504, f"the request did not finish within the server's request timeout "
                                f"({settings.request_timeout:.0f} s)", code="timeout") from None
        finally:
            side_jobs -= 1

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        engine_loop.start()
        try:
            yield
        finally:
            engine_loop.stop()
            side_pool.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title="qwen3vl", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.engine_loop = engine_loop
    app.state.metrics = metrics
    app.state.responses = stored
    app.add_middleware(Guard, api_key=settings.api_key, metrics=metrics)

    @app.exception_handler(APIError)
    async def _api_error(request: Request, e: APIError):
        headers = {"Retry-After": "1"} if e.status in (429, 503) else None
        return JSONResponse(e.body(), status_code=e.status, headers=headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, e: StarletteHTTPException):
        message = {404: f"no route {request.url.path}", 405: f"{request.method} is not allowed on "
                                                             f"{request.url.path}"}.get(e.status_code, str(e.detail))
        return JSONResponse(error_body(message, "invalid_request_error"), status_code=e.status_code)

    def check_model(model: str | None) -> str | None:
        """The LoRA adapter a model name selects (None: the base model); 404 for a name not served."""
        if model is None or model in names:
            return None
        if model in llm.loras:
            return model
        raise APIError(404, f"the model {model!r} does not exist; this server serves "
                            f"{', '.join(names + llm.loras)}", "model", "model_not_found")

    def envelope(prefix: str, adapter: str | None = None) -> R.Envelope:
        return R.Envelope(f"{prefix}-{uuid.uuid4().hex}", int(time.time()), adapter or names[0])

    # ------------------------------------------------------------------ routes
    @app.get("/health")
    async def health():
        if engine_loop.closing or not engine_loop.alive:
            return JSONResponse({"status": "shutting down"}, status_code=503)
        return {"status": "ok"}

    @app.get("/version")
    async def version():  # (vLLM's route: clients read it to tell which server they reach)
        return {"version": __version__}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [_model_card(n, llm) for n in names]
                + [_adapter_card(a, llm, names[0]) for a in llm.loras]}

    @app.get("/v1/models/{model:path}")
    async def model(model: str):
        if check_model(model) is not None:
            return _adapter_card(model, llm, names[0])
        return _model_card(model, llm)

    @app.get("/metrics")
    async def metrics_route():
        return PlainTextResponse(metrics.render(engine_loop.stats, len(engine_loop.in_flight)),
                                 media_type="text/plain; version=0.0.4")

    async def run(request: Request, env: R.Envelope, build: Callable[[], Job], arrival: float,
                  events: Callable[[RequestHandle], AsyncIterator[str]] | None, render: Callable):
        """Queue the job; stream its events, or wait for it and `render(env, choices, usage)`."""
        handle = await engine_loop.submit(env.id, build, arrival)
        if events is not None:
            return EventStream(events(handle), lambda: engine_loop.finish(handle))
        try:
            done = await wait_finished(handle, request)
        finally:
            engine_loop.finish(handle)
        if done is None:
            return Response(status_code=499)  # the client is gone; nobody reads this
        return JSONResponse(render(env, done.choices, done.usage))

    def chat_request(body: Any, check_length: bool = True) -> tuple[ChatCompletionRequest, str | None, Callable]:
        """A chat body -> (the request, its LoRA adapter, the job's build function); 4xx for what is wrong."""
        req = parse(ChatCompletionRequest, body)
        adapter = check_model(req.model)
        params = sampling_params(llm, {**req.sampling(), "adapter": adapter}, settings.sampling_defaults)
        try:
            return req, adapter, chat_job(llm, req, body.get("tools") if req.tools else None, params, policy,
                                          check_length)
        except (MessageFormatError, MediaError, ValueError) as e:
            raise bad_request(str(e), "messages") from None

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        arrival = time.monotonic()
        req, adapter, build = chat_request(await read_json(request, max_body))
        env = envelope("chatcmpl", adapter)
        events = (lambda h: _chat_events(env, h, req.n, req.include_usage)) if req.stream else None
        return await run(request, env, build, arrival, events, R.chat_completion)

    @app.post("/v1/responses")
    async def responses(request: Request):
        """OpenAI's Responses API, run as the chat request it translates to (responses_api.py)."""
        arrival = time.monotonic()
        body = await read_json(request, max_body)
        previous = body.get("previous_response_id") if isinstance(body, dict) else None
        chat, conversation = RA.translate(body, stored.conversation(previous) if previous is not None else None,
                                          every_system=not llm.thinking)
        if chat.get("n", 1) != 1:
            raise bad_request("n is not supported by the Responses API (one answer per response)", "n")

        def keep(response: dict[str, Any]) -> bool:
            return stored.put(response, conversation + RA.output_messages(response["output"]), previous,
                              RA.input_items(body["input"]))

        try:  # (errors name the fields as the Responses request spells them)
            req, adapter, build = chat_request(chat)
            echo = RA.Echo(body, adapter or names[0], keep if stored.enabled and body.get("store") is not False
                           else None)
            env = R.Envelope(echo.id, echo.created_at, echo.model)
            events = (lambda h: RA.response_events(echo, h)) if req.stream else None
            return await run(request, env, build, arrival, events,
                             lambda env, choices, usage: RA.response_object(echo, choices, usage))
        except APIError as e:
            raise RA.renamed(e) from None

    @app.get("/v1/responses/{response_id}")
    async def get_response(response_id: str):
        return stored.get(response_id)

    @app.get("/v1/responses/{response_id}/input_items")
    async def response_input_items(response_id: str, order: str = "desc", limit: str = "20", after: str | None = None):
        if not is_small_int(limit, 6):  # (read here, not by FastAPI: its 422 is not in OpenAI's error shape)
            raise bad_request(f"limit must be an integer, got {limit!r}", "limit")
        return RA.item_page(stored.inputs(response_id), order, int(limit), after)

    @app.delete("/v1/responses/{response_id}")
    async def delete_response(response_id: str):
        stored.delete(response_id)
        return {"id": response_id, "object": "response", "deleted": True}

    @app.post("/v1/completions")
    async def completions(request: Request):
        arrival = time.monotonic()
        body = await read_json(request, max_body)
        req = parse(CompletionRequest, body)
        adapter = check_model(req.model)
        params = sampling_params(llm, {**req.sampling(), "adapter": adapter}, settings.sampling_defaults)
        env = envelope("cmpl", adapter)
        events = (lambda h: _completion_events(env, h, req.include_usage)) if req.stream else None
        return await run(request, env, completion_job(llm, req, params), arrival, events, R.completion)

    # ------------------------------------------------------------------ tokens (vLLM's /tokenize, /detokenize)
    @app.post("/tokenize")
    async def tokenize(request: Request):
        """A text prompt's tokens, or a chat's prompt exactly as /v1/chat/completions would run it (template, tools,
        tool_choice prefill, response_format notes, image and video pads at the server's media budget)."""
        body = await read_json(request, max_body)
        if isinstance(body, dict) and "messages" in body:
            _, _, build = chat_request({**body, "stream": False}, check_length=False)
            try:  # the media are read and decoded in `build`
                return await on_side_pool(lambda: _tokens_response(llm, build().prompts[0].prompt_ids, False))
            except (MessageFormatError, MediaError, ValueError) as e:
                raise bad_request(str(e), "messages") from None
        req = parse(TokenizeText, body)
        check_model(req.model)
        return await on_side_pool(lambda: _tokens_response(llm, llm.tokenizer.encode(req.prompt),
                                                           req.return_token_strs))

    @app.post("/detokenize")
    async def detokenize(request: Request):
        req = parse(DetokenizeRequest, await read_json(request, max_body))
        limit = min(llm.model.config.text_config.vocab_size, llm.tokenizer.vocab_size)
        bad = next((t for t in req.tokens if t >= limit), None)
        if bad is not None:  # (ids past the tokenizer's own would be dropped silently)
            raise bad_request(f"tokens: {bad} is not a token id of this tokenizer (0..{limit - 1})", "tokens")
        return await on_side_pool(lambda: _json(200, {"prompt": llm.tokenizer.decode(req.tokens)}))

    # ------------------------------------------------------------------ LoRA adapters at run time (vLLM's API)
    def runtime_lora() -> None:
        if not settings.allow_runtime_lora:
            raise APIError(404, "loading LoRA adapters at run time is off on this server (start it with "
                                "--allow-runtime-lora)", code="not_enabled")

    @app.post("/v1/load_lora_adapter")
    async def load_lora_adapter(request: Request):
        runtime_lora()
        req = parse(LoadLoRARequest, await read_json(request, max_body))
        name = req.lora_name
        if name in names or name in llm.loras:
            raise bad_request(f"the name {name!r} is already served; unload it first or pick another", "lora_name")
        try:  # reading the files (or downloading them) happens off the engine thread; adding the hooks on it
            adapter = await on_side_pool(read_adapter, req.lora_path)
            await engine_loop.on_engine(lambda: llm.add_lora(name, adapter))
        except (AdapterError, OSError) as e:
            raise bad_request(f"LoRA adapter {name!r}: {e}", "lora_path") from None
        return PlainTextResponse(f"Success: LoRA adapter '{name}' added successfully.")

    @app.post("/v1/unload_lora_adapter")
    async def unload_lora_adapter(request: Request):
        runtime_lora()
        req = parse(UnloadLoRARequest, await read_json(request, max_body))
        try:  # requests running with it finish with it; new ones get a 404 for its name
            await engine_loop.on_engine(lambda: llm.remove_lora(req.lora_name))
        except UnknownAdapterError as e:
            raise APIError(404, str(e), "lora_name", "model_not_found") from None
        except AdapterError as e:
            raise bad_request(str(e), "lora_name") from None
        return PlainTextResponse(f"Success: LoRA adapter '{req.lora_name}' removed successfully.")

    return app


def _json(status: int, body: Any) -> Response:
    """A JSON response serialised here (on a worker thread, for large bodies), not on the event loop."""
    return Response(json.dumps(body, ensure_ascii=False), status_code=status, media_type="application/json")


def _tokens_response(llm: LLM, ids: list[int], strs: bool) -> Response:
    return _json(200, {"count": len(ids), "max_model_len": llm.engine.max_model_len, "tokens": ids,
                       "token_strs": [llm.tokenizer.decode([t]) for t in ids] if strs else None})


def _model_card(name: str, llm: LLM) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": 0, "owned_by": "qwen3vl", "root": str(llm.path),
            "max_model_len": llm.engine.max_model_len}


def _adapter_card(name: str, llm: LLM, base: str) -> dict[str, Any]:
    """A LoRA adapter served next to the base model (as vLLM lists them: `parent` is the base model)."""
    return {**_model_card(name, llm), "root": str(llm.engine.adapters.folders.get(name, "")), "parent": base}


async def _chat_events(env: R.Envelope, handle: RequestHandle, n: int, include_usage: bool) -> AsyncIterator[str]:
    for i in range(n):
        yield R.sse(R.chat_chunk(env, [R.chat_role_choice(i)], include_usage))
    async for ev in stream_events(handle):
        if isinstance(ev, Deltas):
            yield R.sse(R.chat_chunk(env, [R.chat_delta_choice(d) for d in ev.deltas], include_usage))
        elif isinstance(ev, Finished):
            if include_usage:
                yield R.sse(R.usage_chunk(env, "chat.completion.chunk", ev.usage))
        else:
            yield R.sse(ev.body())
    yield R.SSE_DONE


async def _completion_events(env: R.Envelope, handle: RequestHandle, include_usage: bool) -> AsyncIterator[str]:
    async for ev in stream_events(handle):
        if isinstance(ev, Deltas):
            yield R.sse(R.completion_chunk(env, ev.deltas, include_usage))
        elif isinstance(ev, Finished):
            if include_usage:
                yield R.sse(R.usage_chunk(env, "text_completion", ev.usage))
        else:
            yield R.sse(ev.body())
    yield R.SSE_DONE


