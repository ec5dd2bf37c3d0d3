"""Run a function on N local CPU ranks (gloo) and collect what each returns: for tests and benchmarks.

`run_ranks(fn, n, *args)` spawns n processes, each joins one process group, calls `fn(rank, *args)` and sends its
return value back pickled (tensors included: plain pickle copies their data, so nothing depends on a process that
has already exited). A rank that raises or dies fails the call with its traceback instead of hanging.
"""

from __future__ import annotations

import os
import pickle
import queue
import time
import traceback
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from qwen3vl.parallel.ranks import free_port


def _rank_main(rank: int, n: int, port: int, threads: int, fn: Callable, args: tuple, out) -> None:
    import torch
    import torch.distributed as dist

    torch.set_num_threads(threads)
    try:
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=n,
                                timeout=timedelta(seconds=120))
        result = fn(rank, *args)
        dist.barrier()
        dist.destroy_process_group()
        out.put((rank, True, pickle.dumps(result)))
    except BaseException:
        out.put((rank, False, traceback.format_exc()))
    out.close()
    out.join_thread()
    os._exit(0)  # skip interpreter teardown (see qwen3vl.parallel.ranks.serve_then_exit)


def run_ranks(fn: Callable[..., Any], n: int, *args, timeout: float = 300.0) -> list[Any]:
    """[fn(0, *args), ..., fn(n-1, *args)], each computed in its own process of one n-rank gloo group."""
    import torch
    import torch.multiprocessing as mp

    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    threads = max(1, torch.get_num_threads() // n)
    port = free_port()
    procs = [ctx.Process(target=_rank_main, args=(r, n, port, threads, fn, args, out), daemon=True)
             for r in range(n)]
    for p in procs:
        p.start()
    results: dict[int, Any] = {}
    deadline = time.monotonic() + timeout
    try:
        while len(results) < n:
            try:
                rank, ok, payload = out.get(timeout=0.5)
            except queue.Empty:
                dead = [r for r, p in enumerate(procs) if not p.is_alive() and r not in results]
                if dead:
                    raise RuntimeError(f"rank {dead[0]} exited with code {procs[dead[0]].exitcode} "
                                       "without a result") from None
                if time.monotonic() > deadline:
                    raise TimeoutError(f"ranks {sorted(set(range(n)) - set(results))} gave no result within "
                                       f"{timeout:.0f} s") from None
                continue
            if not ok:
                raise RuntimeError(f"rank {rank} failed:\n{payload}")
            results[rank] = pickle.loads(payload)
    finally:
        for p in procs:
            p.join(5.0)
            if p.is_alive():
                p.kill()
                p.join()
    return [results[r] for r in range(n)]
