"""The cost model: how long one draft level and one verification of N tokens take on the running machine.

    t_verify(N)     = a_v + b_v * (c(N) - c(1))      probe: a_v = c(1), b_v = 1
    t_draft(levels) = a_d + b_d * levels             probe: a_d = draft_base_s, b_d = draft_level_s

where c(N) is the piecewise-linear interpolation of the probed curve verify_s[N]. The probe itself (measuring on
the loaded target and head) lives above the policies, in ``dyndepth.calibrate``; this module holds the model, its
online correction and its cache: JSON under ``$DYNDEPTH_HOME/costs/`` keyed by model, head, dtype, device,
threads, beam width, the forward (``Target.fast_path``) and PROBE_VERSION, so later runs start instantly. While
decoding, ``observe`` corrects the curves from measured step times, so a machine that gets busier or a longer
context (attention grows with it) is followed:

both lines are refitted after every step (``OnlineLine``: exponentially weighted least squares of the measured
times, memory 1 / update_rate steps) so that the fixed part and the part that grows with the tree are corrected
apart: a probe on a short synthetic prompt gets them wrong by different factors (on the 2-core CPU the draft's
fixed part, the head's forward over the accepted tokens and the rerank, came out 0.1 ms where steps measure
about 3, so one scale for the whole draft charged each level 1.7x its cost). A ridge towards the probe, worth
VERIFY_PRIOR steps at the start, decays with the data to RIDGE_FLOOR: the probe rules the first steps, the
measured steps the rest, and steps that all verify the same N (or draft the same depth) leave the slope where
the probe put it instead of making it up.

The online lines can rescale the probed curve but not change its shape. A curve of the wrong shape (the old
probe's running max turned one slow early timing into 78 ms for every N, so ``auto`` verified 48 tokens every
step) is caught by the drift check: when the measured verify times stay more than DRIFT_FACTOR away from the
probed curve, on average over DRIFT_MIN_STEPS steps or more, the model warns once, drops its cache entry (the
next decoder measures again) and rebases the curve on a neutral shape through the measured level (half of it
fixed, half growing with N), which the steps then correct: ``stale`` tells the decoder a new probe is due.
Steps over a context much longer than the probe's prompt (DRIFT_CONTEXT) are slower by design, not by drift: the
lines follow them, the check skips them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

# Part of the cache key: a cache written by an older probe is measured again. 3: repeats interleaved across the
# sizes and a lower envelope instead of a running max (dyndepth.calibrate); caches of the running max are dropped.
PROBE_VERSION = 4  # 4: verification of batches of rows measured too (CostModel.batch)
VERIFY_PRIOR = 4.0  # starting weight, in steps, of the ridge that holds the online cost lines at the probe
RIDGE_FLOOR = 0.005  # the ridge decays with the data to this weight: it only decides what the steps leave open
SCALE_BOUNDS = (0.05, 20.0)  # a fitted slope stays within these factors of the probe's
DRIFT_FACTOR = 2.0  # measured verify times this far from the probed curve (either way) ...
DRIFT_MIN_STEPS = 32  # ... on average over at least this many steps: the curve is wrong, not the step
DRIFT_RATE = 1 / 16  # memory of the drift average (about 16 steps)
# Steps that attend to more than this many times the probe's prompt are slower for a reason the probe never
# measured (attention grows with the context; a 1,500-token summary prompt doubles SmolLM2's step): the online
# lines follow them, the drift check skips them. Counting them flagged every long-context run as drift and
# re-probed the curve (30 s on SmolLM2) at the start of the next generation, to the same short-prompt curve.
DRIFT_CONTEXT = 4
NEUTRAL_FIXED = 0.5  # the rebased curve: this share of the measured time is fixed, the rest grows with N
EXPLORE_FRACTIONS = (1 / 8, 1 / 4, 1 / 2)  # after a rebase, trees of these fractions of the measured N ...
EXPLORE_ROUNDS = 4  # ... are verified in turn this many times, so the steps measure the slope, not one point

log = logging.getLogger("dyndepth.costs")


class OnlineLine:
    """y ~ a + b * x, fitted online by exponentially weighted least squares (each step's weight decays by
    1 - rate), with a ridge towards the prior (a0, b0) that starts at VERIFY_PRIOR steps' weight and decays with
    the data to RIDGE_FLOOR. Solved in units (y_unit seconds, x_unit of x), where the ridge weighs a and b alike."""

    def __init__(self, a0: float, b0: float, y_unit: float, x_unit: float):
        self.a0, self.b0, self.a, self.b = a0, b0, a0, b0
        self._yu, self._xu = max(y_unit, 1e-9), max(x_unit, 1e-9)
        self._A = [[0.0, 0.0], [0.0, 0.0]]  # normal equations of the decaying data, in units
        self._rhs = [0.0, 0.0]
        self._ridge = VERIFY_PRIOR

    def observe(self, x: float, y: float, rate: float) -> None:
        f, t, keep = (1.0, x / self._xu), y / self._yu, 1.0 - rate
        for i in range(2):
            self._rhs[i] = keep * self._rhs[i] + f[i] * t
            for j in range(2):
                self._A[i][j] = keep * self._A[i][j] + f[i] * f[j]
        self._ridge = max(self._ridge * keep, RIDGE_FLOOR)
        r = self._ridge
        p0, p1 = self.a0 / self._yu, self.b0 * self._xu / self._yu  # the prior in units
        a11, a12, a22 = self._A[0][0] + r, self._A[0][1], self._A[1][1] + r
        b1, b2 = self._rhs[0] + r * p0, self._rhs[1] + r * p1
        det = a11 * a22 - a12 * a12
        q0, q1 = (a22 * b1 - a12 * b2) / det, (a11 * b2 - a12 * b1) / det
        lo, hi = SCALE_BOUNDS
        self.a = min(max(q0 * self._yu, 0.0), hi * max(self.a0, self._yu))  # a cost is never negative
        self.b = min(max(q1 * self._yu / self._xu, lo * self.b0), hi * self.b0)


@dataclass
class CostModel:
    sizes: list[int]  # N values measured, ascending, starting at 1
    verify_s: list[float]  # seconds per verification forward of N tokens (root included)
    draft_base_s: float  # seconds of a step's draft that do not depend on depth (root forward, rerank)
    draft_level_s: float  # seconds per draft level
    update_rate: float = 0.05
    meta: dict = field(default_factory=dict)
    # rows -> (total tokens T ascending, seconds to verify them in one forward of that many rows): a batch step
    batch: dict = field(default_factory=dict)

    def __post_init__(self):
        if not self.sizes or self.sizes[0] != 1 or list(self.sizes) != sorted(self.sizes):
            raise ValueError("cost sizes must start at 1 and ascend")
        self._n = torch.tensor(self.sizes, dtype=torch.float32)
        self.batch = {int(r): (list(ts), list(ss)) for r, (ts, ss) in sorted(self.batch.items(), key=lambda x: int(x[0]))}
        self._set_verify_curve(list(self.verify_s))
        self.draft_fit = OnlineLine(self.draft_base_s, self.draft_level_s, self.draft_base_s + self.draft_level_s,
                                    1.0)
        self.stale = False  # set by the drift check: the probed curve is wrong here, a new probe is due
        self._drift = 0.0  # running mean of log(measured / probed verify time)
        self._drift_steps = 0
        self._level = [0.0, 0.0]  # running means of the measured N and verify seconds (the rebase's level)
        self._explore: list[int] = []  # tree sizes still to try after a rebase (next_explore)

    def _set_verify_curve(self, verify_s: list[float]) -> None:
        self.verify_s = verify_s
        self._t = torch.tensor(verify_s, dtype=torch.float32)
        self._curve: torch.Tensor | None = None  # c(N) - c(1) for N = 1 .. n_max, interpolated once
        self._spans: dict = {}  # (start, count, rows) -> c(start + i) - c(1), i < count (verify_span)
        c1 = float(verify_s[0])
        spread = float(verify_s[-1]) - c1
        # verify: t = a + b * (c(N) - c(1)), prior a = c(1), b = 1; draft: t = a + b * levels, prior the probe's
        self.verify_fit = OnlineLine(c1, 1.0, c1, spread)

    # -- prediction (vectorised over N) -------------------------------------------------------------------
    def _probed(self, n: torch.Tensor, rows: float = 1) -> torch.Tensor:
        """n [m] token counts -> c(n) [m], the probed curve (linear beyond the last measured size). rows > 1: the
        tokens are spread over that many rows of one forward: the measured curves of the nearest batch sizes,
        interpolated linearly in rows (each row adds its own attention and bookkeeping)."""
        n = n.float().cpu()
        one = _interp(self._n, self._t, n)
        if rows <= 1 or not self.batch:
            return one
        known = [1] + list(self.batch)
        r0 = max((r for r in known if r <= rows), default=1)
        r1 = min((r for r in known if r >= rows), default=known[-1])
        c0 = one if r0 == 1 else self._batch_curve(r0, n)
        if r1 == r0:
            return c0
        w = (rows - r0) / (r1 - r0)
        return c0 + w * (self._batch_curve(r1, n) - c0)

    def _batch_curve(self, rows: int, n: torch.Tensor) -> torch.Tensor:
        tokens, seconds = self.batch[rows]
        return _interp(torch.tensor(tokens, dtype=torch.float32), torch.tensor(seconds, dtype=torch.float32), n)

    def verify_time(self, n: torch.Tensor, rows: float = 1) -> torch.Tensor:
        """n [m] token counts (float or int), in ``rows`` rows -> seconds [m], the probed curve as corrected online."""
        return self.verify_fit.a + self.verify_fit.b * (self._probed(n, rows) - float(self.verify_s[0]))

    def verify_curve(self, n_max: int) -> torch.Tensor:
        """[n_max] seconds to verify N = 1 .. n_max tokens (the policy's hot path: interpolated once)."""
        if self._curve is None or self._curve.numel() < n_max:
            self._curve = self._probed(torch.arange(1, n_max + 1)) - float(self.verify_s[0])
        return self.verify_fit.a + self.verify_fit.b * self._curve[:n_max]

    def verify_span(self, start: float, count: int, rows: float = 1) -> torch.Tensor:
        """[count] seconds to verify start, start + 1, ..., start + count - 1 tokens in ``rows`` rows: verify_time
        over that range, its interpolation kept until the curve changes (a batch step asks for the same range for
        every row at every level: interpolating it each time was half of ``auto``'s draft time at 8 rows)."""
        key = (float(start), int(count), float(rows))
        c = self._spans.get(key)
        if c is None:
            if len(self._spans) >= 512:  # starts move with the load: keep the recent ones
                self._spans.clear()
            n = float(start) + torch.arange(int(count), dtype=torch.float32)
            c = self._spans[key] = self._probed(n, rows) - float(self.verify_s[0])
        return self.verify_fit.a + self.verify_fit.b * c

    def draft_time(self, levels: int) -> float:
        return self.draft_fit.a + self.draft_fit.b * levels

    # -- how far the running machine is from the probe (for reports) -----------------------------------------
    @property
    def base_scale(self) -> float:
        """Measured / probed time to verify the root alone."""
        return self.verify_fit.a / float(self.verify_s[0])

    @property
    def slope_scale(self) -> float:
        """Measured / probed cost of the verified tokens beyond the root."""
        return self.verify_fit.b

    @property
    def verify_scale(self) -> float:
        """Measured / probed verify time at the largest probed N."""
        n = torch.tensor([self.sizes[-1]])
        return float(self.verify_time(n)[0]) / float(self.verify_s[-1])

    @property
    def draft_scale(self) -> float:
        """Measured / probed draft time of 3 levels."""
        return self.draft_time(3) / max(self.draft_base_s + 3 * self.draft_level_s, 1e-12)

    # -- online correction ---------------------------------------------------------------------------------
    def observe(self, tree_size: int, verify_s: float, levels: int, draft_s: float, rows: int = 1,
                context: int = 0) -> None:
        """One step's measured times: verify_s for tree_size tokens (all rows of a batch step) attending to up to
        ``context`` cached tokens (0: unknown, taken as short), draft_s for ``levels`` levels."""
        if verify_s > 0:
            probed = float(self._probed(torch.tensor([tree_size]), rows)[0])
            self.verify_fit.observe(probed - float(self.verify_s[0]), verify_s, self.update_rate)
            if context <= DRIFT_CONTEXT * int(self.meta.get("prompt_len", 128)):
                self._check_drift(tree_size, verify_s, probed)
        if levels > 0 and draft_s > 0:
            self.draft_fit.observe(float(levels), draft_s, self.update_rate)

    def _check_drift(self, tree_size: int, verify_s: float, probed: float) -> None:
        """Track how far the measured verify times are from the probed curve; past DRIFT_FACTOR on average over
        DRIFT_MIN_STEPS steps or more, warn, drop the cache entry and rebase the curve (once per model)."""
        a = 1.0 if self._drift_steps == 0 else DRIFT_RATE
        self._drift += a * (math.log(verify_s / max(probed, 1e-12)) - self._drift)
        self._level = [m + a * (x - m) for m, x in zip(self._level, (float(tree_size), verify_s))]
        self._drift_steps += 1
        if self.stale or self._drift_steps < DRIFT_MIN_STEPS or abs(self._drift) < math.log(DRIFT_FACTOR):
            return
        self.stale = True
        n, t = self._level
        log.warning("cost model: verification measures %.1f ms at N = %.0f where the probed curve says %.1f ms, "
                    "%.1fx, for %d steps; dropping the cached curve (the next decoder measures again) and "
                    "refitting from the steps", 1000 * t, n, 1000 * t / math.exp(self._drift),
                    math.exp(self._drift), self._drift_steps)
        forget(self.meta.get("key"))
        self.rebase(n, t)

    def rebase(self, n: float, seconds: float) -> None:
        """Replace the probed verify curve by a neutral one through ``seconds`` at ``n`` tokens: NEUTRAL_FIXED of
        it fixed, the rest proportional to N. The online line then learns the real base and slope from the steps;
        since steps that all verify one N say nothing about the slope, the next EXPLORE_ROUNDS x 3 trees are capped
        at 1/8, 1/4 and 1/2 of ``n`` in turn (``next_explore``): the curve is measured again by the steps."""
        n = max(float(n), 1.0)
        per_token = seconds * (1 - NEUTRAL_FIXED) / n
        self._set_verify_curve([seconds * NEUTRAL_FIXED + per_token * m for m in self.sizes])
        self._explore = [max(1, round(n * f)) for f in EXPLORE_FRACTIONS] * EXPLORE_ROUNDS
        self.meta["rebased"] = {"n": round(n, 2), "verify_s": round(seconds, 6)}

    def next_explore(self) -> int | None:
        """The largest tree the next step may verify while a rebased curve is being measured, else None."""
        return self._explore.pop(0) if self._explore else None

    def to_dict(self) -> dict:
        return {"sizes": list(self.sizes), "verify_s": [round(t, 6) for t in self.verify_s],
                "draft_base_s": round(self.draft_base_s, 6), "draft_level_s": round(self.draft_level_s, 6),
                "batch": {str(r): [list(ts), [round(x, 6) for x in ss]] for r, (ts, ss) in self.batch.items()},
                "meta": self.meta}

    @classmethod
    def from_dict(cls, d: dict, update_rate: float = 0.05) -> "CostModel":
        return cls(list(d["sizes"]), list(d["verify_s"]), float(d["draft_base_s"]), float(d["draft_level_s"]),
                   update_rate=update_rate, meta=dict(d.get("meta", {})),
                   batch={int(r): (list(v[0]), list(v[1])) for r, v in d.get("batch", {}).items()})


# -- the cache --------------------------------------------------------------------------------------------------
def cache_path(key: dict) -> Path:
    from dyndepth.models import cache_dir

    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return cache_dir() / "costs" / f"{digest}.json"


def cost_key(decoder, head_name: str | None = None) -> dict:
    target = decoder.target
    name = getattr(target.config, "_name_or_path", "") or type(target.model).__name__
    return {"model": str(name), "layers": int(getattr(target.config, "num_hidden_layers", 0)),
            "hidden": int(getattr(target.config, "hidden_size", 0)), "head": head_name or _head_id(decoder.head),
            "dtype": str(target.dtype), "device": str(target.device), "threads": torch.get_num_threads(),
            "top_k": decoder.top_k, "max_n": decoder.total_tokens, "probe": PROBE_VERSION,
            "forward": str(getattr(target, "fast_path", "eager"))}  # a new forward (e.g. half reads) costs anew


def _head_id(head) -> str:
    if head is None:
        return "none"
    n = sum(p.numel() for p in head.parameters())
    return f"{type(head).__name__}:{n}"


def load(key: dict, update_rate: float = 0.05) -> CostModel | None:
    """The cached model of ``key``, or None where there is none (or it is stale or broken: measured again)."""
    path = cache_path(key)
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
        if data.get("meta", {}).get("key") == key:
            return CostModel.from_dict(data, update_rate)
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return None


def store(model: CostModel, key: dict) -> Path | None:
    """Write ``model`` to the cache entry of ``key`` (atomically); None where the cache cannot be written
    (a read-only cache only costs a probe next time)."""
    path = cache_path(key)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(model.to_dict(), indent=1))
        os.replace(tmp, path)
    except OSError:
        return None
    return path


def forget(key: dict | None) -> None:
    """Remove the cache entry of ``key`` (if any): the next decoder built for it measures again."""
    if key is None:
        return
    try:
        cache_path(key).unlink(missing_ok=True)
    except OSError:
        pass


def _interp(xs: torch.Tensor, ys: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Piecewise-linear y(x) through (xs, ys), xs ascending, linear beyond both ends (one point: constant)."""
    if xs.numel() == 1:
        return ys.expand_as(x).clone()
    idx = torch.searchsorted(xs, x).clamp(1, xs.numel() - 1)
    x0, x1, y0, y1 = xs[idx - 1], xs[idx], ys[idx - 1], ys[idx]
    return y0 + (y1 - y0) * (x - x0) / (x1 - x0)
