"""The engine: one worker thread owns the decoder and runs the continuous-batching scheduler; requests wait in a
bounded FIFO queue.

The HTTP layer sees only this interface:

    handle = engine.submit(Job(prompt_ids, options, deadline))   # raises APIError 429 when the queue is full
    async for event in handle:                                    # Step ..., then Done or Failed
        ...
    handle.cancel()                                               # idempotent; the row leaves before the next step
    engine.prompts, engine.waiting, engine.running, engine.describe()   # tokenising, gauges, /v1/models

Exactly one thread, the worker, ever calls the decoder. Before every step it admits the oldest waiting jobs into the
running batch, up to ``max_batch_size`` rows (``engine.scheduler``: each job becomes a Sequence, which joins the
next step with its prompt), runs one engine step for all running rows at once, and hands each row's chunk to its
job's asyncio loop (``call_soon_threadsafe``). A cancelled job (client gone, request timed out) leaves the batch
before the next step; the other rows go on. A row whose options the decoder refuses fails with 400, a row whose
step raises fails with 500 (logged with its traceback), in either case alone. A cancelled job that is still waiting
leaves the queue at once and so frees its place. ``max_batch_size=1`` is a one-request-at-a-time server.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
import time
from dataclasses import dataclass, field

from dyndepth.calibrate import provide_costs
from dyndepth.engine.scheduler import Scheduler
from dyndepth.engine.sequence import Sequence
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
    """One decoder, one worker thread running a Scheduler of at most ``max_batch_size`` rows, a FIFO of at most
    ``max_queue`` waiting jobs."""

    def __init__(self, decoder, max_queue: int = 64, max_batch_size: int | None = None,
                 prefill_chunk: int | None = None, scheduler=None, step_log=None):
        """scheduler: what steps the rows (default: a Scheduler over ``decoder``; tests pass a model-free one);
        step_log: an engine.steplog.StepLog for the default scheduler."""
        if max_queue < 1:
            raise DyndepthError(f"--max-queue must be >= 1, got {max_queue}")
        if max_batch_size is not None and max_batch_size < 1:
            raise DyndepthError(f"--max-batch-size must be >= 1, got {max_batch_size}")
        self.decoder = decoder
        self.max_queue = max_queue
        self.scheduler = scheduler or Scheduler(decoder, max_batch_size=max_batch_size, prefill_chunk=prefill_chunk,
                                                step_log=step_log)
        self.max_batch_size = self.scheduler.max_batch_size
        self.prompts = PromptBuilder.from_decoder(decoder)  # what the HTTP layer tokenises and checks with
        self._waiting: collections.deque[Handle] = collections.deque()
        self._running: dict[Sequence, Handle] = {}
        self._listeners: list = []  # called with each step's (rows, tokens) from the worker thread
        self._cond = threading.Condition()
        self._closing = False
        self._thread: threading.Thread | None = None

    # -- lifecycle --------------------------------------------------------------------------------------------
    @classmethod
    def launch(cls, build, **kwargs) -> "Engine":
        """Build the decoder (``build()``) and run the engine in one new thread; returns once it is built (a
        build error is raised here). What a server should use: every torch op then runs in that thread. A model
        loaded (or a cost curve probed) in the caller's thread leaves that thread an OpenMP pool of its own beside
        the engine's; with more pool threads than cores libgomp stops spinning between parallel regions, and on
        2 cores every op then waits for a sleeping thread (SmolLM2 float32, 16 rows: 0.20 s a step against
        0.14 s, docs/SERVING.md)."""
        box: dict = {}
        ready = threading.Event()

        def main() -> None:
            try:
                engine = cls(build(), **kwargs)
            except BaseException as exc:  # noqa: BLE001 - handed to the caller
                box["error"] = exc
                ready.set()
                return
            engine._thread = threading.current_thread()
            box["engine"] = engine
            ready.set()
            engine._work()

        threading.Thread(target=main, name="dyndepth-engine", daemon=True).start()
        ready.wait()
        if "error" in box:
            raise box["error"]
        return box["engine"]

    def start(self) -> "Engine":
        """Run the worker in a new thread (the decoder was built in the caller's thread: see ``launch``)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name="dyndepth-engine", daemon=True)
            self._thread.start()
        return self

    def close(self, timeout: float = 30.0) -> None:
        """Cancel every job and stop the worker (after its current step)."""
        with self._cond:
            self._closing = True
            jobs = list(self._waiting) + list(self._running.values())
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
        return len(self._running)

    def describe(self) -> dict:
        return {**self.decoder.describe(), "max_batch_size": self.max_batch_size}

    def listen(self, callback) -> None:
        """``callback(rows, tokens)`` after every engine step (from the worker thread): metrics."""
        self._listeners.append(callback)

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
        scheduler = self.scheduler
        while True:
            with self._cond:
                while not self._waiting and not self._running and not self._closing:
                    self._cond.wait()
                if self._closing:
                    break
                admitted = []
                while self._waiting and len(self._running) + len(admitted) < self.max_batch_size:
                    admitted.append(self._waiting.popleft())
            if admitted and not self._running:  # idle: a cost model found stale is measured again now
                provide_costs(self.decoder)
            for handle in admitted:
                self._admit(handle)
            for seq, handle in list(self._running.items()):
                if handle.cancelled:
                    scheduler.cancel(seq)
                    del self._running[seq]
            if not scheduler.has_work:
                continue
            try:
                events = scheduler.step()
            except Exception as exc:  # noqa: BLE001 - the scheduler itself failed: fail its rows, go on
                log.exception("engine step failed")
                events = []
                for seq, handle in list(self._running.items()):
                    handle._put(Failed(errors.internal(exc)))
                    scheduler.cancel(seq)
                self._running.clear()
            self._dispatch(events)
        scheduler.close()

    def _admit(self, handle: Handle) -> None:
        if handle.cancelled:
            return
        handle.started = time.monotonic()
        try:
            seq = self.decoder.sequence(handle.job.prompt_ids, handle.job.options, want_text=True)
        except DyndepthError as exc:
            handle._put(Failed(errors.from_dyndepth(exc, handle.job.field_names)))
            return
        self.scheduler.add(seq)
        self._running[seq] = handle

    def _dispatch(self, events) -> None:
        now = time.monotonic()
        rows = {e.step.batch_rows for e in events if e.step is not None}
        tokens = {e.step.batch_tokens for e in events if e.step is not None}
        if rows:
            for callback in self._listeners:
                callback(max(rows), max(tokens))
        for event in events:
            handle = self._running.get(event.seq)
            if handle is None:
                continue  # cancelled meanwhile
            if event.error is not None:
                exc = event.error
                if isinstance(exc, DyndepthError):
                    handle._put(Failed(errors.from_dyndepth(exc, handle.job.field_names)))
                else:
                    log.error("generation failed", exc_info=(type(exc), exc, exc.__traceback__))
                    handle._put(Failed(errors.internal(exc)))
            elif event.chunk is not None:
                handle._put(Step(list(event.chunk.token_ids), event.chunk.text or "", event.step, now))
            if event.done:
                if event.error is None:
                    handle._put(Done(event.seq.stats, now))
                del self._running[event.seq]
