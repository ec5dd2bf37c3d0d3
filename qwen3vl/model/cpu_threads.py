"""Start torch's CPU worker threads with a throwaway op before the first real one.

With torch 2.13 (CPU wheel, OpenMP backend, AVX512 machine) the first parallel region a new worker thread runs can
compute `cos` far less accurately: in 11 of 60 fresh processes, the worker's half of a (256, 64) float32 `cos`
was off by up to 1.5e-4 (cos(0.15) = 0.98862 instead of 0.98877), every later call exact. That was the vision
rotary table of the first image a model saw, and the demo model's logits moved by 2.8e-3. One small parallel op per
thread count, per calling thread, before the model's first real op made 60 of 60 fresh processes exact
(scripts/threads_first_call.py measures it).
"""

from __future__ import annotations

import threading

import torch

_GRAIN = 32768  # at::internal::GRAIN_SIZE: elements per worker below which a pointwise op stays on one thread
_state = threading.local()


def warm_cpu_threads(device: torch.device) -> None:
    """Run one pointwise op wide enough to reach every intra-op worker, once per (calling thread, thread count)."""
    if device.type != "cpu":
        return
    n = torch.get_num_threads()
    if getattr(_state, "threads", 0) >= n:
        return
    torch.empty(2 * n * _GRAIN).fill_(1.0)
    _state.threads = n
