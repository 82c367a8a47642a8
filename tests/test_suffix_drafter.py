"""The suffix drafter (dyndepth.drafters.suffix): proposals on crafted sequences, the cache, incremental extension,
and a randomized check against a brute-force reference. No model; runs in about a second."""

from __future__ import annotations

import math
import random
from collections import Counter

import pytest

from dyndepth.drafters import SuffixCache, SuffixDrafter, SuffixOptions, SuffixProposal
from dyndepth.validate import OptionError


def nodes(p: SuffixProposal) -> dict[tuple[int, ...], float]:
    """path -> estimated probability."""
    return {path: prob for path, prob in zip(p.paths(), p.probs)}


def test_a_repeat_is_proposed_as_a_chain():
    # context ... 5 6 7 8 9 | 5 6 7: the earlier occurrence of "5 6 7" continues with 8 9
    d = SuffixDrafter([1, 5, 6, 7, 8, 9, 2, 5, 6, 7], spec_factor=1.0)
    p = d.propose()
    assert p.tokens[:2] == [8, 9] and p.parents[:2] == [-1, 0] and p.depths[:2] == [1, 2]
    assert p.match_len == 3 and p.occurrences == 1 and p.values[0] == 0.0
    assert p.paths()[:3] == [(8,), (8, 9), (8, 9, 2)]
    assert len(p) == 3  # spec_factor 1: a match of 3 proposes at most 3 levels
    assert p.score == pytest.approx(3.0)


def test_nothing_to_propose():
    assert len(SuffixDrafter([]).propose()) == 0
    p = SuffixDrafter([1, 2, 3, 4]).propose()  # no token repeats
    assert len(p) == 0 and p.match_len == 0 and p.score == 0.0
    assert len(SuffixDrafter([1, 2, 1]).propose(max_nodes=0)) == 0


def test_the_longest_match_wins_over_a_more_frequent_shorter_one():
    # "a b c" is followed by Q twice and P once, but the context's longer suffix "x a b c" was followed by P
    a, b, c, P, Q, x, y, z = 10, 11, 12, 13, 14, 15, 16, 17
    ctx = [x, a, b, c, P, 1, 2, 3, y, a, b, c, Q, 4, z, a, b, c, Q, 5, x, a, b, c]
    p = SuffixDrafter(ctx, spec_factor=1.0).propose()
    assert p.match_len == 4 and p.occurrences == 1
    assert p.tokens[0] == P and p.probs[0] == 1.0
    # with a factor of 0.5, the 4-token match may propose 2 levels only (score <= 2), while "a b c" ...
    # (3 occurrences, 2 levels: Q 2/3 and its children, P 1/3 and its child) scores 2 as well: a tie goes to
    # the longer match
    p2 = SuffixDrafter(ctx, spec_factor=0.5).propose()
    assert p2.match_len == 4 and p2.depths == [1, 2]


def test_counts_give_the_probabilities():
    a, b, c, d = 10, 11, 12, 13
    ctx = [a, b, c, 1, a, b, c, 2, a, b, c, 3, a, b, d, 4, a, b]
    p = SuffixDrafter(ctx, min_prob=0.0, spec_factor=1.0).propose()
    assert p.match_len == 2 and p.occurrences == 4
    got = nodes(p)
    assert got[(c,)] == pytest.approx(0.75) and got[(d,)] == pytest.approx(0.25)
    for k in (1, 2, 3):
        assert got[(c, k)] == pytest.approx(0.25)
    assert got[(d, 4)] == pytest.approx(0.25)
    assert len(got) == 6  # a match of 2 proposes 2 levels
    assert p.counts[p.tokens.index(c)] == 3 and p.values[0] == pytest.approx(math.log(0.75))
    assert p.score == pytest.approx(2.0)
    # best-first order: values never increase, parents come first
    assert all(v1 >= v2 for v1, v2 in zip(p.values, p.values[1:]))
    assert all(par < i for i, par in enumerate(p.parents))


def test_min_prob_prunes():
    a, b, c, d = 10, 11, 12, 13
    ctx = [a, b, c, 1, a, b, c, 2, a, b, c, 3, a, b, d, 4, a, b]
    got = nodes(SuffixDrafter(ctx, min_prob=0.3, spec_factor=1.0).propose())
    assert set(got) == {(c,)}  # d (0.25) and every depth-2 node (0.25) fall below 0.3
    got = nodes(SuffixDrafter(ctx, min_prob=0.25, spec_factor=1.0).propose())
    assert len(got) == 6  # 0.25 itself is kept


def test_a_continuation_that_runs_out_still_counts():
    # "7" occurs twice before the root: once followed by 8, once at the end of a cached output (nothing after)
    cache = SuffixCache(4)
    cache.add([3, 7])
    p = SuffixDrafter([7, 8, 1, 7], cache=cache, min_prob=0.0, spec_factor=1.0).propose()
    assert p.occurrences == 2 and nodes(p) == {(8,): pytest.approx(0.5)}


