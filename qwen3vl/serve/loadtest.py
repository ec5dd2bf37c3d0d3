"""A bounded load generator for a running server (loopback only), used by `benchmarks/bench_serve.py` and the
load test: N concurrent streaming chat clients with images through the official async `openai` client, clients
that hang up mid-stream, and a wait for the server to report itself idle on `/metrics`."""

from __future__ import annotations

import asyncio
import statistics
import time
from dataclasses import dataclass
from typing import Any

import httpx

from qwen3vl.serve.metrics import parse_metrics
from qwen3vl.serve.testing import image_message, png_data_uri


@dataclass
class StreamResult:
    text: str = ""
    ttft: float | None = None  # seconds to the first chunk carrying answer text
    latency: float = 0.0
    status: int = 200
    error: str | None = None
    tokens: int = 0


def requests_with_images(count: int, distinct: int, seed: int = 0) -> list[list[dict[str, Any]]]:
    """`count` chat requests cycling over `distinct` different (image, question) pairs."""
    return [image_message(f"Describe picture {seed + i % distinct}.", png_data_uri(seed + i % distinct))
            for i in range(count)]


def _client(url: str, api_key: str | None, timeout: float):
    import openai

    return openai.AsyncOpenAI(api_key=api_key or "unused", base_url=url + "/v1", max_retries=0, timeout=timeout)


async def stream_one(client, model: str, messages, max_tokens: int) -> StreamResult:
    import openai

    out = StreamResult()
    t0 = time.perf_counter()
    try:
        stream = await client.chat.completions.create(model=model, messages=messages, max_tokens=max_tokens,
                                                      temperature=0, stream=True,
                                                      stream_options={"include_usage": True})
        async for chunk in stream:
            if chunk.usage is not None:
                out.tokens = chunk.usage.completion_tokens
            for c in chunk.choices:
                if c.delta.content:
                    if out.ttft is None:
                        out.ttft = time.perf_counter() - t0
                    out.text += c.delta.content
    except openai.APIStatusError as e:
        out.status, out.error = e.status_code, e.message
    except openai.APIError as e:  # an error event inside the stream
        out.status, out.error = 500, str(e)
    out.latency = time.perf_counter() - t0
    return out


async def run_round(url: str, model: str, conversations: list, max_tokens: int, api_key: str | None = None,
                    timeout: float = 300.0) -> tuple[list[StreamResult], float]:
    """All conversations at once, each as its own streaming client; (results, wall seconds)."""
    client = _client(url, api_key, timeout)
    t0 = time.perf_counter()
    try:
        results = await asyncio.gather(*(stream_one(client, model, m, max_tokens) for m in conversations))
    finally:
        await client.close()
    return list(results), time.perf_counter() - t0


async def run_alone(url: str, model: str, conversations: list, max_tokens: int,
                    api_key: str | None = None) -> list[StreamResult]:
    """One after another (the reference each concurrent answer must equal)."""
    client = _client(url, api_key, 300.0)
    try:
        return [await stream_one(client, model, m, max_tokens) for m in conversations]
    finally:
        await client.close()


async def hang_up(url: str, model: str, conversations: list, read_chunks: int = 3, max_tokens: int = 4000,
                  api_key: str | None = None) -> int:
    """Clients that start long streams, read a few chunks and disconnect; returns how many got that far."""
    client = _client(url, api_key, 120.0)

    async def one(messages) -> bool:
        # logprobs: every token makes a chunk, even one whose text is held back or is a skipped special token
        stream = await client.chat.completions.create(model=model, messages=messages, max_tokens=max_tokens,
                                                      temperature=0, stream=True, logprobs=True,
                                                      extra_body={"ignore_eos": True})
        seen = 0
        async for _ in stream:
            seen += 1
            if seen >= read_chunks:
                break
        await stream.close()
        return seen >= read_chunks

    try:
        return sum(await asyncio.gather(*(one(m) for m in conversations)))
    finally:
        await client.close()


def metrics(url: str, api_key: str | None = None) -> dict[str, float]:
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    return parse_metrics(httpx.get(url + "/metrics", headers=headers, timeout=10).text)


def wait_idle(url: str, timeout: float = 10.0, api_key: str | None = None) -> tuple[dict[str, float], float]:
    """Poll /metrics until no request, sequence or KV block is left; (metrics, seconds waited)."""
    t0 = time.perf_counter()
    while True:
        m = metrics(url, api_key)
        idle = all(m[k] == 0 for k in ("qwen3vl_requests_in_flight", "qwen3vl_num_requests_running",
                                       "qwen3vl_num_requests_waiting", "qwen3vl_kv_cache_blocks_used",
                                       "qwen3vl_engine_tracked_requests"))
        if idle or time.perf_counter() - t0 > timeout:
            return m, time.perf_counter() - t0
        time.sleep(0.05)


def summary(results: list[StreamResult], wall: float) -> dict[str, float]:
    ttfts = sorted(r.ttft for r in results if r.ttft is not None)

    def pct(p: float) -> float:
        return ttfts[min(len(ttfts) - 1, int(p * len(ttfts)))] if ttfts else float("nan")

    return {"requests": len(results), "wall_s": wall, "requests_per_s": len(results) / wall,
            "tokens_per_s": sum(r.tokens for r in results) / wall,
            "ttft_p50_s": pct(0.5), "ttft_p90_s": pct(0.9), "ttft_mean_s": statistics.fmean(ttfts) if ttfts else 0,
            "latency_p50_s": sorted(r.latency for r in results)[len(results) // 2]}
