"""Serving under load, on loopback: `python -m qwen3vl.serve` in a subprocess, driven by the official async `openai`
client. Bounded in count and time.

  1. warm-up: all clients at once on other images (so allocator pools and KV pages reach their working size),
     then the server's RSS is the baseline
  2. load: --clients concurrent streaming clients with images, greedy, nothing of them cached yet; reports
     requests/s, generated tokens/s, time to first token (client side: the first chunk with answer text, which
     the stream's hold-back of a possible `<tool_call>` start delays by a few tokens; server side: the TTFT
     histogram), inter-token and end-to-end latency, prefix/vision cache hits during the round
  3. reference: each distinct request (a different image and question) streamed alone; every answer of the load
     round must equal its reference, and no request may fail
  4. hang-ups: --disconnects clients start long streams and disconnect after a few chunks; the server must be back
     to no running sequence and no used KV block (read from /metrics), and how long that took
  5. the server's RSS against the baseline (within --rss-tolerance)

Default model: a tiny random checkpoint (write_tiny_model), so the numbers measure the server and engine overhead
on this CPU, not a real model. Exit status 1 if a check fails.

Usage: python benchmarks/bench_serve.py [--model DIR] [--clients 64] [--distinct 16] [--max-tokens 32]
                                        [--disconnects 20] [--rss-tolerance 0.10] [--json OUT]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path


def run(args) -> dict:
    from qwen3vl.serve import loadtest as L
    from qwen3vl.serve.testing import ServerProcess

    with tempfile.TemporaryDirectory() as tmp:
        model = args.model
        if model is None:
            from qwen3vl.model.testing import write_tiny_model

            model = str(write_tiny_model(Path(tmp) / "tiny", sharpen=3.0))
        server_args = ["--served-model-name", "m", "--max-num-seqs", str(max(args.clients, args.disconnects)),
                       "--kv-cache-gb", str(args.kv_cache_gb), "--max-tokens", str(args.max_tokens)]
        log = Path(tmp) / "server.log"
        with ServerProcess(model, *server_args, log_path=log) as server:
            url = server.url
            convs = L.requests_with_images(args.clients, args.distinct)
            other = L.requests_with_images(args.clients, args.clients, seed=10_000)
            asyncio.run(L.run_round(url, "m", other, args.max_tokens))  # warm-up, on other images
            L.wait_idle(url)
            rss_base = server.rss()
            before = L.metrics(url)
            results, wall = asyncio.run(L.run_round(url, "m", convs, args.max_tokens))  # caches cold for these
            after = L.metrics(url)
            t0 = time.perf_counter()
            alone = asyncio.run(L.run_alone(url, "m", convs[:args.distinct], args.max_tokens))
            alone_s = time.perf_counter() - t0
            hung = asyncio.run(L.hang_up(url, "m", L.requests_with_images(args.disconnects, args.disconnects,
                                                                          seed=20_000)))
            idle, idle_s = L.wait_idle(url, timeout=30)
            rss_end = server.rss()
        failures = []
        mismatched = [i for i, r in enumerate(results) if r.text != alone[i % args.distinct].text]
        errors = [r for r in results if r.status >= 500 or r.error]
        if mismatched:
            failures.append(f"{len(mismatched)} answers differ from the same request sent alone: {mismatched[:8]}")
        if errors:
            failures.append(f"{len(errors)} requests failed: {errors[0].status} {errors[0].error}")
        for key in ("qwen3vl_num_requests_running", "qwen3vl_num_requests_waiting", "qwen3vl_kv_cache_blocks_used",
                    "qwen3vl_engine_tracked_requests", "qwen3vl_requests_in_flight"):
            if idle[key] != 0:
                failures.append(f"after the hang-ups {key} = {idle[key]:g}")
        if hung != args.disconnects:
            failures.append(f"only {hung} of {args.disconnects} hanging-up clients got their first chunks")
        growth = rss_end / rss_base - 1
        if abs(growth) > args.rss_tolerance:
            failures.append(f"server RSS changed by {growth:+.1%} (limit {args.rss_tolerance:.0%})")

        def dh(name: str) -> float:
            n = after[f"{name}_count"] - before[f"{name}_count"]
            return (after[f"{name}_sum"] - before[f"{name}_sum"]) / n if n else float("nan")

        out = {**L.summary(results, wall), "alone_s_per_request": alone_s / args.distinct,
               "server_ttft_mean_s": dh("qwen3vl_time_to_first_token_seconds"),
               "server_itl_mean_s": dh("qwen3vl_inter_token_latency_seconds"),
               "server_e2e_mean_s": dh("qwen3vl_e2e_request_latency_seconds"),
               "prefix_cache_hit_tokens": after["qwen3vl_prefix_cache_hit_tokens_total"]
               - before["qwen3vl_prefix_cache_hit_tokens_total"],
               "prompt_tokens": after["qwen3vl_prompt_tokens_total"] - before["qwen3vl_prompt_tokens_total"],
               "vision_cache_hits": after["qwen3vl_vision_cache_hits_total"]
               - before["qwen3vl_vision_cache_hits_total"],
               "hangups": hung, "idle_after_hangups_s": idle_s,
               "rss_baseline_mib": rss_base / 2**20, "rss_end_mib": rss_end / 2**20, "rss_growth": growth,
               "all_equal_alone": not mismatched, "errors": len(errors), "failures": failures}
        return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help="checkpoint folder (default: a tiny random one)")
    p.add_argument("--clients", type=int, default=64)
    p.add_argument("--distinct", type=int, default=64, help="different (image, question) pairs among the clients")
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--disconnects", type=int, default=20)
    p.add_argument("--kv-cache-gb", type=float, default=0.25)
    p.add_argument("--rss-tolerance", type=float, default=0.10)
    p.add_argument("--json", default=None, help="also write the results here")
    args = p.parse_args()
    out = run(args)
    print(f"command: {' '.join(sys.argv)}\n")
    print("| metric | value |\n|---|---|")
    for k, v in out.items():
        if k != "failures":
            print(f"| {k} | {v:.4g} |" if isinstance(v, float) else f"| {k} | {v} |")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))
    for f in out["failures"]:
        print(f"FAILED: {f}")
    return 1 if out["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