def test_depth_caps():
    seq = list(range(100, 140))
    ctx = seq + [1] + seq[:20]  # a 20-token match, then 20 more tokens of the earlier copy
    p = SuffixDrafter(ctx).propose()
    assert p.match_len == 20 and max(p.depths) == 16  # max_nodes 16, one chain
    p = SuffixDrafter(ctx, max_nodes=64, spec_factor=1.0).propose()
    assert max(p.depths) == 20 and p.tokens == seq[20:40]  # spec_factor 1: 20 levels for a 20-token match
    p = SuffixDrafter(ctx, max_nodes=64, max_depth=5).propose()
    assert p.tokens == seq[20:25]
    assert SuffixDrafter(ctx, max_nodes=64).propose(max_depth=7).tokens == seq[20:27]
    # spec_factor 2: 40 levels allowed, max_depth 32 binds; the continuation runs on into the context's tail
    assert SuffixDrafter(ctx, max_nodes=64, spec_factor=2.0).propose().tokens == seq[20:40] + [1] + seq[:11]
    short = seq[:20] + [1] + seq[:20]  # the earlier copy's continuation ends at the context's end
    p = SuffixDrafter(short, max_nodes=64, spec_factor=2.0).propose()
    assert p.tokens == [1] + seq[:20] and p.depths == list(range(1, 22))
    p = SuffixDrafter(ctx, max_nodes=64, max_match=8, spec_factor=1.0).propose()
    assert p.match_len == 8 and len(p) == 8  # longer matches count as 8 long


def test_min_match():
    ctx = [5, 6, 1, 2, 6]  # the root 6 matched only by one token
    assert SuffixDrafter(ctx, spec_factor=1.0).propose().tokens == [1]
    assert SuffixDrafter(ctx).propose().tokens == [1, 2]  # spec_factor 2: two levels
    assert len(SuffixDrafter(ctx, min_match=2).propose()) == 0


def test_max_occurrences_keeps_the_most_recent():
    ctx = [7, 1] * 3 + [7, 2] * 2 + [7]
    assert nodes(SuffixDrafter(ctx, max_match=1, min_prob=0.0, spec_factor=1.0).propose()) == {(1,): 0.6, (2,): 0.4}
    assert nodes(SuffixDrafter(ctx, max_match=1, max_occurrences=2, spec_factor=1.0).propose()) == {(2,): 1.0}


def test_truncated_is_a_connected_prefix():
    a, b, c, d = 10, 11, 12, 13
    ctx = [a, b, c, 1, a, b, c, 2, a, b, c, 3, a, b, d, 4, a, b]
    p = SuffixDrafter(ctx, min_prob=0.0, spec_factor=1.0).propose()
    t = p.truncated(3)
    assert t.tokens == p.tokens[:3] and all(par < 3 for par in t.parents)
    assert t.score == pytest.approx(sum(p.probs[:3]))
    assert len(p.truncated(0)) == 0 and p.truncated(0).match_len == 0


def test_the_cache_is_searched_fifo_and_bounded():
    cache = SuffixCache(2)
    first = SuffixDrafter([1, 2], cache=cache)
    first.extend([50, 51, 52, 53, 54])
    first.finish()
    first.finish()  # once only
    assert cache.sequences() == [[50, 51, 52, 53, 54]]  # the output, not the prompt
    d = SuffixDrafter([9, 50, 51], cache=cache, spec_factor=1.0)
    p = d.propose()
    assert p.tokens == [52, 53] and p.match_len == 2  # found in the cache
    assert SuffixDrafter([9, 50, 51]).propose().tokens == []  # without it, nothing
    # two more outputs evict the first: FIFO
    for out in ([60, 61, 62], [70, 71, 72]):
        cache.add(out)
    assert len(cache) == 2 and cache.sequences() == [[60, 61, 62], [70, 71, 72]]
    assert SuffixDrafter([9, 50, 51], cache=cache).propose().tokens == []
    assert SuffixDrafter([9, 61], cache=cache).propose().tokens == [62]  # a continuation stops at an output's end


def test_cache_counts_pool_with_the_context_and_survive_compaction():
    cache = SuffixCache(3)
    for i in range(50):  # many evictions: the text is rebuilt now and then
        cache.add([100 + i, 5, 6, 200 + i])
    assert len(cache) == 3 and cache.tokens == 12
    assert len(cache._text.tokens) <= 2 * 3 * 5 + 5  # evicted outputs are dropped, not kept forever
    d = SuffixDrafter([5, 6, 7, 1, 5, 6], cache=cache, min_prob=0.0, spec_factor=1.0)
    got = nodes(d.propose())
    # one occurrence in the context, three in the cache (whose continuations end after one token)
    assert got == {(7,): pytest.approx(0.25), (247,): pytest.approx(0.25), (248,): pytest.approx(0.25),
                   (249,): pytest.approx(0.25), (7, 1): pytest.approx(0.25)}
    assert d.propose().occurrences == 4
    with pytest.raises(OptionError):
        SuffixCache(0)


