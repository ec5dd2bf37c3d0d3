"""What every rank does, however it was started: join the process group, load its shard, build its runner
(`build_rank`); and, for ranks other than 0, serve rank 0's steps until told to stop (`serve_then_exit`).

Backends: NCCL for the model's collectives on CUDA, gloo on CPU; the per-step control messages always go through a
gloo group (they are small pickled CPU objects), whose timeout is very long because workers wait on it between
steps (a server may be idle for days). A rank that dies still ends every gloo wait at once: its sockets close.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from qwen3vl.parallel.plan import local_kv_heads
from qwen3vl.parallel.runner import serve_steps

log = logging.getLogger(__name__)

STEP_TIMEOUT = timedelta(minutes=10)  # one collective inside a step
IDLE_TIMEOUT = timedelta(days=365)  # workers waiting for the next step: a server may be idle for a long time
STOP_TIMEOUT = timedelta(seconds=60)  # all ranks meeting at shutdown


@dataclass
class RankArgs:
    """Everything a rank needs to build its shard and runner; the same on every rank."""

    folder: str
    world_size: int
    dtype: torch.dtype | str | None
    device_type: str  # "cpu" or "cuda"
    backend: str  # "gloo" or "nccl"
    num_blocks: int
    block_size: int
    vision_cache_bytes: int
    kv_cache_dtype: str = "auto"
    init_method: str | None = None  # None: env:// (torchrun)
    threads: int | None = None  # CPU threads per rank
    step_timeout_s: float = STEP_TIMEOUT.total_seconds()


def launcher_env() -> tuple[int, int, int, int] | None:
    """(rank, local rank, world size, local world size) when an external launcher (torchrun) started this process."""
    if "WORLD_SIZE" not in os.environ or "RANK" not in os.environ:
        return None
    world = int(os.environ["WORLD_SIZE"])
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world))
    return int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", os.environ["RANK"])), world, local_world


def rank_device_type(device: str | None, n: int, local_world: int) -> str:
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"tensor parallelism runs on cpu or cuda, not {dev.type!r}")
    if dev.type == "cuda":
        if dev.index is not None:
            raise ValueError(f"device {device!r}: with tensor parallelism each rank takes the GPU of its local rank; "
                             "pass device='cuda' and choose the GPUs with CUDA_VISIBLE_DEVICES")
        count = torch.cuda.device_count()
        if local_world > count:
            raise ValueError(f"tensor_parallel_size={n} needs {local_world} GPUs on this machine, but only {count} "
                             f"{'is' if count == 1 else 'are'} visible")
    return dev.type


def num_blocks_per_rank(cfg, n: int, dtype, engine_config) -> int:
    """KV blocks per rank: `kv_cache_bytes` is each rank's budget, and a rank holds only its kv heads."""
    from qwen3vl.engine.runner import KVCache
    from qwen3vl.weights.loader import parse_dtype

    if engine_config.num_blocks:
        return engine_config.num_blocks
    t = cfg.text_config
    target = parse_dtype(dtype, default=parse_dtype(cfg.dtype) if cfg.dtype else torch.float32) or torch.float32
    per_block = KVCache.bytes_per_block(t.num_hidden_layers, engine_config.block_size, local_kv_heads(cfg, n),
                                        t.head_dim, target, engine_config.kv_cache_dtype)
    return max(2, engine_config.kv_cache_bytes // per_block)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def build_rank(args: RankArgs, rank: int, local_rank: int, progress: bool = False):
    """Join the process group, load this rank's shard and build its runner: (model, runner, control group)."""
    from qwen3vl.engine.runner import ModelRunner
    from qwen3vl.parallel.loading import load_parallel

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda", local_rank) if args.device_type == "cuda" else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(args.backend, init_method=args.init_method or "env://", rank=rank,
                                world_size=args.world_size, timeout=timedelta(seconds=args.step_timeout_s))
    elif dist.get_world_size() != args.world_size:
        raise ValueError(f"the default process group has {dist.get_world_size()} ranks, but tensor_parallel_size "
                         f"is {args.world_size}")
    control = dist.new_group(backend="gloo", timeout=IDLE_TIMEOUT)
    model = load_parallel(args.folder, None, args.dtype, device, progress=progress)
    runner = ModelRunner(model, args.num_blocks, args.block_size, args.vision_cache_bytes, args.kv_cache_dtype)
    return model, runner, control


def ignore_ctrl_c() -> None:
    """Ctrl-C reaches every process of the terminal's group; only rank 0 acts on it, and stops the others
    (close / atexit) instead of each rank dying at its own point of a step."""
    try:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    except ValueError:  # not the main thread: signals go to the main thread anyway
        pass


def serve_then_exit(runner, control) -> None:
    """A non-zero rank: serve rank 0's steps, then end the process: 0 when told to stop, 1 when rank 0 is gone."""
    code = 0
    try:
        serve_steps(runner, control)
        # tear down together (destroying a group a peer still uses aborts the process); rank 0 has the matching call
        dist.monitored_barrier(group=control, timeout=STOP_TIMEOUT)
        dist.destroy_process_group()
    except Exception as e:
        log.error("tensor-parallel rank %d lost rank 0 (%s); exiting", dist.get_rank(), e)
        code = 1
    # skip interpreter teardown: a broken group's destructor aborts the process, and even a destroyed one's objects
    # can abort when freed during finalization (gloo threads)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
