"""Model-free and hybrid drafting (issue 26): suffix matches beside (or instead of) the EAGLE head stay lossless.

- merging a suffix proposal into a head pool keeps siblings distinct tokens (a merged node is one node with both
  sources, its conditional acceptance the larger of the two), and every kept tree is connected;
- float32 greedy output equals transformers' greedy decoding with ``drafter="suffix"`` (no head at all) and
  ``drafter="hybrid"``, alone and as rows of a batch, on tiny Llama / Qwen2 / Gemma-3 targets, with repetitive
  prompts so that suffix nodes are proposed and accepted (asserted);
- DDD's check on a suffix proposal's levels, the suffix calibration learning from verified nodes, the cache of
  earlier outputs, and one-line errors for the combinations that make no sense.
(The sampling law with hybrid trees: tests/test_sampling.py; SmolLM2: tests/test_exactness_smollm2.py.)
"""

import math
import random

import pytest
import torch

from dyndepth.decoder import SpeculativeDecoder
from dyndepth.drafters.hybrid import merge, score, suffix_pool
from dyndepth.drafters.suffix import SuffixDrafter
from dyndepth.drafters.suffix_calibration import PRIOR, SuffixCalibration
from dyndepth.errors import DyndepthError
from dyndepth.head import DraftHead, head_config
from dyndepth.policies import DynamicDepth
from dyndepth.policies.calibration import AcceptanceCalibration
from dyndepth.tree import HEAD, SUFFIX, DraftPool
from dyndepth.validate import OptionError
from oracle_head import OracleHead
from test_batch import auto_policy, hf_greedy
from tiny_models import VOCAB, tiny_target

