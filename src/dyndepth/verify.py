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


def verify_greedy(tree: DraftTree, logits: torch.Tensor) -> tuple[list[int], int]:
    """logits [N, V] -> (accepted path as tree indices, starting with the root 0; bonus token)."""
    best = torch.argmax(logits, dim=-1).tolist()  # [N]
    ok = [True] + [False] * (len(tree) - 1)
    deepest = 0
    for i in range(1, len(tree)):  # parents precede children
        p = tree.parents[i]
        if ok[p] and tree.tokens[i] == best[p]:
            ok[i] = True
            if tree.depths[i] > tree.depths[deepest]:
                deepest = i
    return tree.path_to(deepest), best[deepest]


def verify_sampling(tree: DraftTree, logits: torch.Tensor, params: SamplingParams,
                    generator: torch.Generator | None) -> tuple[list[int], int]:
    """logits [N, V] -> (accepted path, bonus) by recursive rejection sampling."""
    children = tree.children()
    path = [0]
    cur = 0
    p = target_probs(logits[cur], params)  # [V] float32
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
                p = target_probs(logits[cur], params)
                break
            p = p / total
        if accepted is None:
            break
        path.append(accepted)
        cur = accepted
        p = target_probs(logits[cur], params)
    bonus = int(torch.multinomial(p, 1, generator=generator))
    return path, bonus


def verify(tree: DraftTree, logits: torch.Tensor, params: SamplingParams,
           generator: torch.Generator | None) -> tuple[list[int], int]:
    if params.greedy:
        return verify_greedy(tree, logits)
    return verify_sampling(tree, logits, params, generator)
