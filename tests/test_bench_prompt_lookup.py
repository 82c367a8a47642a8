"""The ``prompt-lookup`` bench method: transformers' prompt lookup decoding on the same model object, greedy-exact
against vanilla, really drafting (fewer target calls than tokens), and configurable with --set."""

from __future__ import annotations

import pytest
import torch

from dyndepth.bench.base import GenParams
from dyndepth.bench.hf_methods import HFGenerate
from dyndepth.bench.methods import METHODS, parse_overrides, plan_methods
from tiny_models import tiny_target


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_prompt_lookup_equals_vanilla_greedy_and_drafts(arch):
    torch.set_num_threads(1)
    target = tiny_target(arch)
    vanilla = HFGenerate("vanilla", target)
    lookup = HFGenerate("prompt-lookup", target, prompt_lookup=10)
    params = GenParams(max_new_tokens=48)
    saved = 0
    for seed in range(3):
        g = torch.Generator().manual_seed(seed)
        prompt = torch.randint(0, 500, (12,), generator=g).tolist() * 3  # a repetitive prompt: lookups hit
        want = vanilla.generate(prompt, params, 0)
        got = lookup.generate(prompt, params, 0)
        assert got.token_ids == want.token_ids
        assert got.steps <= len(got.token_ids)
        saved += len(got.token_ids) - got.steps  # tokens that came from accepted lookups
    assert saved > 10
    assert lookup.settings()["prompt_lookup_num_tokens"] == 10 and lookup.settings()["max_matching_ngram_size"] == 2
    assert "prompt_lookup_num_tokens" not in vanilla.settings()


def test_prompt_lookup_is_registered_and_configurable():
    assert METHODS["prompt-lookup"].defaults == {"prompt_lookup_num_tokens": 10}
    (plan,) = plan_methods(["prompt-lookup"], parse_overrides(["prompt-lookup.prompt_lookup_num_tokens=4"]))
    assert plan.settings == {"prompt_lookup_num_tokens": 4}
