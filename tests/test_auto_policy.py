"""The cost-aware `auto` policy, driven without a model: synthetic cost curves and synthetic acceptance. Then the
same policy inside the real loop: lossless greedy decoding and the probe of the cost model."""

import pytest
import torch

from dyndepth.policies import CostAwarePolicy, make_policy
from dyndepth.policies.calibration import AcceptanceCalibration
from dyndepth.policies.costs import CostModel
from dyndepth.tree import DraftPool

K = 6
N_MAX = 64
SIZES = [1, 2, 4, 8, 16, 32, 64]


def cost_curve(verify_base: float, verify_per_token: float, draft_level: float) -> CostModel:
    return CostModel(SIZES, [verify_base + verify_per_token * (n - 1) for n in SIZES], draft_base_s=draft_level,
                     draft_level_s=draft_level)


CONFIDENT = (0.9, 0.08, 0.005, 0.005, 0.005, 0.005)  # draft probabilities of a parent's K children, best first
SPREAD = (0.75, 0.2, 0.02, 0.01, 0.01, 0.01)
UNSURE = (0.6, 0.3, 0.05, 0.02, 0.02, 0.01)


def grow(policy: CostAwarePolicy, children: tuple[float, ...]) -> tuple[int, int]:
    """Grow a pool the way draft.grow_pool does, every parent with the same child distribution; return the depth
    the policy stops at and the tree size it chooses."""
    logp = torch.log(torch.tensor(children))
    pool = DraftPool()
    beam_pool = pool.add_level(torch.arange(K), logp, torch.full((K,), -1))
    beam_values = logp
    depth = 1
    while depth < policy.max_depth and not policy.should_stop(depth, beam_values, pool):
        child_values = beam_values[:, None] + logp[None, :]  # [K, K]
        child_pool = pool.add_level(torch.arange(K * K), child_values, beam_pool[:, None].expand(-1, K))
        beam_values, flat = torch.topk(child_values.flatten(), K)
        beam_pool = child_pool[flat]
        depth += 1
    return depth, policy.tree_size(pool, N_MAX)


def auto(costs: CostModel, **kw) -> CostAwarePolicy:
    p = CostAwarePolicy(costs=costs, **kw)
    p.n_max = N_MAX
    return p


FLAT = dict(verify_base=0.100, verify_per_token=0.0002, draft_level=0.002)  # GPU-like: verify nearly flat in N
STEEP = dict(verify_base=0.100, verify_per_token=0.015, draft_level=0.03)  # slow CPU: every node costs


def test_deep_and_large_trees_when_acceptance_is_high_and_verification_flat():
    depth, n = grow(auto(cost_curve(**FLAT)), CONFIDENT)
    assert depth >= 8 and n >= 32


def test_shallow_small_trees_when_verification_is_steep():
    depth, n = grow(auto(cost_curve(**STEEP)), UNSURE)
    assert depth <= 3 and n <= 8
    high, _ = grow(auto(cost_curve(**STEEP)), CONFIDENT)
    assert high > depth  # still deeper when the draft is reliable
    flat_depth, flat_n = grow(auto(cost_curve(**FLAT)), UNSURE)
    assert flat_depth > depth and flat_n > n  # the same draft, a flat curve: a bigger tree


def test_the_choice_is_the_argmax_of_the_rate():
    """tree_size returns the N that maximises E[tokens] / time over the pool, by brute force."""
    costs = cost_curve(**STEEP)
    policy = auto(costs)
    depth, n = grow(policy, SPREAD)
    assert 1 <= n <= N_MAX and policy.prediction() <= n - 1
    expected = 1 + policy.prediction()
    rate = expected / (costs.draft_time(depth) + float(costs.verify_time(torch.tensor([n]))[0]))
    assert policy.last["predicted_rate"] == pytest.approx(rate, rel=1e-3)
    for other in (max(1, n - 1), min(N_MAX, n + 1)):  # a neighbouring size is no better
        policy.n_max = other
        assert policy.best(*policy._pool_p(_pool_of(depth, SPREAD)), depth)[0] <= rate * (1 + 1e-4)


def _pool_of(depth: int, children) -> DraftPool:
    logp = torch.log(torch.tensor(children))
    pool = DraftPool()
    beam_pool = pool.add_level(torch.arange(K), logp, torch.full((K,), -1))
    beam_values = logp
    for _ in range(depth - 1):
        child_values = beam_values[:, None] + logp[None, :]
        child_pool = pool.add_level(torch.arange(K * K), child_values, beam_pool[:, None].expand(-1, K))
        beam_values, flat = torch.topk(child_values.flatten(), K)
        beam_pool = child_pool[flat]
    return pool


def _verify_synthetic(policy, children, p_accept: float, gen) -> None:
    """One step of the loop without a model: grow, choose, and tell the policy which chosen nodes were accepted
    (each independently with probability p_accept; enough to move the calibration)."""
    depth, n = grow(policy, children)
    tree = _pool_of(depth, children).select(0, n - 1)
    tried = torch.rand(len(tree), generator=gen) < p_accept  # accepted if tried, and tried if the parent was
    accepted = [True]
    for i in range(1, len(tree)):
        accepted.append(bool(accepted[tree.parents[i]] and tried[i]))
    policy.calibration.update(tree.values, tree.parents, tree.depths, accepted)


