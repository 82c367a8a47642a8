"""Depth policies: how many levels the draft head grows in one step.

A policy is a small pure object, testable without a model. The tree grower produces level 1 from the root
forward, then before each further expansion asks ``policy.should_stop(depth, beam_log_values)`` with the path
values (log space) of the current depth's beam. It never expands past ``policy.max_depth`` levels.

``observe(step)`` receives each step's measured statistics (tokens committed, depth, draft and verify time), so a
policy can tune itself from measured costs; the ones here ignore it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from dyndepth.errors import DyndepthError


class DepthPolicy:
    """Interface. ``max_depth`` = most draft levels per step (0 = plain decoding, no draft)."""

    name = "base"
    max_depth: int = 0

    def should_stop(self, depth: int, beam_log_values: torch.Tensor) -> bool:  # beam_log_values [K]
        raise NotImplementedError

    def observe(self, step) -> None:  # step: dyndepth.stats.StepStats
        return None

    def describe(self) -> dict:
        return {"policy": self.name, "max_depth": self.max_depth}


@dataclass
class PlainPolicy(DepthPolicy):
    """No draft at all: every step verifies only the root, i.e. plain autoregressive decoding on the same
    target path (the fair timing baseline; it runs through the same generation loop)."""

    name = "plain"
    max_depth: int = 0

    def should_stop(self, depth, beam_log_values):
        return True


@dataclass
class FixedDepth(DepthPolicy):
    """EAGLE-2: always grow ``depth`` levels."""

    name = "fixed"
    max_depth: int = 6

    def __post_init__(self):
        if self.max_depth < 1:
            raise DyndepthError(f"fixed depth must be >= 1, got {self.max_depth}")

    def should_stop(self, depth, beam_log_values):
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

    def should_stop(self, depth, beam_log_values):
        if depth not in self.checks:
            return False
        self.last_mass = float(torch.logsumexp(beam_log_values.float(), dim=-1))
        return self.last_mass < self.threshold

    def describe(self):
        return {"policy": self.name, "max_depth": self.max_depth, "checks": list(self.checks),
                "threshold": self.threshold}


POLICIES = {"plain": PlainPolicy, "fixed": FixedDepth, "ddd": DynamicDepth}


def make_policy(name: str | DepthPolicy, max_depth: int | None = None, checks=None,
                threshold: float | None = None) -> DepthPolicy:
    """Build a policy by name; unset knobs keep the policy's defaults (DDD: 11, (5, 7, 9), -0.3; fixed: 6)."""
    if isinstance(name, DepthPolicy):
        return name
    if name not in POLICIES:
        raise DyndepthError(f"unknown policy {name!r}; choose one of: {', '.join(POLICIES)}")
    kwargs = {}
    if max_depth is not None:
        kwargs["max_depth"] = max_depth
    if name == "ddd":
        if checks is not None:
            kwargs["checks"] = tuple(checks)
        if threshold is not None:
            kwargs["threshold"] = threshold
    elif checks is not None or threshold is not None:
        raise DyndepthError(f"checks/threshold apply to the 'ddd' policy only, not {name!r}")
    if name == "plain":
        kwargs = {}
    return POLICIES[name](**kwargs)
