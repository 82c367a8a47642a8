"""Sampling is lossless: the speculative output has exactly the processed target distribution.

A toy target (a tiny random Llama with an 8-token vocabulary) has a known distribution: we enumerate the
probabilities of every 3-token continuation with plain forward passes through ``target_probs``, then draw
thousands of seeded speculative generations with a deliberately wrong draft and compare the empirical joint
distribution of the first three tokens with a chi-square test. The first token comes from the prefill, the
second and third from tree verification (accepted nodes, residual resampling and bonus tokens).

The generations run as batches (64 rows at a time), every fourth row sampling another prompt of another length:
each counted row shares every step with rows that are not its own, and still has exactly the target's law. (A row
with a seed gives the same text alone or batched: tests/test_batch.py.)
"""

import itertools

import pytest
import torch
from scipy.stats import chisquare
from transformers import AutoModelForCausalLM, LlamaConfig

from dyndepth.decoder import SpeculativeDecoder
from dyndepth.head import DraftHead, head_config
from dyndepth.sampling import SamplingParams, target_probs
from dyndepth.target import Target
from dyndepth.tree import HEAD, SUFFIX

V = 8
PROMPT = [1, 5, 2]
OTHER = [3, 3, 7, 0, 6]  # the rows between the counted ones
REPEATING = [1, 5, 2, 5, 2, 5, 2, 5, 6, 1, 5, 2]  # the toy target's greedy loop "5 2 5 2": suffix matches


@pytest.fixture(scope="module")
def toy_target():
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=V, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                      num_key_value_heads=1, max_position_embeddings=64, eos_token_id=None, bos_token_id=None)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    with torch.no_grad():
        model.get_output_embeddings().weight.mul_(40.0)  # non-uniform distributions
    model.generation_config.eos_token_id = None
    return Target(model.eval())


def exact_joint(target, params, prompt=PROMPT):
    """{(x1, x2, x3): probability} under the processed target distribution."""
    def probs(seq):
        with torch.no_grad():
            logits = target.model(torch.tensor([seq])).logits[0, -1]
        return target_probs(logits, params)

    joint = {}
    p1 = probs(prompt)
    for a in range(V):
        if p1[a] == 0:
            continue
        p2 = probs(prompt + [a])
        for b in range(V):
            if p2[b] == 0:
                continue
            p3 = probs(prompt + [a, b])
            for c in range(V):
                joint[(a, b, c)] = float(p1[a] * p2[b] * p3[c])
    return joint


@pytest.mark.parametrize("params", [
    SamplingParams(temperature=1.0),
    SamplingParams(temperature=0.6),
    SamplingParams(temperature=1.3, top_p=0.8),
    SamplingParams(temperature=1.0, top_k=3),
], ids=["T1", "T0.6", "T1.3-top_p0.8", "T1-top_k3"])
def test_joint_distribution_of_first_tokens_matches_target(toy_target, params):
    check_joint_distribution(toy_target, params)