def test_follows_a_drop_in_acceptance():
    policy = auto(cost_curve(0.1, 0.002, 0.01), update_rate=0.05)
    gen = torch.Generator().manual_seed(0)
    for _ in range(30):  # the target agrees with the draft as often as the draft believes
        _verify_synthetic(policy, CONFIDENT, 0.85, gen)
    before = grow(policy, CONFIDENT)
    for _ in range(60):  # then it starts rejecting most of what the same draft proposes (a new domain)
        _verify_synthetic(policy, CONFIDENT, 0.1, gen)
    after = grow(policy, CONFIDENT)
    assert after[0] < before[0] and after[1] < before[1]
    for _ in range(150):  # and back: the map follows again
        _verify_synthetic(policy, CONFIDENT, 0.85, gen)
    assert grow(policy, CONFIDENT)[0] > after[0]


def test_follows_a_change_of_cost():
    costs = cost_curve(0.1, 0.002, 0.01)
    policy = auto(costs, cost_update_rate=0.2)
    before = grow(policy, SPREAD)
    for _ in range(40):  # drafting got 10x slower than probed (another process, a slower core)
        pred = costs.draft_base_s + 4 * costs.draft_level_s
        costs.observe(tree_size=16, verify_s=float(costs.verify_time(torch.tensor([16]))[0]), levels=4,
                      draft_s=10 * pred)
    assert costs.draft_scale > 5
    after = grow(policy, SPREAD)
    assert after[0] < before[0]


def test_calibration_learns_a_biased_draft():
    """The draft claims q for each step; the target accepts with q / 2. The conditional map learns it, and the
    path probabilities multiply along the path (so they fall with depth like the truth)."""
    cal = AcceptanceCalibration(prior_strength=4.0, update_rate=0.001)
    g = torch.Generator().manual_seed(0)
    for _ in range(1500):  # chains of 6 nodes with random conditional draft probabilities
        q = torch.rand(6, generator=g) * 0.98 + 0.02
        values = torch.cat([torch.zeros(1), torch.cumsum(q.log(), 0)])
        accepted = [True]
        for i in range(6):
            accepted.append(accepted[-1] and bool(torch.rand((), generator=g) < 0.5 * q[i]))
        cal.update(values, torch.arange(-1, 6), torch.arange(0, 7), accepted)
    probe = torch.log(torch.tensor([0.95, 0.5, 0.15]))
    pred = cal.conditional(probe, torch.tensor([1, 1, 1]))
    assert torch.allclose(pred, 0.5 * probe.exp(), atol=0.1)
    values = torch.cat([torch.zeros(1), torch.cumsum(torch.log(torch.tensor([0.9, 0.9, 0.9])), 0)])
    p = cal.tree_probs(values, torch.tensor([-1, 0, 1, 2]), torch.tensor([0, 1, 2, 3]))
    assert p[0] == 1 and torch.all(p[1:] <= p[:-1])
    assert torch.allclose(p, torch.tensor([1.0, 0.45, 0.45**2, 0.45**3]), atol=0.05)  # the truth: (q / 2)^depth
    rows = cal.reliability()
    assert sum(r["nodes"] for r in rows) == 1500 * 6


def test_cost_model_interpolates_and_extrapolates():
    c = CostModel([1, 4, 8], [0.1, 0.13, 0.17], 0.01, 0.02)
    t = c.verify_time(torch.tensor([1, 2, 4, 6, 8, 12]))
    assert torch.allclose(t, torch.tensor([0.1, 0.11, 0.13, 0.15, 0.17, 0.21]), atol=1e-6)
    assert c.draft_time(3) == pytest.approx(0.07)
    with pytest.raises(ValueError):
        CostModel([2, 4], [0.1, 0.2], 0.0, 0.0)


def grow_levels(policy: CostAwarePolicy, levels: list[tuple[float, ...]]) -> tuple[int, int]:
    """As grow, but the children's distribution depends on the depth: levels[d] for depth d + 1 (the last repeats)."""
    pool = DraftPool()
    logp = torch.log(torch.tensor(levels[0]))
    beam_pool = pool.add_level(torch.arange(K), logp, torch.full((K,), -1))
    beam_values = logp
    depth = 1
    while depth < policy.max_depth and not policy.should_stop(depth, beam_values, pool):
        logp = torch.log(torch.tensor(levels[min(depth, len(levels) - 1)]))
        child_values = beam_values[:, None] + logp[None, :]  # [K, K]
        child_pool = pool.add_level(torch.arange(K * K), child_values, beam_pool[:, None].expand(-1, K))
        beam_values, flat = torch.topk(child_values.flatten(), K)
        beam_pool = child_pool[flat]
        depth += 1
    return depth, policy.tree_size(pool, N_MAX)


