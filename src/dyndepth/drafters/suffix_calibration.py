"""Calibration of suffix nodes: P(a suffix node is accepted | its parent is), learned online from verification.

A suffix node's frequency estimate ``q = count / parent count`` (``drafters/suffix.py``) is not its acceptance: on
SmolLM2's answers (docs/results/suffix-replay) ``q = 1`` resting on one earlier occurrence is accepted 48% of the
time after a one-token match and 96% after a match of 16 tokens or more. The match length the proposal rests on
predicts acceptance best, so the map is a table over (match-length bucket x q bucket), as the ``auto`` policy's
acceptance map (policies/calibration.py) is over (depth x q bucket), and multiplied along the path:

    g(m, q)     = P(node accepted | parent accepted), a Beta posterior per cell:
                  (hits + prior_strength * prior(m, q)) / (seen + prior_strength)
    P(node)     = g(node) * P(parent),  P(root) = 1

The prior is the replay's table (tuning half of the SmolLM2 answers, ``PRIOR``). ``update`` takes one verified
tree: a suffix node is an observation iff its parent was accepted, a hit iff it was accepted too (greedy: on the
accepted path; sampling: the rejection sampler's accept event). Counts decay by ``1 - update_rate`` per update, so
the map follows the running text with a memory of about ``1 / update_rate`` steps.
"""

from __future__ import annotations

import bisect
import math

# Lower edges of the buckets: match length (tokens of context the proposal's occurrences share), and q.
MATCH_EDGES = (1, 2, 4, 8, 16)  # 1, 2-3, 4-7, 8-15, 16+
Q_EDGES = (0.9, 0.6, 0.4, 0.2, 0.0)  # [0.9, 1], [0.6, 0.9), [0.4, 0.6), [0.2, 0.4), [0, 0.2)
# Observed P(node accepted | parent accepted) per (match bucket, q bucket) on the tuning half of the suffix replay
# (scripts/suffix_replay.py, SmolLM2-135M greedy answers, default SuffixOptions); cells with fewer than 20
# observations filled in monotonically from their neighbours.
PRIOR = (
    (0.48, 0.35, 0.19, 0.10, 0.07),
    (0.62, 0.50, 0.25, 0.11, 0.05),
    (0.80, 0.55, 0.28, 0.17, 0.10),
    (0.93, 0.70, 0.33, 0.17, 0.10),
    (0.96, 0.75, 0.40, 0.20, 0.10),
)


class SuffixCalibration:
    def __init__(self, prior_strength: float = 8.0, update_rate: float = 0.02):
        self.prior_strength = float(prior_strength)
        self.update_rate = float(update_rate)
        rows, cols = len(MATCH_EDGES), len(Q_EDGES)
        self.hits = [[0.0] * cols for _ in range(rows)]
        self.seen = [[0.0] * cols for _ in range(rows)]
        self._log_g: list[list[float]] | None = None  # the table in log space, rebuilt after an update

    @staticmethod
    def cell(match_len: int, log_q: float) -> tuple[int, int]:
        row = max(0, bisect.bisect_right(MATCH_EDGES, max(1, match_len)) - 1)
        q = math.exp(min(log_q, 0.0))
        col = next(i for i, edge in enumerate(Q_EDGES) if q >= edge)
        return row, col

    def table(self) -> list[list[float]]:
        """[match bucket][q bucket] g = P(accepted | parent accepted)."""
        s = self.prior_strength
        return [[(h + s * p) / (n + s) for h, n, p in zip(hr, nr, pr)]
                for hr, nr, pr in zip(self.hits, self.seen, PRIOR)]

    def log_g(self, match_len: int, log_q: float) -> float:
        """log g of one suffix node (match length of its proposal, log of its frequency estimate q)."""
        if self._log_g is None:
            self._log_g = [[math.log(max(g, 1e-6)) for g in row] for row in self.table()]
        r, c = self.cell(match_len, log_q)
        return self._log_g[r][c]

    def update(self, observations: list[tuple[int, float, bool]]) -> None:
        """One verified tree's informative suffix nodes: (match length, log q, accepted) for each suffix node whose
        parent was accepted."""
        keep = 1.0 - self.update_rate
        for row in (*self.hits, *self.seen):
            for i in range(len(row)):
                row[i] *= keep
        for match_len, log_q, hit in observations:
            r, c = self.cell(match_len, log_q)
            self.seen[r][c] += 1.0
            self.hits[r][c] += float(hit)
        self._log_g = None

    def to_dict(self) -> dict:
        return {"match_edges": list(MATCH_EDGES), "q_edges": list(Q_EDGES),
                "g": [[round(g, 4) for g in row] for row in self.table()]}
