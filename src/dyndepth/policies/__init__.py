"""Depth policies: how deep the draft tree grows each step and how many of its nodes are verified.

    base.py         the interface (should_stop, tree_size, observe, prepare)
    classic.py      plain (no draft), fixed (EAGLE-2), ddd (the DDD paper's rule, unchanged)
    auto.py         the cost-aware policy: maximise expected tokens per second
    calibration.py  (path value, depth) -> P(accepted), learned online from verification
    costs.py        t_draft(levels) and t_verify(N): the model, its online correction and its cache (the probe
                    that measures them is dyndepth.calibrate, above the policies)
"""

from __future__ import annotations

from dyndepth.errors import DyndepthError
from dyndepth.policies.auto import CostAwarePolicy
from dyndepth.policies.base import DepthPolicy
from dyndepth.policies.classic import DynamicDepth, FixedDepth, PlainPolicy

__all__ = ["DepthPolicy", "PlainPolicy", "FixedDepth", "DynamicDepth", "CostAwarePolicy", "POLICIES",
           "AUTO_OPTIONS", "make_policy"]

POLICIES = {"plain": PlainPolicy, "fixed": FixedDepth, "ddd": DynamicDepth, "auto": CostAwarePolicy}
AUTO_OPTIONS = ("min_depth", "lookahead", "prior_strength", "update_rate", "cost_update_rate", "objective")


def make_policy(name: str | DepthPolicy, max_depth: int | None = None, checks=None,
                threshold: float | None = None, **auto_options) -> DepthPolicy:
    """Build a policy by name; unset knobs keep the policy's defaults (DDD: 11, (5, 7, 9), -0.3; fixed: 6;
    auto: 11 levels and the defaults of CostAwarePolicy)."""
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
    unknown = sorted(set(auto_options) - set(AUTO_OPTIONS))
    if unknown or (auto_options and name != "auto"):
        raise DyndepthError(f"option(s) {', '.join(unknown or auto_options)} apply to the 'auto' policy only"
                            if not unknown else f"unknown policy option(s): {', '.join(unknown)}")
    kwargs.update({k: v for k, v in auto_options.items() if v is not None})
    if name == "plain":
        kwargs = {}
    return POLICIES[name](**kwargs)
