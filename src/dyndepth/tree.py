"""The draft pool, the rerank to the verified tree, and the tree's flattened tensors.

A ``DraftPool`` holds every candidate node of one step. The head's growth (``drafters/eagle.py``) adds one depth
at a time (``add_level``: a *level*, best children first); a model-free source (``drafters/suffix.py`` via
``drafters/hybrid.py``) adds explicit nodes after the head's levels (``add_nodes``: any parents and depths), and a
suffix node that proposes the same token under the same parent as a head node is merged into it, so siblings stay
distinct tokens. Each node has a *source* (``HEAD``, ``SUFFIX`` or both).

``DraftPool.select`` keeps the ``n_nodes`` nodes with the highest rank over all depths (EAGLE-2's rerank),
admitting a node only when its parent is already in, so the result is always a connected tree even when scores
tie. The rank is the draft's path value for a pool of head nodes alone; a pool with model-free nodes carries
``accept_logp``, every node's calibrated log P(accepted), so both sources rerank on one scale. The
``DraftTree`` holds the root plus those nodes in pool order (every parent precedes its children) and builds what
the target's verification forward needs: the ancestor mask and the depth-based position ids.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

HEAD, SUFFIX = 1, 2  # node sources, as bits: a merged node is HEAD | SUFFIX


class DraftPool:
    """Every node drafted in one step. Pool index p: tokens[p], values[p] (log path value: the head's draft value
    for a head node, the suffix estimate for a node only the suffix proposed), parents[p] (pool index of the
    parent, -1 = root), depths[p] (1-based). The head's levels come first (pool indices 0 .. head_size - 1), explicit
    nodes after them."""

    def __init__(self):
        self._tokens: list[torch.Tensor] = []  # per chunk (a head level or a batch of explicit nodes): [m] token ids
        self._values: list[torch.Tensor] = []  # per chunk: [m] float log path values
        self._parents: list[torch.Tensor] = []  # per chunk: [m] pool indices (-1 = root)
        self._depths: list[torch.Tensor] = []  # per chunk: [m] depths (1-based)
        self.size = 0
        self.head_size = 0  # nodes in the head's levels (the first pool indices)
        self.beam_log_mass: torch.Tensor | None = None  # 0-d, logsumexp of the deepest beam (set by grow_pool)
        self.depth = 0  # levels the head grew (its draft forwards); explicit nodes may lie deeper
        self.suffix: dict[int, tuple[int, float]] = {}  # pool index -> (match length, log q) of a suffix node
        self.accept_logp: torch.Tensor | None = None  # [P] calibrated log P(accepted): the rank, when set
        self.side_logp: torch.Tensor | None = None  # [S] log P of suffix candidates not merged yet (hybrid growth)
        self.backlog = False  # the head's root forward took more than the last step's pairs (prompt, skipped drafts)
        self.head_budget: int | None = None  # most nodes only the head proposed that select() keeps (None: any)

    def add_level(self, tokens: torch.Tensor, values: torch.Tensor, parents: torch.Tensor) -> torch.Tensor:
        """Append one depth of head nodes; returns their pool indices [m]."""
        if self.size != self.head_size:
            raise RuntimeError("head levels must come before explicit nodes")
        m = tokens.numel()
        start = self.size
        self._append(tokens.reshape(-1), values.reshape(-1).float(), parents.reshape(-1).long(),
                     torch.full((m,), self.depth + 1, dtype=torch.long, device=tokens.device))
        self.head_size += m
        self.depth += 1
        return torch.arange(start, start + m, device=tokens.device)

    def add_nodes(self, tokens: list[int], values: list[float], parents: list[int], depths: list[int]) -> int:
        """Append explicit nodes (each parent before its children, parents as pool indices); returns the first's
        pool index."""
        start = self.size
        if tokens:
            device = self._tokens[0].device if self._tokens else None
            self._append(torch.tensor(tokens, dtype=torch.long, device=device),
                         torch.tensor(values, dtype=torch.float32, device=device),
                         torch.tensor(parents, dtype=torch.long, device=device),
                         torch.tensor(depths, dtype=torch.long, device=device))
        return start

    def _append(self, tokens, values, parents, depths) -> None:
        self._tokens.append(tokens)
        self._values.append(values)
        self._parents.append(parents)
        self._depths.append(depths)
        self.size += tokens.numel()

    # -- what a cost-aware policy reads (vectorised, on the pool's device) ----------------------------------------
    def all_values(self) -> torch.Tensor:
        """[P] log path values of every pool node, in pool order."""
        return torch.cat(self._values) if self._values else torch.zeros(0)

    def all_depths(self) -> torch.Tensor:
        """[P] depth (1-based) of every pool node."""
        return torch.cat(self._depths) if self._depths else torch.zeros(0, dtype=torch.long)

    def all_parents(self) -> torch.Tensor:
        """[P] parent pool index of every node (-1 = root)."""
        return torch.cat(self._parents) if self._parents else torch.zeros(0, dtype=torch.long)

    def all_tokens(self) -> torch.Tensor:
        """[P] token id of every node."""
        return torch.cat(self._tokens) if self._tokens else torch.zeros(0, dtype=torch.long)

    def level(self, d: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The head's depth d + 1 (d 0-based): tokens [m], log values [m], parents [m] (pool indices, -1 = root)."""
        if not 0 <= d < self.depth:
            raise IndexError(f"the head grew {self.depth} levels, not {d + 1}")
        return self._tokens[d], self._values[d], self._parents[d]

    def last_level_child_logp(self) -> torch.Tensor:
        """[parents, K] log-probability of each parent's j-th best child at the head's deepest level (children of a
        parent are added best first, K = the beam width); level 1's parent is the root."""
        values = self._values[self.depth - 1]
        k = self._values[0].numel()
        if self.depth == 1:
            return values.reshape(1, -1)
        parent_values = self.all_values()[self._parents[self.depth - 1]]  # [m]
        return (values - parent_values).reshape(-1, k)

    def sources(self) -> list[int]:
        """[P] each node's source bits (HEAD, SUFFIX or both)."""
        return [(HEAD if p < self.head_size else 0) | (SUFFIX if p in self.suffix else 0) for p in range(self.size)]

    def ranks(self) -> torch.Tensor:
        """[P] what the rerank orders by: the calibrated log P(accepted) when set, else the path values."""
        return self.accept_logp if self.accept_logp is not None else self.all_values()

    def select(self, root_token: int, n_nodes: int) -> "DraftTree":
        """Rerank: the ``n_nodes`` best nodes by (rank desc, value desc, depth asc, pool index asc),
        ancestor-closed, with at most ``head_budget`` of them proposed by the head alone."""
        if self.size == 0 or n_nodes <= 0:
            return DraftTree.root_only(root_token)
        tokens = self.all_tokens().tolist()
        values = self.all_values().tolist()
        parents = self.all_parents().tolist()
        depths = self.all_depths().tolist()
        if self.accept_logp is None:
            ranks = values
            order = sorted(range(self.size), key=lambda p: (-values[p], depths[p], p))
        else:
            ranks = self.accept_logp.tolist()
            order = sorted(range(self.size), key=lambda p: (-ranks[p], -values[p], depths[p], p))
        admitted = [False] * self.size
        kept, head_left = 0, self.size if self.head_budget is None else self.head_budget
        for p in order:
            if kept == n_nodes:
                break
            head_only = p < self.head_size and p not in self.suffix
            parent = parents[p]
            if (parent < 0 or admitted[parent]) and (head_left > 0 or not head_only):
                admitted[p] = True
                kept += 1
                head_left -= head_only
        chosen = [p for p in range(self.size) if admitted[p]]  # pool order: parents precede children
        tree_index = {p: i + 1 for i, p in enumerate(chosen)}
        sources = self.sources() if self.suffix or self.head_size < self.size else None
        return DraftTree(
            tokens=[root_token] + [tokens[p] for p in chosen],
            parents=[-1] + [tree_index.get(parents[p], 0) for p in chosen],
            depths=[0] + [depths[p] for p in chosen],
            values=[0.0] + [values[p] for p in chosen],
            ranks=None if self.accept_logp is None else [0.0] + [ranks[p] for p in chosen],
            sources=None if sources is None else [0] + [sources[p] for p in chosen],
            pool_index=[-1] + chosen,
        )


@dataclass
class DraftTree:
    """Root (index 0) + selected nodes; parents[i] < i for i >= 1; values[i] = log path value (root 0); ranks[i]:
    what the rerank ordered by when it was not the value (calibrated log P(accepted)); sources[i]: the node's
    source bits (None: every node is the head's); pool_index[i]: the node's index in its pool (root -1)."""

    tokens: list[int]
    parents: list[int]
    depths: list[int]
    values: list[float] | None = None
    ranks: list[float] | None = None
    sources: list[int] | None = None
    pool_index: list[int] | None = None

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
        """Per node: the tree index of its best child by rank (ties, or a tree without values: the lower index),
        -1 for a leaf. Following it from a node gives the path verification walks if the draft's most likely
        branch is right."""
        score = self.ranks if self.ranks is not None else self.values
        best = [-1] * len(self.tokens)
        for i in range(1, len(self.tokens)):
            b = best[self.parents[i]]
            if b < 0 or (score is not None and score[i] > score[b]):
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
