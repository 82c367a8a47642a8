"""A per-step log of the engine: one JSON line per scheduler step, for finding where a run's time goes.

    dyndepth serve ... --step-log steps.jsonl

Each line: ``t`` (seconds since the log opened), ``rows`` (decode rows), ``prefill_rows`` and ``prefill_tokens``
(prompt chunks in the step), ``tokens`` (every token the forward verified), ``drafted_rows`` (rows whose tree had
more than the root), ``depth`` (most draft levels), ``committed`` (tokens the decode rows committed),
``draft_s`` / ``verify_s`` (the step's two stages, shared by its rows), ``waiting`` (requests queued after it).
A step drafts when ``drafted_rows`` > 0; its rate is ``committed / (draft_s + verify_s)``. This is what showed
``auto`` in the server measuring drafting on its cheapest steps only (docs/ALGORITHM.md, "In a batch").
"""

from __future__ import annotations

import json
import time
from pathlib import Path


class StepLog:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._file = self.path.open("a", buffering=1)  # line-buffered: a killed server keeps its lines
        self._start = time.perf_counter()

    def write(self, events, waiting: int) -> None:
        """One step's events (engine/step.py): the decode rows carry StepStats, a finished prefill an event
        without them."""
        steps = [e.step for e in events if e.step is not None]
        if not steps:
            return
        first = steps[0]
        trees = sum(s.tree_size for s in steps)
        prefill_rows = max(0, first.batch_rows - len(steps))
        record = {"t": round(time.perf_counter() - self._start, 4), "rows": len(steps),
                  "prefill_rows": prefill_rows, "prefill_tokens": first.batch_tokens - trees,
                  "tokens": first.batch_tokens, "drafted_rows": sum(1 for s in steps if s.tree_size > 1),
                  "depth": max(s.depth for s in steps), "committed": sum(s.committed for s in steps),
                  "draft_s": round(first.draft_time_s, 6), "verify_s": round(first.verify_time_s, 6),
                  "waiting": waiting}
        self._file.write(json.dumps(record) + "\n")

    def close(self) -> None:
        self._file.close()
