"""Starting the ranks of a tensor-parallel LLM, and stopping them.

Two ways in, one code path per rank (`ranks.build_rank`):

* **spawned** (the default): `LLM(path, tensor_parallel_size=N)` in a plain process becomes rank 0 and starts
  ranks 1..N-1 with `torch.multiprocessing` (spawn). Each loads only its shard, then waits in `serve_steps`.
  Spawned workers watch their parent and exit if it disappears; rank 0 checks they are alive before every step.
  Like any spawn-based library, the script that creates the LLM must guard its entry point
  (`if __name__ == "__main__":`), because spawn re-imports the main module in every worker.
* **torchrun** (`WORLD_SIZE`/`RANK`/`LOCAL_RANK` in the environment, e.g. `torchrun --nproc-per-node N`, also across
  machines): every process runs the same program; on rank 0 `LLM(...)` returns as usual, on every other rank it
  serves rank 0's steps and then ends the process (exit code 0) when rank 0 closes.
"""

from __future__ import annotations

import atexit
import logging
import os
import queue
import threading
import time
import traceback
from pathlib import Path

import torch
import torch.distributed as dist

from qwen3vl.config import load_config
from qwen3vl.parallel.plan import check_split
from qwen3vl.parallel.ranks import (STOP_TIMEOUT, RankArgs, build_rank, free_port, ignore_ctrl_c,
                                    launcher_env, num_blocks_per_rank, rank_device_type, serve_then_exit)
from qwen3vl.parallel.runner import BroadcastRunner, TensorParallelError

log = logging.getLogger(__name__)

START_TIMEOUT_S = 600.0  # spawned workers: from start to "shard loaded"


class TensorParallel:
    """Rank 0's handle on a running tensor-parallel model: `model` (its shard), `runner` (for the engine),
    `close()` (stop and join the workers; idempotent, also run at exit)."""

    def __init__(self, model, runner: BroadcastRunner, workers: list, owns_group: bool):
        self.model = model
        self.runner = runner
        self.workers = workers  # spawned worker processes (none under torchrun)
        self.owns_group = owns_group  # the default process group was created here, so close() destroys it
        self.closed = False
        self.threads_before: int | None = None  # rank 0's CPU threads before it shared the cores with its workers
        atexit.register(self.close)

    def close(self, timeout: float = 30.0) -> None:
        if self.closed:
            return
        self.closed = True
        atexit.unregister(self.close)
        told = self.runner.stop()
        if told:
            try:  # the workers' matching call is in `serve_then_exit`
                dist.monitored_barrier(group=self.runner.group, timeout=STOP_TIMEOUT)
            except Exception as e:
                log.warning("tensor-parallel shutdown: %s", e)
                told = False
        deadline = time.monotonic() + (timeout if told else 0.0)
        for p in self.workers:
            p.join(max(0.0, deadline - time.monotonic()))
            if p.is_alive():
                p.terminate()
                p.join(5.0)
            if p.is_alive():  # pragma: no cover - a worker ignoring SIGTERM
                p.kill()
                p.join()
        if dist.is_initialized() and self.owns_group:
            dist.destroy_process_group()
        self.runner.group = None  # no process-group object may outlive the interpreter's teardown
        if self.threads_before:
            torch.set_num_threads(self.threads_before)


def start_tensor_parallel(folder: str | Path, tensor_parallel_size: int, dtype=None, device: str | None = None,
                          engine_config=None, progress: bool = False) -> TensorParallel:
    """Start (or join, under torchrun) the ranks and load every shard. Returns rank 0's handle; on other torchrun
    ranks it serves rank 0 and then exits the process. Sets `engine_config.num_blocks` (per-rank KV budget)."""
    from qwen3vl.engine.engine import EngineConfig

    n = tensor_parallel_size
    engine_config = engine_config if engine_config is not None else EngineConfig()
    cfg = load_config(Path(folder))
    check_split(cfg, n)
    env = launcher_env()
    if env is not None and env[2] > 1:
        rank, local_rank, world, local_world = env
        if world != n:
            raise ValueError(f"tensor_parallel_size={n} but the launcher started WORLD_SIZE={world} processes; "
                             "start exactly tensor_parallel_size processes (torchrun --nproc-per-node ...)")
    else:
        rank, local_rank, local_world = 0, 0, n
        env = None
    device_type = rank_device_type(device, n, local_world)
    engine_config.num_blocks = num_blocks_per_rank(cfg, n, dtype, engine_config)
    args = RankArgs(folder=str(folder), world_size=n, dtype=dtype, device_type=device_type,
                    backend="nccl" if device_type == "cuda" else "gloo", num_blocks=engine_config.num_blocks,
                    block_size=engine_config.block_size, vision_cache_bytes=engine_config.vision_cache_bytes,
                    kv_cache_dtype=engine_config.kv_cache_dtype)
    if env is not None:
        owns_group = not dist.is_initialized()
        model, runner, control = build_rank(args, rank, local_rank, progress=progress and rank == 0)
        dist.barrier(group=control)
        if rank != 0:
            ignore_ctrl_c()
            serve_then_exit(runner, control)
        return TensorParallel(model, BroadcastRunner(runner, control), [], owns_group)
    return _spawn(args, progress)


