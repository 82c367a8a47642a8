"""The depth-policy interface: how deep the draft tree grows in a step, and how many of its nodes are verified.

A policy is a small object, testable without a model. The tree grower (draft.py) produces level 1 from the root
forward, then before each further expansion asks ``policy.should_stop(depth, beam_log_values, pool)`` with the
path values (log space) of the current depth's beam and the pool grown so far. It never expands past
``policy.max_depth`` levels. The loop then verifies ``policy.tree_size(pool, n_max)`` tokens (root included): the
best nodes of the pool by path value. ``observe(step)`` receives each step's measured statistics (tokens
committed, depth, tree size, draft and verify time, the verified nodes' values and depths and which were
accepted), so a policy can tune itself; ``prepare(decoder)`` runs once when a decoder is built.
"""

from __future__ import annotations

import torch


class DepthPolicy:
    """Interface. ``max_depth`` = most draft levels per step (0 = plain decoding, no draft)."""

    name = "base"
    max_depth: int = 0

    def should_stop(self, depth: int, beam_log_values: torch.Tensor, pool=None) -> bool:  # beam_log_values [K]
        raise NotImplementedError

    def tree_size(self, pool, n_max: int) -> int:
        """Tokens to verify this step, root included (1..n_max). The cost-blind policies verify n_max."""
        return n_max

    def observe(self, step) -> None:  # step: dyndepth.stats.StepStats
        return None

    def prediction(self) -> float | None:
        """The expected accepted tokens of the tree just chosen, for policies that predict it (else None)."""
        return None

    def prepare(self, decoder) -> None:
        """Called once by SpeculativeDecoder.__init__ (e.g. to measure costs); the default does nothing."""
        return None

    def describe(self) -> dict:
        return {"policy": self.name, "max_depth": self.max_depth}


