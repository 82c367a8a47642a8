"""The engine: one worker thread owns the decoder; requests wait in a bounded FIFO queue.

The HTTP layer sees only this interface, so a batched engine can replace ``Engine`` without touching the routes:

    handle = engine.submit(Job(prompt_ids, options, deadline))   # raises APIError 429 when the queue is full
    async for event in handle:                                    # Step ..., then Done or Failed
        ...
    handle.cancel()                                               # idempotent; frees the worker at the next step
    engine.prompts, engine.waiting, engine.running, engine.describe()   # tokenising, gauges, /v1/models

The decoder runs one generation at a time (starting one invalidates any open stream), so exactly one thread,
the worker, ever calls it. The worker takes the oldest waiting job, drives ``stream_text`` and hands each step's
chunk to the job's asyncio loop (``call_soon_threadsafe``). Between steps it looks at the handle: a cancelled
job (client gone, request timed out) closes its generator, which ends the generation, and the worker takes the
next job. A ``DyndepthError`` in one generation fails that job with 400, any other exception with 500 (logged
with its traceback); the worker goes on either way. A cancelled job that is still waiting leaves the queue at
once and so frees its place.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
import time
from dataclasses import dataclass, field

from dyndepth.errors import DyndepthError
from dyndepth.serve import errors
from dyndepth.serve.prompts import PromptBuilder
from dyndepth.stats import GenerationStats, StepStats

log = logging.getLogger("dyndepth.serve")


@dataclass
class Job:
    prompt_ids: list[int]
    options: dict  # keywords of SpeculativeDecoder.stream_text (max_new_tokens, temperature, top_p, seed, stop)
    timeout_s: float | None = None  # from submission to the last event
    field_names: dict = field(default_factory=dict)  # engine option -> request field, for error messages


@dataclass
class Step:
    """What one step committed: its tokens, the text they add, and the step's statistics (None for the
    prefill's first token and for a final flush of held-back text)."""

    token_ids: list[int]
    text: str
    step: StepStats | None
    time: float  # time.monotonic() when the worker had it


@dataclass
class Done:
    stats: GenerationStats
    time: float


@dataclass
class Failed:
    error: errors.APIError


class Handle:
    """One submitted job, seen from the event loop that submitted it."""

    def __init__(self, engine: "Engine", job: Job, loop: asyncio.AbstractEventLoop):
        self.job = job
        self.submitted = time.monotonic()
        self.started: float | None = None  # when the worker took it
        self._engine = engine
        self._loop = loop
        self._events: asyncio.Queue = asyncio.Queue()
        self._cancelled = threading.Event()
        self._finished = False

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def cancel(self) -> None:
        """Stop this job: removed from the queue if it waits, ended at the next step if it runs."""
        self._cancelled.set()
        self._engine._forget(self)

    def _put(self, event) -> None:  # worker thread
        try:
            self._loop.call_soon_threadsafe(self._events.put_nowait, event)
        except RuntimeError:  # the loop is closed: nobody listens any more
            self._cancelled.set()

    async def next(self):
        """The next event; a Failed(timeout) once the job has run past its timeout (and the job is cancelled)."""
        if self._finished:
            raise StopAsyncIteration
        remaining = None
        if self.job.timeout_s is not None:
            remaining = max(0.0, self.submitted + self.job.timeout_s - time.monotonic())
        try:
            event = await asyncio.wait_for(self._events.get(), remaining)
        except TimeoutError:
            self.cancel()
            event = Failed(errors.timeout(self.job.timeout_s))
        if isinstance(event, (Done, Failed)):
            self._finished = True
        return event

    def __aiter__(self):
        return self

    async def __anext__(self):
        return await self.next()


class Engine:
    """A batch-1 engine: one decoder, one worker thread, a FIFO of at most ``max_queue`` waiting jobs."""

    def __init__(self, decoder, max_queue: int = 64):
        if max_queue < 1:
            raise DyndepthError(f"--max-queue must be >= 1, got {max_queue}")
        self.decoder = decoder
        self.max_queue = max_queue
        self.prompts = PromptBuilder.from_decoder(decoder)  # what the HTTP layer tokenises and checks with
        self._waiting: collections.deque[Handle] = collections.deque()
        self._running: Handle | None = None
        self._cond = threading.Condition()
        self._closing = False
        self._thread: threading.Thread | None = None

    # -- lifecycle --------------------------------------------------------------------------------------------
    def start(self) -> "Engine":
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name="dyndepth-engine", daemon=True)
            self._thread.start()
        return self

    def close(self, timeout: float = 30.0) -> None:
        """Cancel every job and stop the worker (after its current step)."""
        with self._cond:
            self._closing = True
            jobs = list(self._waiting) + ([self._running] if self._running else [])
            self._cond.notify_all()
        for h in jobs:
            h._cancelled.set()
            h._put(Failed(errors.APIError(503, "the server is shutting down", type="server_error",
                                          code="shutting_down")))
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and not self._closing

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    @property
    def running(self) -> int:
        return 1 if self._running is not None else 0

    def describe(self) -> dict:
        return self.decoder.describe()

    # -- submission (event loop) ------------------------------------------------------------------------------
    def submit(self, job: Job) -> Handle:
        if not self.alive:
            raise errors.APIError(503, "the engine is not running", type="server_error", code="engine_stopped")
        handle = Handle(self, job, asyncio.get_running_loop())
        with self._cond:
            if len(self._waiting) >= self.max_queue:
                raise errors.queue_full(self.max_queue)
            self._waiting.append(handle)
            self._cond.notify()
        return handle

    def _forget(self, handle: Handle) -> None:
        with self._cond:
            try:
                self._waiting.remove(handle)
            except ValueError:
                pass

    # -- the worker thread ------------------------------------------------------------------------------------
    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._waiting and not self._closing:
                    self._cond.wait()
                if self._closing:
                    return
                handle = self._waiting.popleft()
                self._running = handle
            try:
                self._run(handle)
            finally:
                with self._cond:
                    self._running = None

    def _run(self, handle: Handle) -> None:
        if handle.cancelled:
            return
        handle.started = time.monotonic()
        stats = GenerationStats()
        try:
            gen = self.decoder.stream_text(handle.job.prompt_ids, stats=stats, **handle.job.options)
            try:
                steps_seen = 0
                for chunk in gen:
                    step = None
                    if len(stats.step_stats) > steps_seen:
                        steps_seen = len(stats.step_stats)
                        step = stats.step_stats[-1]
                    handle._put(Step(list(chunk.token_ids), chunk.text or "", step, time.monotonic()))
                    if handle.cancelled:
                        return
            finally:
                gen.close()  # ends the generation and releases the target
            handle._put(Done(stats, time.monotonic()))
        except DyndepthError as exc:
            handle._put(Failed(errors.from_dyndepth(exc, handle.job.field_names)))
        except Exception as exc:  # one generation's failure must not stop the server
            log.exception("generation failed")
            handle._put(Failed(errors.internal(exc)))
