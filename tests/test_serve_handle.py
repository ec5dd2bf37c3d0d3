"""A request's handle on the HTTP side: a read of its events can always be cancelled, and once the HTTP side gives
up on a request (`EngineLoop.finish`) no read of it waits any longer.

Both guard the same failure: a stream whose client hung up kept its HTTP task alive, waiting for events of a
request the engine had already aborted (docs/SERVING.md)."""

from __future__ import annotations

import asyncio
import time

import pytest

from qwen3vl.llm import LLM
from qwen3vl.model.testing import write_tiny_model
from qwen3vl.serve.jobs import Failed
from qwen3vl.serve.loop import EngineLoop, RequestHandle
from qwen3vl.serve.metrics import Metrics


@pytest.mark.parametrize("turns", [0, 1, 2, 3])
def test_cancel_while_a_batch_arrives_is_not_lost(turns):
    """Cancel a waiting read just as a batch lands in its queue, `turns` loop iterations later. A cancel the task
    accepted must end the read with CancelledError and leave the batch in the queue. (asyncio.wait_for on Python
    3.11 returned the batch instead and dropped the cancel, for turns 0-2.)"""

    async def main():
        loop = asyncio.get_running_loop()
        handle = RequestHandle("r", loop, time.monotonic(), time.monotonic() + 30)
        read = asyncio.ensure_future(handle.next_events())
        for _ in range(3):
            await asyncio.sleep(0)  # the read is now waiting on the empty queue
        handle.queue.put_nowait(["batch"])
        for _ in range(turns):
            await asyncio.sleep(0)
        accepted = read.cancel()
        try:
            got = await read
        except asyncio.CancelledError:
            got = None
        return accepted, got, handle.queue.qsize()

    accepted, got, left = asyncio.run(main())
    if accepted:
        assert got is None and left == 1, (got, left)
    else:  # the read had already taken the batch
        assert got == ["batch"] and left == 0


@pytest.fixture(scope="module")
def engine_loop(tmp_path_factory):
    llm = LLM(write_tiny_model(tmp_path_factory.mktemp("tiny")), kv_cache_gb=0.02)
    return EngineLoop(llm, Metrics())  # not started: only the HTTP side is used here


def test_finish_wakes_a_read_still_waiting(engine_loop):
    async def main():
        loop = asyncio.get_running_loop()
        handle = RequestHandle("r", loop, time.monotonic(), time.monotonic() + 30)
        engine_loop.in_flight.add(handle)
        read = asyncio.ensure_future(handle.next_events())
        await asyncio.sleep(0.01)
        engine_loop.finish(handle)
        events = await asyncio.wait_for(read, timeout=2)  # before the fix: waited for the 30 s deadline
        return handle, events

    handle, events = asyncio.run(main())
    assert len(events) == 1 and isinstance(events[0], Failed)
    assert events[0].error.status == 499 and events[0].error.code == "client_closed"
    assert handle.cancelled and handle not in engine_loop.in_flight
    kind, aborted, _ = engine_loop.inbox.get_nowait()
    assert kind == "abort" and aborted is handle  # the engine is still told to abort it


def test_finish_after_the_request_finished_adds_nothing(engine_loop):
    queued = engine_loop.inbox.qsize()

    async def main():
        handle = RequestHandle("r", asyncio.get_running_loop(), time.monotonic(), time.monotonic() + 30)
        handle.done = True
        engine_loop.finish(handle)
        return handle

    handle = asyncio.run(main())
    assert handle.queue.empty() and not handle.cancelled and engine_loop.inbox.qsize() == queued
