"""The engine loop: one thread owns the LLM's engine and steps it for every request at once (continuous batching).

Threads and what they own:

* the HTTP event loop (asyncio) parses requests, holds a `RequestHandle` per request and reads its events;
* a small worker pool does the CPU work before generation: rendering the chat, tokenising, fetching and decoding
  images and videos (the `build` function of `prompts.py`), so a large image never stalls everyone's decoding;
* the engine thread is the only one that calls `engine.add_request`, `engine.step` and `engine.abort`. Requests and
  aborts reach it through a thread-safe inbox; its outputs go back to each request's asyncio queue through
  `loop.call_soon_threadsafe`, one batch of events per request per step. Other changes to the engine (loading a
  LoRA adapter at run time) reach it the same way (`on_engine`) and run between two steps.

A request that is aborted (client gone, timeout) is removed from the engine at once, which frees its sequences and
KV blocks. If a step raises (a bug: bad input is rejected before it gets here), every running request fails with a
500 and the loop carries on.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import numpy as np

from qwen3vl.engine.adapters import UnknownAdapterError
from qwen3vl.engine.beam import BeamSearch, EngineExpander
from qwen3vl.engine.engine import PromptTooLongError, StepOutput
from qwen3vl.engine.sequence import Sequence, Status
from qwen3vl.llm import LLM
from qwen3vl.processing.errors import MediaError, MessageFormatError
from qwen3vl.serve.errors import APIError, bad_request
from qwen3vl.serve.jobs import Admitted, Deltas, Failed, Finished, Job, Usage
from qwen3vl.serve.metrics import Metrics
from qwen3vl.serve.outputs import ChoiceDelta

log = logging.getLogger(__name__)
T = TypeVar("T")


class RequestHandle:
    """The HTTP side's end of one request: an asyncio queue the engine thread fills with event batches."""

    def __init__(self, request_id: str, loop: asyncio.AbstractEventLoop, arrival: float, deadline: float):
        self.id = request_id
        self.arrival = arrival
        self.deadline = deadline
        self.loop = loop
        self.queue: asyncio.Queue[list] = asyncio.Queue()
        self.cancelled = False  # written by the HTTP side, read by the engine thread
        self.done = False  # the engine thread delivered Finished or Failed

    def emit(self, events: list) -> None:  # engine thread
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, events)
        except RuntimeError:  # the event loop is closed: nobody is listening any more
            pass

    async def next_events(self) -> list:
        """The next batch of events; a 504 APIError once the request's deadline has passed."""
        remaining = self.deadline - time.monotonic()
        try:
            # not asyncio.wait_for: on Python 3.11 it swallows a cancel that lands just as the queue hands over a
            # batch, and a stream whose client left would then wait here for events that never come
            async with asyncio.timeout(max(remaining, 0.0)):
                return await self.queue.get()
        except TimeoutError:
            raise APIError(504, f"the request did not finish within the server's request timeout "
                                f"({self.deadline - self.arrival:.0f} s); it was aborted", code="timeout") from None


class _Active:
    """Engine-thread state of one admitted request."""

    def __init__(self, handle: RequestHandle, job: Job, rids: list[str], seqs: list[Sequence], prompt_tokens: int):
        self.handle, self.job, self.rids, self.seqs = handle, job, rids, seqs
        self.choices = [job.make_choice(s, i) for i, s in enumerate(seqs)]
        self.index = {s.seq_id: i for i, s in enumerate(seqs)}
        self.prompt_tokens = prompt_tokens
        self.finished = 0
        self.first_token = False
        self.last_token_at: dict[int, float] = {}
        self.deltas: list[ChoiceDelta] = []

    def usage(self) -> Usage:
        cached = sum(self.seqs[k * self.job.params.n].num_cached_prefix for k in range(len(self.rids)))
        reasoning = sum(c.reasoning_tokens() for c in self.choices)
        return Usage(self.prompt_tokens, sum(len(s.output_ids) for s in self.seqs), cached, reasoning)


