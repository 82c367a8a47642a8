"""Counterfactual replay (bench/replay.py, bench/hindsight.py): on SmolLM2-135M in float32 with its shipped head,
a policy replayed on recorded pools must take exactly the steps the decoder took, and the hindsight bounds must
bound every replayed policy."""

import os

import pytest
import torch

from dyndepth.bench.hindsight import accept_table, fixed_grid, oracle
from dyndepth.bench.replay import accepted_in, record, replay
from dyndepth.decoder import SpeculativeDecoder, load_head
from dyndepth.policies import CostAwarePolicy, make_policy
from dyndepth.policies.costs import CostModel
from dyndepth.target import Target
from dyndepth.tree import DraftPool

MODEL = "smollm2-135m-instruct"
QUESTIONS = ["Write a short poem about the sea.", "Explain what a hash table is.",
             "List three uses of Python decorators."]
K, DEPTH, N = 6, 6, 14
PRICE = CostModel([1, 2, 64], [0.010, 0.0102, 0.0226], draft_base_s=0.001, draft_level_s=0.0015)


@pytest.fixture(scope="module")
def runs(smollm2_path):
    """(prompts, {policy name: (policy factory, the decoder's step stats per question, answers)})."""
    torch.set_num_threads(int(os.environ.get("DYNDEPTH_TEST_THREADS", "2")))
    target = Target.from_pretrained(str(smollm2_path), dtype="float32")
    head = load_head(None, MODEL, target)
    factories = {"fixed": lambda: make_policy("fixed", max_depth=5),
                 "ddd": lambda: make_policy("ddd", max_depth=DEPTH, checks=(2, 4), threshold=-0.6)}
    out, prompts, decoder = {}, None, None
    for name, make in factories.items():
        decoder = SpeculativeDecoder(target, head, policy=make(), top_k=K, total_tokens=N,
                                     drafter="head")  # replay replays head pools
        prompts = [decoder.chat_ids(q) for q in QUESTIONS]
        gens = [decoder.generate(p, max_new_tokens=40, temperature=0.0) for p in prompts]
        out[name] = (make, [g.stats.step_stats for g in gens], [g.token_ids for g in gens])
    recordings = [record(decoder, p, a, DEPTH, K, i) for i, (p, a) in enumerate(zip(prompts, out["fixed"][2]))]
    return recordings, out


def test_replayed_policies_take_the_decoders_steps(runs):
    recordings, out = runs
    assert out["fixed"][2] == out["ddd"][2]  # both lossless: the same greedy answer
    for name, (make, steps, _) in out.items():
        got = replay(make(), recordings, PRICE, N, keep_steps=True).steps_log
        # committed, not accepted: past the answer's end (max_new_tokens) the recording knows no chain
        real = [(s.committed, s.depth, s.tree_size) for q in steps for s in q]
        assert [(s.committed, s.depth, s.tree_size) for s in got] == real, name
    ddd_depths = {s.depth for q in out["ddd"][1] for s in q}
    assert len(ddd_depths) > 1  # the check really stops at different depths here
    assert sum(s.accepted for q in out["fixed"][1] for s in q) > 10  # the head is accepted: the test has teeth


def test_accept_table_agrees_with_the_rerank(runs):
    recordings, _ = runs
    for pos in recordings[0].positions[:12]:
        table = accept_table(pos.levels, pos.chain, DEPTH, N)
        for levels in (1, 3, DEPTH):
            pool = DraftPool()
            for d in range(levels):
                pool.add_level(*pos.levels[d])
            for n in (2, 5, N):
                tree = pool.select(pos.root, n - 1)
                a = max(d for d, ok in zip(tree.depths, accepted_in(tree, pos.chain)) if ok)
                assert int(table[levels, n]) == a


def test_fixed_grid_matches_replay_and_the_oracle_bounds_all(runs):
    recordings, _ = runs
    grid = fixed_grid(recordings, PRICE, DEPTH, N)
    fixed = replay(make_policy("fixed", max_depth=5), recordings, PRICE, N)
    assert (grid[(5, N)].tokens, grid[(5, N)].steps) == (fixed.tokens, fixed.steps)
    assert grid[(5, N)].seconds == pytest.approx(fixed.seconds)
    policy = CostAwarePolicy(costs=CostModel.from_dict(PRICE.to_dict()), max_depth=DEPTH)
    auto = replay(policy, recordings, PRICE, N)
    best = oracle(recordings, PRICE, DEPTH, N)
    path = oracle(recordings, PRICE, DEPTH, N, path_only=True)
    plain = replay(make_policy("plain"), recordings, PRICE, N)
    tokens = recordings[0].tokens + recordings[1].tokens + recordings[2].tokens
    assert {best.tokens, path.tokens, auto.tokens, plain.tokens} == {tokens}
    slowest_needed = min(r.seconds for r in grid.values())
    assert best.seconds <= min(slowest_needed, auto.seconds, plain.seconds) + 1e-9
    assert path.seconds <= best.seconds + 1e-9
    assert best.seconds < plain.seconds  # speculation pays here, so the bound is not the trivial plain run
