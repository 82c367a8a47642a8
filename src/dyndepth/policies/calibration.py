"""Acceptance calibration: P(a drafted node is accepted), learned online from verification outcomes.

A draft path value ``exp(s)`` is not the probability that the target accepts the path: the head is over- or
under-confident, more so deeper in the tree and with a reduced draft vocabulary. The map is learned for the
*conditional* step, which every node of every tree informs, and multiplied along the path:

    q(node)         = exp(s(node) - s(parent))          the draft's probability of the node given its parent
    g(depth, q)     = P(node accepted | parent accepted), a table over (depth bucket x q bucket)
    P(node)         = g(node) * P(parent),  P(root) = 1  so P never increases along a path, like s

Each cell of g is a Beta posterior whose prior is the pooled estimate of its q bucket over all depths, whose own
prior is the draft's belief q (EAGLE-2's assumption that draft probability = acceptance):

    pooled(b)   = (hits_b   + prior_strength * q_b)       / (seen_b   + prior_strength)
    g(d, b)     = (hits_d,b + prior_strength * pooled(b)) / (seen_d,b + prior_strength)

so what is learned at depth 2 carries over to depth 9 until depth 9 has data of its own. ``update`` takes one
verified tree: a node is an observation iff its parent was accepted (greedy: on the accepted path; sampling: the
rejection sampler's accept events, the same event), a hit iff the node was accepted. Counts decay by
``1 - update_rate`` per step, so the map follows a change of prompt or domain with a memory of about
``1 / update_rate`` steps. All vectorised: a bucketize, a gather and an index_put per level.

``reliability`` accumulates predicted P(node) vs the observed outcome per draft path-value bucket over a run:
the reliability diagram (calibrated: predicted = observed in every bucket).
"""

from __future__ import annotations

import math

import torch

# Bucket edges of the conditional draft probability q (and, for the reliability report, of the path value).
Q_EDGES = (0.9, 0.75, 0.6, 0.45, 0.3, 0.2, 0.1, 0.05, 0.02, 0.005)
MAX_DEPTH_BUCKET = 12  # depths >= 12 share the last row


def _bucket_probs() -> list[float]:
    return [1.0, *Q_EDGES, 0.0]