class _BeamActive:
    """Engine-thread state of a beam-search request (`Job.beam`): the search (engine/beam.py) and the expander that
    runs its rounds, one one-token request per live beam (each forked from the beam it grew from), between the steps
    of the other requests."""

    def __init__(self, handle: RequestHandle, job: Job, engine, room: int):
        spec, prompt = job.beam, job.prompts[0]
        self.handle, self.job, self.prompt = handle, job, prompt
        # (room < 1: the prompt does not fit, which the first round's add_request reports)
        self.search = BeamSearch(spec.width, max(1, min(job.params.max_tokens, room)), spec.end_ids,
                                 spec.length_penalty, spec.early_stopping)
        self.expander = EngineExpander(engine, prompt.prompt_ids, prompt.media, prompt.kinds, job.params.adapter)
        self.prompt_tokens = len(prompt.prompt_ids)
        self.seqs: list[Sequence] = []
        self.finished = 0
        self.cached = None
        self.deltas: list[ChoiceDelta] = []  # (none: a search answers when done)

    @property
    def rids(self) -> list[str]:
        return self.expander.rids

    def start_round(self) -> list[Sequence]:
        """Queue the live beams; raises what `add_request` raises (the first round: a prompt too long)."""
        self.seqs, self.finished = self.expander.submit(self.search.beams(), self.search.k), 0
        return self.seqs

    def tops(self) -> list[list[tuple[int, float]]]:
        if self.cached is None:
            self.cached = self.seqs[0].num_cached_prefix
        try:
            return self.expander.collect()
        except RuntimeError:  # the engine gave up on one: it never got cache blocks
            raise APIError(400, f"a beam search of {self.search.width} beams does not fit the KV cache beside the "
                                "other requests; ask for fewer beams (n) or a shorter prompt", "n") from None

    def result(self) -> Finished:
        choices = []
        for i, h in enumerate(self.search.finished):
            seq = Sequence(prompt_ids=list(self.prompt.prompt_ids), params=self.job.params,
                           prompt_positions=np.zeros((3, 0), dtype=np.int64), rope_delta=0, output_ids=list(h.tokens),
                           finish_reason=h.finish_reason, status=Status.FINISHED)
            choices.append(self.job.make_choice(seq, i).result())
        return Finished(choices, Usage(self.prompt_tokens, sum(len(h.tokens) for h in self.search.finished),
                                       self.cached or 0))


def _answer(fut: asyncio.Future, result: Any, error: BaseException | None) -> None:
    """Settle an asyncio future from the engine thread (unless its awaiter has gone)."""
    def settle() -> None:
        if fut.done():
            return
        if error is not None:
            fut.set_exception(error)
        else:
            fut.set_result(result)
    try:
        fut.get_loop().call_soon_threadsafe(settle)
    except RuntimeError:  # the event loop is closed
        pass


# ------------------------------------------------------------------------------------------------- the loop
class _NoVisionCache:  # a runner without a vision cache (metrics then read zeros)
    hits = misses = bytes = 0


