"""Suffix drafting: propose a small tree of continuations of the context from text seen before (SuffixDecoding).

The text searched is the request's own context (prompt + every committed token) and, optionally, a FIFO cache
of earlier requests' outputs (``SuffixCache``). For the current context ``c`` (its last token is the step's
root), every earlier *occurrence* of the root token is a position ``j`` with ``text[j] == c[-1]``; its *match
length* ``L(j)`` is the number of tokens ``text[..j]`` shares with the end of ``c`` (capped at ``max_match``).

For a match length ``m``, the occurrences with ``L(j) >= m`` are the places where ``c``'s last ``m`` tokens
appeared; what followed each one is a continuation. Stacked, the continuations form a trie: a node's *count* is
the number of occurrences whose continuation spells the node's path, and (as in SuffixDecoding, arXiv
2411.04975) its estimated probability is frequency-based::

    p(root) = 1,    p(node) = p(parent) * count(node) / count(parent)      (count(root) = occurrences)

``p`` never increases along a path (a continuation that ends, at the end of the text or of a cached output,
still counts at its last node: the children's counts may sum to less than their parent's). The proposal for
``m`` grows that trie best-first by ``p``, keeping nodes with ``p >= min_prob`` and depth <= ``spec_factor * m
+ spec_offset`` (and <= ``max_depth``), until ``max_nodes``; its *score* is the sum of its nodes' ``p`` (the
estimate of accepted tokens). Every ``m`` from ``min_match`` up is tried and the best score wins, ties to the
longer match; only the distinct values of ``L`` need trying (between two of them the occurrences are the same
and a shorter ``m`` only lowers the depth cap), and a shorter ``m`` is skipped when its depth cap cannot beat
the best score so far. The cache and the context are searched as one text, i.e. one suffix tree over both.

Data structure: per text, an append-only token list and, per token id, the ascending list of its positions
(``extend`` is O(1) per token). ``propose`` walks back from the ``max_occurrences`` most recent occurrences of
the root token to get their match lengths, then groups occurrences by their next tokens while growing the
tree: its cost grows with the number of occurrences and the tree's size, not with the context's length
(tens of microseconds for a few thousand tokens of context; see ``scripts/suffix_replay.py --timing``).

Tie-breaking is fixed so results are reproducible: nodes are popped by (p desc, depth asc, path's tokens asc).
The proposal lists nodes in that order, so its first ``k`` nodes always form a connected tree.
"""

from __future__ import annotations

import heapq
import math
from bisect import bisect_left
from collections import deque
from dataclasses import dataclass, field
from typing import Iterable

from dyndepth.validate import OptionError, is_int

SEPARATOR = -1  # ends each cached output, so no match or continuation crosses from one output into the next


