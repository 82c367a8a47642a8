"""The draft stage of an engine step: where each row's candidate nodes come from.

    drafter "head"     the EAGLE head grows a pool per row (drafters/eagle.py)
    drafter "suffix"   suffix matches alone (drafters/suffix.py): no head, any causal LM; the default without a head
    drafter "hybrid"   the default with a head: both in one pool per row, merged and reranked on calibrated
                       P(accepted) (drafters/hybrid.py); a row whose suffix proposal alone scores SWITCH_SCORE or
                       more skips the head that step and keeps that proposal whole (the head's draft costs a fifth
                       of a SmolLM2 step and adds little to a long, confident match), so hybrid drafts as
                       ``switch`` where the suffix is sure and merges where it is not
    drafter "switch"   either/or per row and step, as shipped hybrids do: the suffix tree when its score (the sum of
                       its nodes' frequency estimates, SuffixDecoding's expected accepted tokens) is at least
                       SWITCH_SCORE, else the head's (the baseline ``hybrid`` is measured against)

Per row: ``open`` builds the row's SuffixDrafter when its prefill picks the first root (prompt + root), ``commit``
extends it with each step's accepted tokens and bonus, ``close`` puts the row's output into the shared cache of
earlier outputs (``suffix_cache`` outputs, FIFO; not thread-safe: only the engine's thread calls the stage).

The calibrations (suffix counts -> P(accepted), and hybrid's head side) learn across rows and calls, so a row's trees
depend on what ran before it. A row that samples with a seed gets its own, started from the prior, so its tree
shapes, hence the random draws its verification makes, depend on its own tokens alone: a seed gives the same text
on any call, alone or batched (greedy rows need no such care: their output never depends on the tree).

``pools`` returns one pool per decode row (None: the row verifies its root alone this step). The depth policy sees
both sources: the head grows under its ``should_stop`` (auto also sees the suffix candidates beside the growing
pool, ``pool.side_logp``, so the two spend one node budget), the suffix candidates are cut by its
``suffix_depth`` rule on their calibrated path probabilities (ddd: DDD's check on the suffix levels; but hybrid
keeps a sure proposal whole, as the switch does: the rule's threshold, made for a head's beam, cut sure matches at
depth 5-6 where the switch went on to 8, docs/BENCHMARKS.md), and
``tree_sizes`` sizes the merged pools. ``observe`` teaches the suffix calibration (and, unless the policy owns it,
the head calibration) from each verified tree.
"""

from __future__ import annotations

import torch

from dyndepth.drafters.eagle import DraftInput, grow_pools
from dyndepth.drafters.hybrid import merge, score, suffix_pool
from dyndepth.drafters.suffix import SuffixCache, SuffixDrafter, SuffixOptions
from dyndepth.drafters.suffix_calibration import SuffixCalibration
from dyndepth.policies.calibration import AcceptanceCalibration
from dyndepth.tree import HEAD, DraftPool, DraftTree

DRAFTERS = ("head", "suffix", "hybrid", "switch")
DEFAULT_DRAFTER = "hybrid"  # with a head; without one, "suffix" (resolve_drafter). Why: docs/BENCHMARKS.md, issue 26
SWITCH_SCORE = 3.0  # the either/or rule's threshold: suffix when its proposal expects >= 3 accepted tokens


def resolve_drafter(drafter: str | None, has_head: bool) -> str:
    """The drafter a decoder gets: the one named, else ``hybrid`` where a head is present and ``suffix`` where none
    is (any causal LM speeds up on text that repeats its context, no head needed)."""
    if drafter is not None:
        return drafter
    return DEFAULT_DRAFTER if has_head else "suffix"


def beam_width(top_k: int, levels: list[int], policy) -> int:
    """The beam each level keeps: ``top_k``, or fewer where no row's tree can hold that many nodes and the policy's
    rule does not read the beam. A tree keeps at most n = max(levels) drafted nodes, the n best by path value, and a
    node's value never exceeds its parent's: every kept node has a kept parent, and the kept nodes of a level are
    among its n best, so a beam of n still drafts every node a tree keeps (and what it drafts beyond the wide beam
    ranks below them). The same trees, then, for less drafting: a 4-token tree's levels expand 3 nodes per row
    instead of 10 (at 8 SmolLM2 rows, 14 instead of 24 ms a step). A hybrid pool ranks on calibrated P(accepted),
    which follows the path value within a level but not exactly, so its tree may rarely differ (lossless either
    way)."""
    n = max(levels, default=top_k)
    return top_k if policy.reads_beam(n) else max(1, min(top_k, n))


