"""Depth policies, without a model."""

import math

import pytest
import torch

from dyndepth.errors import DyndepthError
from dyndepth.policies import DynamicDepth, FixedDepth, make_policy


def beam_with_mass(mass: float, k: int = 10) -> torch.Tensor:
    """K path log-values whose logsumexp is log(mass)."""
    return torch.full((k,), math.log(mass / k))


def depth_reached(policy, masses_by_depth) -> int:
    """Drive a policy like the tree grower does: level 1 exists, then ask before each expansion."""
    depth = 1
    while depth < policy.max_depth and not policy.should_stop(depth, beam_with_mass(masses_by_depth(depth))):
        depth += 1
    return depth


def test_ddd_defaults_match_the_paper():
    p = DynamicDepth()
    assert (p.max_depth, p.checks, p.threshold) == (11, (5, 7, 9), -0.3)


@pytest.mark.parametrize("low_from,expected", [(1, 5), (5, 5), (6, 7), (7, 7), (8, 9), (9, 9), (10, 11), (99, 11)])
def test_ddd_stops_exactly_at_the_first_check_with_low_mass(low_from, expected):
    p = DynamicDepth()
    # beam mass e^-0.1 (above threshold) before `low_from`, 0.5 (log = -0.69 < -0.3) from it on
    assert depth_reached(p, lambda d: math.exp(-0.1) if d < low_from else 0.5) == expected


def test_ddd_never_stops_before_the_first_check_and_never_passes_max_depth():
    p = DynamicDepth(max_depth=8, checks=(3, 6), threshold=-0.3)
    for d in (1, 2, 4, 5, 7):
        assert not p.should_stop(d, beam_with_mass(1e-9))
    assert depth_reached(p, lambda d: 1e-9) == 3
    assert depth_reached(p, lambda d: 1.0) == 8


def test_ddd_threshold_is_on_logsumexp_of_the_beam():
    p = DynamicDepth(checks=(5,), threshold=-0.3)
    assert not p.should_stop(5, beam_with_mass(math.exp(-0.29)))
    assert p.should_stop(5, beam_with_mass(math.exp(-0.31)))
    # the mass of the beam is a sum: one dominant path is enough to continue
    assert not p.should_stop(5, torch.tensor([-0.05] + [-30.0] * 9))


def test_fixed_and_plain():
    assert depth_reached(FixedDepth(max_depth=6), lambda d: 1e-9) == 6
    assert make_policy("plain").max_depth == 0


@pytest.mark.parametrize("kwargs", [dict(checks=(0,)), dict(checks=(11,)), dict(max_depth=0)])
def test_bad_ddd_settings_are_clear_errors(kwargs):
    with pytest.raises(DyndepthError):
        make_policy("ddd", **kwargs)


def test_unknown_policy_and_misplaced_knobs():
    with pytest.raises(DyndepthError, match="unknown policy"):
        make_policy("deep")
    with pytest.raises(DyndepthError, match="ddd"):
        make_policy("fixed", threshold=-1.0)
