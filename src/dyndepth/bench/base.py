"""The interface every benchmarked method implements, and the generation settings they all share."""

from __future__ import annotations

import time
from dataclasses import dataclass

from dyndepth.bench.records import TurnResult


@dataclass(frozen=True)
class GenParams:
    """Generation settings of one benchmark run, identical for every method."""

    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0  # 0 = no top-k filter (the target's sampling filter, not the draft tree's width)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


class MethodSkipped(Exception):
    """Raised by a factory when a method does not apply to this target (the reason is reported, not fatal)."""


class BenchMethod:
    """One decoding method. ``generate`` returns the new ids (stop-token trimmed, stop token included) with
    timings; the runner measures nothing itself, so each method owns its own device synchronisation."""

    name: str = "base"
    family: str = "base"  # "hf" (transformers generate) or "tree" (dyndepth's loop)

    def settings(self) -> dict:
        raise NotImplementedError

    def generate(self, ids: list[int], params: GenParams, seed: int) -> TurnResult:
        raise NotImplementedError


def trim_at_stop(ids: list[int], stop_ids: set[int], limit: int) -> list[int]:
    """Cut after the first stop token (kept) and at ``limit`` tokens: the one counting rule for all methods."""
    out = []
    for tok in ids[:limit]:
        out.append(tok)
        if tok in stop_ids:
            break
    return out


def now(device) -> float:
    """A timestamp after all queued device work has finished."""
    import torch

    if getattr(device, "type", str(device)).startswith("cuda"):
        torch.cuda.synchronize(device)
    return time.perf_counter()
