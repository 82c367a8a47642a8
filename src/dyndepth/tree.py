"""The draft pool, the rerank to the verified tree, and the tree's flattened tensors.

Growth (``draft.py``) adds one depth at a time to a ``DraftPool``; ``DraftPool.select`` keeps the
``n_nodes`` nodes with the highest path values over all depths (EAGLE-2's rerank), admitting a node only
when its parent is already in, so the result is always a connected tree even when scores tie. The
``DraftTree`` holds the root plus those nodes in level-major order (every parent precedes its children) and
builds what the target's verification forward needs: the ancestor mask and the depth-based position ids.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


class DraftPool:
    """Every node drafted in one step. Pool index p: tokens[p], values[p] (log path value), parents[p]
    (pool index of the parent, -1 = root), depths[p] (1-based)."""

    def __init__(self):
        self._tokens: list[torch.Tensor] = []  # per depth: [m] target token ids
        self._values: list[torch.Tensor] = []  # per depth: [m] float log path values
        self._parents: list[torch.Tensor] = []  # per depth: [m] pool indices (-1 = root)
        self.size = 0
        self.beam_log_mass: torch.Tensor | None = None  # 0-d, logsumexp of the deepest beam (set by grow_pool)
        self.depth = 0

    def add_level(self, tokens: torch.Tensor, values: torch.Tensor, parents: torch.Tensor) -> torch.Tensor:
        """Append one depth's nodes; returns their pool indices [m]."""
        m = tokens.numel()
        start = self.size
        self._tokens.append(tokens.reshape(-1))
        self._values.append(values.reshape(-1).float())
        self._parents.append(parents.reshape(-1).long())
        self.size += m
        self.depth += 1
        return torch.arange(start, start + m, device=tokens.device)

    # -- what a cost-aware policy reads (vectorised, on the pool's device) ----------------------------------------
    def all_values(self) -> torch.Tensor:
        """[P] log path values of every pool node, in pool order."""
        return torch.cat(self._values)

    def all_depths(self) -> torch.Tensor:
        """[P] depth (1-based) of every pool node."""
        return torch.cat([torch.full((v.numel(),), d + 1, dtype=torch.long, device=v.device)
                          for d, v in enumerate(self._values)])

    def level(self, d: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Depth d + 1's nodes (d 0-based): tokens [m], log values [m], parents [m] (pool indices, -1 = root)."""
        return self._tokens[d], self._values[d], self._parents[d]

    def last_level_child_logp(self) -> torch.Tensor:
        """[parents, K] log-probability of each parent's j-th best child at the deepest level (children of a
        parent are added best first, K = the beam width); level 1's parent is the root."""
        values = self._values[-1]
        k = self._values[0].numel()
        if len(self._values) == 1:
            return values.reshape(1, -1)
        parent_values = self.all_values()[self._parents[-1]]  # [m]
        return (values - parent_values).reshape(-1, k)

    def select(self, root_token: int, n_nodes: int) -> "DraftTree":
        """Rerank: the ``n_nodes`` best nodes by (value desc, depth asc, pool index asc), ancestor-closed."""
        if self.size == 0 or n_nodes <= 0:
            return DraftTree.root_only(root_token)
        tokens = torch.cat(self._tokens).tolist()
        values = torch.cat(self._values).tolist()
        parents = torch.cat(self._parents).tolist()
        depths = [d + 1 for d, t in enumerate(self._tokens) for _ in range(t.numel())]
        order = sorted(range(self.size), key=lambda p: (-values[p], depths[p], p))
        admitted = [False] * self.size
        kept = 0
        for p in order:
            if kept == n_nodes:
                break
            parent = parents[p]
            if parent < 0 or admitted[parent]:
                admitted[p] = True
                kept += 1
        chosen = [p for p in range(self.size) if admitted[p]]  # pool order is level-major
        tree_index = {p: i + 1 for i, p in enumerate(chosen)}
        return DraftTree(
            tokens=[root_token] + [tokens[p] for p in chosen],
            parents=[-1] + [tree_index.get(parents[p], 0) for p in chosen],
            depths=[0] + [depths[p] for p in chosen],
            values=[0.0] + [values[p] for p in chosen],
        )


@dataclass
class DraftTree:
    """Root (index 0) + selected nodes; parents[i] < i for i >= 1; values[i] = log path value (root 0)."""

    tokens: list[int]
    parents: list[int]
    depths: list[int]
    values: list[float] | None = None

    @classmethod
    def root_only(cls, root_token: int) -> "DraftTree":
        return cls(tokens=[root_token], parents=[-1], depths=[0], values=[0.0])

    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def max_depth(self) -> int:
        return max(self.depths)

    def children(self) -> list[list[int]]:
        kids: list[list[int]] = [[] for _ in self.tokens]
        for i in range(1, len(self.tokens)):
            kids[self.parents[i]].append(i)
        return kids

    def best_children(self) -> list[int]:
        """Per node: the tree index of its best-valued child (ties, or a tree without values: the lower index),
        -1 for a leaf. Following it from a node gives the path verification walks if the draft's most likely
        branch is right."""
        best = [-1] * len(self.tokens)
        for i in range(1, len(self.tokens)):
            b = best[self.parents[i]]
            if b < 0 or (self.values is not None and self.values[i] > self.values[b]):
                best[self.parents[i]] = i
        return best

    def ancestor_mask(self) -> torch.Tensor:
        """[N, N] bool: M[i, j] iff j is i or an ancestor of i (column 0 all True)."""
        n = len(self.tokens)
        bits = [1]  # per node, its ancestors and itself as the bits of an int (parents precede children)
        for i in range(1, n):
            bits.append(bits[self.parents[i]] | (1 << i))
        powers = 1 << torch.arange(n, dtype=torch.long) if n < 63 else None
        if powers is not None:
            return (torch.tensor(bits, dtype=torch.long)[:, None] & powers[None, :]) != 0
        return torch.tensor([[(b >> j) & 1 for j in range(n)] for b in bits], dtype=torch.bool)

    def visibility(self, committed: int, device) -> torch.Tensor:
        """[N, committed + N] bool: every node sees the committed prefix, its ancestors and itself.
        (The target turns it into an additive float mask: 0 where visible, finfo.min elsewhere.)"""
        n = len(self.tokens)
        visible = torch.ones(n, committed + n, dtype=torch.bool)
        visible[:, committed:] = self.ancestor_mask()
        return visible.to(device)

    def position_ids(self, committed: int, device) -> torch.Tensor:
        """[1, N]: committed + depth (never an arange over the flattened tree)."""
        return (committed + torch.tensor(self.depths, device=device))[None]

    def path_to(self, node: int) -> list[int]:
        """Tree indices root -> node."""
        path = [node]
        while self.parents[path[-1]] >= 0:
            path.append(self.parents[path[-1]])
        return path[::-1]
