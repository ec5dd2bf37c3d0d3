"""Prometheus metrics in the text exposition format, written by hand (no client library needed).

Counters and histograms are fed from two threads (the HTTP event loop and the engine loop), so each takes a lock.
Engine gauges (queue, running sequences, KV blocks, cache hits) are read from the snapshot the engine thread
publishes after every step, never from the engine's live objects.
"""

from __future__ import annotations

import bisect
import threading
from collections import defaultdict
from typing import Any

PREFIX = "qwen3vl"
LATENCY_BUCKETS = (0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0,
                   5.0, 7.5, 10.0, 20.0, 40.0, 80.0)


class Histogram:
    def __init__(self, name: str, help: str, buckets: tuple[float, ...] = LATENCY_BUCKETS):
        self.name, self.help, self.buckets = name, help, buckets
        self.counts = [0] * (len(buckets) + 1)
        self.sum = 0.0
        self.count = 0
        self._lock = threading.Lock()

    def observe(self, value: float) -> None:
        with self._lock:
            self.counts[bisect.bisect_left(self.buckets, value)] += 1
            self.sum += value
            self.count += 1

    def render(self) -> list[str]:
        with self._lock:
            counts, total, n = list(self.counts), self.sum, self.count
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} histogram"]
        running = 0
        for le, c in zip(self.buckets, counts):
            running += c
            lines.append(f'{self.name}_bucket{{le="{le}"}} {running}')
        lines += [f'{self.name}_bucket{{le="+Inf"}} {n}', f"{self.name}_sum {total}", f"{self.name}_count {n}"]
        return lines


class Metrics:
    def __init__(self):
        self._lock = threading.Lock()
        self.requests: dict[tuple[str, str], int] = defaultdict(int)  # (route, status) -> count
        self.ttft = Histogram(f"{PREFIX}_time_to_first_token_seconds",
                              "Time from a request's arrival to its first generated token.")
        self.itl = Histogram(f"{PREFIX}_inter_token_latency_seconds",
                             "Time between two consecutive tokens of one sequence.")
        self.e2e = Histogram(f"{PREFIX}_e2e_request_latency_seconds",
                             "Time from a request's arrival until its last sequence finished.")

    def count_request(self, route: str, status: int) -> None:
        with self._lock:
            self.requests[(route, str(status))] += 1

    def render(self, engine: dict[str, Any], in_flight: int) -> str:
        p = PREFIX
        with self._lock:
            requests = dict(self.requests)
        lines = [f"# HELP {p}_requests_total HTTP requests answered, by route and status code.",
                 f"# TYPE {p}_requests_total counter"]
        for (route, status), n in sorted(requests.items()):
            lines.append(f'{p}_requests_total{{route="{route}",status="{status}"}} {n}')

        def one(name: str, kind: str, help: str, value: Any) -> None:
            lines.extend([f"# HELP {p}_{name} {help}", f"# TYPE {p}_{name} {kind}", f"{p}_{name} {value}"])

        e = engine
        one("prompt_tokens_total", "counter", "Prompt tokens admitted to the engine (times n).", e["prompt_tokens"])
        one("generation_tokens_total", "counter", "Tokens generated.", e["generation_tokens"])
        one("spec_decode_draft_tokens_total", "counter", "Prompt-lookup draft tokens proposed (--prompt-lookup).",
            e.get("draft_tokens", 0))
        one("spec_decode_accepted_tokens_total", "counter", "Prompt-lookup draft tokens accepted.",
            e.get("accepted_draft_tokens", 0))
        one("requests_in_flight", "gauge", "Requests the server holds (preprocessing, queued or running).",
            in_flight)
        one("num_requests_preprocessing", "gauge", "Requests being tokenised / having media decoded.",
            max(in_flight - e["active"], 0))
        one("num_requests_waiting", "gauge", "Sequences waiting for the engine (queue length).", e["waiting"])
        one("num_requests_running", "gauge", "Sequences the engine is running.", e["running"])
        one("engine_tracked_requests", "gauge", "Requests the engine still keeps (should fall to 0 when idle).",
            e["engine_requests"])
        one("kv_cache_blocks_used", "gauge", "Paged KV-cache blocks in use.", e["blocks_used"])
        one("kv_cache_blocks_total", "gauge", "Paged KV-cache blocks in all.", e["blocks_total"])
        one("kv_cache_usage_ratio", "gauge", "Fraction of KV-cache blocks in use.",
            e["blocks_used"] / max(e["blocks_total"], 1))
        one("prefix_cache_hit_tokens_total", "counter", "Prompt tokens served from the prefix cache.",
            e["prefix_hits"])
        one("prefix_cache_query_tokens_total", "counter", "Prompt tokens looked up in the prefix cache.",
            e["prefix_queries"])
        one("prefix_cache_hit_rate", "gauge", "Prefix-cache hits / lookups, in tokens, since start.",
            e["prefix_hits"] / e["prefix_queries"] if e["prefix_queries"] else 0.0)
        one("vision_cache_hits_total", "counter", "Images / video frames whose vision features were cached.",
            e["vision_hits"])
        one("vision_cache_misses_total", "counter", "Images / video frames encoded by the vision tower.",
            e["vision_misses"])
        one("vision_cache_bytes", "gauge", "Bytes of cached vision features.", e["vision_bytes"])
        one("num_preemptions_total", "counter", "Sequences preempted for lack of KV blocks.", e["preemptions"])
        for h in (self.ttft, self.itl, self.e2e):
            lines.extend(h.render())
        return "\n".join(lines) + "\n"


def parse_metrics(text: str) -> dict[str, float]:
    """Sample name (with labels) -> value, from the text format (for tests and the benchmark)."""
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out