THIN = (0.3, 0.25, 0.2, 0.15, 0.05, 0.05)  # an unsure first level ...
SURE = (0.97, 0.01, 0.005, 0.005, 0.005, 0.005)  # ... over confident deeper ones (the middle of a word, say)


def test_deeper_levels_are_predicted_from_what_they_were_before():
    """Seen alone, a thin first level predicts a thin second one, so growth stops at depth 1. Once the policy has
    seen that the levels below are confident (running means per depth), the same first level is grown past."""
    policy = auto(cost_curve(0.1, 0.007, 0.01))
    fresh = grow_levels(policy, [THIN, SURE])
    assert fresh[0] == 1
    policy.min_depth = 8  # a few steps that grow deep whatever the rule says, to show the policy the levels below
    for _ in range(5):
        grow_levels(policy, [THIN, SURE])
    policy.min_depth = 1
    depth, n = grow_levels(policy, [THIN, SURE])
    assert depth >= 5 and n > fresh[1]
    for _ in range(40):  # and when the deeper levels turn thin as well, the running means follow
        policy.min_depth = 8
        grow_levels(policy, [THIN, THIN])
    policy.min_depth = 1
    assert grow_levels(policy, [THIN, THIN])[0] < depth


def test_make_policy_and_options():
    p = make_policy("auto", max_depth=7, prior_strength=2.0)
    assert isinstance(p, CostAwarePolicy) and p.max_depth == 7 and p.calibration.prior_strength == 2.0
    from dyndepth.errors import DyndepthError

    with pytest.raises(DyndepthError):
        make_policy("ddd", prior_strength=2.0)
    assert make_policy("auto", lookahead=3).lookahead == 3
    with pytest.raises(DyndepthError):
        make_policy("auto", lookahead=0)


# -- in the loop ---------------------------------------------------------------------------------------------------
def _hf_greedy(target, prompt, n):
    out = target.model.generate(torch.tensor([prompt]), max_new_tokens=n, do_sample=False,
                                eos_token_id=sorted(target.stop_token_ids()) or None, pad_token_id=0)
    return out[0, len(prompt):].tolist()


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gemma3"])
def test_auto_is_lossless_and_varies_the_tree(arch, steady_clock):
    from dyndepth.decoder import SpeculativeDecoder
    from oracle_head import OracleHead
    from tiny_models import VOCAB, tiny_target

    target = tiny_target(arch)
    g = torch.Generator().manual_seed(5)
    sizes, depths = set(), set()
    for noise in (0.0, 0.8):
        prompt = torch.randint(1, VOCAB - 1, (10,), generator=g).tolist()
        policy = CostAwarePolicy(costs=cost_curve(0.01, 0.001, 0.001), max_depth=8)
        dec = SpeculativeDecoder(target, OracleHead(target, prompt[0], noise=noise), policy=policy, top_k=3,
                                 total_tokens=16, drafter="head")  # the head's invariants below
        out = dec.generate(prompt, max_new_tokens=40)
        assert out.token_ids == _hf_greedy(target, prompt, 40)
        sizes |= {s.tree_size for s in out.stats.step_stats}
        depths |= {s.depth for s in out.stats.step_stats}
        assert all(s.predicted_accepted is not None for s in out.stats.step_stats if s.depth > 0)
        assert all(s.tree_size == 1 for s in out.stats.step_stats if s.depth == 0)  # a plain step: the root
        assert all(len(s.node_values) == s.tree_size - 1 for s in out.stats.step_stats)
    assert len(sizes) > 1 and len(depths) > 1  # the decision really changes from step to step


def test_probe_measures_and_caches_costs(tmp_path, monkeypatch):
    """The probe on a tiny model (one thread: two spin-waiting threads on a shared 2-core machine make sub-ms
    timings erratic, and a suspect curve is not cached)."""
    from dyndepth.decoder import SpeculativeDecoder
    from dyndepth.head import DraftHead, head_config
    from dyndepth.calibrate import curves as costs_mod
    from tiny_models import tiny_target

    monkeypatch.setenv("DYNDEPTH_HOME", str(tmp_path))
    threads = torch.get_num_threads()
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)  # the cache key's thread count, as set below
    torch.set_num_threads(1)
    try:
        target = tiny_target("llama")
        head = DraftHead(head_config(target.config))
        dec = SpeculativeDecoder(target, head, policy="auto", top_k=3, total_tokens=12)
    finally:
        torch.set_num_threads(threads)
    c = dec.policy.costs
    assert sorted(c.batch) == [2, 4, 8, 16] and all(len(ts) == 3 for ts, _ in c.batch.values())  # batch steps
    assert c.sizes[0] == 1 and c.sizes[-1] == 12 and all(t > 0 for t in c.verify_s)
    assert c.draft_level_s > 0
    files = list((tmp_path / "costs").glob("*.json"))
    assert len(files) == 1
    calls = []
    monkeypatch.setattr(costs_mod, "probe", lambda *a, **k: calls.append(1))
    again = SpeculativeDecoder(target, head, policy="auto", top_k=3, total_tokens=12)
    assert calls == [] and again.policy.costs.verify_s == pytest.approx(c.verify_s, abs=1e-6)  # from the cache
    out = again.generate([5, 6, 7], max_new_tokens=8, temperature=0.0)
    assert out.token_ids == _hf_greedy(target, [5, 6, 7], 8)


