"""The depth-policy interface: how deep the draft tree grows in a step, and how many of its nodes are verified.

A policy is a small object, testable without a model. The tree grower (drafters/eagle.py) produces level 1 from the
root forward, then before each further expansion asks ``policy.should_stop_rows(depth, beam_log_values, pools)``
with the path values (log space) of each row's beam at the current depth and the pools grown so far: every row of a
batch gets its own decision (the default asks ``should_stop(depth, beam_log_values, pool)`` row by row). It never
expands past ``policy.max_depth`` levels. The step then verifies ``policy.tree_sizes(pools, n_max)`` tokens per row
(root included): the best nodes of each row's pool by path value. ``observe(step)`` receives each step's measured
statistics (tokens committed, depth, tree size, draft and verify time, the verified nodes' values and depths and
which were accepted), so a policy can tune itself; ``prepare(decoder)`` runs once when a decoder is built.
"""

from __future__ import annotations

import torch


class DepthPolicy:
    """Interface. ``max_depth`` = most draft levels per step (0 = plain decoding, no draft)."""

    name = "base"
    max_depth: int = 0
    prices_nodes = False  # True: tree_sizes weighs each node's worth against its cost (auto); False: cost-blind

    def should_stop(self, depth: int, beam_log_values: torch.Tensor, pool=None) -> bool:  # beam_log_values [K]
        raise NotImplementedError

    def should_stop_rows(self, depth: int, beam_log_values: torch.Tensor, pools: list) -> list[bool]:
        """``should_stop`` for the A rows of a batch that grew ``depth`` levels: beam_log_values [A, K] -> [A]. The
        default asks row by row; a policy whose rule vectorises over rows overrides it (one set of ops a level)."""
        return [self.should_stop(depth, v, p) for v, p in zip(beam_log_values, pools)]

    def reads_beam(self, levels: int) -> bool:
        """Whether the rule looks at the beam's values (so the beam's width can change its decisions) when rows grow
        at most ``levels`` levels. Where it does not, the draft stage narrows the beam to the most nodes a tree may
        hold (drafters/stage.py): the same trees for less drafting."""
        return True

    def suffix_depth(self, depths: list[int], log_p: list[float], top_k: int) -> int:
        """How many levels of a suffix proposal to keep: depths [n] and calibrated log P(accepted) [n] of its nodes
        (drafters/hybrid.py), top_k the beam width. The default keeps them all (the proposal's own rules, a
        depth cap from its match length and a minimum estimate, bound it); ``ddd`` applies its check to them."""
        return max(depths, default=0)

    def tree_size(self, pool, n_max: int) -> int:
        """Tokens to verify this step, root included (1..n_max). The cost-blind policies verify n_max."""
        return n_max

    def tree_sizes(self, pools: list, n_max: list[int], base_tokens: int | None = None) -> list[int]:
        """Per row of a batch step: tokens to verify (root included), at most n_max[i]. base_tokens: what the
        step's forward holds besides the drafted nodes (every row's root, prompt chunks). The default asks
        ``tree_size`` row by row; a cost-aware policy splits the batch's budget across rows."""
        return [self.tree_size(p, n) for p, n in zip(pools, n_max)]

    def drafts(self, rows: int, base_tokens: int) -> bool:
        """Whether this step drafts at all (``rows`` rows could; ``base_tokens`` is everything the step verifies
        besides drafted nodes). The cost-blind policies always draft; a row that does not draft verifies its root
        alone and hands its committed pairs to the next draft."""
        return True

    def observe(self, step) -> None:  # step: dyndepth.stats.StepStats
        return None

    def observe_batch(self, steps: list) -> None:
        """All rows' StepStats of one batch step (they share its draft and verify time)."""
        for step in steps:
            self.observe(step)

    def prediction(self) -> float | None:
        """The expected accepted tokens of the tree just chosen, for policies that predict it (else None)."""
        return None

    def prepare(self, decoder) -> None:
        """Called once by SpeculativeDecoder.__init__ (e.g. to measure costs); the default does nothing."""
        return None

    def describe(self) -> dict:
        return {"policy": self.name, "max_depth": self.max_depth}