class EngineLoop:
    def __init__(self, llm: LLM, metrics: Metrics, *, max_queue: int = 256, request_timeout: float = 600.0,
                 preprocess_workers: int = 2):
        self.llm = llm
        self.engine = llm.engine
        self.metrics = metrics
        self.max_in_flight = self.engine.config.max_num_seqs + max_queue
        self.request_timeout = request_timeout
        self.pool = ThreadPoolExecutor(max_workers=preprocess_workers, thread_name_prefix="qwen3vl-preprocess")
        self.inbox: queue.SimpleQueue = queue.SimpleQueue()
        self.in_flight: set[RequestHandle] = set()  # HTTP side only
        self.closing = False
        self._active: dict[str, _Active] = {}  # handle id -> state; engine thread only
        self._by_seq: dict[int, _Active] = {}
        self.stats = self._snapshot()  # replaced (never mutated) by the engine thread
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="qwen3vl-engine", daemon=True)

    # ------------------------------------------------------------------ HTTP side (asyncio)
    def start(self) -> None:
        self._thread.start()

    def begin_shutdown(self) -> None:
        self.closing = True

    def stop(self, timeout: float = 10.0) -> None:
        self.closing = True
        self.inbox.put(("stop", None, None))
        self._thread.join(timeout)
        self.pool.shutdown(wait=False, cancel_futures=True)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def check_capacity(self) -> None:
        if self.closing or not self.alive:
            raise APIError(503, "the server is shutting down", code="shutting_down")
        if len(self.in_flight) >= self.max_in_flight:
            raise APIError(429, f"the server is at capacity ({self.max_in_flight} requests in flight: "
                                f"{self.engine.config.max_num_seqs} running and a queue of "
                                f"{self.max_in_flight - self.engine.config.max_num_seqs}); retry later",
                           code="queue_full")

    async def submit(self, request_id: str, build: Callable[[], Job], arrival: float) -> RequestHandle:
        """Preprocess on a worker, queue in the engine, and return once admitted (or raise the APIError why not).
        The caller must `finish(handle)` when done with it."""
        self.check_capacity()
        loop = asyncio.get_running_loop()
        handle = RequestHandle(request_id, loop, arrival, arrival + self.request_timeout)
        self.in_flight.add(handle)
        try:
            fut = loop.run_in_executor(self.pool, build)
            try:
                async with asyncio.timeout(max(handle.deadline - time.monotonic(), 0.0)):  # see next_events
                    job = await fut
            except TimeoutError:
                raise APIError(504, "preparing the request (media download / decoding) took longer than the "
                                    "server's request timeout", code="timeout") from None
            except (MediaError, MessageFormatError) as e:
                raise bad_request(str(e), "messages") from None
            except PromptTooLongError as e:
                raise bad_request(str(e), "messages", "context_length_exceeded") from None
            except ValueError as e:  # the processor's other complaints about its input
                log.info("request %s refused by the processor: %s", request_id, e)
                raise bad_request(str(e), "messages") from None
            self.inbox.put(("add", handle, job))
            events = await handle.next_events()
            if isinstance(events[0], Failed):
                handle.done = True
                raise events[0].error
            return handle
        except BaseException:
            self.finish(handle)
            raise

    async def on_engine(self, fn: Callable[[], T]) -> T:
        """Run `fn` on the engine thread between two steps and return its result (or raise its exception)."""
        if self.closing or not self.alive:
            raise APIError(503, "the server is shutting down", code="shutting_down")
        fut = asyncio.get_running_loop().create_future()
        self.inbox.put(("call", fut, fn))
        return await fut

    def finish(self, handle: RequestHandle) -> None:
        """The HTTP side is done with a request: abort it in the engine unless it already finished."""
        if not handle.done and not handle.cancelled:
            handle.cancelled = True
            self.inbox.put(("abort", handle, None))
            # the engine sends nothing more for an aborted request: end any read still waiting on this handle
            handle.queue.put_nowait([Failed(APIError(499, "the client closed the request", code="client_closed"))])
        self.in_flight.discard(handle)

    # ------------------------------------------------------------------ engine thread
    def _run(self) -> None:
        while True:
            try:
                self._drain(block=not self.engine.has_work())
                if self._stop.is_set():
                    break
                if self.engine.has_work():
                    self._dispatch(self.engine.step())
            except Exception:
                log.exception("the engine loop failed; failing the %d running request(s)", len(self._active))
                self._fail_all(APIError(500, "internal error while generating; the request was aborted"))
            self.stats = self._snapshot()
        self._fail_all(APIError(503, "the server is shutting down", code="shutting_down"))
        while True:  # calls queued after the stop get an answer too
            try:
                kind, fut, _ = self.inbox.get_nowait()
            except queue.Empty:
                break
            if kind == "call":
                _answer(fut, None, APIError(503, "the server is shutting down", code="shutting_down"))
        self.stats = self._snapshot()

    def _drain(self, block: bool) -> None:
        try:
            cmd = self.inbox.get(timeout=0.2) if block else self.inbox.get_nowait()
        except queue.Empty:
            return
        while True:
            kind, handle, job = cmd
            if kind == "add":
                self._add(handle, job)
            elif kind == "abort":
                self._abort(handle.id)
            elif kind == "call":
                fut, fn = handle, job
                try:
                    _answer(fut, fn(), None)
                except Exception as e:
                    _answer(fut, None, e)
            elif kind == "stop":
                self._stop.set()
            try:
                cmd = self.inbox.get_nowait()
            except queue.Empty:
                return

    def _add(self, handle: RequestHandle, job: Job) -> None:
        if handle.cancelled:
            return
        rids = [handle.id] if len(job.prompts) == 1 else [f"{handle.id}-{k}" for k in range(len(job.prompts))]
        seqs: list[Sequence] = []
        queued = False
        beam = None
        try:
            if job.beam is not None:  # a beam search queues its rounds itself
                beam = _BeamActive(handle, job, self.engine,
                                   self.engine.max_model_len - len(job.prompts[0].prompt_ids))
                seqs = beam.start_round()
                active: _Active | _BeamActive = beam
            else:
                for rid, p in zip(rids, job.prompts):
                    seqs += self.engine.add_request(rid, p.prompt_ids, job.params, p.media, p.kinds)
                queued = True
                # building the choices is our code too: if it fails the request fails, instead of waiting forever
                active = _Active(handle, job, rids, seqs, sum(len(p.prompt_ids) for p in job.prompts))
        except Exception as e:
            if beam is not None:
                beam.expander.close()
            for rid in rids:
                self.engine.abort(rid)
            if queued:
                log.exception("could not set up the choices of request %s", handle.id)
                err = APIError(500, "internal error while queueing the request")
            elif isinstance(e, UnknownAdapterError):  # unloaded between the model check and now
                err = APIError(404, str(e), "model", "model_not_found")
            elif isinstance(e, ValueError):
                err = bad_request(str(e), "messages",
                                  "context_length_exceeded" if isinstance(e, PromptTooLongError) else None)
            else:
                log.exception("could not add request %s", handle.id)
                err = APIError(500, "internal error while queueing the request")
            handle.done = True
            handle.emit([Failed(err)])
            return
        self._active[handle.id] = active
        for s in seqs:
            self._by_seq[s.seq_id] = active
        handle.emit([Admitted(active.prompt_tokens)])

    def _beam_round(self, active: _BeamActive, now: float) -> Finished | Failed | None:
        """A round of `active` is done: advance its search, then queue the next round (None) or answer."""
        for s in active.seqs:
            self._by_seq.pop(s.seq_id, None)
        event: Finished | Failed | None = None
        try:
            active.search.advance(active.tops())
            if active.search.beams() is not None:
                for s in active.start_round():
                    self._by_seq[s.seq_id] = active
                return None
            event = active.result()
        except APIError as e:
            event = Failed(e)
        except Exception:
            log.exception("beam search of request %s failed", active.handle.id)
            event = Failed(APIError(500, "internal error during the beam search; the request was aborted"))
        active.expander.close()  # the last round's blocks
        self._active.pop(active.handle.id, None)
        active.handle.done = True
        self.metrics.e2e.observe(now - active.handle.arrival)
        return event

    def _abort(self, hid: str) -> None:
        active = self._active.pop(hid, None)
        if active is None:
            return
        for rid in active.rids:
            self.engine.abort(rid)
        for s in active.seqs:
            self._by_seq.pop(s.seq_id, None)

    def _fail_all(self, err: APIError) -> None:
        for hid, active in list(self._active.items()):
            self._abort(hid)
            active.handle.done = True
            active.handle.emit([Failed(err)])

    def _dispatch(self, outputs: list[StepOutput]) -> None:
        now = time.monotonic()
        touched: dict[str, _Active] = {}
        for out in outputs:
            active = self._by_seq.get(out.seq.seq_id)
            if active is None:
                continue
            touched[active.handle.id] = active
            if isinstance(active, _BeamActive):
                active.finished += out.finished
                continue
            sid = out.seq.seq_id
            if out.new_tokens:
                if not active.first_token:
                    active.first_token = True
                    self.metrics.ttft.observe(now - active.handle.arrival)
                last = active.last_token_at.get(sid)
                if last is not None:  # (a step with prompt-lookup drafts kept brings several tokens: each its share)
                    for _ in out.new_tokens:
                        self.metrics.itl.observe((now - last) / len(out.new_tokens))
                active.last_token_at[sid] = now
            choice = active.choices[active.index[sid]]
            if active.job.stream:
                try:
                    delta = choice.advance(out)
                except Exception:
                    log.exception("could not detokenize request %s", active.handle.id)
                    delta = ChoiceDelta(active.index[sid], finish_reason="error") if out.finished else None
                if delta is not None:
                    active.deltas.append(delta)
            if out.finished:
                active.finished += 1
        for active in touched.values():
            events: list = []
            if active.deltas:
                events.append(Deltas(active.deltas))
                active.deltas = []
            if active.finished == len(active.seqs):
                done = self._beam_round(active, now) if isinstance(active, _BeamActive) else self._complete(active, now)
                if done is not None:
                    events.append(done)
            if events:
                active.handle.emit(events)

    def _complete(self, active: _Active, now: float):
        hid = active.handle.id
        try:
            choices = None if active.job.stream else [c.result() for c in active.choices]
            event: Finished | Failed = Finished(choices, active.usage())
        except Exception:
            log.exception("could not build the response of request %s", hid)
            event = Failed(APIError(500, "internal error while building the response"))
        for rid in active.rids:
            self.engine.requests.pop(rid, None)
        for s in active.seqs:
            self._by_seq.pop(s.seq_id, None)
        self._active.pop(hid, None)
        active.handle.done = True
        self.metrics.e2e.observe(now - active.handle.arrival)
        return event

    def _snapshot(self) -> dict[str, Any]:
        e = self.engine
        vc = getattr(e.runner, "vision_cache", None) or _NoVisionCache
        return {"waiting": len(e.scheduler.waiting), "running": len(e.scheduler.running),
                "blocks_used": e.blocks.num_used, "blocks_total": e.blocks.num_blocks,
                "prefix_hits": e.blocks.hits, "prefix_queries": e.blocks.queries,
                "vision_hits": vc.hits, "vision_misses": vc.misses, "vision_bytes": vc.bytes,
                "preemptions": e.scheduler.num_preemptions, "prompt_tokens": e.stats["prompt_tokens"],
                "generation_tokens": e.stats["generated_tokens"], "engine_requests": len(e.requests),
                "draft_tokens": e.stats["draft_tokens"], "accepted_draft_tokens": e.stats["accepted_draft_tokens"],
                "active": len(self._active)}
