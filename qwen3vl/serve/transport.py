"""HTTP plumbing under the routes: reading a JSON body safely, waiting for a result while watching for the client
to leave, a server-sent-events response that aborts its request the moment the client disconnects, and the
pure-ASGI guard (API key, responses counted by route and status, last-resort 500 in OpenAI's shape).

The guard is plain ASGI rather than Starlette's BaseHTTPMiddleware, which would wrap `receive` and hide the
client's disconnect from the handlers below it.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import math
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response
from starlette.requests import ClientDisconnect

from qwen3vl.serve.errors import APIError, bad_request, error_body, is_small_int
from qwen3vl.serve.jobs import Deltas, Failed, Finished
from qwen3vl.serve.loop import RequestHandle
from qwen3vl.serve.metrics import Metrics

log = logging.getLogger(__name__)

ROUTES = ("/v1/chat/completions", "/v1/completions", "/v1/responses", "/v1/models", "/health", "/metrics", "/tokenize",
          "/detokenize", "/version", "/v1/load_lora_adapter", "/v1/unload_lora_adapter")


# ------------------------------------------------------------------------------------------------- bodies
def _reject_constant(name: str):
    raise ValueError(f"{name} is not valid JSON")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # (1e400: a number JSON allows, but no JSON answer could echo it)
        raise ValueError(f"the number {text[:40]} is out of range")
    return value



async def read_json(request: Request, limit: int) -> Any:
    declared = request.headers.get("content-length")
    if declared and is_small_int(declared, 18) and int(declared) > limit:
        raise APIError(413, f"the request body is {int(declared)} bytes, above this server's limit of {limit}",
                       code="request_too_large")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise APIError(413, f"the request body is above this server's limit of {limit} bytes",
                           code="request_too_large")
        chunks.append(chunk)
    raw = b"".join(chunks)
    if not raw.strip():
        raise bad_request("the request body is empty; send a JSON object", code="invalid_json")
    try:
        return json.loads(raw, parse_constant=_reject_constant, parse_float=_finite)
    except (ValueError, RecursionError) as e:
        raise bad_request(f"the request body is not valid JSON: {e}", code="invalid_json") from None


# ------------------------------------------------------------------------------------------------- waiting
async def until_disconnect(receive: Callable) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


async def wait_finished(handle: RequestHandle, request: Request) -> Finished | None:
    """The finished result, or None if the client went away first (then the caller aborts the request)."""

    async def result() -> Finished:
        while True:
            for ev in await handle.next_events():
                if isinstance(ev, Finished):
                    return ev
                if isinstance(ev, Failed):
                    raise ev.error

    task = asyncio.ensure_future(result())
    watcher = asyncio.ensure_future(until_disconnect(request.receive))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()
    if task.done() and not task.cancelled():
        return task.result()
    return None


async def stream_events(handle: RequestHandle) -> AsyncIterator[Deltas | Finished | APIError]:
    """A stream's events until it finishes; a failure (or the timeout) ends it with the APIError."""
    while True:
        try:
            batch = await handle.next_events()
        except APIError as e:
            yield e
            return
        for ev in batch:
            if isinstance(ev, Failed):
                yield ev.error
                return
            yield ev
            if isinstance(ev, Finished):
                return


class EventStream(Response):
    """Server-sent events that stop, and call `on_close` (which aborts the request), as soon as the client
    disconnects; `on_close` runs exactly once however the stream ends."""

    media_type = "text/event-stream"

    def __init__(self, chunks: AsyncIterator[str], on_close: Callable[[], None]):
        # not Response.__init__: that would set an empty body and a Content-Length of 0
        self.status_code = 200
        self.background = None
        self.init_headers({"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        self.chunks = chunks
        self.on_close = on_close

    async def __call__(self, scope, receive, send) -> None:
        async def pump() -> None:
            await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
            async for chunk in self.chunks:
                await send({"type": "http.response.body", "body": chunk.encode(), "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})

        writer = asyncio.ensure_future(pump())
        watcher = asyncio.ensure_future(until_disconnect(receive))
        try:
            await asyncio.wait({writer, watcher}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            watcher.cancel()
            if not writer.done():
                writer.cancel()
            self.on_close()
            await asyncio.gather(writer, watcher, return_exceptions=True)
            await self.chunks.aclose()
        if writer.done() and not writer.cancelled() and writer.exception() is not None:
            if not isinstance(writer.exception(), OSError):  # OSError: the client went away mid-write
                raise writer.exception()


# ------------------------------------------------------------------------------------------------- the guard
class Guard:
    """Pure ASGI middleware: API key check (all routes but /health), responses counted by route and status, and
    the last-resort handler that logs an unexpected exception and answers a 500 in OpenAI's shape."""

    def __init__(self, app, api_key: str | None, metrics: Metrics):
        self.app = app
        self.api_key = api_key.encode() if api_key else None
        self.metrics = metrics

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        route = path if path in ROUTES else next((r for r in ("/v1/models", "/v1/responses")
                                                      if path.startswith(r + "/")), "other")
        status = 0

        async def send_and_count(message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            if self.api_key is not None and path != "/health" and not self._authorized(scope):
                response = JSONResponse(error_body("missing or wrong API key; send 'Authorization: Bearer KEY'",
                                                   "invalid_request_error", None, "invalid_api_key"),
                                        status_code=401, headers={"WWW-Authenticate": "Bearer"})
                await response(scope, receive, send_and_count)
                return
            await self.app(scope, receive, send_and_count)
        except ClientDisconnect:  # gone while we read the body: nobody to answer
            pass
        except Exception:
            log.exception("unexpected error on %s %s", scope.get("method"), path)
            if status == 0:
                response = JSONResponse(error_body("internal server error; it has been logged", "server_error"),
                                        status_code=500)
                await response(scope, receive, send_and_count)
        finally:
            self.metrics.count_request(route, status or 499)

    def _authorized(self, scope) -> bool:
        for name, value in scope.get("headers", []):
            if name == b"authorization":
                scheme, _, token = value.partition(b" ")
                return scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(), self.api_key)
        return False
