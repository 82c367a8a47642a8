"""``auto``: the cost-aware policy. Each step it grows the tree while more levels raise the expected rate, then
verifies the number of nodes that maximises it.

    rate(tree) = E[tokens committed] / (t_draft(levels) + t_verify(N))
    E[tokens]  = 1 + sum over the tree's nodes of P(node accepted)      (a node is accepted iff its whole path is)

P(node accepted) comes from the calibration map (calibration.py): the learned conditional acceptance of each step
of the node's path, multiplied along it; the times from the cost model (costs.py, measured by dyndepth.calibrate).
The tree of N tokens is the root plus the N-1 best pool nodes by path value (the rerank's order, so E is computed
over exactly the nodes that would be verified), and for a pool

    best(pool, levels) = max over n of score(E_n, T_n),   E_n = 1 + cumsum(P sorted by value)[n-1],
                                                           T_n = t_draft(levels) + t_verify(n + 1)

The score is what ``objective`` maximises. ``run`` (the default) maximises the run's rate, total tokens / total
time: by the renewal-reward theorem that rate is E[tokens per step] / E[seconds per step], and the tree that
raises it most is the one that maximises E_n - lambda * T_n, where lambda is the run's rate itself (Dinkelbach's
method for ratio objectives; lambda is the running ratio of committed tokens to measured step seconds, with
memory ``cost_update_rate``; the first step, without a lambda, uses the step rate). ``step`` maximises each
step's own E_n / T_n, the issue's formula read per step: it spends too little on confident steps (their high
rate raises the bar) and too much on doubtful ones, so ``run`` is the one that wins the run.

After level d is grown, the next levels are predicted without running them: the beam node of rank i (by value)
gets as its j-th best child the path value  beam value + l[d + 1, i, j]  and P = P(beam node) * g(d + 1, l[d + 1,
i, j]), where l[d, i, j] is a running mean (rate CHILD_RATE) of the log-probability of the j-th best child of the
rank-i beam node at depth d over earlier steps (the children of a confident node are themselves confident, and
deep levels differ from shallow ones); until depth d + 1 has been grown once, the level just grown stands in. A
predicted level's beam is its k best predicted nodes. Growth goes on while

    best(pool + predicted levels d + 1 .. d + j, d + j) > best(pool, d)   for some j <= lookahead

(a level that adds little can still open a confident one below it), and never past ``max_depth``.
``tree_size`` then returns the argmax N of best(pool, depth), at most the decoder's total_tokens (and, for a few
steps after the cost model rebased a curve the steps contradicted, at most its ``next_explore`` size, so that the
steps measure the curve's slope again). ``observe`` feeds each step's verified nodes to the calibration and its
measured times to the cost model.

In a batch (engine/step.py) every row grows its own tree with this rule, and the rows share one verification
forward, so the node budget is chosen for the whole step: ``tree_sizes`` takes every row's nodes in its own rerank
order, merges them by P(accepted) (the next node of whichever row gains most), and keeps the number n of merged nodes
that maximises the batch's score, E = rows + sum of the n P's against T = t_draft + t_verify(base + n), where base
is the step's other tokens (every row's root, prompt chunks). The verify curve is priced from ``base``, not from one
token: as load rises its slope there is steeper and the run rate lambda higher, so the trees shrink towards plain
decoding. A row's depth decision prices its nodes the same way, at the previous step's base, and its draft levels at
the level cost shared by the rows that drafted.

Whether a step drafts at all is measured: per class of step (its batch-size class, 1, 2-3, 4-7, 8-15, ... rows, and
whether it carries a prompt chunk) the policy keeps running means of the committed tokens and the seconds of steps
that drafted and of steps that did not. A step without a chunk drafts when drafting has been faster (its rate is
what the time spent in that class yields). A step with a chunk is priced differently: the chunk's seconds are paid
in either mode and such steps come once per new request, not per token, so what a mode adds is its tokens, each
worth the seconds the regular steps take to make one: the mode with the higher tokens - r * seconds wins, r the
running rate of the steps without a chunk (comparing rates instead would favour drafting, whose extra tokens dilute
the chunk's fixed cost, on steps where it costs more than it adds). The seconds are those beyond the cost model's
price of the step's tokens besides drafted nodes (the chunk and the roots): chunks differ in size (up to the chunk
length, then a prompt's remainder), and the raw seconds of the few chunk steps each mode has measured said more
about the chunks they happened to carry than about the mode.

A class starts in the mode it is first priced to win (``_guess``): another class's measurements where they decide
it (speculation pays less as rows are added, so a smaller class where plain steps won says plain, a larger one
where drafting won says draft; a chunk step's class starts plain where its rows, or fewer, lost drafting without a
chunk), else the cost model: the rows' mean gain per node in rerank order (learnt from every drafting step) merged
round-robin over the class's rows, against the class's draft seconds (measured, or scaled by rows from the nearest
class that drafted) and t_verify; with nothing learnt yet, it drafts. After EXPLORE_AFTER steps it tries the other
mode (after EXPLORE_MAX steps where the cost model prices drafting below SURE_PLAIN of plain decoding from measured
draft times: on a CPU a wrong drafting step costs several plain steps, a wrong plain step only the tokens
speculation would have added), then the mode it is not using again after EXPLORE_EVERY steps, so it follows a load
that changes; a try that confirms the choice doubles the wait before the next (up to EXPLORE_MAX steps: on a CPU a
batch's drafting step can cost several plain steps, so frequent tries would cost more than they find), a try that
overturns it resets the wait. Every step counts but the first drafting step after plain ones, whose head catches up
on the pairs the plain steps skipped (a switch's one-off cost, which made every try of drafting look slower than
drafting is). A drafting step whose head catches up on a new row's prompt, or on a row the suffix drafted alone,
does count: those costs recur as long as the class drafts (under a server's churn they are most drafting steps, and
leaving them out measured drafting on its cheapest steps only). So a batch with speculation is not slower than the
same batch without it for long, and a batch where it cannot pay rarely drafts at all.

Everything per decision is a few vectorised ops over the pools' values (no per-node Python), for all rows of a batch
at once (``should_stop_rows`` stacks their pools; ``observe_batch`` learns their trees as one forest); like DDD's
check it reads one scalar back per level on CUDA.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from dyndepth.errors import DyndepthError
from dyndepth.policies.base import DepthPolicy
from dyndepth.policies.calibration import AcceptanceCalibration
from dyndepth.policies.costs import CostModel
from dyndepth.tree import HEAD

OBJECTIVES = ("run", "step")
EXPLORE_AFTER = 8  # steps of a batch-size class in its first mode before the first try of the other
EXPLORE_EVERY = 16  # steps before the first try of the mode not in use (and after a try that changed the choice)
EXPLORE_MAX = 256  # the longest wait between two tries (the wait doubles while tries confirm the choice)
SURE_PLAIN = 0.8  # a new class priced to draft at under this share of plain decoding's rate waits EXPLORE_MAX
CHILD_RATE = 0.1  # memory of the running mean of children's log-probabilities per (depth, beam rank, child rank)


@dataclass
class CostAwarePolicy(DepthPolicy):
    name = "auto"
    prices_nodes = True
    max_depth: int = 11  # most draft levels per step
    min_depth: int = 1  # levels always grown (level 1 comes with the root forward)
    lookahead: int = 2  # levels predicted ahead: grow while the best rate within this many more levels is higher
    prior_strength: float = 8.0  # pseudo-count of the calibration prior per cell (draft value = acceptance)
    update_rate: float = 0.02  # calibration memory: counts decay by 1 - update_rate per step (~50 steps)
    cost_update_rate: float = 0.05  # online correction of the measured cost curves, and the memory of the run rate
    objective: str = "run"  # "run": maximise tokens / time over the run (E - rate * T); "step": each step's E / T
    costs: CostModel | None = field(default=None, repr=False)
    calibration: AcceptanceCalibration | None = field(default=None, repr=False)
    n_max: int = 64  # set by the decoder to its total_tokens
    last: dict = field(default_factory=dict, repr=False)  # the latest step's decision (for the stats)
    _modes: dict = field(default_factory=dict, repr=False)  # (rows class, chunk?) -> {"draft"/"plain": rate, ...}
    _mode: tuple | None = field(default=None, repr=False)  # ((rows class, chunk?), drafted?, a try?) of this step
    _plain_run: int = field(default=0, repr=False)  # plain steps since the last drafting one (the head skipped them)
    _regular: list | None = field(default=None, repr=False)  # running means [tokens, seconds] of chunk-free steps
    _base: float = field(default=1.0, repr=False)  # tokens a step verifies besides one row's drafted nodes
    _rows: float = field(default=1.0, repr=False)  # rows that share a step's draft levels
    _child: dict = field(default_factory=dict, repr=False)  # depth -> [rows, K] running mean child log-probs
    _gain: torch.Tensor | None = field(default=None, repr=False)  # [n_max - 1] a row's mean P per rerank rank
    _draft_s: dict = field(default_factory=dict, repr=False)  # rows class -> [mean rows, mean draft seconds]
    _backlog: bool = field(default=False, repr=False)  # this step's head forward caught up on a backlog
    _tokens: float = field(default=0.0, repr=False)  # running means of committed tokens and seconds per step
    _seconds: float = field(default=0.0, repr=False)

    def __post_init__(self):
        if self.lookahead < 1:
            raise DyndepthError(f"auto: lookahead must be >= 1, got {self.lookahead}")
        if self.max_depth < 1 or not 1 <= self.min_depth <= self.max_depth:
            raise DyndepthError(f"auto: need 1 <= min_depth <= max_depth, got {self.min_depth}, {self.max_depth}")
        if not self.prior_strength > 0 or not 0 < self.update_rate < 1 or not 0 < self.cost_update_rate < 1:
            raise DyndepthError("auto: prior_strength must be > 0 and the update rates in (0, 1)")
        if self.objective not in OBJECTIVES:
            raise DyndepthError(f"auto: objective must be one of {', '.join(OBJECTIVES)}, got {self.objective!r}")
        if self.calibration is None:
            self.calibration = AcceptanceCalibration(self.prior_strength, self.update_rate)

    def prepare(self, decoder) -> None:
        self.n_max = decoder.total_tokens
        if self.costs is None:  # measuring belongs to calibration, above the policies: the decoder provides it
            raise DyndepthError("the auto policy needs a cost model: build the decoder with SpeculativeDecoder, "
                                "which loads or measures one (dyndepth.calibrate.provide_costs)")
        self.costs.update_rate = self.cost_update_rate

    # -- the rate of a pool -----------------------------------------------------------------------------------
    @property
    def run_rate(self) -> float | None:
        """lambda: the run's committed tokens per measured step second so far (None before the first step)."""
        return self._tokens / self._seconds if self._seconds > 0 else None

    def best(self, values: torch.Tensor, p_accept: torch.Tensor, levels: int,
             n_cap: int | None = None) -> tuple[float, int, float, float]:
        """values [P] log path values, p_accept [P] -> (best score, its N (root included), its E[tokens] - 1,
        its expected rate E / T); N at most n_max (and n_cap when given)."""
        score, expected, seconds = self._scores(values[None], p_accept[None], levels, n_cap)  # [1, n + 1] each
        i = int(torch.argmax(score[0]))
        return float(score[0, i]), i + 1, float(expected[0, i] - 1.0), float(expected[0, i] / seconds[i])

    def _scores(self, values: torch.Tensor, p_accept: torch.Tensor, levels: int, n_cap: int | None = None,
                sizes: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """values [A, P] rank keys, p_accept [A, P] of A rows' pools -> (score [A, n + 1], E[tokens] [A, n + 1],
        T [n + 1]) of verifying each row's n best nodes, n = 0 .. min(P, n_max - 1). sizes [A]: the nodes of rows
        padded to P (``_stack``): a score past a row's own nodes is -inf."""
        order = torch.argsort(values.float(), dim=-1, descending=True, stable=True)
        order = order[:, : min(self.n_max, n_cap or self.n_max) - 1].cpu()  # [A, n]
        gain = torch.cumsum(p_accept.float().cpu().gather(1, order), 1)  # [A, n] E[accepted] with the n best nodes
        expected = torch.nn.functional.pad(gain, (1, 0)) + 1.0  # [A, n + 1]: index n = n drafted nodes verified
        seconds = self._draft_share(levels) + self._verify_from(self._base, expected.shape[1])  # [n + 1] root + n
        lam = self.run_rate if self.objective == "run" else None
        score = expected / seconds if lam is None else expected - lam * seconds  # [A, n + 1]
        if sizes is not None:
            score = score.masked_fill(torch.arange(score.shape[1]) > sizes[:, None], float("-inf"))
        return score, expected, seconds

    def _verify_from(self, base: float, count: int) -> torch.Tensor:
        """[count] seconds of a step that verifies base - 1 other tokens plus i + 1 of this row's (its root and i
        nodes), i = 0 .. count-1, less what the other tokens cost alone: t(base + i) - t(base) + t(1). At base 1
        (one row) this is t(i + 1), the single-sequence curve."""
        b = max(1.0, float(base))
        if b <= 1.0:
            return self.costs.verify_curve(max(count, 1))[:count]
        t = self.costs.verify_span(b, count, rows=self._rows)
        return t - t[0] + self.costs.verify_curve(1)[0]

    def _draft_share(self, levels: int) -> float:
        """One row's share of ``levels`` draft levels: the level cost is shared by the rows that draft together."""
        return self.costs.draft_fit.a / self._rows + self.costs.draft_fit.b * levels / self._rows

    def _pool_p(self, pool) -> tuple[torch.Tensor, torch.Tensor]:
        """(rank keys [P], P(accepted) [P]) of the pool's nodes, in the rerank's order of keys: the path values and
        P from the calibration map for the head's levels (each level computed once per step, kept on the pool, so
        the rows of a batch do not recompute each other's); a pool with model-free nodes carries every node's
        calibrated log P (drafters/hybrid.py), which is then both the key and P."""
        if pool.accept_logp is not None:
            logp = pool.accept_logp.float().cpu()
            return logp, logp.exp()
        cache = getattr(pool, "_auto", None)
        if cache is None:
            cache = pool._auto = {"p": torch.zeros(0), "table": self.calibration.table()}
        values = pool.all_values()
        p = cache["p"]
        while p.numel() < pool.head_size:
            d = int(pool.all_depths()[p.numel()]) - 1  # the next level not yet computed (0-based)
            _, v, parents = pool.level(d)
            if d == 0:
                parent_p, parent_v = torch.ones(v.numel()), torch.zeros_like(v)
            else:
                parent_p, parent_v = p[parents.cpu()], values[parents]
            depth = torch.full((v.numel(),), d + 1, dtype=torch.long)
            g = self.calibration.conditional(v - parent_v, depth, cache["table"]).cpu()
            p = torch.cat([p, parent_p * g])
        cache["p"] = p
        return values, p

    @staticmethod
    def _with_side(pool, values: torch.Tensor, p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(keys, P) of a growing pool's head nodes and, for a hybrid row, of the suffix candidates beside it
        (``pool.side_logp``), which compete for the same node budget: then every key is the calibrated log P."""
        if pool.side_logp is None:
            return values, p
        side = pool.side_logp.float().cpu()
        return torch.cat([p.clamp_min(1e-12).log(), side]), torch.cat([p, side.exp()])

    def _predicted_children(self, pool, depth: int, k: int) -> torch.Tensor:
        """[K, K] predicted log-probabilities of the children of level ``depth``'s beam (rows by beam rank), and
        the running mean of level ``depth``'s own children updated with what was just grown."""
        seen = pool.last_level_child_logp().float().cpu()  # [rows, K]: rows = 1 at depth 1, else K
        mean = self._child.get(depth)
        self._child[depth] = seen.clone() if mean is None or mean.shape != seen.shape else \
            mean.lerp_(seen, CHILD_RATE)
        return self._child_mean(depth + 1, k, seen)

    def _child_mean(self, depth: int, k: int, fallback: torch.Tensor | None = None) -> torch.Tensor:
        """[K, K] the running mean of depth ``depth``'s children's log-probs; before that depth was ever grown,
        the deepest level recorded (or ``fallback``) stands in."""
        mean = self._child.get(depth)
        if mean is not None and mean.shape == (k, k):
            return mean
        if fallback is None:
            deeper = [d for d, m in self._child.items() if d < depth and m.shape == (k, k)]
            fallback = self._child[max(deeper)] if deeper else self._child[min(self._child)]
        return fallback.mean(0, keepdim=True).expand(k, -1) if fallback.shape[0] != k else fallback

    # -- the policy interface ----------------------------------------------------------------------------------
    def should_stop(self, depth, beam_log_values, pool=None):
        return self.should_stop_rows(depth, beam_log_values[None], [pool])[0]

    def should_stop_rows(self, depth, beam_log_values, pools):
        """The rule above for A rows at once (beam_log_values [A, K], pools: the rows' pools, grown to the same
        depth): one set of ops over the rows' stacked pools, not one per row (a batch step asks every row at every
        level; row by row it took 2.7 ms of a 4-row SmolLM2 step of ~70 ms)."""
        if any(p is None for p in pools) or self.costs is None:
            raise DyndepthError("the auto policy needs the draft pool and a cost model (SpeculativeDecoder sets both)")
        k = beam_log_values.shape[-1]
        seen = torch.stack([self._predicted_children(pool, depth, k) for pool in pools])  # [A, K, K]: records
        if depth < self.min_depth:  # level depth's children, predicts depth + 1's
            return [False] * len(pools)
        heads = [self._pool_p(pool) for pool in pools]  # per row ([P], [P]) over its head nodes
        keys, probs, sizes = _stack([self._with_side(pool, v, p) for pool, (v, p) in zip(pools, heads)])  # [A, S]
        now = self._scores(keys, probs, depth, sizes=sizes)[0].amax(1)  # [A]
        last_v = torch.stack([pool.level(depth - 1)[1] for pool in pools]).float().cpu()  # [A, m]
        beam_v, beam = torch.topk(last_v, k, dim=1)  # [A, K]: the best k nodes of the deepest level (as draft.py)
        offset = pools[0].head_size - last_v.shape[1]  # rows grown together have the same levels
        beam_p = torch.stack([p for _, p in heads])[:, offset:].gather(1, beam)  # [A, K]
        side = torch.tensor([pool.side_logp is not None for pool in pools])[:, None]  # [A, 1]
        table = pools[0]._auto["table"]  # the calibration's map this step (it changes only in observe)
        go_on = torch.zeros(len(pools), dtype=torch.bool)
        for ahead in range(1, min(self.lookahead, self.max_depth - depth) + 1):  # predicted levels, never grown
            d = depth + ahead
            child = seen if ahead == 1 else self._child_mean(d, k).expand(len(pools), -1, -1)  # [A, K, K]
            nxt_v = (beam_v[:, :, None] + child).flatten(1)  # [A, K*K]
            g = self.calibration.conditional(child.flatten(), torch.full((child.numel(),), d, dtype=torch.long),
                                             table)
            nxt_p = (beam_p[:, :, None] * g.reshape(child.shape)).flatten(1)  # [A, K*K]
            nxt_key = torch.where(side, nxt_p.clamp_min(1e-12).log(), nxt_v)
            keys, probs = torch.cat([keys, nxt_key], 1), torch.cat([probs, nxt_p], 1)
            sizes = None if sizes is None else sizes + nxt_p.shape[1]  # predicted nodes sort before any pad
            go_on |= self._scores(keys, probs, d, sizes=sizes)[0].amax(1) > now
            beam_v, top = torch.topk(nxt_v, k, dim=1)  # the predicted level's beam
            beam_p = nxt_p.gather(1, top)
        return (~go_on).tolist()

    def _learn_gain(self, gains: torch.Tensor) -> None:
        """gains [m]: one row's P(accepted) in rerank order this step -> the running mean per rank (``_guess``)."""
        g = torch.zeros(max(1, self.n_max - 1))
        m = min(gains.numel(), g.numel())
        g[:m] = gains[:m].float()
        self._gain = g if self._gain is None or self._gain.shape != g.shape else self._gain.lerp_(g, CHILD_RATE)

    def tree_size(self, pool, n_max):
        self._backlog = pool.backlog
        values, p = self._pool_p(pool)
        self._learn_gain(p[torch.argsort(values.float(), descending=True, stable=True)].cpu())
        cap = self.costs.next_explore()  # a rebased cost curve is measured again by steps of several sizes
        _, n, expected, rate = self.best(values, p, pool.depth, n_cap=cap)
        n = max(1, min(n, n_max))
        self.last = {"chosen_n": n, "predicted_accepted": round(expected, 4), "predicted_rate": round(rate, 3)}
        pool.predicted_accepted = self.last["predicted_accepted"]
        return n

    def drafts(self, rows: int, base_tokens: int) -> bool:
        cls = (max(1, rows).bit_length(), base_tokens > rows)  # (1, 2-3, 4-7, 8-15, ... rows; a prompt chunk?)
        m = self._modes.get(cls)
        if m is None:
            guess, ratio = self._guess(cls, rows, base_tokens)
            m = self._modes[cls] = {"draft": None, "plain": None, "n": 0, "wait": EXPLORE_EVERY, "since": 0,
                                    "guess": guess, "priced": None if ratio is None else round(ratio, 3)}
            sure = ratio is not None and ratio < SURE_PLAIN and bool(self._draft_s)  # priced from measured drafts
            m["first"] = EXPLORE_MAX if sure else EXPLORE_AFTER
        m["n"] += 1
        trying = False
        if m["draft"] is None or m["plain"] is None:  # the first mode, then the other until it has a mean
            first = m["guess"]
            other = "plain" if first else "draft"
            choice = first if m["n"] < m["first"] or m[other] is not None else not first
        else:
            best = self._draft_wins(cls, m)
            m["since"] += 1
            trying = m["since"] >= m["wait"]
            choice = (not best) if trying else best
        self._mode = (cls, choice, trying)
        return choice

    def _draft_wins(self, cls: tuple, m: dict) -> bool:
        """Whether drafting has done better than plain steps in class ``cls`` (both measured; module docstring)."""
        r = self._regular[0] / self._regular[1] if cls[1] and self._regular and self._regular[1] > 0 else None
        if r is None:
            return m["draft"] >= m["plain"]
        (td, _, ed), (tp, _, ep) = m["draft_sums"], m["plain_sums"]
        return td - r * ed >= tp - r * ep

    def _excess(self, first, steps) -> float:
        """A step's seconds beyond what the cost model prices its tokens besides drafted nodes at (every row's root
        and the prompt chunks: paid in either mode)."""
        base = max(1, first.batch_tokens - sum(s.tree_size - 1 for s in steps))
        return first.draft_time_s + first.verify_time_s - \
            float(self.costs.verify_time(torch.tensor([float(base)]), rows=first.batch_rows)[0])

    def _guess(self, cls: int, rows: int, base: int) -> tuple[bool, float | None]:
        """The mode a new batch-size class starts in (see the module docstring), True = draft, and the priced
        ratio of the drafting rate to plain decoding's (None where measurements decided, or nothing is known)."""
        for c, m in self._modes.items():
            if m["draft"] is None or m["plain"] is None:
                continue
            wins = self._draft_wins(c, m)
            if c[1] == cls[1] and c[0] < cls[0] and not wins:
                return False, None
            if c[1] == cls[1] and c[0] > cls[0] and wins:
                return True, None
            if cls[1] and not c[1] and c[0] <= cls[0] and not wins:  # a chunk step's extra tokens must beat the
                return False, None  # regular rate: where drafting lost without a chunk, it loses with one
        if self._gain is None:
            return True, None
        near = min(self._draft_s.items(), key=lambda kv: abs(kv[0] - cls[0]), default=None)
        if near is None:
            draft_s = self.costs.draft_time(max(1, self.min_depth)) * rows
        else:
            draft_s = near[1][1] * rows / max(near[1][0], 1.0)
        gain = self._gain.repeat_interleave(rows)  # [(n_max - 1) * rows]: identical rows merged round-robin
        expected = rows + torch.cat([torch.zeros(1), torch.cumsum(gain, 0)])  # [k + 1]
        base = max(float(base), float(rows))
        plain = rows / float(self.costs.verify_time(torch.tensor([base]), rows=rows)[0])
        seconds = draft_s + self.costs.verify_time(base + torch.arange(expected.numel(), dtype=torch.float32), rows)
        ratio = float((expected / seconds).max()) / plain
        return ratio > 1.0, ratio

    def tree_sizes(self, pools, n_max, base_tokens: int | None = None):
        """One budget for the batch step: every row's nodes in rerank order, merged by P(accepted), cut where the
        batch's score is best (see the module docstring). One row alone is ``tree_size``."""
        base = max(int(base_tokens or len(pools)), len(pools))
        self._rows = float(len(pools))
        self._backlog = any(p.backlog for p in pools)
        if len(pools) == 1 and base == 1:
            self._base = 1.0
            return [self.tree_size(pools[0], n_max[0])]
        gains = []  # per row: P(accepted) of its nodes in rerank order (the order select() keeps them in)
        for pool, cap in zip(pools, n_max):
            values, p = self._pool_p(pool)
            ranked = p[torch.argsort(values.float(), descending=True, stable=True)].float().cpu()
            self._learn_gain(ranked)
            gains.append(ranked[: max(0, cap - 1)].tolist())
        picked, owner = _merge(gains)  # [m] gains in pick order and the row of each
        cum = torch.cumsum(torch.tensor([0.0] + picked), 0)  # [m + 1]
        expected = len(pools) + cum
        seconds = self.costs.draft_time(max(p.depth for p in pools)) + \
            self.costs.verify_span(base, len(picked) + 1, rows=len(pools))
        lam = self.run_rate if self.objective == "run" else None
        score = expected / seconds if lam is None else expected - lam * seconds
        k = int(torch.argmax(score))
        counts = [0] * len(pools)
        for r in owner[:k]:
            counts[r] += 1
        self._base = base + k * (len(pools) - 1) / len(pools)  # what the next step's rows see besides their own
        for pool, c, g in zip(pools, counts, gains):
            pool.predicted_accepted = round(sum(g[:c]), 4)
        self.last = {"chosen_n": base + k, "predicted_accepted": round(float(cum[k]), 4),
                     "predicted_rate": round(float(expected[k] / seconds[k]), 3)}
        return [1 + c for c in counts]

    def prediction(self) -> float | None:
        return self.last.get("predicted_accepted")

    def observe(self, step) -> None:
        self.observe_batch([step])

    def observe_batch(self, steps) -> None:
        """One engine step's rows: their verified nodes teach the calibration; the step's times (shared by the
        rows) the cost model, at the step's total tokens; the committed tokens of all rows the run rate."""
        if not steps:
            return
        # a hybrid tree's suffix nodes teach the suffix calibration (drafters/stage.py), its head nodes this one
        self.calibration.update_trees([([0.0] + list(s.node_values), [-1] + list(s.node_parents),
                                        [0] + list(s.node_depths), [True] + list(s.node_accepted),
                                        [True] + [bool(b & HEAD) for b in s.node_sources] if s.node_sources else None)
                                       for s in steps if s.node_values])
        first = steps[0]
        depth = max(s.depth for s in steps)
        drafted = depth > 0 or any(s.tree_size > 1 for s in steps)  # a suffix tree drafts with no head level
        tokens = first.batch_tokens if len(steps) > 1 or first.batch_rows > 1 else first.tree_size
        if self.costs is not None and drafted:
            self.costs.observe(max(tokens, first.tree_size), first.verify_time_s, depth, first.draft_time_s,
                               rows=first.batch_rows, context=max(s.context_tokens for s in steps))
        seconds = first.draft_time_s + first.verify_time_s
        if seconds > 0:  # the run rate's running means (started at the first step, then EMA)
            a = self.cost_update_rate if self._seconds > 0 else 1.0
            committed = sum(s.accepted + 1 for s in steps)
            self._tokens += a * (committed - self._tokens)
            self._seconds += a * (seconds - self._seconds)
            # every step counts but a switch: the first drafting step after plain ones (one plain step, e.g. a chunk
            # step between drafting ones, leaves the head a token per row: no switch)
            clean = self._mode is not None and not (self._mode[1] and self._plain_run > 1 and self._backlog)
            if clean and not self._mode[0][1]:  # the regular steps' rate, a chunk step's price of a token
                if self._regular is None:
                    self._regular = [float(committed), seconds]
                else:
                    self._regular[0] += self.cost_update_rate * (committed - self._regular[0])
                    self._regular[1] += self.cost_update_rate * (seconds - self._regular[1])
            if clean and self._mode[1] and first.draft_time_s > 0:  # the rows class's draft seconds
                d = self._draft_s.setdefault(self._mode[0][0], [float(len(steps)), first.draft_time_s])
                d[0] += 0.2 * (len(steps) - d[0])
                d[1] += 0.2 * (first.draft_time_s - d[1])
            if clean:  # no prompt chunk, no backlog: the mode's rate
                m = self._modes[self._mode[0]]
                key = "draft" if self._mode[1] else "plain"
                w = 0.75 if self._mode[2] else 4 * self.cost_update_rate  # a try is news: the mean is old
                # the rate is the ratio of the running means of tokens and seconds (a mean of per-step ratios
                # overrates the mode whose steps vary most: drafting)
                excess = self._excess(first, steps) if self._mode[0][1] and self.costs is not None else seconds
                sums = m.setdefault(f"{key}_sums", [committed, seconds, excess])
                if m[key] is not None:
                    sums[0] += w * (committed - sums[0])
                    sums[1] += w * (seconds - sums[1])
                    sums[2] += w * (excess - sums[2])
                m[key] = sums[0] / sums[1]
                if self._mode[2]:  # a try of the mode not in use: wait longer if it lost again, else start over
                    lost = self._draft_wins(self._mode[0], m) != self._mode[1]
                    m["wait"] = min(2 * m["wait"], EXPLORE_MAX) if lost else EXPLORE_EVERY
                    m["since"] = 0
        if self._mode is not None:
            self._plain_run = 0 if self._mode[1] else self._plain_run + 1
        self._mode, self._backlog = None, False

    def describe(self) -> dict:
        return {"policy": self.name, "max_depth": self.max_depth, "min_depth": self.min_depth,
                "lookahead": self.lookahead, "objective": self.objective,
                "prior_strength": self.prior_strength, "update_rate": self.update_rate,
                "cost_update_rate": self.cost_update_rate}

    def report(self) -> dict:
        """Calibration quality and the cost model at the end of a run (for bench summaries)."""
        return {"reliability": self.calibration.reliability(), "calibration": self.calibration.to_dict(),
                "costs": self.costs.to_dict() if self.costs else None,
                "verify_scale": round(self.costs.verify_scale, 4) if self.costs else None,
                "verify_base_scale": round(self.costs.base_scale, 4) if self.costs else None,
                "verify_slope_scale": round(self.costs.slope_scale, 4) if self.costs else None,
                "draft_scale": round(self.costs.draft_scale, 4) if self.costs else None,
                "draft_ms": ([round(1000 * self.costs.draft_fit.a, 3), round(1000 * self.costs.draft_fit.b, 3)]
                             if self.costs else None),
                "run_rate": round(self.run_rate, 3) if self.run_rate else None,
                "draft_or_plain": {f"rows<{2 ** c}" + (" +prompt" if chunk else ""):
                                   {k: round(v, 3) if isinstance(v, float) else v
                                    for k, v in m.items() if not k.endswith("_sums")}
                                   for (c, chunk), m in sorted(self._modes.items())}}


def _stack(rows: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per row (keys [P_a], P [P_a]) -> keys [A, S], P [A, S], sizes [A] (the P_a; None where all are equal),
    S = max P_a: a shorter row (hybrid rows' suffix candidates differ in number) is padded with key -inf and P 0,
    which sort last."""
    counts = [k.numel() for k, _ in rows]
    if min(counts) == max(counts):
        return torch.stack([k for k, _ in rows]).float().cpu(), torch.stack([p for _, p in rows]).float().cpu(), None
    sizes = torch.tensor(counts)
    keys = torch.full((len(rows), int(sizes.max())), float("-inf"))
    probs = torch.zeros(len(rows), int(sizes.max()))
    for a, (k, p) in enumerate(rows):
        keys[a, : k.numel()], probs[a, : p.numel()] = k.float().cpu(), p.float().cpu()
    return keys, probs, sizes


def _merge(gains: list[list[float]]) -> tuple[list[float], list[int]]:
    """Greedy merge of per-row gain sequences, each taken as a prefix: at every pick the row whose next node gains
    most -> (gains in pick order, the row of each)."""
    import heapq

    heap = [(-g[0], r, 0) for r, g in enumerate(gains) if g]
    heapq.heapify(heap)
    picked, owner = [], []
    while heap:
        neg, r, i = heapq.heappop(heap)
        picked.append(-neg)
        owner.append(r)
        if i + 1 < len(gains[r]):
            heapq.heappush(heap, (-gains[r][i + 1], r, i + 1))
    return picked, owner
