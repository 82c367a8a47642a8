"""Continuous batching: which sequences run in the next step.

Sequences wait in a FIFO and join the running batch between steps, up to ``max_batch_size`` rows; a new row's
prompt enters with the next step (``prefill_chunk`` tokens per step while other rows decode, so their streams keep
flowing; the whole prompt at once when nobody else is decoding). A row that finishes, fails or is cancelled leaves
after its step and frees its caches; the others go on. Batch 1 is the same loop with one row.

    scheduler.add(seq)           # waits for a row
    events = scheduler.step()    # admit, one engine step (engine/step.py), retire finished rows
    scheduler.cancel(seq)        # leaves the queue now, or the batch before the next step
"""

from __future__ import annotations

import collections
import time

from dyndepth.engine.sequence import Sequence, State
from dyndepth.engine.step import Event, run_step

DEFAULT_MAX_BATCH = {"cpu": 8, "cuda": 64}
# Prompt tokens a step takes while other rows decode: on a 2-core CPU a forward costs ~5 ms more per token
# (Qwen2.5-1.5B, bf16), so 128 tokens add ~0.6 s to the running rows' step instead of the whole prompt's time.
DEFAULT_PREFILL_CHUNK = {"cpu": 128, "cuda": 2048}


class Scheduler:
    def __init__(self, decoder, max_batch_size: int | None = None, prefill_chunk: int | None = None,
                 step_log=None):
        """step_log: an engine.steplog.StepLog that gets a line per step (None: no log)."""
        kind = "cuda" if decoder.target.device.type == "cuda" else "cpu"
        self.decoder = decoder
        self.max_batch_size = int(max_batch_size or DEFAULT_MAX_BATCH[kind])
        self.prefill_chunk = int(prefill_chunk or DEFAULT_PREFILL_CHUNK[kind])
        self.waiting: collections.deque[Sequence] = collections.deque()
        self.running: list[Sequence] = []
        self.step_log = step_log

    @property
    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def add(self, seq: Sequence) -> None:
        seq.state = State.WAITING
        self.waiting.append(seq)

    def cancel(self, seq: Sequence) -> None:
        """Thread-safe enough for the server: only sets a flag; the scheduler's own thread acts on it."""
        seq.cancelled = True

    def step(self) -> list[Event]:
        """Admit waiting rows, run one engine step, retire the rows that finished."""
        self._retire([s for s in self.running if s.cancelled])
        while self.waiting and len(self.running) < self.max_batch_size:
            seq = self.waiting.popleft()
            if not seq.cancelled:
                self._admit(seq)
        if not self.running:
            return []
        decoding = any(s.state is State.DECODE for s in self.running)
        try:
            events = run_step(self.decoder, self.running, self.prefill_chunk if decoding else None)
        except Exception as exc:  # noqa: BLE001 - a shared stage failed: every row of this step fails with it
            events = []
            for s in self.running:
                s.error, s.state = exc, State.DONE
                events.append(Event(s, None, None, True, exc))
        if self.step_log is not None:
            self.step_log.write(events, len(self.waiting))
        self._retire([s for s in self.running if s.finished])
        return events

    def close(self) -> None:
        """Free every row's caches (a generation abandoned part-way)."""
        self._retire(list(self.running))
        self.waiting.clear()

    def _admit(self, seq: Sequence) -> None:
        dec = self.decoder
        tree = dec.total_tokens if dec.policy.max_depth > 0 else 1
        seq.kv = dec.target.new_row(seq.prompt.numel() + seq.request.request.max_new_tokens + tree)
        seq.draft_kv = dec.new_draft_cache() if dec.head is not None else None
        seq.state, seq.started = State.PREFILL, time.perf_counter()
        self.running.append(seq)

    def _retire(self, rows: list[Sequence]) -> None:
        for seq in rows:
            if seq.kv is not None:
                seq.kv.release()
                seq.kv = None
            seq.draft_kv = None
            self.decoder.drafting.close(seq)  # its output joins the suffix cache of earlier outputs
            if seq.started is not None:
                seq.stats.total_time_s = time.perf_counter() - seq.started
            if seq.state is not State.DONE:
                seq.state = State.DONE
            self.running.remove(seq)