# -- the run objective and the verify fit ----------------------------------------------------------------------------
def _run_at(policy: CostAwarePolicy, tokens: float, seconds: float) -> None:
    """Tell the policy the run so far commits ``tokens`` per step in ``seconds`` (no draft, so no cost update)."""
    from dyndepth.stats import StepStats

    for _ in range(3):
        policy.observe(StepStats(committed=int(tokens), accepted=int(tokens) - 1, depth=0, tree_size=1,
                                 draft_time_s=0.0, verify_time_s=seconds))


def test_run_objective_spends_on_confident_steps_and_saves_on_doubtful_ones():
    """Maximising the run's rate (E - lambda T) rather than each step's own E / T: a step more confident than the
    run so far gets a bigger tree, a step less confident a smaller one; before any step both agree."""
    curve = dict(verify_base=0.05, verify_per_token=0.004, draft_level=0.01)
    fresh_run, fresh_step = auto(cost_curve(**curve)), auto(cost_curve(**curve), objective="step")
    assert grow(fresh_run, SPREAD) == grow(fresh_step, SPREAD)
    step_conf = grow(auto(cost_curve(**curve), objective="step"), CONFIDENT)
    run = auto(cost_curve(**curve))
    _run_at(run, tokens=2, seconds=0.08)  # the run so far: 25 tokens/s, below what a confident step can reach
    assert run.run_rate == pytest.approx(25.0)
    run_conf = grow(run, CONFIDENT)
    assert run_conf[1] > step_conf[1] and run_conf[0] >= step_conf[0]
    step_unsure = grow(auto(cost_curve(**curve), objective="step"), UNSURE)
    run = auto(cost_curve(**curve))
    _run_at(run, tokens=5, seconds=0.08)  # a fast run so far: a doubtful step is not worth a big tree
    run_unsure = grow(run, UNSURE)
    assert run_unsure[1] < step_unsure[1]
    from dyndepth.errors import DyndepthError

    with pytest.raises(DyndepthError):
        CostAwarePolicy(objective="fastest")


def test_verify_fit_corrects_the_base_and_the_slope_apart():
    """The probe says 50 ms + 2 ms per extra token; the steps measure 60 ms + 1 ms (a busier base, a cheaper
    slope). A single scale could match only one N; the fit learns both, from steps of varied N."""
    probed = CostModel(SIZES, [0.05 + 0.002 * (n - 1) for n in SIZES], 0.001, 0.002, update_rate=0.05)
    g = torch.Generator().manual_seed(0)
    for _ in range(200):
        n = int(torch.randint(2, 12, (), generator=g))
        noise = 1 + 0.02 * float(torch.randn((), generator=g))
        probed.observe(tree_size=n, verify_s=(0.06 + 0.001 * (n - 1)) * noise, levels=0, draft_s=0.0)
    assert probed.base_scale == pytest.approx(1.2, rel=0.05)
    assert probed.slope_scale == pytest.approx(0.5, rel=0.2)
    t = probed.verify_time(torch.tensor([2, 8, 24]))
    assert torch.allclose(t, torch.tensor([0.061, 0.067, 0.083]), rtol=0.03)


def test_verify_fit_keeps_the_probed_slope_when_every_step_verifies_the_same_n():
    """Steps that all verify N = 8 say nothing about the slope: it stays the probe's, and the base takes the
    difference, so the prediction at N = 8 is right."""
    probed = CostModel(SIZES, [0.05 + 0.002 * (n - 1) for n in SIZES], 0.001, 0.002, update_rate=0.05)
    for _ in range(300):
        probed.observe(tree_size=8, verify_s=0.08, levels=0, draft_s=0.0)
    assert float(probed.verify_time(torch.tensor([8]))[0]) == pytest.approx(0.08, rel=0.01)
    assert probed.slope_scale == pytest.approx(1.0, abs=0.15)
    assert probed.base_scale > 1.3


def test_draft_fit_learns_the_fixed_part_the_probe_missed():
    """The probe saw 0.1 ms + 1.5 ms per level; steps of 1-5 levels measure 3 ms + 1.9 ms per level (the head's
    forward over the accepted tokens and the rerank, which the probe leaves out). One scale for the whole draft
    would charge a level about 1.7x; the line learns both parts."""
    costs = CostModel(SIZES, [0.05 + 0.002 * (n - 1) for n in SIZES], 0.0001, 0.0015, update_rate=0.05)
    g = torch.Generator().manual_seed(1)
    for _ in range(200):
        levels = int(torch.randint(1, 6, (), generator=g))
        noise = 1 + 0.03 * float(torch.randn((), generator=g))
        costs.observe(tree_size=8, verify_s=0.064, levels=levels, draft_s=(0.003 + 0.0019 * levels) * noise)
    assert costs.draft_fit.a == pytest.approx(0.003, rel=0.15)
    assert costs.draft_fit.b == pytest.approx(0.0019, rel=0.1)
    assert costs.draft_time(4) == pytest.approx(0.003 + 4 * 0.0019, rel=0.03)