def _spawn(args: RankArgs, progress: bool) -> TensorParallel:
    import torch.multiprocessing as mp

    n = args.world_size
    if dist.is_initialized():
        raise RuntimeError("this process already has a torch.distributed process group (another tensor-parallel "
                           "LLM?); close() it first, or launch with torchrun to use an existing group")
    args.init_method = f"tcp://127.0.0.1:{free_port()}"
    threads_before = torch.get_num_threads()
    if args.device_type == "cpu":
        args.threads = max(1, threads_before // n)  # the ranks share this machine's cores
    ctx = mp.get_context("spawn")
    status = ctx.Queue()
    workers = [ctx.Process(target=_spawned_rank, args=(r, args, status, os.getpid()), daemon=True,
                           name=f"qwen3vl-tp-rank{r}") for r in range(1, n)]
    for p in workers:
        p.start()
    try:
        _wait(workers, status, "joining")
        model, runner, control = build_rank(args, 0, 0, progress=progress)
        _wait(workers, status, "ready")
        handle = TensorParallel(model, BroadcastRunner(runner, control, lambda: _check_alive(workers)), workers,
                                owns_group=True)
        handle.threads_before = threads_before
        return handle
    except BaseException:
        torch.set_num_threads(threads_before)
        for p in workers:
            if p.is_alive():
                p.kill()
            p.join()
        if dist.is_initialized():
            dist.destroy_process_group()
        raise


def _watch_parent(parent: int) -> None:
    """Spawned workers: exit when rank 0 (the parent) is gone, even while blocked inside a collective."""
    while True:
        time.sleep(1.0)
        if os.getppid() != parent:
            os._exit(3)


def _spawned_rank(rank: int, args: RankArgs, status, parent: int) -> None:
    ignore_ctrl_c()
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True).start()
    try:
        status.put((rank, "joining", ""))
        _, runner, control = build_rank(args, rank, rank)
        status.put((rank, "ready", ""))
    except BaseException:
        status.put((rank, "error", traceback.format_exc()))
        status.close()
        status.join_thread()
        os._exit(1)
    serve_then_exit(runner, control)


def _check_alive(workers: list) -> None:
    for rank, p in enumerate(workers, start=1):
        if not p.is_alive():
            raise TensorParallelError(f"tensor-parallel rank {rank} (pid {p.pid}) exited with code {p.exitcode}")


def _wait(workers: list, status, stage: str) -> None:
    """Wait until every worker reports `stage`; raise with the worker's traceback if one fails or dies."""
    pending = set(range(1, len(workers) + 1))
    deadline = time.monotonic() + START_TIMEOUT_S
    while pending:
        try:
            rank, what, detail = status.get(timeout=0.5)
        except queue.Empty:
            for r in sorted(pending):
                p = workers[r - 1]
                if not p.is_alive():
                    raise TensorParallelError(f"tensor-parallel rank {r} exited with code {p.exitcode} while "
                                              f"starting") from None
            if time.monotonic() > deadline:
                raise TensorParallelError(f"tensor-parallel ranks {sorted(pending)} did not report {stage!r} within "
                                          f"{START_TIMEOUT_S:.0f} s") from None
            continue
        if what == "error":
            raise TensorParallelError(f"tensor-parallel rank {rank} failed while starting:\n{detail}")
        if what == stage:
            pending.discard(rank)
