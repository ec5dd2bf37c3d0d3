"""Driving the ranks one engine step at a time.

Rank 0 owns the engine (scheduler, block manager, sampling). Each step its `BroadcastRunner` turns the scheduled
chunks into `StepInputs` (plain CPU tensors and lists), broadcasts them on a gloo "control" group and runs the step
on its own shard; every other rank sits in `serve_steps`, receives the same inputs and runs the same step on its
shard, so the collectives inside the model line up. Only rank 0 samples.

Every rank keeps its own paged KV cache (its kv heads) and its own vision-feature cache. The vision caches stay in
step without messages because every rank applies the same encodes and lookups in the same order.

The control group gets a very long timeout (a server may sit idle for days with its workers waiting for the next
step); a rank that dies still ends the wait at once, because its sockets close. The compute group (the model's
collectives) keeps a normal timeout, so a rank that hangs mid-step is reported instead of waited on forever.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import torch.distributed as dist

from qwen3vl.engine.runner import ModelRunner, StepInputs

log = logging.getLogger(__name__)

STEP, STOP = "step", "stop"


class TensorParallelError(RuntimeError):
    """A tensor-parallel rank died or a step failed; the ranks are out of step and the LLM must be recreated."""


def send(message: tuple[str, StepInputs | None], group) -> None:
    dist.broadcast_object_list([message], src=0, group=group)


def receive(group) -> tuple[str, StepInputs | None]:
    box = [None]
    dist.broadcast_object_list(box, src=0, group=group)
    return box[0]


def serve_steps(runner: ModelRunner, group) -> int:
    """A non-zero rank's loop: run every step rank 0 sends until it says stop; returns the number of steps."""
    steps = 0
    while True:
        kind, inputs = receive(group)
        if kind == STOP:
            return steps
        runner.run(inputs)
        steps += 1


class BroadcastRunner:
    """Rank 0's runner, with the `ModelRunner` interface the engine uses (`execute`, `prepare`, `run`,
    `vision_cache`). `check_workers` raises if a worker process is known to be gone (spawned ranks only)."""

    def __init__(self, runner: ModelRunner, group, check_workers: Callable[[], None] | None = None):
        self.runner = runner
        self.group = group
        self.check_workers = check_workers
        self.failed: str | None = None
        self._lock = threading.Lock()  # a server steps from its engine thread while atexit may close

    @property
    def vision_cache(self):
        return self.runner.vision_cache

    @property
    def cache(self):
        return self.runner.cache

    @property
    def scores(self):
        return self.runner.scores

    def prepare(self, chunks):
        return self.runner.prepare(chunks)

    def run(self, inputs: StepInputs):
        with self._lock:
            if self.failed is not None:
                raise TensorParallelError(self.failed)
            if self.check_workers is not None:
                try:
                    self.check_workers()
                except TensorParallelError as e:
                    self.failed = f"{e}; close this LLM and create a new one"
                    raise TensorParallelError(self.failed) from None
            try:
                send((STEP, inputs), self.group)
                return self.runner.run(inputs)
            except BaseException as e:  # Ctrl-C mid-step too: the other ranks may now wait inside a collective
                self.failed = (f"tensor-parallel step failed ({type(e).__name__}: {e}); the ranks are out of step, "
                               f"close this LLM and create a new one")
                if not isinstance(e, Exception):
                    raise
                raise TensorParallelError(self.failed) from e

    def execute(self, chunks):
        return self.run(self.runner.prepare(chunks))

    def stop(self) -> bool:
        """Tell the other ranks to leave `serve_steps`; False if they cannot be told (a step failed before)."""
        with self._lock:
            if self.failed is not None:
                return False
            self.failed = "this tensor-parallel LLM is closed"
            try:
                send((STOP, None), self.group)
                return True
            except Exception as e:  # a worker is already gone: the caller terminates the rest
                log.warning("could not tell the tensor-parallel workers to stop: %s", e)
                return False