class DraftStage:
    def __init__(self, kind: str, policy, suffix_options: SuffixOptions | None = None, suffix_cache: int = 0):
        if kind not in DRAFTERS:
            raise ValueError(kind)
        self.kind = kind
        self.uses_head = kind != "suffix"
        self.uses_suffix = kind != "head" and policy.max_depth > 0
        self.options = suffix_options or SuffixOptions()
        self.cache = SuffixCache(suffix_cache) if suffix_cache and self.uses_suffix else None
        self.suffix_calibration = SuffixCalibration() if self.uses_suffix else None
        self.head_calibration = None  # hybrid: the head's side of the one scale (the auto policy's own map)
        self._own_head_calibration = False
        if kind == "hybrid":
            shared = getattr(policy, "calibration", None)
            self.head_calibration = shared if shared is not None else AcceptanceCalibration()
            self._own_head_calibration = shared is None

    def describe(self) -> dict:
        d = {"drafter": self.kind}
        if self.uses_suffix:
            d["suffix_cache"] = self.cache.max_sequences if self.cache is not None else 0
        return d

    # -- per row ----------------------------------------------------------------------------------------------
    def open(self, seq) -> None:
        """The row's prefill picked its first root: its suffix state is the prompt plus that root (and, for a seeded
        sampling row, its own calibrations)."""
        if self.uses_suffix:
            seq.suffix = SuffixDrafter(seq.prompt.tolist(), cache=self.cache, options=self.options)
            seq.suffix.extend([seq.root])
            if seq.generator is not None and seq.request.request.seed is not None:
                head = AcceptanceCalibration() if self._own_head_calibration else self.head_calibration
                seq.calibrations = (SuffixCalibration(), head)

    def _calibrations(self, seq) -> tuple:
        """(suffix calibration, head calibration) the row reads and teaches."""
        own = getattr(seq, "calibrations", None)
        return own if own is not None else (self.suffix_calibration, self.head_calibration)

    def commit(self, seq, tokens: list[int]) -> None:
        if seq.suffix is not None:
            seq.suffix.extend(tokens)

    def close(self, seq) -> None:
        """The row leaves: its output joins the cache of earlier outputs (not a failed row's)."""
        if seq.suffix is not None:
            if seq.error is None:
                seq.suffix.finish(seq.emitted)  # what the row output (a stop may end it inside a step's tokens)
            seq.suffix = None

    # -- a step -----------------------------------------------------------------------------------------------
    def pools(self, dec, rows: list, caps: list[int], base: int) -> list[DraftPool | None]:
        """One pool per row of ``rows`` (decode rows; caps: tokens each may verify, root included; base: the step's
        tokens besides drafted nodes), None where the row does not draft this step."""
        policy = dec.policy
        pools: list[DraftPool | None] = [None] * len(rows)
        drafting = [i for i in range(len(rows)) if policy.max_depth > 0 and caps[i] > 1]
        if not drafting or not policy.drafts(len(drafting), base):
            return pools
        scored, sure = {}, set()
        if self.uses_suffix:
            for i in drafting:
                s = score(rows[i].suffix.propose(max_nodes=caps[i] - 1), self._calibrations(rows[i])[0])
                if s.proposal.score >= SWITCH_SCORE:  # the whole proposal's score, before the depth rule
                    sure.add(i)
                whole = self.kind == "switch" or (self.kind == "hybrid" and i in sure)  # as the switch drafts it
                if not whole and len(s):
                    s = s.cut(policy.suffix_depth(s.depths, s.log_p, dec.top_k))
                scored[i] = s
        head_rows = [i for i in drafting if i not in sure] if self.uses_head else []
        if head_rows:
            made = [DraftPool() for _ in head_rows]
            if self.kind == "hybrid":  # the suffix candidates count against the budget while the head grows
                for pool, i in zip(made, head_rows):
                    if len(scored[i]):
                        pool.side_logp = torch.tensor(scored[i].log_p, dtype=torch.float32)
            for pool, i in zip(made, head_rows):
                pool.backlog = rows[i].pair_steps > 1
            levels = [caps[i] - 1 for i in head_rows]  # a tree of caps[i] tokens holds no node deeper than that
            if self.kind != "head" and not policy.prices_nodes:
                # beside suffix matches a cost-blind tree keeps the head's own share (dec.head_tokens), not all of N
                levels = [min(n, dec.head_tokens - 1) for n in levels]
                for pool, n in zip(made, levels):
                    pool.head_budget = n
            inputs = [DraftInput(rows[i].draft_kv, *rows[i].take_pairs()) for i in head_rows]
            grown = grow_pools(dec.head, inputs, policy, beam_width(dec.top_k, levels, policy), pools=made,
                               levels=levels)
            tables = {}  # id(head calibration) -> its table, once per step
            for i, pool in zip(head_rows, grown):
                pool.side_logp = None
                if self.kind == "hybrid" and len(scored[i]):
                    cal = self._calibrations(rows[i])[1]
                    if id(cal) not in tables:
                        tables[id(cal)] = cal.table()
                    merge(pool, scored[i], cal, tables[id(cal)])
                pools[i] = pool
        for i in drafting:
            if pools[i] is None and len(scored.get(i, ())):
                pools[i] = suffix_pool(scored[i])
        return pools

    def observe(self, seq, pool: DraftPool | None, tree: DraftTree, path: list[int]) -> None:
        """One row's verified tree: its suffix nodes whose parent was accepted teach the row's suffix calibration;
        its head nodes the head calibration when the stage owns it (the auto policy teaches its own)."""
        if pool is None or len(tree) == 1:
            return
        suffix_calibration, head_calibration = self._calibrations(seq)
        on_path = set(path)
        if pool.suffix:
            seen = []
            for i in range(1, len(tree)):
                info = pool.suffix.get(tree.pool_index[i])
                if info is not None and tree.parents[i] in on_path:
                    seen.append((info[0], info[1], i in on_path))
            if seen:
                suffix_calibration.update(seen)
        if self._own_head_calibration and pool.head_size:
            learn = None if tree.sources is None else [True] + [bool(s & HEAD) for s in tree.sources[1:]]
            head_calibration.update(tree.values, tree.parents, tree.depths,
                                         [i in on_path for i in range(len(tree))], learn=learn)