def check_joint_distribution(toy_target, params, policy="fixed", drafter="head", prompt=PROMPT):
    """Samples 4000 three-token answers as rows of batches of 64 and compares them with the exact joint law."""
    torch.manual_seed(123)
    head = DraftHead(head_config(toy_target.config))  # random: a deliberately wrong draft
    with torch.no_grad():
        head.fc.weight.mul_(5.0)  # confident and wrong: deep trees, many rejections
    if policy == "auto":  # a cost curve that makes the tree's depth and size change from step to step
        from dyndepth.policies import CostAwarePolicy
        from dyndepth.policies.costs import CostModel

        class EveryStepDrafts(CostAwarePolicy):  # the law under auto's varying trees: its draft-or-plain
            def drafts(self, rows, base_tokens):   # switch (a plain step verifies the root alone) would price
                return True                        # this deliberately wrong head out of most steps

        costs = CostModel([1, 2, 4, 6], [0.01, 0.0102, 0.0106, 0.011], draft_base_s=0.0005, draft_level_s=0.0005)
        dec = SpeculativeDecoder(toy_target, head, policy=EveryStepDrafts(costs=costs, max_depth=3), top_k=2,
                                 total_tokens=6, drafter=drafter)
    else:
        dec = SpeculativeDecoder(toy_target, head, policy=policy, top_k=2, total_tokens=6, max_depth=3,
                                 drafter=drafter)
    n = 4000
    counts = {}
    accepted_any = 0
    rows = [OTHER if i % 4 == 3 else prompt for i in range(n + n // 3)]  # every 4th row another prompt
    outs = dec.generate(rows, max_new_tokens=3, temperature=params.temperature, top_p=params.top_p,
                        top_k=params.top_k, seed=list(range(len(rows))), batch_size=64)
    for out in [o for o, r in zip(outs, rows) if r == prompt]:
        key = tuple(out.token_ids)
        counts[key] = counts.get(key, 0) + 1
        accepted_any += out.stats.accept_lengths[0] > 1
    joint = exact_joint(toy_target, params, prompt)
    assert set(counts) <= set(joint)  # never a token outside the processed support
    # chi-square over cells, rare cells pooled so every expected count is >= 5
    cells = sorted(joint, key=joint.get, reverse=True)
    obs, exp, pooled_o, pooled_e = [], [], 0, 0.0
    for c in cells:
        e = joint[c] * n
        if e >= 5:
            obs.append(counts.get(c, 0))
            exp.append(e)
        else:
            pooled_o += counts.get(c, 0)
            pooled_e += e
    if pooled_e > 0:
        obs.append(pooled_o)
        exp.append(pooled_e)
    total = sum(exp)
    exp = [e * n / total for e in exp]
    assert chisquare(obs, exp).pvalue > 1e-3
    assert accepted_any > n * 0.05  # the draft is sometimes accepted: the acceptance path is exercised
    return outs


@pytest.mark.parametrize("params", [SamplingParams(temperature=0.7, top_p=0.9)], ids=["T0.7-top_p0.9"])
def test_joint_distribution_matches_target_with_the_auto_policy(toy_target, params, steady_clock):
    """auto chooses depth and tree size per step from what it has seen: still exactly the target's distribution."""
    outs = check_joint_distribution(toy_target, params, policy="auto")
    sizes = {(s.depth, s.tree_size) for o in outs for s in o.stats.step_stats}
    assert len(sizes) > 2  # the trees did change from step to step


@pytest.mark.parametrize("params", [SamplingParams(temperature=1.0)], ids=["T1"])
def test_joint_distribution_matches_target_with_hybrid_trees(toy_target, params):
    """Head nodes (drafted from a wrong, confident head), suffix nodes (deterministic continuations of earlier
    occurrences in a repetitive prompt) and merged nodes in one tree: each candidate is a point mass and siblings
    are distinct tokens, so recursive rejection sampling keeps the target's law."""
    outs = check_joint_distribution(toy_target, params, drafter="hybrid", prompt=REPEATING)
    steps = [s for o in outs for s in o.stats.step_stats]
    accepted = {src for s in steps for src, ok in zip(s.node_sources, s.node_accepted) if ok}
    assert accepted == {HEAD, SUFFIX, HEAD | SUFFIX}  # head-only, suffix-only and merged nodes were all accepted
    assert sum(s.accepted_suffix for s in steps) > 200


def test_seed_makes_sampling_reproducible(toy_target):
    torch.manual_seed(1)
    dec = SpeculativeDecoder(toy_target, DraftHead(head_config(toy_target.config)), policy="ddd", top_k=2,
                             total_tokens=5, max_depth=4, checks=(2,))
    a = dec.generate(PROMPT, max_new_tokens=12, temperature=1.0, seed=7).token_ids
    b = dec.generate(PROMPT, max_new_tokens=12, temperature=1.0, seed=7).token_ids
    c = [dec.generate(PROMPT, max_new_tokens=12, temperature=1.0, seed=s).token_ids for s in range(8, 12)]
    assert a == b
    assert any(x != a for x in c)


def test_top_p_and_top_k_processing():
    logits = torch.log(torch.tensor([0.5, 0.3, 0.15, 0.05]))
    p = target_probs(logits, SamplingParams(temperature=1.0, top_p=0.8))
    assert torch.allclose(p, torch.tensor([0.5, 0.3, 0, 0]) / 0.8)
    p = target_probs(logits, SamplingParams(temperature=1.0, top_k=3))
    assert torch.allclose(p, torch.tensor([0.5, 0.3, 0.15, 0]) / 0.95)
    p = target_probs(logits, SamplingParams(temperature=1.0, top_p=0.01))
    assert torch.allclose(p, torch.tensor([1.0, 0, 0, 0]))
