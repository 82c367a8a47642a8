"""The engine interface of ``worker.Engine``, over the engine replicas of a Ray Serve deployment.

The ingress replica runs the very app of ``dyndepth serve`` (``create_app``: routes, checks, API key, error
bodies, server-sent events, metrics) over a ``RemoteEngine``; each engine replica runs one ``worker.Engine``
(``ray_app.EngineReplica``). A submitted job goes to a replica through a streaming ``DeploymentHandle``, so
Ray's router picks the replica (the less loaded of two, which with two replicas is the least loaded one), and
the replica streams the job's events back:

    ("accepted", replica)                       the replica took the job (its engine queued it)
    ("step", token_ids, text, StepStats|None, waited_s)   waited_s: engine queue time, on the first step only
    ("done", GenerationStats)
    ("failed", status, message, type, param, code)
    ("batch", [(rows, tokens), ...])            the replica's engine steps since the last such event (any job's
                                                stream carries them once), for the batch metrics

The handle turns them back into ``Step`` / ``Done`` / ``Failed``, stamped with this process's clock (the
metrics subtract times, and the replica may be on another machine). A replica that dies (its process killed,
its node lost) surfaces here as a Ray error: the request ends with ``Failed(503)``, which the app sends as a
503 body, or inside a started stream as an error event followed by ``[DONE]``; never a hang, never a cut that
looks finished. Ray restarts the replica; the other replicas go on.

Jobs wait for a replica in Ray's router, in this process; ``max_queue`` of them may wait, one more is answered
429 at once, as by the single-process engine.
"""

from __future__ import annotations

import asyncio
import logging
import time

from dyndepth.serve import errors
from dyndepth.serve.prompts import PromptBuilder
from dyndepth.serve.worker import Done, Failed, Job, Step

log = logging.getLogger("dyndepth.serve")


def replica_lost(exc: BaseException) -> errors.APIError:
    return errors.APIError(503, f"the replica serving this request stopped before the answer was complete "
                                f"({type(exc).__name__}); retry the request", type="server_error",
                           code="replica_unavailable")


def _ray_errors():
    """The exceptions that mean "the replica (or its node) is gone", and the router's "no replica" errors."""
    from ray.exceptions import RayActorError, WorkerCrashedError, NodeDiedError, ObjectLostError
    from ray.serve.exceptions import DeploymentUnavailableError, ReplicaUnavailableError

    return (RayActorError, WorkerCrashedError, NodeDiedError, ObjectLostError, DeploymentUnavailableError,
            ReplicaUnavailableError)


class RemoteEngine:
    """``submit``, ``prompts``, ``waiting``, ``running``, ``alive``, ``describe``: what ``create_app`` uses."""

    def __init__(self, handle, spec: dict, max_queue: int, replica_metrics=None):
        """handle: the DeploymentHandle of the engine deployment; spec: ``EngineReplica.spec()`` of one replica."""
        self._handle = handle.options(stream=True)
        self.prompts = PromptBuilder(spec["tokenizer"], spec["max_context"], spec["tree_tokens"], spec["vocab_size"])
        self._describe = spec["describe"]
        self.max_queue = max_queue
        self.replica_metrics = replica_metrics
        self._waiting: set[RemoteHandle] = set()  # sent, no replica has taken it yet
        self._running: set[RemoteHandle] = set()  # taken by a replica, not finished
        self._closing = False
        self._lost = _ray_errors()
        self._listeners: list = []

    @property
    def alive(self) -> bool:
        return not self._closing

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    @property
    def running(self) -> int:
        return len(self._running)

    def describe(self) -> dict:
        return dict(self._describe)

    def listen(self, callback) -> None:
        """``callback(rows, tokens)`` for every engine step of every replica (the app's batch metrics)."""
        self._listeners.append(callback)

    def submit(self, job: Job) -> "RemoteHandle":
        if self._closing:
            raise errors.APIError(503, "the engine is not running", type="server_error", code="engine_stopped")
        if len(self._waiting) >= self.max_queue:
            raise errors.queue_full(self.max_queue)
        handle = RemoteHandle(self, job)
        self._waiting.add(handle)
        return handle

    def close(self) -> None:
        self._closing = True
        for h in list(self._waiting | self._running):
            h.cancel()

    def _forget(self, handle: "RemoteHandle") -> None:
        self._waiting.discard(handle)
        self._running.discard(handle)


class RemoteHandle:
    """One job sent to an engine replica; the same async iterator of events as ``worker.Handle``."""

    def __init__(self, engine: RemoteEngine, job: Job):
        self.job = job
        self.submitted = time.monotonic()
        self.started: float | None = None  # when the replica's engine took it (its queue time added)
        self.replica: str | None = None
        self._engine = engine
        self._gen = engine._handle.generate.remote(job)  # Ray's router assigns it in the background
        self._accepted: float | None = None
        self._finished = False
        self._cancelled = False

    @property
    def cancelled(self) -> bool:
        return self._cancelled

    def cancel(self) -> None:
        """Idempotent: the replica's generator is cancelled, which cancels its engine job."""
        if not self._cancelled and not self._finished:
            self._gen.cancel()
        self._cancelled = True
        self._end()

    def _end(self) -> None:
        if self.replica is not None and self in self._engine._running and self._engine.replica_metrics:
            self._engine.replica_metrics.finished(self.replica)
        self._engine._forget(self)

    async def next(self):
        if self._finished:
            raise StopAsyncIteration
        while True:
            remaining = None
            if self.job.timeout_s is not None:
                remaining = max(0.0, self.submitted + self.job.timeout_s - time.monotonic())
            try:
                item = await asyncio.wait_for(self._gen.__anext__(), remaining)
            except TimeoutError:
                self.cancel()
                event = Failed(errors.timeout(self.job.timeout_s))
            except StopAsyncIteration:
                event = Failed(errors.APIError(500, "the replica ended the request without an answer",
                                               type="server_error", code="internal_error"))
            except self._engine._lost as exc:
                log.warning("request lost with its replica %s: %s", self.replica, type(exc).__name__)
                if self.replica is not None and self._engine.replica_metrics:
                    self._engine.replica_metrics.lost(self.replica)
                event = Failed(replica_lost(exc))
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - one request's failure; the server goes on
                log.exception("request failed in its replica")
                event = Failed(errors.internal(exc))
            else:
                event = self._event(item)
                if event is None:  # the replica's "accepted" or "batch"
                    continue
            if isinstance(event, (Done, Failed)):
                self._finished = True
                self._end()
            return event

    def _event(self, item: tuple):
        now = time.monotonic()
        kind = item[0]
        if kind == "accepted":
            self.replica, self._accepted = item[1], now
            self._engine._waiting.discard(self)
            self._engine._running.add(self)
            if self._engine.replica_metrics:
                self._engine.replica_metrics.accepted(self.replica)
            return None
        if kind == "batch":
            for rows, tokens in item[1]:
                for callback in self._engine._listeners:
                    callback(rows, tokens)
            return None
        if kind == "step":
            _, token_ids, text, step, waited = item
            if self.started is None:
                self.started = (self._accepted or now) + (waited or 0.0)
            return Step(token_ids, text, step, now)
        if kind == "done":
            return Done(item[1], now)
        _, status, message, type_, param, code = item
        return Failed(errors.APIError(status, message, type=type_, param=param, code=code))

    def __aiter__(self):
        return self

    async def __anext__(self):
        return await self.next()