@pytest.mark.parametrize("draft_rate,plain_rate,mostly", [(30.0, 20.0, True), (15.0, 20.0, False)])
def test_a_step_drafts_when_drafting_has_been_faster(draft_rate, plain_rate, mostly):
    """drafts(): per batch-size class the measured rates of drafting and plain steps decide; the mode not in use is
    still tried now and then, and a class learns on its own."""
    from dyndepth.policies.auto import EXPLORE_AFTER, EXPLORE_EVERY
    from dyndepth.stats import StepStats

    policy = auto(cost_curve(**STEEP))
    choices = []
    for _ in range(200):
        drafted = policy.drafts(8, 8)  # 8 rows, no prompt chunk
        choices.append(drafted)
        rate = draft_rate if drafted else plain_rate
        steps = [StepStats(committed=1, accepted=0, depth=2 if drafted else 0, tree_size=4 if drafted else 1,
                           draft_time_s=0.0, verify_time_s=8 / rate, batch_rows=8, batch_tokens=32)
                 for _ in range(8)]
        policy.observe_batch(steps)
    assert all(choices[:EXPLORE_AFTER - 1]) and not all(choices[:EXPLORE_AFTER + 1])  # drafts first, then tries
    late = choices[100:]
    assert (sum(late) > 0.8 * len(late)) == mostly
    assert 0 < sum(late) < len(late)  # the other mode is still tried every EXPLORE_EVERY steps
    assert policy.drafts(1, 1) is True and len(policy._modes) == 2  # one row: a class of its own, drafting first
    assert EXPLORE_EVERY > 1


def test_tries_of_the_losing_mode_back_off_and_a_changed_load_is_still_followed():
    """Where drafting a batch costs far more than it gains, the tries of drafting become rare (the wait doubles up
    to EXPLORE_MAX); when drafting starts to win, a try overturns the choice and the policy drafts again."""
    from dyndepth.policies.auto import EXPLORE_AFTER, EXPLORE_MAX
    from dyndepth.stats import StepStats

    policy = auto(cost_curve(**STEEP))
    rates = {True: 10.0, False: 40.0}
    choices = []
    for i in range(1500):
        if i == 600:
            rates = {True: 60.0, False: 40.0}
        drafted = policy.drafts(8, 8)
        choices.append(drafted)
        policy.observe_batch([StepStats(committed=1, accepted=0, depth=2 if drafted else 0,
                                        tree_size=4 if drafted else 1, draft_time_s=0.0,
                                        verify_time_s=8 / rates[drafted], batch_rows=8, batch_tokens=32)
                              for _ in range(8)])
    assert sum(choices[EXPLORE_AFTER + 1:600]) <= 6  # tries after 16, 32, 64, 128, 256 steps: not every 16
    assert sum(choices[1100:]) > 0.95 * len(choices[1100:])  # drafting won its tries and is used again
    assert EXPLORE_MAX >= 128


def _measure_class(policy, rows: int, rates: dict, steps: int = 40) -> None:
    """Run ``steps`` steps of ``rows`` rows whose committed tokens per second are rates[drafted]."""
    from dyndepth.stats import StepStats

    for _ in range(steps):
        drafted = policy.drafts(rows, rows)
        policy.observe_batch([StepStats(committed=1, accepted=0, depth=2 if drafted else 0,
                                        tree_size=4 if drafted else 1, draft_time_s=0.0,
                                        verify_time_s=rows / rates[drafted], batch_rows=rows,
                                        batch_tokens=4 * rows) for _ in range(rows)])


@pytest.mark.parametrize("costs,drafts_first", [(FLAT, True), (STEEP, False)])
def test_a_new_batch_size_class_starts_in_the_mode_the_cost_model_prices_higher(costs, drafts_first):
    """With the rows' gains learnt at batch 1, a class of 8 rows is priced before it runs: where each verified
    node and draft level costs a lot (STEEP: 8 rows' draft levels and nodes outweigh ~1.5 tokens gained per row)
    it starts with plain steps, where verification is flat it drafts; either way it tries the other mode after
    EXPLORE_AFTER steps."""
    from dyndepth.policies.auto import EXPLORE_AFTER

    policy = auto(cost_curve(**costs))
    grow(policy, SPREAD)  # one batch-1 step: the per-rank gains
    assert policy._gain is not None and 0.5 < float(policy._gain.sum()) < N_MAX
    choices = [policy.drafts(8, 8) for _ in range(EXPLORE_AFTER - 1)]  # nothing measured: no try yet
    assert choices == [drafts_first] * (EXPLORE_AFTER - 1)
    assert policy._modes[4, False]["guess"] is drafts_first


