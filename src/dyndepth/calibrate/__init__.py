"""Calibration: measuring this machine's cost curves for the ``auto`` policy, above the policies and the draft.

    curves.py   t_verify(N) on the loaded target and t_draft(levels) on its head; robust to a busy machine;
                ``load_or_probe`` reads the cache (policies/costs.py) or measures and stores
    cli.py      ``dyndepth calibrate``: measure, cache, print and plot

The policies only read the result, a ``dyndepth.policies.costs.CostModel``; measuring runs the target and the
draft's tree growth, which themselves use the policies, so it lives here rather than in ``policies/`` (no import
circle). ``provide_costs(decoder)`` gives a decoder's policy its cost model when it needs one: none yet, or a
stale one (the measured steps disagreed with the probed curve, see costs.py).
"""

from __future__ import annotations

from dyndepth.calibrate.curves import load_or_probe, probe

__all__ = ["load_or_probe", "probe", "provide_costs"]


def provide_costs(decoder) -> None:
    """Load or measure the cost model of ``decoder``'s policy where it takes one (``auto``) and has none, or a
    stale one; other policies are left alone. Measuring resets the target's cache: call it before a generation's
    prefill, never during one."""
    policy = decoder.policy
    if not hasattr(policy, "costs"):
        return
    if policy.costs is None or policy.costs.stale:
        fresh = load_or_probe(decoder, update_rate=getattr(policy, "cost_update_rate", 0.05))
        policy.costs = fresh