def test_options_are_checked():
    with pytest.raises(OptionError, match="suffix max_nodes must be an integer >= 1"):
        SuffixOptions(max_nodes=0)
    with pytest.raises(OptionError, match="min_prob"):
        SuffixOptions(min_prob=1.5)
    with pytest.raises(OptionError, match="min_match"):
        SuffixOptions(min_match=5, max_match=4)
    with pytest.raises(OptionError, match="spec_factor"):
        SuffixOptions(spec_factor=-1.0)
    with pytest.raises(OptionError, match="token ids"):
        SuffixDrafter([1, -2])
    with pytest.raises(TypeError):
        SuffixDrafter([1], options=SuffixOptions(), max_nodes=3)
    assert SuffixOptions(spec_factor=1.5, spec_offset=1.0, max_depth=32).depth_cap(4) == 7


def test_incremental_extend_equals_building_from_scratch():
    rng = random.Random(1)
    for _ in range(20):
        seq = [rng.randrange(6) for _ in range(rng.randrange(2, 120))]
        d = SuffixDrafter(seq[:1], max_nodes=24, min_prob=0.05)
        i = 1
        while i < len(seq):
            k = rng.randrange(1, 6)
            d.extend(seq[i:i + k])
            i += k
            assert d.propose() == SuffixDrafter(seq[:i], max_nodes=24, min_prob=0.05).propose()
        assert d.tokens == seq


# -- brute force --------------------------------------------------------------------------------------------
def reference(context, cached, opts: SuffixOptions, max_nodes=None, max_depth=None) -> SuffixProposal:
    """The definition in the module docstring, computed naively: every match length, every continuation prefix."""
    max_nodes = opts.max_nodes if max_nodes is None else min(max_nodes, opts.max_nodes)
    max_depth = opts.max_depth if max_depth is None else min(max_depth, opts.max_depth)
    n = len(context)
    if n == 0:
        return SuffixProposal()
    root = context[-1]
    local = [(context, j) for j in range(n - 1) if context[j] == root][-opts.max_occurrences:]
    glob = [(s, j) for s in cached for j in range(len(s)) if s[j] == root][-opts.max_occurrences:]
    best = SuffixProposal()
    for m in range(min(opts.max_match, n), opts.min_match - 1, -1):
        pattern = context[n - m:]
        occ = [(s, j) for s, j in local + glob if j - m + 1 >= 0 and s[j - m + 1:j + 1] == pattern]
        cap = min(opts.depth_cap(m), max_depth)
        if not occ or cap < 1:
            continue
        count = Counter()
        for s, j in occ:
            cont = s[j + 1:j + 1 + cap]
            for d in range(1, len(cont) + 1):
                count[tuple(cont[:d])] += 1
        prob = {}
        for path in sorted(count, key=len):
            parent = count[path[:-1]] if len(path) > 1 else len(occ)
            prob[path] = (prob[path[:-1]] if len(path) > 1 else 1.0) * (count[path] / parent)
        kept = sorted((p for p in prob if prob[p] >= opts.min_prob), key=lambda p: (-prob[p], len(p), p))
        kept = kept[:max_nodes]
        score = 0.0
        for p in kept:
            score += prob[p]
        if score > best.score:
            index = {p: i for i, p in enumerate(kept)}
            best = SuffixProposal([p[-1] for p in kept], [index.get(p[:-1], -1) for p in kept],
                                  [len(p) for p in kept], [math.log(prob[p]) for p in kept],
                                  [count[p] for p in kept], m, len(occ), score)
    return best


def test_matches_a_brute_force_reference():
    rng = random.Random(0)
    checked = 0
    for trial in range(300):
        vocab = rng.choice([2, 3, 5, 8])
        opts = SuffixOptions(max_depth=rng.choice([1, 3, 8, 32]), max_nodes=rng.choice([1, 4, 16, 40]),
                             min_prob=rng.choice([0.0, 0.1, 0.3]), min_match=rng.choice([1, 1, 2, 3]),
                             max_match=rng.choice([3, 8, 32]), spec_factor=rng.choice([0.5, 1.0, 2.0]),
                             spec_offset=rng.choice([0.0, 1.0]), max_occurrences=rng.choice([3, 256]))
        cache = SuffixCache(rng.choice([1, 2, 5])) if rng.random() < 0.5 else None
        if cache is not None:
            for _ in range(rng.randrange(0, 8)):
                cache.add([rng.randrange(vocab) for _ in range(rng.randrange(1, 30))])
        ctx = [rng.randrange(vocab) for _ in range(rng.randrange(1, 80))]
        d = SuffixDrafter(ctx, cache=cache, options=opts)
        budget = rng.choice([None, None, 2, 5])
        got = d.propose(max_nodes=budget)
        want = reference(ctx, cache.sequences() if cache else [], opts, max_nodes=budget)
        assert (got.tokens, got.parents, got.depths, got.counts, got.match_len, got.occurrences) == \
               (want.tokens, want.parents, want.depths, want.counts, want.match_len, want.occurrences), trial
        assert got.values == pytest.approx(want.values) and got.score == pytest.approx(want.score)
        checked += len(got) > 0
    assert checked > 150  # most trials proposed something