def test_a_class_priced_far_below_plain_waits_long_before_trying_to_draft():
    """A drafting step that loses costs several plain steps on a CPU: where the cost model prices drafting under
    SURE_PLAIN of plain decoding from measured draft times, the first try waits EXPLORE_MAX steps instead of
    EXPLORE_AFTER."""
    from dyndepth.policies.auto import EXPLORE_AFTER, EXPLORE_MAX, SURE_PLAIN

    policy = auto(cost_curve(**STEEP))
    grow(policy, SPREAD)
    policy._draft_s[1] = [1.0, policy.costs.draft_time(2)]  # a measured batch-1 draft: the price is not a guess
    _measure_class(policy, 8, {True: 20.0, False: 40.0}, steps=EXPLORE_MAX + 8)
    m = policy._modes[4, False]
    assert m["guess"] is False and m["priced"] < SURE_PLAIN
    assert m["draft"] is not None and m["n"] > EXPLORE_MAX  # tried once, after the long wait ...
    policy = auto(cost_curve(**STEEP))
    grow(policy, SPREAD)
    policy._draft_s[1] = [1.0, policy.costs.draft_time(2)]
    _measure_class(policy, 8, {True: 20.0, False: 40.0}, steps=EXPLORE_MAX - 1)
    assert policy._modes[4, False]["draft"] is None  # ... and not before it
    policy = auto(cost_curve(**STEEP))
    grow(policy, SPREAD)  # no draft time measured yet: priced plain, but tried after EXPLORE_AFTER steps
    _measure_class(policy, 8, {True: 20.0, False: 40.0}, steps=2 * EXPLORE_AFTER)
    assert policy._modes[4, False]["guess"] is False and policy._modes[4, False]["draft"] is not None
    assert EXPLORE_MAX > 4 * EXPLORE_AFTER


def test_a_class_that_another_class_decides_starts_in_that_mode():
    """Speculation pays less as rows are added: once 4-7 rows measured plain steps faster, 16 rows start plain
    (even where the cost model would draft), and once 8-15 rows measured drafting faster, 2 rows start drafting."""
    from dyndepth.policies.auto import EXPLORE_MAX

    policy = auto(cost_curve(**FLAT))
    grow(policy, CONFIDENT)
    _measure_class(policy, 4, {True: 10.0, False: 40.0})
    assert policy._modes[3, False]["plain"] > policy._modes[3, False]["draft"]
    assert policy.drafts(16, 16) is False

    policy = auto(cost_curve(**STEEP))
    grow(policy, SPREAD)
    _measure_class(policy, 8, {True: 60.0, False: 40.0}, steps=EXPLORE_MAX + 40)  # priced sure-plain: a late try
    assert policy._modes[4, False]["draft"] > policy._modes[4, False]["plain"]
    assert policy.drafts(2, 2) is True


def test_only_a_switch_to_drafting_is_left_out_of_the_rate_of_drafting():
    """The first draft after plain steps runs the head over every pair they skipped: a one-off cost of switching,
    not counted (it made every try of drafting look slower than drafting is). A backlog while drafting, a new row's
    prompt or a row the suffix drafted alone, recurs as long as the class drafts: it is counted (under a server's
    churn most drafting steps have one, and leaving them out measured drafting on its cheapest steps)."""
    from dyndepth.stats import StepStats

    policy = auto(cost_curve(**FLAT))
    grow(policy, SPREAD)

    def step(draft: bool, backlog: bool, rate: float) -> None:
        policy._modes.setdefault((3, False), {"draft": None, "plain": None})
        if draft:
            pool = _pool_of(2, SPREAD)
            pool.backlog = backlog
            policy.tree_sizes([pool] * 4, [8] * 4, 4)
        policy._mode = ((3, False), draft, False)  # 4 rows, no chunk, this mode, not a try (as drafts() sets it)
        policy.observe_batch([StepStats(committed=2 if draft else 1, accepted=1 if draft else 0,
                                        depth=2 if draft else 0, tree_size=3 if draft else 1, draft_time_s=0.0,
                                        verify_time_s=(8 if draft else 4) / rate, batch_rows=4,
                                        batch_tokens=12 if draft else 4) for _ in range(4)])

    step(False, False, 40.0)
    step(False, False, 40.0)
    step(True, True, 5.0)  # the switch after two plain steps: slow, and not counted
    assert policy._modes[3, False]["draft"] is None
    step(True, False, 50.0)
    assert policy._modes[3, False]["draft"] == pytest.approx(50.0)
    step(True, True, 10.0)  # a new row's prompt while drafting: counted
    assert policy._modes[3, False]["draft"] < 45.0
    assert DraftPool().backlog is False  # a pool without a head forward (suffix only) never has one


