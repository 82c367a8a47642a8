"""Hindsight over recorded pools (replay.py): every fixed tree at once, and bounds no causal policy can beat.

For one position the fixed tree with ``l`` levels and ``N`` tokens is the root plus the N - 1 best nodes of
depth <= l by (value desc, depth asc, pool index asc), the rerank of ``DraftPool.select`` (a parent's value is
never below its child's, so the best nodes are ancestor-closed by themselves). Its accepted length is

    a(l, N) = number of chain nodes whose rank among the nodes of depth <= l is below N - 1

(the chain's ranks grow along it, so these are its first a nodes). ``accept_table`` gives a(l, N) for all l and N
in one pass; from it:

- ``fixed_grid``: the rate of every fixed (levels, N) setting, each replayed along its own trajectory;
- ``oracle``: the fastest sequence of (levels, N) choices per answer when each step's accepted length is known
  in advance (a shortest path over positions: best[p] = min over l, N of T(l, N) + best[p + a_p(l, N) + 1]).
  No policy that chooses depth and tree size from the same pools beats it;
- ``path_oracle``: the same with the tree cut to exactly the accepted path (a levels, a + 1 tokens): what a
  draft that knew which of its branches the target takes would reach; a looser bound, on tree shape as well.
"""

from __future__ import annotations

import torch

from dyndepth.bench.replay import Recording, ReplayResult, chain_flags, step_seconds


def accept_table(levels, chain: list[int], max_depth: int, n_max: int) -> torch.Tensor:
    """[max_depth + 1, n_max + 1] long: a(l, N) for l levels (row 0: no draft) and N tokens (column 0 unused)."""
    values = torch.cat([v for _, v, _ in levels]).float()  # [P]
    depths = torch.cat([torch.full((t.numel(),), d + 1) for d, (t, _, _) in enumerate(levels)])  # [P]
    on = chain_flags(levels, chain)  # [P]
    order = torch.argsort(depths, stable=True)  # pool index order kept within a depth
    order = order[torch.argsort(-values[order], stable=True)]  # value desc, then depth asc, then index asc
    d_sorted, on_sorted = depths[order], on[order]  # [P]
    table = torch.zeros(max_depth + 1, n_max + 1, dtype=torch.long)
    sizes = torch.arange(n_max + 1)  # [n_max + 1]
    for lv in range(1, min(max_depth, len(levels)) + 1):
        inside = d_sorted <= lv
        rank = torch.cumsum(inside.long(), 0) - 1  # [P] rank among the nodes of depth <= lv
        chain_rank = rank[inside & on_sorted]  # [a_max(lv)] ascending along the chain
        table[lv] = (chain_rank[:, None] <= sizes[None, :] - 2).sum(0)
    for lv in range(len(levels) + 1, max_depth + 1):  # a shallower recording: deeper rows repeat the last
        table[lv] = table[len(levels)]
    return table


def step_costs(price, max_depth: int, n_max: int) -> torch.Tensor:
    """[max_depth + 1, n_max + 1] seconds of a step with l levels and N tokens (inf where not a tree: column 0,
    and N > 1 without a draft)."""
    cost = torch.full((max_depth + 1, n_max + 1), float("inf"), dtype=torch.float64)
    for lv in range(max_depth + 1):
        for n in range(1, n_max + 1 if lv else 2):
            cost[lv, n] = sum(step_seconds(price, lv, n))
    return cost


def tables(rec: Recording, max_depth: int, n_max: int) -> list[torch.Tensor]:
    """accept_table of every position of the recording (computed once per size, kept on the recording)."""
    key = (max_depth, n_max)
    if key not in rec.cache:
        rec.cache[key] = [accept_table(pos.levels, pos.chain, max_depth, n_max) for pos in rec.positions]
    return rec.cache[key]


def fixed_grid(recordings: list[Recording], price, max_depth: int, n_max: int,
               settings: list[tuple[int, int]] | None = None) -> dict[tuple[int, int], ReplayResult]:
    """(levels, N) -> the replay of that fixed tree over all recordings (all settings when none are given)."""
    cost = step_costs(price, max_depth, n_max).tolist()
    grid = settings or [(lv, n) for lv in range(1, max_depth + 1) for n in range(2, n_max + 1)]
    out = {s: ReplayResult() for s in grid}
    for rec in recordings:
        tabs = [t.tolist() for t in tables(rec, max_depth, n_max)]  # plain lists: this walk is the hot loop
        for (lv, n), res in out.items():
            p = 0
            while p < rec.tokens:
                committed = min(tabs[p][lv][n] + 1, rec.tokens - p)
                res.add(committed, lv, n, cost[lv][n])
                p += committed
    return out


def oracle(recordings: list[Recording], price, max_depth: int, n_max: int, path_only: bool = False) -> ReplayResult:
    """The hindsight-optimal choices (see the module docstring), summed over the recordings."""
    cost = step_costs(price, max_depth, n_max)  # [D + 1, N + 1]
    out = ReplayResult()
    for rec in recordings:
        tabs, P = tables(rec, max_depth, n_max), rec.tokens
        best = torch.zeros(P + 1, dtype=torch.float64)
        choice: list[tuple[int, int, int]] = [(0, 1, 1)] * P  # per position: (levels, N, committed)
        for p in range(P - 1, -1, -1):
            if path_only:  # the tree is the accepted path itself: a levels, a + 1 tokens, for a <= the chain found
                a_max = int(tabs[p][max_depth, n_max])
                a = torch.arange(a_max + 1)
                t = cost[a, a + 1]
                t[0] = cost[0, 1]
                adv = torch.clamp(a + 1, max=P - p)
                total = t + best[p + adv]
                i = int(torch.argmin(total))
                best[p], choice[p] = total[i], (i, i + 1, int(adv[i]))
                continue
            adv = torch.clamp(tabs[p] + 1, max=P - p)  # [D + 1, N + 1]
            total = cost + best[p + adv]
            i = int(torch.argmin(total))
            lv, n = divmod(i, n_max + 1)
            best[p], choice[p] = total.flatten()[i], (lv, n, int(adv[lv, n]))
        p = 0
        while p < P:
            lv, n, committed = choice[p]
            out.add(committed, lv, n, float(cost[lv, n]))
            p += committed
    return out
