"""Verification: which drafted nodes the target accepts, and the bonus token.

Greedy: node i matches iff its token equals the target's argmax at its parent and its parent matched. Siblings
are distinct tokens, so the matching path is unique; the deepest matching node ends the accepted path, and the
bonus is the argmax at that node.

Sampling (recursive rejection sampling with deterministic drafts): drafted candidates are point masses, so a
child c of the current node is accepted with probability p(c); after a rejection c's mass is removed and p is
renormalised (the residual). The bonus is drawn from the final p: the residual when some child was rejected,
else the processed target distribution at the last accepted node. Every p comes from ``target_probs`` (one
processing function everywhere). The output token sequence has exactly the processed target's distribution.
"""

from __future__ import annotations

import torch

from dyndepth.sampling import SamplingParams, target_probs
from dyndepth.tree import DraftTree


class NodeLogits:
    """Target logits of tree nodes, computed on first use, one chain at a time.

    Verification visits only the accepted path and the node after it (a + 1 rows of N). The lm_head is a
    memory-bound matmul (its weight is the vocabulary times the hidden size): reading the weight once for a few
    rows costs about what one row costs (Qwen2.5-1.5B, bf16, 2-core CPU: 21.7 ms for 1 row, 25.3 ms for 12),
    so row by row the accepted path would pay a + 1 reads. When node i is first asked for, its logits are
    computed in one matmul together with those of the draft's most likely branch below it (the best-valued
    child, its best-valued child, ... to a leaf): the path verification walks next when the draft is right. A
    step then reads the lm_head once, plus once per step down another branch. Without a tree, row by row."""

    def __init__(self, features: torch.Tensor, to_logits, tree: DraftTree | None = None):
        self.features = features  # [N, H]
        self.to_logits = to_logits  # features [..., H] -> logits [..., V]
        self.best_child = tree.best_children() if tree is not None else None  # [N] tree index, -1 = leaf
        score = None if tree is None else (tree.ranks if tree.ranks is not None else tree.values)
        self.score = score  # [N] log path value (or calibrated log P) per node: how likely verification visits it
        self.cache: dict[int, torch.Tensor] = {}

    def branch(self, node: int) -> list[int]:
        """[r] tree indices: node and the draft's best branch below it."""
        rows = [node]
        while self.best_child is not None and self.best_child[rows[-1]] >= 0:
            rows.append(self.best_child[rows[-1]])
        return rows

    def __call__(self, node: int) -> torch.Tensor:
        if node not in self.cache:
            rows = self.branch(node)
            logits = self.to_logits(self.features[rows])  # [r, V]
            for i, row in zip(rows, logits):
                self.cache.setdefault(i, row)
        return self.cache[node]


# The lm_head reads its weight once for up to this many rows at about the cost of one (prepacked bf16 on the 2-core
# AVX512-BF16 EPYC: Qwen2.5-1.5B's 151936 x 1536 20-26 ms from 1 to 12 rows, 28 at 16, 46 at 32; SmolLM2's
# 49152 x 576 1.7-2.7 ms, then 3.3 and 6.2).
PREFETCH_FLAT = 12


def prefetch(rows: list[NodeLogits]) -> None:
    """Fill the rows' logits in ONE lm_head matmul over the whole batch: the lm_head weight is read once per step
    for all rows, not once per row (on a CPU each read of Qwen2.5-1.5B's costs ~20 ms). Every row's best branch
    goes in, then the other nodes, most likely first, while the matmul has fewer than PREFETCH_FLAT rows (they
    come free): a small tree whose accepted path leaves the best branch then needs no second read, which cost a
    whole step's lm_head again. Whatever verification asks beyond that is computed row by row as before."""
    if not rows:
        return
    branches = [r.branch(0) for r in rows]
    total = sum(len(b) for b in branches)
    if total < PREFETCH_FLAT:
        others = []  # (score, row, node): the off-branch nodes
        for k, (r, b) in enumerate(zip(rows, branches)):
            if r.score is not None:
                on = set(b)
                others += [(float(r.score[j]), k, j) for j in range(r.features.shape[0]) if j not in on]
        for _, k, j in sorted(others, key=lambda o: -o[0])[:PREFETCH_FLAT - total]:  # most likely first
            branches[k].append(j)
    logits = rows[0].to_logits(torch.cat([r.features[b] for r, b in zip(rows, branches)]))  # [sum r, V]
    i = 0
    for r, b in zip(rows, branches):
        for node in b:
            r.cache[node] = logits[i]
            i += 1


def verify_greedy(tree: DraftTree, logits_at) -> tuple[list[int], int]:
    """Follow the target's argmax down the tree -> (accepted path as tree indices, root first; bonus token).

    A node is accepted iff its token is the target's argmax at its parent and its parent was accepted;
    siblings are distinct tokens, so at most one child matches and the path is unique."""
    children = tree.children()
    path = [0]
    while True:
        best = int(torch.argmax(logits_at(path[-1])))
        nxt = next((c for c in children[path[-1]] if tree.tokens[c] == best), None)
        if nxt is None:
            return path, best
        path.append(nxt)


def verify_sampling(tree: DraftTree, logits_at, params: SamplingParams,
                    generator: torch.Generator | None) -> tuple[list[int], int]:
    """Recursive rejection sampling -> (accepted path, bonus)."""
    children = tree.children()
    path = [0]
    cur = 0
    p = target_probs(logits_at(cur), params)  # [V] float32
    while True:
        accepted = None
        seen: set[int] = set()
        for c in children[cur]:  # fixed order (tree index), decided before any draw
            tok = tree.tokens[c]
            if tok in seen:
                continue
            seen.add(tok)
            u = torch.rand((), generator=generator, device=p.device)
            if u < p[tok]:
                accepted = c
                break
            p = p.clone()
            p[tok] = 0.0
            total = p.sum()
            if total <= 0:  # the rejected candidates held all the mass (numerically): nothing is left to reject
                p = target_probs(logits_at(cur), params)
                break
            p = p / total
        if accepted is None:
            break
        path.append(accepted)
        cur = accepted
        p = target_probs(logits_at(cur), params)
    bonus = int(torch.multinomial(p, 1, generator=generator))
    return path, bonus


def verify(tree: DraftTree, logits_at, params: SamplingParams,
           generator: torch.Generator | None) -> tuple[list[int], int]:
    """logits_at: tree index -> target logits [V] at that node (e.g. a ``NodeLogits``)."""
    if params.greedy:
        return verify_greedy(tree, logits_at)
    return verify_sampling(tree, logits_at, params, generator)