class AcceptanceCalibration:
    def __init__(self, prior_strength: float = 8.0, update_rate: float = 0.02):
        self.prior_strength = float(prior_strength)
        self.update_rate = float(update_rate)
        probs = _bucket_probs()
        self.log_edges = torch.tensor([math.log(e) for e in Q_EDGES]).flip(0)  # ascending, for bucketize
        self.q_centre = torch.tensor([max((hi + lo) / 2, 1e-4) for hi, lo in zip(probs[:-1], probs[1:])])  # [B]
        b = self.q_centre.numel()
        self.hits = torch.zeros(MAX_DEPTH_BUCKET, b)  # decayed counts per (depth, q bucket)
        self.seen = torch.zeros(MAX_DEPTH_BUCKET, b)
        self.rel_pred = torch.zeros(b)  # reliability by path-value bucket: sum predicted, sum observed, count
        self.rel_obs = torch.zeros(b)
        self.rel_n = torch.zeros(b)

    # -- the map ------------------------------------------------------------------------------------------------
    def bucket(self, log_q: torch.Tensor) -> torch.Tensor:
        """log probabilities [n] -> bucket [n]; bucket 0 holds q > 0.9, the last q < 0.005."""
        return (len(Q_EDGES) - torch.bucketize(log_q.float().cpu(), self.log_edges, right=True)).clamp(0, len(Q_EDGES))

    def table(self) -> torch.Tensor:
        """[D, B] g(depth row, q bucket) = P(accepted | parent accepted)."""
        s = self.prior_strength
        pooled = (self.hits.sum(0) + s * self.q_centre) / (self.seen.sum(0) + s)  # [B]
        return (self.hits + s * pooled) / (self.seen + s)

    def conditional(self, log_q: torch.Tensor, depths: torch.Tensor, table: torch.Tensor | None = None) -> torch.Tensor:
        """log_q [n] conditional draft log-probs, depths [n] (>= 1) -> g [n] on log_q's device."""
        table = self.table() if table is None else table
        row = (depths.cpu().long() - 1).clamp(0, MAX_DEPTH_BUCKET - 1)
        return table[row, self.bucket(log_q)].to(log_q.device)

    def tree_probs(self, values: torch.Tensor, parents: torch.Tensor, depths: torch.Tensor) -> torch.Tensor:
        """P(accepted) of every node of a tree given root first: values [N] (root 0), parents [N] (root -1,
        parents precede children), depths [N] -> [N] (root 1). Several trees one after another (a forest, each root's
        parent -1) work the same."""
        table = self.table()
        p = torch.ones(values.numel())
        par = parents.clamp(min=0)
        cond = self.conditional(values.float().cpu() - values.float().cpu()[par], depths.clamp(min=1), table)
        for d in range(1, int(depths.max()) + 1 if values.numel() > 1 else 1):  # one vectorised pass per level
            at = depths == d
            p[at] = p[par[at]] * cond[at]
        return p

    # -- learning -----------------------------------------------------------------------------------------------
    def update(self, values, parents, depths, accepted, learn=None) -> None:
        """One verified tree, root first: values [N] log path values (root 0), parents [N] (root -1), depths [N],
        accepted [N] bool (root True); learn [N] bool: the nodes this map is for (None: all), e.g. a hybrid tree's
        head nodes (a head node's parent is the root or a head node, so its conditional value is defined)."""
        self.update_trees([(values, parents, depths, accepted, learn)])

    def update_trees(self, trees) -> None:
        """Several verified trees (a batch step's rows), each (values, parents, depths, accepted, learn) as
        ``update`` takes it, learnt in one pass over the forest they make: the counts decay once per tree and a tree's
        counts by the decays of the trees after it, as one ``update`` per tree in order would leave them."""
        trees = [[None if x is None else x.tolist() if isinstance(x, torch.Tensor) else list(x) for x in t]
                 for t in trees]
        kept = [t for t in trees if len(t[0]) > 1 and (t[4] is None or any(t[4][1:]))]
        if not kept:
            return
        values, parents, depths, hit, mine, age = [], [], [], [], [], []
        for r, (v, par, dep, acc, learn) in enumerate(kept):
            off = len(values)  # parents become forest indices; a root keeps -1
            values += v
            parents += [int(q) + off if q >= 0 else -1 for q in par]
            depths += dep
            hit += acc
            mine += [False] + (learn[1:] if learn is not None else [True] * (len(v) - 1))
            age += [len(kept) - 1 - r] * len(v)  # trees learnt after this one
        values = torch.tensor(values, dtype=torch.float32)  # [F] forest of every tree, roots included
        parents = torch.tensor(parents, dtype=torch.long)
        depths = torch.tensor(depths, dtype=torch.long)
        hit = torch.tensor(hit, dtype=torch.bool)
        node = torch.tensor(mine, dtype=torch.bool).nonzero().flatten()  # [n] the nodes learnt from (no root)
        predicted = self.tree_probs(values, parents, depths)[node]  # before learning from these trees
        path_bucket = self.bucket(values[node])
        self.rel_pred.index_add_(0, path_bucket, predicted)
        self.rel_obs.index_add_(0, path_bucket, hit[node].float())
        self.rel_n.index_add_(0, path_bucket, torch.ones_like(predicted))
        informative = hit[parents[node]]  # the parent was accepted, so this node was tried
        node = node[informative]
        log_q = values[node] - values[parents[node]]
        row = (depths[node] - 1).clamp(0, MAX_DEPTH_BUCKET - 1)
        col = self.bucket(log_q)
        keep = 1.0 - self.update_rate
        weight = keep ** torch.tensor(age, dtype=torch.float32)[node]  # [n]
        self.hits.mul_(keep ** len(kept))
        self.seen.mul_(keep ** len(kept))
        self.hits.index_put_((row, col), hit[node].float() * weight, accumulate=True)
        self.seen.index_put_((row, col), weight, accumulate=True)

    # -- reports ------------------------------------------------------------------------------------------------
    def reliability(self) -> list[dict]:
        """Per draft path-value bucket: verified nodes, mean predicted P(accepted), observed share accepted."""
        probs = _bucket_probs()
        rows = []
        for b in range(len(probs) - 1):
            n = float(self.rel_n[b])
            if n:
                rows.append({"draft_p_from": round(probs[b + 1], 4), "draft_p_to": round(probs[b], 4),
                             "nodes": int(round(n)), "predicted": round(float(self.rel_pred[b]) / n, 4),
                             "observed": round(float(self.rel_obs[b]) / n, 4)})
        return rows

    def to_dict(self) -> dict:
        """The current conditional map g (rows: depth 1.., columns: q buckets from high to low)."""
        return {"q_edges": list(Q_EDGES), "max_depth_bucket": MAX_DEPTH_BUCKET,
                "g": [[round(float(x), 4) for x in row] for row in self.table()]}
