"""A bounded load test on loopback (the short version of benchmarks/bench_serve.py): the server in its own process,
64 concurrent streaming clients with images through the official async client, then 20 that hang up mid-stream.

Every answer equals the same request sent alone (greedy), nothing fails, the hang-ups leave no sequence, request
or KV block behind, and the server's memory is back within 10% of where it was after a warm-up round."""

from __future__ import annotations

import asyncio
import time

import pytest

from qwen3vl.model.testing import write_tiny_model
from qwen3vl.serve import loadtest as L
from qwen3vl.serve.testing import ServerProcess


CLIENTS, DISTINCT, MAX_TOKENS, HANG_UPS = 64, 16, 16, 20


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    folder = write_tiny_model(tmp_path_factory.mktemp("tiny"), sharpen=3.0)
    log = tmp_path_factory.mktemp("log") / "server.log"
    with ServerProcess(folder, "--served-model-name", "m", "--max-num-seqs", "64", "--kv-cache-gb", "0.1",
                       "--max-tokens", str(MAX_TOKENS), log_path=log) as s:
        yield s


def test_concurrent_streams_equal_alone_and_hang_ups_free_everything(server):
    url = server.url
    convs = L.requests_with_images(CLIENTS, DISTINCT)
    asyncio.run(L.run_round(url, "m", L.requests_with_images(CLIENTS, CLIENTS, seed=1000), MAX_TOKENS))  # warm-up
    L.wait_idle(url)
    rss_before = server.rss()

    results, wall = asyncio.run(L.run_round(url, "m", convs, MAX_TOKENS))
    alone = asyncio.run(L.run_alone(url, "m", convs[:DISTINCT], MAX_TOKENS))
    assert [r.status for r in results] == [200] * CLIENTS and not any(r.error for r in results)
    assert all(r.tokens == MAX_TOKENS or r.text for r in results)
    assert [r.text for r in results] == [alone[i % DISTINCT].text for i in range(CLIENTS)]
    assert len({a.text for a in alone}) > 1  # different images really give different answers

    made = L.metrics(url)["qwen3vl_generation_tokens_total"]
    hung = asyncio.run(L.hang_up(url, "m", L.requests_with_images(HANG_UPS, HANG_UPS, seed=2000), max_tokens=4000))
    assert hung == HANG_UPS
    m, waited = L.wait_idle(url, timeout=10)
    for key in ("qwen3vl_num_requests_running", "qwen3vl_num_requests_waiting", "qwen3vl_kv_cache_blocks_used",
                "qwen3vl_engine_tracked_requests", "qwen3vl_requests_in_flight"):
        assert m[key] == 0, key
    assert waited < 5
    # 4000 tokens each were asked for: far fewer were made, because they were aborted at once
    assert m["qwen3vl_generation_tokens_total"] - made < HANG_UPS * 100
    # Every request is counted exactly once. The completed ones are 200s; a stream the client hung up on counts as 200
    # if its status line went out before the hang-up was seen, else as 499 (client closed), which is a race. Its
    # count also trails the engine-side cleanup a little, so poll briefly.
    route = 'qwen3vl_requests_total{route="/v1/chat/completions",status="%s"}'
    deadline = time.monotonic() + 5
    while m.get(route % 200, 0) + m.get(route % 499, 0) < 2 * CLIENTS + DISTINCT + HANG_UPS \
            and time.monotonic() < deadline:
        time.sleep(0.05)
        m = L.metrics(url)
    counts = {k: v for k, v in m.items() if k.startswith("qwen3vl_requests_total")}
    assert m[route % 200] >= 2 * CLIENTS + DISTINCT, counts
    # every hung-up stream's HTTP task has returned too (a swallowed cancel once kept some waiting: docs/SERVING.md)
    assert m[route % 200] + m.get(route % 499, 0) == 2 * CLIENTS + DISTINCT + HANG_UPS, counts
    assert not any(k.startswith("qwen3vl_requests_total") and 'status="5' in k for k in m)

    rss_after = server.rss()
    assert abs(rss_after / rss_before - 1) <= 0.10, (rss_before, rss_after)
    print(L.summary(results, wall))