TREE = dict(top_k=4, total_tokens=12, max_depth=6, checks=(2, 4), threshold=-0.3)


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def repetitive(seed, n=40, period=8):
    """A prompt that repeats a random phrase: the suffix drafter has matches from the first step."""
    g = torch.Generator().manual_seed(seed)
    phrase = torch.randint(1, VOCAB - 1, (period,), generator=g).tolist()
    return (phrase * (n // period + 1))[:n]


def head_for(target, seed=1):
    torch.manual_seed(seed)
    return DraftHead(head_config(target.config)).to(target.dtype)


def suffix_accepted(outs):
    return sum(s.accepted_suffix for o in outs for s in o.stats.step_stats)


# -- the merge: distinct siblings, one scale --------------------------------------------------------------------
def hand_pool():
    """Head levels: depth 1 = tokens 5, 7, 9 (root's children); depth 2 = 11, 12 under node 0 and 13, 14 under 1."""
    pool = DraftPool()
    pool.add_level(torch.tensor([5, 7, 9]), torch.log(torch.tensor([0.5, 0.3, 0.1])), torch.tensor([-1, -1, -1]))
    pool.add_level(torch.tensor([11, 12, 13, 14]), torch.log(torch.tensor([0.3, 0.1, 0.2, 0.05])),
                   torch.tensor([0, 0, 1, 1]))
    return pool


def test_a_suffix_node_merges_into_the_head_node_with_its_parent_and_token():
    # the context ends in "0 3", which was followed by "5 11 21" and by "8 6"
    drafter = SuffixDrafter([3, 5, 11, 20, 0, 3, 5, 11, 21, 0, 3, 8, 6, 0, 3], min_prob=0.0)
    prop = drafter.propose()
    assert {(5,), (5, 11), (5, 11, 21), (8,)} <= set(prop.paths())  # "5 11" is also the head's best branch
    cal = SuffixCalibration()
    head_cal = AcceptanceCalibration()
    pool = merge(hand_pool(), score(prop, cal), head_cal)
    tokens, parents = pool.all_tokens().tolist(), pool.all_parents().tolist()
    sources = pool.sources()
    assert sources[0] == HEAD | SUFFIX and sources[3] == HEAD | SUFFIX  # 5 at the root and 11 under it merged
    assert sources[1] == HEAD and sources[2] == HEAD
    added = {(parents[i], tokens[i]) for i in range(pool.head_size, pool.size)}
    assert {(3, 21), (-1, 8)} <= added  # new nodes hang off the merged head node 11 and off the root
    assert all(sources[i] == SUFFIX for i in range(pool.head_size, pool.size))
    for parent in set(parents):  # siblings are distinct tokens
        kids = [t for t, p in zip(tokens, parents) if p == parent]
        assert len(kids) == len(set(kids))
    # one scale: a merged node's conditional is the larger of the head's and the suffix's
    logp = pool.accept_logp.tolist()
    head_g = torch.log(head_cal.conditional(torch.log(torch.tensor([0.5])), torch.tensor([1]))).item()
    suffix_g = cal.log_g(prop.match_len, math.log(prop.counts[0] / prop.occurrences))
    assert logp[0] == pytest.approx(max(head_g, suffix_g), abs=1e-5)
    tree = pool.select(3, 8)
    kids = tree.children()
    assert all(len({tree.tokens[c] for c in k}) == len(k) for k in kids)
    assert all(tree.parents[i] < i for i in range(1, len(tree)))
    assert tree.sources is not None and tree.sources[1] == HEAD | SUFFIX


@pytest.mark.parametrize("seed", range(20))
def test_merged_pools_of_random_text_keep_siblings_distinct(seed):
    """Head pools (top-k children per beam node, distinct) and suffix proposals over a 6-token vocabulary overlap
    all the time: after the merge no node has two children with the same token, parents precede children, and
    every selected tree is connected."""
    rng = random.Random(seed)
    vocab = 6
    text = [rng.randrange(vocab) for _ in range(rng.randrange(20, 200))]
    prop = SuffixDrafter(text, min_prob=0.0).propose(max_nodes=rng.randrange(1, 24))
    pool = DraftPool()
    k = rng.randrange(1, vocab + 1)
    beam = torch.tensor([-1])
    value = torch.zeros(1)
    for _ in range(rng.randrange(1, 5)):
        tokens = torch.stack([torch.randperm(vocab)[:k] for _ in beam])  # [B, k] distinct per parent
        values = value[:, None] + torch.log(torch.rand(len(beam), k)).sort(descending=True).values
        idx = pool.add_level(tokens.flatten(), values.flatten(), beam[:, None].expand(-1, k).flatten())
        best = torch.topk(values.flatten(), min(k, values.numel())).indices
        beam, value = idx[best], values.flatten()[best]
    before = pool.size
    merge(pool, score(prop, SuffixCalibration()), AcceptanceCalibration())
    tokens, parents = pool.all_tokens().tolist(), pool.all_parents().tolist()
    assert pool.size - before + sum(s == HEAD | SUFFIX for s in pool.sources()) == len(prop)
    assert all(p < i for i, p in enumerate(parents))
    seen = set()
    for p, t in zip(parents, tokens):
        assert (p, t) not in seen
        seen.add((p, t))
    for n in (1, 5, 40):
        tree = pool.select(vocab, n)
        assert all(tree.parents[i] < i for i in range(1, len(tree)))
        assert all(len({tree.tokens[c] for c in kids}) == len(kids) for kids in tree.children())


def test_suffix_pool_ranks_by_calibrated_probability():
    prop = SuffixDrafter([1, 2, 3, 4, 1, 2, 3, 4, 1, 2, 3, 9, 1, 2, 3]).propose()
    pool = suffix_pool(score(prop, SuffixCalibration()))
    assert pool.head_size == 0 and pool.sources() == [SUFFIX] * len(prop)
    logp = pool.accept_logp.tolist()
    assert all(logp[i] <= (logp[p] if p >= 0 else 0.0) for i, p in enumerate(pool.all_parents().tolist()))
    tree = pool.select(3, 3)
    assert tree.tokens == [3, 4, 1, 2]  # the 3-token match "1 2 3" was followed by 4 twice, by 9 once


# -- policies on suffix candidates ------------------------------------------------------------------------------
def test_ddd_checks_the_suffix_levels_and_goes_on_past_its_max_depth():
    ddd = DynamicDepth(max_depth=11, checks=(5, 7, 9), threshold=-0.3)
    depths = list(range(1, 21))
    confident = [d * math.log(0.99) for d in depths]
    assert ddd.suffix_depth(depths, confident, 10) == 20  # deeper than the head's 11
    fading = [d * math.log(0.9) for d in depths]  # 0.9^5 = 0.59 < e^-0.3
    assert ddd.suffix_depth(depths, fading, 10) == 5
    slow = [d * math.log(0.97) for d in depths]  # passes 5, 7, 9 (0.76), fails 11 (0.72): checks go on past 9
    assert ddd.suffix_depth(depths, slow, 10) == 11
    assert ddd.suffix_depth([1, 2, 3], [-5.0, -6.0, -7.0], 10) == 3  # never stops before the first check


def test_auto_stops_growing_the_head_when_suffix_candidates_fill_the_budget():
    """One budget for both sources: the same head level, alone it is worth growing deeper; next to a confident
    20-token suffix chain (``pool.side_logp``) it is not."""
    from dyndepth.policies import CostAwarePolicy
    from dyndepth.policies.costs import CostModel

    costs = CostModel([1, 2, 4, 8, 16, 32], [0.010, 0.0102, 0.0106, 0.0115, 0.013, 0.017], draft_base_s=0.0003,
                      draft_level_s=0.001)
    decisions = []
    for side in (None, [math.log(0.95) * (d + 1) for d in range(20)]):
        policy = CostAwarePolicy(costs=costs, max_depth=8)
        policy.n_max = 24
        pool = DraftPool()
        values = torch.log(torch.tensor([0.6, 0.2, 0.1, 0.05]))
        pool.add_level(torch.tensor([1, 2, 3, 4]), values, torch.tensor([-1] * 4))
        pool.side_logp = None if side is None else torch.tensor(side)
        decisions.append(policy.should_stop(1, values, pool))
    assert decisions == [False, True]


def test_suffix_calibration_learns_from_outcomes():
    cal = SuffixCalibration(prior_strength=8.0, update_rate=0.0001)
    before = math.exp(cal.log_g(1, 0.0))
    assert before == pytest.approx(PRIOR[0][0])
    for _ in range(50):
        cal.update([(1, 0.0, True)])
    assert math.exp(cal.log_g(1, 0.0)) > 0.9
    assert math.exp(cal.log_g(20, math.log(0.5))) == pytest.approx(PRIOR[4][2])  # other cells untouched


# -- greedy exactness -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", ["llama", "qwen2", "gemma3"])
@pytest.mark.parametrize("drafter", ["suffix", "hybrid"])
def test_greedy_equals_transformers_alone_and_batched(arch, drafter):
    target = tiny_target(arch)
    dec = SpeculativeDecoder(target, head_for(target) if drafter == "hybrid" else None, policy="ddd",
                             drafter=drafter, **TREE)
    prompts = [repetitive(s) for s in range(5)]
    budgets = [40, 24, 40, 12, 33]
    want = [hf_greedy(target, p, n) for p, n in zip(prompts, budgets)]
    alone = [dec.generate(p, max_new_tokens=n) for p, n in zip(prompts[:2], budgets[:2])]
    assert [o.token_ids for o in alone] == want[:2]
    batched = dec.generate(prompts, max_new_tokens=budgets, batch_size=3)
    assert [o.token_ids for o in batched] == want
    assert max(s.batch_rows for o in batched for s in o.stats.step_stats) == 3
    assert suffix_accepted(alone + batched) > 0  # suffix nodes were accepted, not just proposed
    cal = dec.drafting.suffix_calibration
    assert sum(map(sum, cal.seen)) > 0  # and taught the calibration


@pytest.mark.parametrize("drafter", ["suffix", "hybrid"])
def test_a_seed_gives_the_same_sampled_text_on_any_call_alone_or_batched(drafter):
    """The calibrations learn across calls, and a sampled row's trees decide which random draws its verification
    makes; a seeded row therefore learns in its own calibrations, from the prior: the same seed gives the same text
    on a fresh decoder, after other calls have taught the shared ones, and in a batch."""
    target = tiny_target("llama")

    def make():
        return SpeculativeDecoder(target, head_for(target) if drafter == "hybrid" else None, policy="ddd",
                                  drafter=drafter, top_k=2, total_tokens=5, max_depth=4, checks=(2,))  # a tight
        # budget: the calibrated rerank decides which nodes are verified

    prompts = [repetitive(s, n=24, period=6) for s in (7, 8, 9)]
    seeds = [21, 22, 23]
    fresh = [make().generate(p, max_new_tokens=30, temperature=1.0, seed=s) for p, s in zip(prompts, seeds)]
    dec = make()
    dec.generate(prompts, max_new_tokens=30, batch_size=2)  # greedy: teaches the shared ones
    assert sum(map(sum, dec.drafting.suffix_calibration.seen)) > 0
    shared = [list(map(list, dec.drafting.suffix_calibration.seen))]
    later = dec.generate(prompts, max_new_tokens=30, temperature=1.0, seed=seeds, batch_size=2)
    assert [o.token_ids for o in later] == [o.token_ids for o in fresh]
    assert [list(map(list, dec.drafting.suffix_calibration.seen))] == shared  # seeded rows learned in their own
    assert any(src & SUFFIX for o in fresh for st in o.stats.step_stats for src in st.node_sources)  # verified
    other = dec.generate(prompts[0], max_new_tokens=30, temperature=1.0, seed=99).token_ids
    assert other != fresh[0].token_ids  # the seed matters


@pytest.mark.parametrize("policy", ["fixed", "auto"])
@pytest.mark.parametrize("drafter", ["suffix", "hybrid", "switch"])
def test_every_policy_takes_every_drafter(policy, drafter, steady_clock):
    target = tiny_target("gemma3")
    head = head_for(target) if drafter != "suffix" else None
    if policy == "auto":
        dec = SpeculativeDecoder(target, head, policy=auto_policy(), top_k=4, total_tokens=12, drafter=drafter)
    else:
        dec = SpeculativeDecoder(target, head, policy="fixed", top_k=3, total_tokens=8, max_depth=4, drafter=drafter)
    prompts = [repetitive(s, n=30) for s in (3, 4, 5)]
    outs = dec.generate(prompts, max_new_tokens=30, batch_size=2)
    assert [o.token_ids for o in outs] == [hf_greedy(target, p, 30) for p in prompts]
    assert suffix_accepted(outs) > 0
    assert dec.describe()["drafter"] == drafter


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_hybrid_with_an_accepting_head_merges_and_accepts_both_sources(arch):
    """A head that mostly agrees with the target next to suffix matches: head-only, suffix-only and merged nodes
    are all accepted, and the output is still exactly greedy decoding."""
    target = tiny_target(arch)
    prompts = [repetitive(s, n=24, period=6) for s in (1, 2, 3)]
    head = OracleHead(target, [p[0] for p in prompts] * 2, noise=0.7)
    dec = SpeculativeDecoder(target, head, policy="ddd", drafter="hybrid", top_k=3, total_tokens=10, max_depth=7,
                             checks=(3, 5))
    outs = dec.generate(prompts, max_new_tokens=40, batch_size=3)
    assert [o.token_ids for o in outs] == [hf_greedy(target, p, 40) for p in prompts]
    kinds = set()
    for o in outs:
        for s in o.stats.step_stats:
            kinds |= {src for src, ok in zip(s.node_sources, s.node_accepted) if ok}
    assert kinds >= {HEAD | SUFFIX} and kinds & {HEAD, SUFFIX}


def test_beside_suffix_matches_the_head_keeps_its_own_share_of_the_tree():
    """On a float32 CPU the head alone verifies 4-token trees (dec.head_tokens); in a default-sized ddd hybrid tree
    (24) it keeps that share, 3 head-only nodes grown at most 3 levels deep, while suffix nodes fill the rest; still
    greedy. A tree size the caller gives is the head's too."""
    target = tiny_target("llama")
    prompts = [repetitive(s, n=24, period=6) for s in (1, 2)]
    head = OracleHead(target, [p[0] for p in prompts], noise=0.7)
    dec = SpeculativeDecoder(target, head, policy="ddd", drafter="hybrid", top_k=3, max_depth=7, checks=(3, 5))
    assert (dec.head_tokens, dec.total_tokens, dec.describe()["head_tokens"]) == (4, 24, 4)
    given = SpeculativeDecoder(target, head, policy="ddd", drafter="hybrid", top_k=3, total_tokens=10)
    assert given.head_tokens == 10 and "head_tokens" not in given.describe()
    outs = dec.generate(prompts, max_new_tokens=40, batch_size=2)
    assert [o.token_ids for o in outs] == [hf_greedy(target, p, 40) for p in prompts]
    steps = [s for o in outs for s in o.stats.step_stats if s.tree_size > 1]
    assert all(s.node_sources.count(HEAD) <= 3 and s.depth <= 3 for s in steps)
    assert max(s.tree_size for s in steps) > 4 and any(HEAD in s.node_sources for s in steps)


def test_hybrid_skips_the_head_where_the_suffix_is_sure(monkeypatch):
    """A row whose suffix proposal scores SWITCH_SCORE or more drafts from it alone that step (no head level: the
    head's cost buys little there); elsewhere the head grows and the suffix merges in. Without the gate (an
    unreachable score) every drafting step grows the head. The output stays greedy decoding either way."""
    from dyndepth.drafters import stage

    target = tiny_target("gemma3")  # its greedy output settles into a loop: long, confident matches
    prompt = repetitive(0)
    want = hf_greedy(target, prompt, 80)

    def drafting_depths():
        dec = SpeculativeDecoder(target, head_for(target), policy="ddd", drafter="hybrid", **TREE)
        out = dec.generate(prompt, max_new_tokens=80)
        assert out.token_ids == want
        steps = [s for s in out.stats.step_stats if s.tree_size > 1]
        for s in steps:
            if s.depth == 0:  # the suffix alone
                assert s.node_sources and all(src == SUFFIX for src in s.node_sources)
        return [s.depth for s in steps]

    gated = drafting_depths()
    assert 0 in gated and max(gated) > 0
    monkeypatch.setattr(stage, "SWITCH_SCORE", math.inf)
    assert 0 not in drafting_depths()


def test_hybrid_keeps_a_sure_match_whole_and_cuts_the_others(monkeypatch):
    """The policy's suffix depth rule cuts the suffix candidates merged beside the head, but a proposal sure enough
    to skip the head (score >= SWITCH_SCORE) is kept whole, as the switch keeps it; the suffix drafter alone still
    cuts every proposal (ddd's rule on its candidates)."""
    target = tiny_target("gemma3")  # its greedy output settles into a loop: long, confident matches
    prompt = repetitive(0)
    want = hf_greedy(target, prompt, 80)

    def steps(drafter):
        dec = SpeculativeDecoder(target, head_for(target) if drafter != "suffix" else None, policy="ddd",
                                 drafter=drafter, **TREE)
        monkeypatch.setattr(dec.policy, "suffix_depth", lambda depths, log_p, top_k: 1)  # cut after one level
        out = dec.generate(prompt, max_new_tokens=80)
        assert out.token_ids == want
        return [s for s in out.stats.step_stats if s.tree_size > 1]

    hybrid = steps("hybrid")
    sure = [s for s in hybrid if s.depth == 0]
    assert sure and max(s.tree_depth for s in sure) > 1
    merged = [d for s in hybrid if s.depth > 0 for d, src in zip(s.node_depths, s.node_sources) if src == SUFFIX]
    assert merged and max(merged) <= 1  # unsure: cut
    assert max(s.tree_depth for s in steps("suffix")) == 1


def test_a_suffix_match_runs_deeper_than_the_head():
    target = tiny_target("gemma3")  # its greedy output settles into a loop: long, confident matches
    dec = SpeculativeDecoder(target, None, policy="ddd", drafter="suffix", top_k=4, total_tokens=40, max_depth=6,
                             checks=(2, 4))
    prompt = repetitive(0)
    out = dec.generate(prompt, max_new_tokens=120)
    assert out.token_ids == hf_greedy(target, prompt, 120)
    assert max(s.tree_depth for s in out.stats.step_stats) > 6
    assert max(s.accepted for s in out.stats.step_stats) > 6


def test_the_cache_of_earlier_outputs_fills_and_stays_exact():
    target = tiny_target("qwen2")
    dec = SpeculativeDecoder(target, None, policy="ddd", drafter="suffix", suffix_cache=2, **TREE)
    prompts = [repetitive(s, n=12) for s in range(4)]
    outs = dec.generate(prompts, max_new_tokens=20, batch_size=2)
    assert [o.token_ids for o in outs] == [hf_greedy(target, p, 20) for p in prompts]
    cache = dec.drafting.cache
    assert len(cache) == 2 and all(seq in [o.token_ids for o in outs] for seq in cache.sequences())
    again = dec.generate(prompts[0], max_new_tokens=20)  # now matched against the cached outputs as well
    assert again.token_ids == outs[0].token_ids
    assert dec.describe()["suffix_cache"] == 2


# -- options: one line each -------------------------------------------------------------------------------------
def test_bad_drafter_combinations_are_one_line():
    target = tiny_target("llama")
    head = head_for(target)
    cases = [
        (dict(head=head, policy="ddd", drafter="bogus"), "drafter must be one of: head, suffix, hybrid, switch"),
        (dict(head=head, policy="ddd", drafter="suffix"), "head does not apply to the 'suffix' drafter"),
        (dict(head=None, policy="plain", drafter="suffix"), "drafter does not apply to the 'plain' policy"),
        (dict(head=head, policy="ddd", drafter="head", suffix_cache=8),
         "suffix_cache applies to the suffix, hybrid and switch"),
        (dict(head=None, policy="ddd", drafter="suffix", suffix_cache=-1), r"suffix_cache must be in 0\.\.65536, got -1"),
        (dict(head=None, policy="ddd", drafter="hybrid"), "needs a draft head"),
    ]
    for kwargs, message in cases:
        with pytest.raises(DyndepthError, match=message) as info:
            SpeculativeDecoder(target, **kwargs)
        assert "\n" not in str(info.value)
    with pytest.raises(OptionError, match="head does not apply to the 'suffix' drafter"):
        SpeculativeDecoder.from_pretrained("no-such-model", head="random", drafter="suffix")


def test_a_model_without_a_head_works_with_the_suffix_drafter(tiny_chat_model):
    dec = SpeculativeDecoder.from_pretrained(str(tiny_chat_model), drafter="suffix", policy="ddd")
    assert dec.head is None and dec.describe()["drafter"] == "suffix"
    ids = dec.chat_ids("Repeat after me: one two three, one two three, one two three.")
    out = dec.generate(ids, max_new_tokens=24)
    ref = dec.target.model.generate(torch.tensor([ids]), max_new_tokens=24, do_sample=False,
                                    eos_token_id=sorted(dec.target.stop_token_ids()), pad_token_id=2)
    assert out.token_ids == ref[0, len(ids):].tolist()
    with pytest.raises(DyndepthError, match="no draft head ships"):
        SpeculativeDecoder.from_pretrained(str(tiny_chat_model), drafter="hybrid", policy="ddd")


def test_the_default_drafter_is_hybrid_with_a_head_and_suffix_without(tiny_chat_model):
    """No drafter named: a head (given, or shipped with a zoo model) drafts beside suffix matches; a model without
    one drafts from suffix matches alone instead of being refused, and stays exact."""
    target = tiny_target("llama")
    assert SpeculativeDecoder(target, head_for(target), policy="ddd").describe()["drafter"] == "hybrid"
    assert SpeculativeDecoder(target, None, policy="ddd").describe()["drafter"] == "suffix"
    assert "drafter" not in SpeculativeDecoder(target, None, policy="plain").describe()
    dec = SpeculativeDecoder.from_pretrained(str(tiny_chat_model), policy="ddd")
    assert dec.head is None and dec.describe()["drafter"] == "suffix"
    ids = dec.chat_ids("Repeat after me: red green blue, red green blue, red green blue.")
    out = dec.generate(ids, max_new_tokens=24)
    ref = dec.target.model.generate(torch.tensor([ids]), max_new_tokens=24, do_sample=False,
                                    eos_token_id=sorted(dec.target.stop_token_ids()), pad_token_id=2)
    assert out.token_ids == ref[0, len(ids):].tolist()
    with_head = SpeculativeDecoder.from_pretrained(str(tiny_chat_model), head="random", policy="ddd")
    assert with_head.head is not None and with_head.describe()["drafter"] == "hybrid"


def test_generate_with_the_suffix_drafter_on_a_model_without_a_head(capsys, tiny_chat_model):
    """The command line: --drafter suffix on a model that ships no head generates (and says so in --json)."""
    import json

    from dyndepth.cli import main

    code = main(["generate", "--model", str(tiny_chat_model), "--drafter", "suffix", "--dtype", "float32",
                 "--threads", "1", "--max-new-tokens", "8", "--prompt", "one two three one two three", "--json"])
    out = capsys.readouterr().out
    assert code == 0
    doc = json.loads(out)
    assert doc["settings"]["drafter"] == "suffix" and len(doc["token_ids"]) == 8


def test_bench_takes_the_drafter_as_a_method_setting():
    from dyndepth.bench.methods import parse_overrides, plan_methods
    from dyndepth.bench.tree_methods import check_settings, tree_kwargs

    plans = plan_methods(["ddd", "suffix", "hybrid", "switch"], parse_overrides(["ddd.drafter=hybrid"]))
    assert [tree_kwargs(p.settings)["drafter"] for p in plans] == ["hybrid", "suffix", "hybrid", "switch"]
    for p in plans:
        check_settings(p.name, p.settings)
    with pytest.raises(DyndepthError, match="method 'ddd': setting drafter must be one of"):
        check_settings("ddd", plan_methods(["ddd"], parse_overrides(["ddd.drafter=bogus"]))[0].settings)
    with pytest.raises(DyndepthError, match="has no setting 'drafter'"):
        parse_overrides(["plain.drafter=suffix"])
