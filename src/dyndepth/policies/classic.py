"""The published, cost-blind policies: ``plain`` (no draft), ``fixed`` (EAGLE-2) and ``ddd`` (the DDD paper's
rule, kept exactly as published: it is the comparison for ``auto``)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from dyndepth.errors import DyndepthError
from dyndepth.policies.base import DepthPolicy


@dataclass
class PlainPolicy(DepthPolicy):
    """No draft at all: every step verifies only the root, i.e. plain autoregressive decoding on the same
    target path (the fair timing baseline; it runs through the same generation loop)."""

    name = "plain"
    max_depth: int = 0

    def should_stop(self, depth, beam_log_values, pool=None):
        return True

    def reads_beam(self, levels):
        return False


@dataclass
class FixedDepth(DepthPolicy):
    """EAGLE-2: always grow ``depth`` levels."""

    name = "fixed"
    max_depth: int = 6

    def __post_init__(self):
        if self.max_depth < 1:
            raise DyndepthError(f"fixed depth must be >= 1, got {self.max_depth}")

    def should_stop(self, depth, beam_log_values, pool=None):
        return False

    def reads_beam(self, levels):
        return False


@dataclass
class DynamicDepth(DepthPolicy):
    """Dynamic Depth Decoding: after each check depth, stop when the beam's total draft mass is low.

    H_d = logsumexp(beam path log-values at depth d); stop after depth d if d is a check depth and
    H_d < threshold. Never stops before the first check, never grows past ``max_depth``.
    """

    name = "ddd"
    max_depth: int = 11
    checks: tuple[int, ...] = (5, 7, 9)
    threshold: float = -0.3
    last_mass: float = field(default=float("nan"), repr=False)

    def __post_init__(self):
        self.checks = tuple(sorted(int(c) for c in self.checks))
        if self.max_depth < 1:
            raise DyndepthError(f"max_depth must be >= 1, got {self.max_depth}")
        if any(c < 1 or c >= self.max_depth for c in self.checks):
            raise DyndepthError(f"check depths must lie in 1..{self.max_depth - 1} (below max_depth), got {self.checks}")

    def should_stop(self, depth, beam_log_values, pool=None):
        return self.should_stop_rows(depth, beam_log_values[None], [pool])[0]

    def should_stop_rows(self, depth, beam_log_values, pools):
        if depth not in self.checks:
            return [False] * beam_log_values.shape[0]
        mass = torch.logsumexp(beam_log_values.float(), dim=-1)  # [A]: one read back for all rows
        self.last_mass = float(mass[-1])
        return (mass < self.threshold).tolist()

    def reads_beam(self, levels):
        """The check after depth d runs only when a row may grow past d (the grower asks while depth < levels)."""
        return any(c < levels for c in self.checks)

    def suffix_depth(self, depths, log_p, top_k):
        """DDD's rule on a suffix proposal's levels: after check depth d, stop when the log of the summed calibrated
        P(accepted) of the level's ``top_k`` best nodes is below the threshold. The checks go on beyond the last one
        at the same spacing, since a long confident match may run deeper than the head's ``max_depth``."""
        deepest = max(depths, default=0)
        step = self.checks[-1] - self.checks[-2] if len(self.checks) > 1 else 2
        check = self.checks[0]
        while check < deepest:
            level = sorted((lp for d, lp in zip(depths, log_p) if d == check), reverse=True)[:top_k]
            if float(torch.logsumexp(torch.tensor(level), dim=0)) < self.threshold:
                return check
            nxt = [c for c in self.checks if c > check]
            check = nxt[0] if nxt else check + step
        return deepest

    def describe(self):
        return {"policy": self.name, "max_depth": self.max_depth, "checks": list(self.checks),
                "threshold": self.threshold}
