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
steps measure the curve's slope again). ``observe`` feeds each step's verified nodes to the calibration and its measured times to the cost model.

Everything per decision is a few vectorised ops over the pool's values (no per-node Python); like DDD's check it
reads one scalar back per level on CUDA.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from dyndepth.errors import DyndepthError
from dyndepth.policies.base import DepthPolicy
from dyndepth.policies.calibration import AcceptanceCalibration
from dyndepth.policies.costs import CostModel

OBJECTIVES = ("run", "step")
CHILD_RATE = 0.1  # memory of the running mean of children's log-probabilities per (depth, beam rank, child rank)


@dataclass
class CostAwarePolicy(DepthPolicy):
    name = "auto"
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
    _pool: object = field(default=None, repr=False)  # the pool whose node probabilities _p holds
    _p: torch.Tensor = field(default_factory=lambda: torch.zeros(0), repr=False)
    _table: torch.Tensor | None = field(default=None, repr=False)
    _child: dict = field(default_factory=dict, repr=False)  # depth -> [rows, K] running mean child log-probs
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
        if self.costs is None:
            # Measuring belongs to calibration, above the policies (it runs the target and the draft, which use
            # the policies): imported here, when a decoder is built, so there is no module-level import circle.
            from dyndepth.calibrate import provide_costs

            provide_costs(decoder)
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
        order = torch.argsort(values.float(), descending=True, stable=True)[: min(self.n_max, n_cap or self.n_max) - 1]
        gain = torch.cumsum(p_accept[order].float().cpu(), 0)  # [n] E[accepted] with the n best nodes
        expected = torch.cat([torch.zeros(1), gain]) + 1.0  # [n + 1]: index n = n drafted nodes verified
        seconds = self.costs.draft_time(levels) + self.costs.verify_curve(self.n_max)[: expected.numel()]  # root + n
        rate = expected / seconds  # [n + 1]
        lam = self.run_rate if self.objective == "run" else None
        score = rate if lam is None else expected - lam * seconds  # [n + 1]
        i = int(torch.argmax(score))
        return float(score[i]), i + 1, float(expected[i] - 1.0), float(rate[i])

    def _pool_p(self, pool) -> tuple[torch.Tensor, torch.Tensor]:
        """(values [P], P(accepted) [P]) of the pool's nodes; each level is computed once per step."""
        if self._pool is not pool:
            self._pool, self._p, self._table = pool, torch.zeros(0), self.calibration.table()
        values = pool.all_values()
        while self._p.numel() < pool.size:
            d = int(pool.all_depths()[self._p.numel()]) - 1  # the next level not yet computed (0-based)
            _, v, parents = pool.level(d)
            if d == 0:
                parent_p, parent_v = torch.ones(v.numel()), torch.zeros_like(v)
            else:
                parent_p, parent_v = self._p[parents.cpu()], values[parents]
            depth = torch.full((v.numel(),), d + 1, dtype=torch.long)
            g = self.calibration.conditional(v - parent_v, depth, self._table).cpu()
            self._p = torch.cat([self._p, parent_p * g])
        return values, self._p

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
        if pool is None or self.costs is None:
            raise DyndepthError("the auto policy needs the draft pool and a cost model (SpeculativeDecoder sets both)")
        k = beam_log_values.numel()
        seen = self._predicted_children(pool, depth, k)  # records level depth's children, predicts depth + 1's
        if depth < self.min_depth:
            return False
        values, p = self._pool_p(pool)
        now = self.best(values, p, depth)[0]
        _, last_v, _ = pool.level(depth - 1)
        beam = torch.topk(last_v, k).indices  # the beam = the best k nodes of the deepest level (as draft.py)
        offset = pool.size - last_v.numel()
        beam_v, beam_p = last_v[beam], p[(beam + offset).cpu()]  # [K], [K]
        all_v, all_p = values.float().cpu(), p
        beam_v, beam_p = beam_v.float().cpu(), beam_p
        for ahead in range(1, min(self.lookahead, self.max_depth - depth) + 1):  # predicted levels, never grown
            d = depth + ahead
            child = seen if ahead == 1 else self._child_mean(d, k)  # [K, K]
            nxt_v = (beam_v[:, None] + child).flatten()  # [K*K]
            g = self.calibration.conditional(child.flatten(), torch.full((child.numel(),), d, dtype=torch.long),
                                             self._table)
            nxt_p = (beam_p[:, None] * g.reshape(k, k)).flatten()
            all_v, all_p = torch.cat([all_v, nxt_v]), torch.cat([all_p, nxt_p])
            later = self.best(all_v, all_p, d)[0]
            if later > now:
                return False
            beam_v, top = torch.topk(nxt_v, k)  # the predicted level's beam
            beam_p = nxt_p[top]
        return True

    def tree_size(self, pool, n_max):
        values, p = self._pool_p(pool)
        cap = self.costs.next_explore()  # a rebased cost curve is measured again by steps of several sizes
        _, n, expected, rate = self.best(values, p, pool.depth, n_cap=cap)
        n = max(1, min(n, n_max))
        self.last = {"chosen_n": n, "predicted_accepted": round(expected, 4), "predicted_rate": round(rate, 3)}
        return n

    def prediction(self) -> float | None:
        return self.last.get("predicted_accepted")

    def observe(self, step) -> None:
        if step.node_values:
            self.calibration.update([0.0] + list(step.node_values), [-1] + list(step.node_parents),
                                    [0] + list(step.node_depths), [True] + list(step.node_accepted))
        if self.costs is not None and step.depth > 0:
            self.costs.observe(step.tree_size, step.verify_time_s, step.depth, step.draft_time_s)
        seconds = step.draft_time_s + step.verify_time_s
        if seconds > 0:  # the run rate's running means (started at the first step, then EMA)
            a = self.cost_update_rate if self._seconds > 0 else 1.0
            self._tokens += a * (step.accepted + 1 - self._tokens)
            self._seconds += a * (seconds - self._seconds)

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
                "run_rate": round(self.run_rate, 3) if self.run_rate else None}