@pytest.mark.parametrize("draft_seconds,drafts", [(0.45, False), (0.35, True)])
def test_a_step_with_a_prompt_chunk_drafts_when_its_extra_tokens_are_worth_their_seconds(draft_seconds, drafts):
    """A chunk's seconds are paid in either mode, so the rates of chunk steps mislead: drafting's 16 tokens in 0.45 s
    (35.6 tok/s) beat plain's 8 in 0.30 s (26.7 tok/s), yet the 8 extra tokens cost 0.15 s where regular steps make
    them in 0.08 s (100 tok/s). Such a step drafts only when its extra tokens come faster than the regular rate."""
    from dyndepth.stats import StepStats

    policy = auto(cost_curve(**STEEP))
    chunk_choices = []
    for i in range(600):
        chunk = i % 4 == 3
        drafted = policy.drafts(8, 40 if chunk else 8)
        if chunk:
            chunk_choices.append(drafted)
            tokens, seconds = (16, draft_seconds) if drafted else (8, 0.30)
        else:
            tokens, seconds = (12, 0.24) if drafted else (8, 0.08)  # regular steps: plain 100 tok/s, drafting 50
        policy.observe_batch([StepStats(committed=tokens // 8, accepted=tokens // 8 - 1, depth=2 if drafted else 0,
                                        tree_size=3 if drafted else 1, draft_time_s=0.0, verify_time_s=seconds,
                                        batch_rows=8 if not chunk else 9, batch_tokens=24 if drafted else 8)
                              for _ in range(8)])
    late = chunk_choices[60:]
    assert (sum(late) > 0.8 * len(late)) is drafts
    m = policy._modes[4, True]
    assert (m["draft"] > m["plain"]) is True  # drafting's rate is higher in both cases: the rates alone would draft

def test_a_chunk_step_is_priced_by_what_its_mode_adds_not_by_the_chunk_it_carried():
    """Chunks differ in size (the chunk length, then a prompt's remainder), and the few chunk steps a mode measures
    may carry the big ones. Here every drafting chunk step carries 128 prompt tokens and every plain one 16: the raw
    seconds make drafting look 0.27 s dearer, though what it adds (16 nodes and the draft, 0.042 s for 8 more
    tokens) is cheap. Priced beyond the cost model's seconds for the step's tokens besides drafted nodes, chunk steps
    draft."""
    from dyndepth.stats import StepStats

    costs = cost_curve(0.1, 0.002, 0.005)
    policy = auto(costs)
    chunk_choices = []
    for i in range(400):
        chunk = i % 4 == 3
        drafted = policy.drafts(8, 8 + 64 if chunk else 8)
        prompt = (128 if drafted else 16) if chunk else 0
        tokens = 8 + prompt + (16 if drafted else 0)
        if chunk:
            chunk_choices.append(drafted)
        verify = float(costs.verify_time(torch.tensor([float(tokens)]), rows=9 if chunk else 8)[0])
        policy.observe_batch([StepStats(committed=2 if drafted else 1, accepted=1 if drafted else 0,
                                        depth=2 if drafted else 0, tree_size=3 if drafted else 1,
                                        draft_time_s=0.01 if drafted else 0.0, verify_time_s=verify,
                                        batch_rows=9 if chunk else 8, batch_tokens=tokens) for _ in range(8)])
    late = chunk_choices[30:]
    assert sum(late) > 0.8 * len(late)
    m, r = policy._modes[4, True], policy._regular[0] / policy._regular[1]
    (td, sd, _), (tp, sp, _) = m["draft_sums"], m["plain_sums"]
    assert td - r * sd < tp - r * sp  # the raw seconds would have chosen plain


def test_a_sequence_has_a_backlog_after_its_prompt_and_after_steps_it_did_not_draft():
    from dyndepth.engine.sequence import Sequence

    s = Sequence.__new__(Sequence)
    s.pair_tokens, s.pair_feats = [], []
    s.pair_steps = 1  # a new sequence: the prompt's pairs wait
    s.add_pairs(torch.arange(5), torch.zeros(5, 3))  # the prefill's pairs
    assert s.pair_steps > 1
    s.add_pairs(torch.arange(5, 7), torch.ones(2, 3))  # a plain step
    tokens, feats = s.take_pairs()  # the first draft catches up on both, in order
    assert tokens.tolist() == list(range(7)) and feats.shape == (7, 3) and feats[5:].eq(1).all()
    s.add_pairs(torch.arange(2), torch.zeros(2, 3))  # a drafting step commits 2 tokens
    assert s.pair_steps == 1  # no backlog: the next draft takes just that step's pairs
    s.add_pairs(torch.arange(1), torch.zeros(1, 3))  # a plain step
    assert s.pair_steps == 2


def test_a_chunk_step_starts_plain_where_its_rows_lost_drafting_without_a_chunk():
    """A chunk step's extra tokens must come faster than the regular steps make them: where 8 rows measured plain
    steps faster without a chunk, their first chunk step is plain, before anything is measured with a chunk."""
    policy = auto(cost_curve(**FLAT))
    grow(policy, CONFIDENT)  # the cost model alone would draft (flat verification, confident nodes)
    _measure_class(policy, 8, {True: 10.0, False: 40.0})
    assert policy._modes[4, False]["plain"] > policy._modes[4, False]["draft"]
    assert policy.drafts(8, 8 + 100) is False and policy._modes[4, True]["guess"] is False
    fresh = auto(cost_curve(**FLAT))
    grow(fresh, CONFIDENT)
    assert fresh.drafts(8, 8 + 100) is True  # nothing measured: the cost model's guess


