"""One row's pool from two sources: the head's levels and a suffix proposal, on one scale.

    scored = score(proposal, suffix_calibration)        # each suffix node's calibrated conditional and path log P
    scored = scored.cut(policy.suffix_depth(...))       # the policy's depth rule on the suffix's path P (ddd)
    merge(pool, scored, head_calibration)               # suffix nodes into the head's pool, every node's log P

A suffix node that proposes the same token under the same parent as a head node is *merged* into it (one node,
both sources); any other suffix node is appended with its parent mapped into the pool. Siblings therefore stay
distinct tokens, which verification needs (greedy: the matching path is unique; sampling: each candidate token is
tried once, so rejection sampling with point-mass drafts keeps the target's law).

Every node's acceptance is estimated on one scale, P(accepted) = product along the path of the conditional
g(node) = P(node accepted | parent accepted): a head node's g from the head's calibration map (the ``auto``
policy's AcceptanceCalibration: depth x draft-probability bucket), a suffix node's from SuffixCalibration (match
length x frequency-estimate bucket), a merged node's the larger of the two. ``pool.accept_logp`` holds log P; the
rerank (``DraftPool.select``) and the ``auto`` policy order nodes by it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from dyndepth.drafters.suffix import SuffixProposal
from dyndepth.drafters.suffix_calibration import SuffixCalibration
from dyndepth.tree import DraftPool


@dataclass
class ScoredProposal:
    """A suffix proposal with, per node, log q (its frequency estimate given its parent), log g (its calibrated
    conditional acceptance) and log P (the product of g along its path)."""

    proposal: SuffixProposal
    log_q: list[float]
    log_g: list[float]
    log_p: list[float]

    def __len__(self) -> int:
        return len(self.proposal)

    @property
    def depths(self) -> list[int]:
        return self.proposal.depths

    def cut(self, max_depth: int) -> "ScoredProposal":
        """The nodes at depth <= max_depth (still a connected tree: ancestors are shallower)."""
        prop = self.proposal
        if not prop.depths or max(prop.depths) <= max_depth:
            return self
        keep = [i for i, d in enumerate(prop.depths) if d <= max_depth]
        new = {old: i for i, old in enumerate(keep)}
        cut = SuffixProposal([prop.tokens[i] for i in keep], [new.get(prop.parents[i], -1) for i in keep],
                             [prop.depths[i] for i in keep], [prop.values[i] for i in keep],
                             [prop.counts[i] for i in keep], prop.match_len if keep else 0,
                             prop.occurrences if keep else 0, sum(math.exp(prop.values[i]) for i in keep))
        return ScoredProposal(cut, [self.log_q[i] for i in keep], [self.log_g[i] for i in keep],
                              [self.log_p[i] for i in keep])


def score(proposal: SuffixProposal, calibration: SuffixCalibration) -> ScoredProposal:
    log_q, log_g, log_p = [], [], []
    m = proposal.match_len
    for count, parent in zip(proposal.counts, proposal.parents):
        parent_count = proposal.counts[parent] if parent >= 0 else proposal.occurrences
        q = math.log(count / parent_count)
        g = calibration.log_g(m, q)
        log_q.append(q)
        log_g.append(g)
        log_p.append((log_p[parent] if parent >= 0 else 0.0) + g)
    return ScoredProposal(proposal, log_q, log_g, log_p)


def head_log_g(pool: DraftPool, calibration, table: torch.Tensor | None = None) -> torch.Tensor:
    """[H] log g of the pool's head nodes from the head's calibration map (conditional draft log-probability and
    depth)."""
    n = pool.head_size
    values = pool.all_values()[:n].float().cpu()
    parents = pool.all_parents()[:n].cpu()
    depths = pool.all_depths()[:n].cpu()
    parent_v = torch.where(parents >= 0, values[parents.clamp(min=0)], torch.zeros_like(values))
    g = calibration.conditional(values - parent_v, depths, table)
    return torch.log(g.float().cpu().clamp_min(1e-6))


def merge(pool: DraftPool, scored: ScoredProposal, head_calibration=None,
          head_table: torch.Tensor | None = None) -> DraftPool:
    """Add the suffix nodes of ``scored`` to ``pool`` (head levels, or none) and set ``pool.accept_logp``; returns
    the pool. ``head_calibration`` (an AcceptanceCalibration) is needed when the pool holds head nodes."""
    n_head = pool.head_size
    prop = scored.proposal
    log_g = head_log_g(pool, head_calibration, head_table).tolist() if n_head else []
    head_child: dict[tuple[int, int], int] = {}
    if n_head and len(prop):
        head_child = {(p, t): i for i, (p, t) in enumerate(zip(pool.all_parents()[:n_head].tolist(),
                                                                pool.all_tokens()[:n_head].tolist()))}
    where: list[int] = []  # proposal index -> pool index
    tokens, values, parents, depths = [], [], [], []
    start = pool.size
    for i, tok in enumerate(prop.tokens):
        par = prop.parents[i]
        parent = where[par] if par >= 0 else -1
        j = head_child.get((parent, tok)) if parent < n_head else None  # only a head node has head children
        if j is not None:  # the same token under the same parent: one node, both sources
            log_g[j] = max(log_g[j], scored.log_g[i])
        else:
            j = start + len(tokens)
            tokens.append(tok)
            values.append(prop.values[i])
            parents.append(parent)
            depths.append(prop.depths[i])
            log_g.append(scored.log_g[i])
        pool.suffix[j] = (prop.match_len, scored.log_q[i])
        where.append(j)
    pool.add_nodes(tokens, values, parents, depths)
    pool.accept_logp = _path_logp(pool, torch.tensor(log_g, dtype=torch.float32))
    return pool


def suffix_pool(scored: ScoredProposal) -> DraftPool:
    """A pool of suffix nodes alone."""
    return merge(DraftPool(), scored)


def _path_logp(pool: DraftPool, log_g: torch.Tensor) -> torch.Tensor:
    """[P] log P(accepted) = sum of log g along each node's path: one vectorised pass per head level, then the
    explicit nodes in order (their parents come before them)."""
    parents = pool.all_parents().cpu()
    logp = torch.zeros(pool.size)
    start = 0
    for d in range(pool.depth):
        stop = start + pool.level(d)[0].numel()
        par = parents[start:stop]
        logp[start:stop] = torch.where(par >= 0, logp[par.clamp(min=0)], torch.zeros(stop - start)) + \
            log_g[start:stop]
        start = stop
    if start < pool.size:
        lp = logp.tolist()
        g = log_g.tolist()
        par = parents.tolist()
        for i in range(start, pool.size):
            lp[i] = (lp[par[i]] if par[i] >= 0 else 0.0) + g[i]
        logp = torch.tensor(lp)
    return logp