@dataclass(frozen=True)
class SuffixOptions:
    """Knobs of a suffix proposal (SuffixDecoding's names in brackets)."""

    max_depth: int = 32  # deepest level proposed; a long, confident match may reach it [max_spec_tokens]
    max_nodes: int = 16  # nodes per proposal (the tree's budget for suffix nodes)
    min_prob: float = 0.1  # keep a node only if its estimated path probability is at least this [min_token_prob]
    min_match: int = 1  # shortest context suffix that may be matched
    max_match: int = 32  # longest context suffix compared (longer matches count as this long)
    # A match of m tokens proposes at most spec_factor * m + spec_offset levels [alpha]. 2.0 as in the paper's
    # artifact: on the replay's tuning half (scripts/suffix_replay.py) it gave most tau per verified node.
    spec_factor: float = 2.0
    spec_offset: float = 0.0
    max_occurrences: int = 256  # most recent occurrences of the root token examined, per text

    def __post_init__(self):
        for name in ("max_depth", "max_nodes", "min_match", "max_match", "max_occurrences"):
            value = getattr(self, name)
            if not is_int(value) or value < 1:
                raise OptionError(f"suffix {name}", value, "must be an integer >= 1")
        if self.min_match > self.max_match:
            raise OptionError("suffix min_match", self.min_match, f"must be <= max_match ({self.max_match})")
        for name in ("min_prob", "spec_factor", "spec_offset"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
                raise OptionError(f"suffix {name}", value, "must be a number")
        if not 0.0 <= self.min_prob <= 1.0:
            raise OptionError("suffix min_prob", self.min_prob, "must be in [0, 1]")
        if self.spec_factor < 0:
            raise OptionError("suffix spec_factor", self.spec_factor, "must be >= 0")

    def depth_cap(self, match_len: int) -> int:
        """Deepest level a match of ``match_len`` tokens may propose."""
        return min(self.max_depth, int(self.spec_factor * match_len + self.spec_offset))


@dataclass
class SuffixProposal:
    """A tree of suffix nodes hanging off the step's root. Lists map 1:1 onto nodes, best-first: path values
    never increase, so every prefix of the lists is a connected tree."""

    tokens: list[int] = field(default_factory=list)  # [n] token ids
    parents: list[int] = field(default_factory=list)  # [n] index of the parent in these lists, -1 = the root
    depths: list[int] = field(default_factory=list)  # [n] 1-based
    values: list[float] = field(default_factory=list)  # [n] log of the estimated path probability p
    counts: list[int] = field(default_factory=list)  # [n] occurrences whose continuation passes the node
    match_len: int = 0  # context suffix the occurrences share (0: nothing proposed)
    occurrences: int = 0  # occurrences of that suffix (the root's count)
    score: float = 0.0  # sum of the nodes' p: the estimate of accepted tokens

    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def probs(self) -> list[float]:
        return [math.exp(v) for v in self.values]

    def truncated(self, n: int) -> "SuffixProposal":
        """The first ``n`` nodes (still a connected tree)."""
        n = max(0, n)
        probs = self.probs[:n]
        return SuffixProposal(self.tokens[:n], self.parents[:n], self.depths[:n], self.values[:n],
                              self.counts[:n], self.match_len if n else 0, self.occurrences if n else 0,
                              sum(probs))

    def paths(self) -> list[tuple[int, ...]]:
        """Each node's token path from the root (exclusive) to the node (inclusive)."""
        out: list[tuple[int, ...]] = []
        for tok, par in zip(self.tokens, self.parents):
            out.append((out[par] if par >= 0 else ()) + (tok,))
        return out


class _Text:
    """An append-only token list (several texts joined by SEPARATOR) and, per token id, its ascending positions.
    Positions before ``start`` were evicted and are never returned."""

    def __init__(self):
        self.tokens: list[int] = []
        self.where: dict[int, list[int]] = {}
        self.start = 0

    def append(self, tokens: Iterable[int]) -> None:
        seq, where = self.tokens, self.where
        for t in tokens:
            positions = where.get(t)
            if positions is None:
                where[t] = [len(seq)]
            else:
                positions.append(len(seq))
            seq.append(t)

    def recent(self, token: int, before: int, limit: int) -> list[int]:
        """Positions p of ``token`` with start <= p < before: the ``limit`` most recent, ascending."""
        positions = self.where.get(token)
        if not positions:
            return []
        hi = len(positions)
        if positions[-1] >= before:
            hi = bisect_left(positions, before)
        lo = max(hi - limit, 0)
        if positions[lo] < self.start:
            lo = bisect_left(positions, self.start, lo, hi)
        return positions[lo:hi]


class SuffixCache:
    """A bounded FIFO of earlier requests' outputs, searched by every drafter that holds it (``--suffix-cache N``).
    Not thread-safe: the engine that owns it serialises ``add`` and ``propose``."""

    def __init__(self, max_sequences: int):
        if not is_int(max_sequences) or max_sequences < 1:
            raise OptionError("suffix_cache", max_sequences, "must be an integer >= 1")
        self.max_sequences = int(max_sequences)
        self._text = _Text()
        self._spans: deque[tuple[int, int]] = deque()  # (start, end) of each cached output, oldest first

    def __len__(self) -> int:
        return len(self._spans)

    @property
    def tokens(self) -> int:
        """Tokens held (cached outputs only, separators excluded)."""
        return sum(end - start for start, end in self._spans)

    def add(self, tokens: Iterable[int]) -> None:
        """Cache one output; the oldest is evicted beyond ``max_sequences``."""
        tokens = _token_list(tokens)
        if not tokens:
            return
        start = len(self._text.tokens)
        self._text.append(tokens)
        self._text.append((SEPARATOR,))
        self._spans.append((start, start + len(tokens)))
        while len(self._spans) > self.max_sequences:
            self._spans.popleft()
            self._text.start = self._spans[0][0]
        if self._text.start > len(self._text.tokens) - self._text.start:  # mostly evicted: rebuild, O(1) amortised
            live = [self._text.tokens[s:e] for s, e in self._spans]
            self._text, self._spans = _Text(), deque()
            for seq in live:
                start = len(self._text.tokens)
                self._text.append(seq)
                self._text.append((SEPARATOR,))
                self._spans.append((start, start + len(seq)))

    def sequences(self) -> list[list[int]]:
        """The cached outputs, oldest first."""
        return [self._text.tokens[s:e] for s, e in self._spans]


class SuffixDrafter:
    """Suffix drafting for one request: its context (prompt + committed tokens) and an optional shared cache.

        drafter = SuffixDrafter(prompt_ids + [root], cache=cache)     # the context ends with the step's root
        proposal = drafter.propose()                                  # nodes hanging off the root
        drafter.extend(accepted + [bonus])                            # after each step's commit
        drafter.finish()                                              # at the end: the output enters the cache
    """

    def __init__(self, context: Iterable[int] = (), cache: SuffixCache | None = None,
                 options: SuffixOptions | None = None, **knobs):
        if options is not None and knobs:
            raise TypeError("pass either options or keyword knobs, not both")
        self.options = options if options is not None else SuffixOptions(**knobs)
        self.cache = cache
        self._text = _Text()
        self._text.append(_token_list(context))
        self.prompt_len = len(self._text.tokens)  # tokens given at construction (not cached by finish)
        self._finished = False

    def __len__(self) -> int:
        return len(self._text.tokens)

    @property
    def tokens(self) -> list[int]:
        """The context: prompt + committed tokens (do not modify)."""
        return self._text.tokens

    def extend(self, tokens: Iterable[int]) -> None:
        """Append committed tokens (amortised O(1) each)."""
        self._text.append(_token_list(tokens))

    def finish(self, length: int | None = None) -> None:
        """Put the tokens committed after construction (the first ``length`` of them, e.g. what was emitted before
        a stop) into the cache (once); the drafter stays usable."""
        if self.cache is not None and not self._finished:
            end = len(self._text.tokens) if length is None else self.prompt_len + max(0, length)
            self.cache.add(self._text.tokens[self.prompt_len:end])
        self._finished = True

    def propose(self, max_nodes: int | None = None, max_depth: int | None = None) -> SuffixProposal:
        """Continuations of the context after its last token (the root). max_nodes / max_depth: this step's
        budget, at most the options'."""
        opts = self.options
        max_nodes = opts.max_nodes if max_nodes is None else min(max_nodes, opts.max_nodes)
        max_depth = opts.max_depth if max_depth is None else min(max_depth, opts.max_depth)
        ctx = self._text.tokens
        n = len(ctx)
        if n == 0 or max_nodes < 1 or max_depth < 1:
            return SuffixProposal()
        cap = min(opts.max_match, n)
        rev = ctx[n - cap:][::-1]  # rev[k] = ctx[n - 1 - k]; rev[0] is the root
        root = rev[0]
        rows: list[tuple[list[int], int]] = []  # (text tokens, occurrence position)
        lengths: list[int] = []
        texts = [(self._text, n - 1)]  # the root's own position is not an occurrence
        if self.cache is not None:
            texts.append((self.cache._text, len(self.cache._text.tokens)))
        for text, before in texts:
            seq, start = text.tokens, text.start
            for j in text.recent(root, before, opts.max_occurrences):
                limit = min(cap, j - start + 1)  # never match into the evicted part
                length = 1
                while length < limit and seq[j - length] == rev[length]:
                    length += 1
                rows.append((seq, j))
                lengths.append(length)
        return _best_tree(rows, lengths, opts, max_nodes, max_depth)


def _best_tree(rows, lengths, opts: SuffixOptions, max_nodes: int, max_depth: int) -> SuffixProposal:
    best = SuffixProposal()
    for m in sorted(set(lengths), reverse=True):
        if m < opts.min_match:
            break
        cap = min(opts.depth_cap(m), max_depth)
        # The score is at most 1 per level and 1 per node, and shorter matches never get a deeper cap.
        if cap < 1 or min(cap, max_nodes) <= best.score:
            break
        chosen = [r for r, length in zip(rows, lengths) if length >= m]
        proposal = _grow(chosen, cap, max_nodes, opts.min_prob)
        if proposal.score > best.score:
            proposal.match_len, proposal.occurrences = m, len(chosen)
            best = proposal
    return best


def _grow(rows, cap: int, max_nodes: int, min_prob: float) -> SuffixProposal:
    """Best-first growth of the continuation trie of ``rows`` (text, occurrence position)."""
    out = SuffixProposal()
    heap: list = []
    _push_children(heap, rows, 0, 1.0, (), -1, min_prob)
    while heap and len(out.tokens) < max_nodes:
        neg_p, depth, path, parent, node_rows = heapq.heappop(heap)
        index = len(out.tokens)
        out.tokens.append(path[-1])
        out.parents.append(parent)
        out.depths.append(depth)
        out.values.append(math.log(-neg_p))
        out.counts.append(len(node_rows))
        out.score += -neg_p
        if depth < cap:
            _push_children(heap, node_rows, depth, -neg_p, path, index, min_prob)
    return out


def _push_children(heap, rows, depth: int, p: float, path: tuple, parent: int, min_prob: float) -> None:
    """Group the rows of a node at ``depth`` by their next token; push the children with p >= min_prob."""
    groups: dict[int, list] = {}
    for row in rows:
        seq, j = row
        k = j + depth + 1
        if k < len(seq):
            t = seq[k]
            if t >= 0:
                group = groups.get(t)
                if group is None:
                    groups[t] = [row]
                else:
                    group.append(row)
    total = len(rows)
    for t, group in groups.items():
        q = p * (len(group) / total)
        if q >= min_prob:
            heapq.heappush(heap, (-q, depth + 1, path + (t,), parent, group))


def _token_list(tokens: Iterable[int]) -> list[int]:
    if hasattr(tokens, "tolist"):  # tensors and arrays
        tokens = tokens.tolist()
    out = [int(t) for t in tokens]
    if any(t < 0 for t in out):
        raise OptionError("token ids", min(out), "must be >= 0")
    return out