def random_pool(gen: torch.Generator, depth: int, side: int | None) -> tuple[DraftPool, torch.Tensor]:
    """A pool grown `depth` levels as the drafter grows it, each parent's K children drawn at random (their spread
    too, so some rows are sure and some are not); side: that many suffix candidates beside it (a hybrid row)."""
    def children(n: int) -> torch.Tensor:  # [n, K] log-probs, best first
        sharp = torch.rand(n, 1, generator=gen) * 6
        return torch.log_softmax(sharp * torch.randn(n, K, generator=gen), -1).sort(-1, descending=True).values

    pool = DraftPool()
    beam_values = children(1)[0]
    beam_pool = pool.add_level(torch.arange(K), beam_values, torch.full((K,), -1))
    for _ in range(depth - 1):
        child_values = beam_values[:, None] + children(K)  # [K, K]
        child_pool = pool.add_level(torch.arange(K * K), child_values, beam_pool[:, None].expand(-1, K))
        beam_values, flat = torch.topk(child_values.flatten(), K)
        beam_pool = child_pool[flat]
    if side is not None:
        pool.side_logp = -torch.rand(side, generator=gen).cumsum(0)
    return pool, beam_values


# a probed curve need not rise everywhere: past 8 tokens this one falls, so a padded row that scored its pad nodes
# would see them pay
DIPPING = CostModel(SIZES, [0.1, 0.11, 0.13, 0.24, 0.12, 0.3, 0.5], draft_base_s=0.004, draft_level_s=0.004)


@pytest.mark.parametrize("depth", [1, 2, 3])
def test_the_batched_depth_decision_is_each_rows_own(depth):
    """A batch step asks `auto` for all rows at once (should_stop_rows, one set of ops over the stacked pools, the
    hybrid rows' suffix candidates padded to one width); each row must get the decision it gets asked alone, and the
    running means of the children must end the same."""
    import copy

    gen = torch.Generator().manual_seed(depth)
    decided = set()
    for trial in range(12):
        policy = auto(cost_curve(0.1, 0.004 * (trial % 4), 0.004) if trial % 4 else DIPPING, max_depth=6)
        policy._base, policy._rows = 1.0 + trial % 3, 1.0 + trial % 3
        for d in range(1, 7):  # running means for every depth, as after a few steps
            policy._child[d] = torch.log_softmax(torch.randn(1 if d == 1 else K, K, generator=gen), -1) \
                .sort(-1, descending=True).values
        rows = [random_pool(gen, depth, (None, 3, 9, None)[r % 4] if trial % 4 != 1 else None) for r in range(6)]
        alone = copy.deepcopy(policy)
        one_by_one = [alone.should_stop(depth, beam, pool) for pool, beam in copy.deepcopy(rows)]
        batched = policy.should_stop_rows(depth, torch.stack([b for _, b in rows]), [p for p, _ in rows])
        assert batched == one_by_one
        for d in policy._child:
            assert torch.allclose(policy._child[d], alone._child[d])
        decided.update(batched)
    assert decided == {True, False}  # both decisions were exercised


def test_a_batch_steps_trees_teach_the_calibration_as_one_update_each_would():
    """observe_batch learns a step's rows' trees in one pass (update_trees); the counts must equal one update per
    tree in order, whatever the trees' sizes, learn masks and outcomes (a root-only tree and a tree with nothing to
    learn leave the counts alone, decay included)."""
    gen = torch.Generator().manual_seed(0)
    trees = []
    for n in (5, 1, 8, 3, 6, 4):
        parents = [-1] + [int(torch.randint(0, i, (1,), generator=gen)) for i in range(1, n)]
        depths = [0]
        for q in parents[1:]:
            depths.append(depths[q] + 1)
        values = [0.0] + [float(-torch.rand((), generator=gen) * 3 * d) for d in depths[1:]]
        accepted = [True] + [bool(torch.rand((), generator=gen) < 0.6) for _ in range(n - 1)]
        learn = None if n % 2 else [True] + [bool(i % 3) for i in range(1, n)]
        trees.append((values, parents, depths, accepted, learn))
    trees.append(([0.0, -0.1], [-1, 0], [0, 1], [True, True], [True, False]))  # nothing this map learns
    one_by_one, together = AcceptanceCalibration(update_rate=0.2), AcceptanceCalibration(update_rate=0.2)
    for c in (one_by_one, together):  # counts from an earlier step, which the step's trees decay
        c.update(*trees[0])
    for t in trees:
        one_by_one.update(*t)
    together.update_trees(trees)
    assert one_by_one.seen.sum() > 0
    assert torch.allclose(together.hits, one_by_one.hits) and torch.allclose(together.seen, one_by_one.seen)
    assert torch.allclose(together.rel_n, one_by_one.rel_n) and torch.allclose(together.rel_obs, one_by_one.rel_obs)
