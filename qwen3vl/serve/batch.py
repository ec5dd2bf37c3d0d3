"""`qwen3vl run-batch`: a file in OpenAI's Batch API input format, run offline through the server's own routes.

Each input line is one request: `{"custom_id": "...", "method": "POST", "url": "/v1/chat/completions", "body":
{...}}`, with `url` one of `/v1/chat/completions`, `/v1/completions` or `/v1/responses`. Each output line is the
Batch API's result: `{"id": "batch_req_...", "custom_id": "...", "response": {"status_code": 200, "request_id":
"...", "body": {...}}, "error": null}`; a request the server refuses keeps its 4xx status and OpenAI-shaped error
body there, as the Batch API's error file does.

The requests go through the same FastAPI app `qwen3vl serve` runs (`create_app`), called in-process over ASGI
without a socket, so a line is validated, rendered and answered exactly as the HTTP server would answer it. Up to
`concurrency` requests are in flight at once, so the engine batches them continuously. The whole file is checked
before the model is loaded (a malformed line, a duplicate `custom_id` or an unsupported `url` is an error naming
its line); results are written in input order as they finish, one flushed line each (a run stopped early also
writes what finished behind an unfinished line), and `resume` skips the `custom_id`s that already have a 200 in
the output. The output file is only opened once the model has loaded.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from qwen3vl.serve.errors import error_body

log = logging.getLogger(__name__)

URLS = ("/v1/chat/completions", "/v1/completions", "/v1/responses")
FIELDS = ("custom_id", "method", "url", "body")


class BatchFileError(ValueError):
    """The input (or, with resume, the output) file is not a batch this command can run; names the line."""


@dataclass(frozen=True)
class BatchRequest:
    line: int  # 1-based line number in the input file
    custom_id: str
    url: str
    body: dict[str, Any]


@dataclass
class BatchCounts:
    total: int = 0
    skipped: int = 0  # already answered (resume)
    ok: int = 0
    failed: int = 0  # answered with a 4xx / 5xx status
    prompt_tokens: int = 0
    completion_tokens: int = 0
    statuses: dict[int, int] = field(default_factory=dict)

    def summary(self, seconds: float) -> str:
        failed = ", ".join(f"{n} x {status}" for status, n in sorted(self.statuses.items()) if status != 200)
        return (f"{self.total} requests: {self.ok} ok, {self.failed} failed" + (f" ({failed})" if failed else "")
                + (f", {self.skipped} already done" if self.skipped else "")
                + f"; {self.prompt_tokens} prompt and {self.completion_tokens} completion tokens in {seconds:.1f} s")


def read_requests(lines: Iterable[str], source: str = "the input") -> list[BatchRequest]:
    """Parse and check a whole batch file; BatchFileError names the first bad line. Blank lines are skipped."""
    requests: list[BatchRequest] = []
    seen: dict[str, int] = {}
    for number, text in enumerate(lines, 1):
        if not text.strip():
            continue
        where = f"{source}, line {number}"
        try:
            item = json.loads(text)
        except json.JSONDecodeError as e:
            raise BatchFileError(f"{where}: not JSON ({e.msg} at column {e.colno})") from None
        if not isinstance(item, dict):
            raise BatchFileError(f"{where}: expected a JSON object with {', '.join(FIELDS)}, "
                                 f"got {type(item).__name__}")
        unknown = sorted(set(item) - set(FIELDS))
        missing = [k for k in FIELDS if k not in item]
        if unknown or missing:
            raise BatchFileError(f"{where}: " + "; ".join(
                ([f"unknown field(s) {', '.join(map(repr, unknown))}"] if unknown else [])
                + ([f"missing {', '.join(map(repr, missing))}"] if missing else []))
                + f" (a line holds exactly {', '.join(FIELDS)})")
        custom_id, method, url, body = (item[k] for k in FIELDS)
        if not isinstance(custom_id, str) or not custom_id:
            raise BatchFileError(f"{where}: custom_id must be a non-empty string, got {custom_id!r}")
        if custom_id in seen:
            raise BatchFileError(f"{where}: custom_id {custom_id!r} is already used on line {seen[custom_id]} "
                                 "(each request needs its own)")
        if method != "POST":
            raise BatchFileError(f"{where}: method must be 'POST', got {method!r}")
        if url not in URLS:
            raise BatchFileError(f"{where}: url {url!r} is not supported; use one of {', '.join(URLS)}")
        if not isinstance(body, dict):
            raise BatchFileError(f"{where}: body must be a JSON object, got {type(body).__name__}")
        seen[custom_id] = number
        requests.append(BatchRequest(number, custom_id, url, body))
    if not requests:
        raise BatchFileError(f"{source} holds no requests")
    return requests


def read_done(lines: Iterable[str], requests: list[BatchRequest], source: str) -> list[dict[str, Any]]:
    """The results of an earlier run (resume): those answered with a 200, in the input's order. The earlier output
    must belong to this input: a result for a custom_id the input lacks is an error, not something dropped. A last
    line cut off mid-write (no newline at its end) is dropped with a warning: its request runs again."""
    wanted = {r.custom_id for r in requests}
    done: dict[str, dict[str, Any]] = {}
    lines = list(lines)
    for number, text in enumerate(lines, 1):
        if not text.strip():
            continue
        try:
            record = json.loads(text)
            custom_id = record["custom_id"]
            if "body" in record or not ("response" in record or "error" in record):
                raise KeyError("response")  # (a request line: the input given as the output?)
        except (json.JSONDecodeError, TypeError, KeyError):
            if number == len(lines) and not text.endswith("\n"):
                log.warning("%s, line %d: cut off mid-write; its request runs again", source, number)
                continue
            raise BatchFileError(f"{source}, line {number}: not a batch result line; is this the right output "
                                 "file?") from None
        if custom_id not in wanted:
            raise BatchFileError(f"{source}, line {number}: a result for custom_id {custom_id!r}, which the input "
                                 "does not hold; is this the output of another batch?")
        if (record.get("response") or {}).get("status_code") == 200:
            done[custom_id] = record
    return [done[r.custom_id] for r in requests if r.custom_id in done]


# ---------------------------------------------------------------------------------------------------------------
# Calling the app in-process


async def call_app(app: Any, path: str, body: Any, closing: asyncio.Event) -> tuple[int, Any]:
    """POST `body` as JSON to `path` on an ASGI app; -> (status, the parsed JSON answer, or its text)."""
    payload = json.dumps(body).encode()
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
             "scheme": "http", "path": path, "raw_path": path.encode(), "root_path": "", "query_string": b"",
             "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())],
             "client": ("batch", 0), "server": ("batch", 0)}
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": payload, "more_body": False}
        await closing.wait()  # the client stays until the batch is stopped
        return {"type": "http.disconnect"}

    status = 0
    chunks: list[bytes] = []

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
        elif message["type"] == "http.response.body":
            chunks.append(message.get("body", b""))

    await app(scope, receive, send)
    text = b"".join(chunks).decode("utf-8", errors="replace")
    try:
        return status, json.loads(text)
    except json.JSONDecodeError:
        return status, text


def result_line(request: BatchRequest, status: int, body: Any) -> dict[str, Any]:
    """One output line in the Batch API's shape. A refused request keeps its status and error body in `response`
    (as OpenAI's error file has it) and its error's code and message in `error` too (as vLLM's run-batch does)."""
    line_id, request_id = f"batch_req_{uuid.uuid4().hex}", f"req_{uuid.uuid4().hex}"
    if not isinstance(body, dict):  # (no route here answers anything but JSON; kept as an error, not lost)
        return {"id": line_id, "custom_id": request.custom_id, "response": None,
                "error": {"code": "invalid_response", "message": f"status {status}: {str(body)[:500]}"}}
    error = None
    if status != 200:
        detail = body.get("error") if isinstance(body.get("error"), dict) else {}
        error = {"code": detail.get("code") or detail.get("type") or str(status),
                 "message": str(detail.get("message") or f"status {status}")}
    return {"id": line_id, "custom_id": request.custom_id,
            "response": {"status_code": status, "request_id": request_id, "body": body}, "error": error}


def _usage(body: dict[str, Any]) -> tuple[int, int]:
    usage = body.get("usage") or {}
    return (int(usage.get("prompt_tokens", usage.get("input_tokens", 0)) or 0),
            int(usage.get("completion_tokens", usage.get("output_tokens", 0)) or 0))


async def run_requests(app: Any, requests: list[BatchRequest], write: Callable[[dict[str, Any]], None],
                       concurrency: int, counts: BatchCounts, progress: Callable[[], None] | None = None) -> None:
    """Run `requests` through `app` (its lifespan already entered), at most `concurrency` at once, and `write`
    each result line in input order as soon as every line before it is written."""
    closing = asyncio.Event()
    gate = asyncio.Semaphore(max(1, concurrency))
    finished: dict[int, dict[str, Any]] = {}
    next_to_write = 0

    async def one(index: int, request: BatchRequest) -> None:
        nonlocal next_to_write
        if request.body.get("stream"):
            status, body = 400, error_body("stream is not supported in a batch (results are written whole)",
                                           "invalid_request_error", "stream")
        else:
            async with gate:
                status, body = await call_app(app, request.url, request.body, closing)
        record = result_line(request, status, body)
        counts.statuses[status] = counts.statuses.get(status, 0) + 1
        if status == 200 and isinstance(body, dict):
            counts.ok += 1
            p, c = _usage(body)
            counts.prompt_tokens += p
            counts.completion_tokens += c
        else:
            counts.failed += 1
        finished[index] = record
        while next_to_write in finished:
            write(finished.pop(next_to_write))
            next_to_write += 1
        if progress is not None:
            progress()

    tasks = [asyncio.ensure_future(one(i, r)) for i, r in enumerate(requests)]
    try:
        await asyncio.gather(*tasks)
    finally:
        closing.set()
        for t in tasks:
            t.cancel()
        for index in sorted(finished):  # stopped early: what finished behind an unfinished line is kept too
            write(finished.pop(index))


def run_batch(app: Any, requests: list[BatchRequest], out: IO[str], concurrency: int,
              done: list[dict[str, Any]] = (), show_progress: bool = True) -> BatchCounts:
    """Run a checked batch through `app` (a `create_app` app), writing result lines to `out`; `done` are results
    kept from an earlier run (already in `out`: their requests are skipped)."""
    counts = BatchCounts(total=len(requests), skipped=len(done))
    skip = {r["custom_id"] for r in done}
    todo = [r for r in requests if r.custom_id not in skip]

    def write(record: dict[str, Any]) -> None:
        out.write(json.dumps(record, ensure_ascii=False) + "\n")
        out.flush()

    bar = None
    if show_progress:
        from tqdm import tqdm

        bar = tqdm(total=len(requests), initial=len(done), desc="batch", unit="req", file=sys.stderr)

    async def main() -> None:
        async with app.router.lifespan_context(app):
            await run_requests(app, todo, write, concurrency, counts, bar.update if bar is not None else None)

    try:
        asyncio.run(main())
    finally:
        if bar is not None:
            bar.close()
    return counts


def check_output(path: str, input_path: str, requests: list[BatchRequest], resume: bool, overwrite: bool
                 ) -> list[dict[str, Any]]:
    """Whether the output may be written (nothing is written yet: the model has not loaded); with `resume`, the
    earlier run's answered lines. An existing non-empty output is never replaced unless asked (`overwrite`)."""
    if path == "-":
        if resume:
            raise BatchFileError("--resume needs an output file, not standard output")
        return []
    target = Path(path)
    if input_path != "-" and target.exists() and os.path.samefile(input_path, target):
        raise BatchFileError(f"the output file {path} is the input file; write the results elsewhere")
    if not (target.is_file() and target.stat().st_size > 0):
        return []
    if not (resume or overwrite):
        raise BatchFileError(f"{path} exists and is not empty; pass --resume to continue it or --overwrite to "
                             "replace it")
    if not resume:
        return []
    with target.open(encoding="utf-8") as f:
        return read_done(f, requests, path)


def open_output(path: str, done: list[dict[str, Any]], resume: bool) -> IO[str]:
    """The output stream, once the model is ready: standard output, or the file (with `resume` holding just the
    earlier answered lines `done`, swapped in whole, and appended to; else emptied)."""
    if path == "-":
        return sys.stdout
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    if resume and target.exists():
        tmp = target.with_name(target.name + ".resume-tmp")
        tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in done), encoding="utf-8")
        os.replace(tmp, target)
        return target.open("a", encoding="utf-8")
    return target.open("w", encoding="utf-8")
