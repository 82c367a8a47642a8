"""The cost model: how long one draft level and one verification of N tokens take on the running machine.

    t_verify(N)     = a_v + b_v * (c(N) - c(1))      probe: a_v = c(1), b_v = 1
    t_draft(levels) = a_d + b_d * levels             probe: a_d = draft_base_s, b_d = draft_level_s

where c(N) is the piecewise-linear interpolation of the probed curve verify_s[N]. ``probe`` measures both once on
the loaded target and head (a short synthetic prompt, a few repetitions, the median), and the result is cached
as JSON under ``$DYNDEPTH_HOME/costs/`` keyed by model, head, dtype, device, threads and beam width, so later runs
start instantly. While decoding, ``observe`` corrects the curves from measured step times, so a machine that gets
busier or a longer context (attention grows with it) is followed:

both lines are refitted after every step (``OnlineLine``: exponentially weighted least squares of the measured
times, memory 1 / update_rate steps) so that the fixed part and the part that grows with the tree are corrected
apart: a probe on a short synthetic prompt gets them wrong by different factors (on the 2-core CPU the draft's
fixed part, the head's forward over the accepted tokens and the rerank, came out 0.1 ms where steps measure
about 3, so one scale for the whole draft charged each level 1.7x its cost). A ridge towards the probe, worth
VERIFY_PRIOR steps at the start, decays with the data to RIDGE_FLOOR: the probe rules the first steps, the
measured steps the rest, and steps that all verify the same N (or draft the same depth) leave the slope where
the probe put it instead of making it up.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

PROBE_SIZES = (1, 2, 4, 8, 12, 16, 24, 32, 48, 64)
PROBE_VERSION = 2  # part of the cache key: a cache written by an older probe is measured again
VERIFY_PRIOR = 4.0  # starting weight, in steps, of the ridge that holds the online cost lines at the probe
RIDGE_FLOOR = 0.005  # the ridge decays with the data to this weight: it only decides what the steps leave open
SCALE_BOUNDS = (0.05, 20.0)  # a fitted slope stays within these factors of the probe's


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

    def __post_init__(self):
        if not self.sizes or self.sizes[0] != 1 or list(self.sizes) != sorted(self.sizes):
            raise ValueError("cost sizes must start at 1 and ascend")
        self._n = torch.tensor(self.sizes, dtype=torch.float32)
        self._t = torch.tensor(self.verify_s, dtype=torch.float32)
        self._curve: torch.Tensor | None = None  # c(N) - c(1) for N = 1 .. n_max, interpolated once
        c1 = float(self.verify_s[0])
        spread = float(self.verify_s[-1]) - c1
        # verify: t = a + b * (c(N) - c(1)), prior a = c(1), b = 1; draft: t = a + b * levels, prior the probe's
        self.verify_fit = OnlineLine(c1, 1.0, c1, spread)
        self.draft_fit = OnlineLine(self.draft_base_s, self.draft_level_s, self.draft_base_s + self.draft_level_s,
                                    1.0)

    # -- prediction (vectorised over N) -------------------------------------------------------------------
    def _probed(self, n: torch.Tensor) -> torch.Tensor:
        """n [m] token counts -> c(n) [m], the probed curve (linear beyond the last measured size)."""
        n = n.float().cpu()
        idx = torch.searchsorted(self._n, n).clamp(1, len(self.sizes) - 1)
        n0, n1 = self._n[idx - 1], self._n[idx]
        t0, t1 = self._t[idx - 1], self._t[idx]
        return t0 + (t1 - t0) * (n - n0) / (n1 - n0)

    def verify_time(self, n: torch.Tensor) -> torch.Tensor:
        """n [m] token counts (float or int) -> seconds [m], the probed curve as corrected online."""
        return self.verify_fit.a + self.verify_fit.b * (self._probed(n) - float(self.verify_s[0]))

    def verify_curve(self, n_max: int) -> torch.Tensor:
        """[n_max] seconds to verify N = 1 .. n_max tokens (the policy's hot path: interpolated once)."""
        if self._curve is None or self._curve.numel() != n_max:
            self._curve = self._probed(torch.arange(1, n_max + 1)) - float(self.verify_s[0])
        return self.verify_fit.a + self.verify_fit.b * self._curve

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
    def observe(self, tree_size: int, verify_s: float, levels: int, draft_s: float) -> None:
        """One step's measured times: verify_s for a tree of tree_size tokens, draft_s for ``levels`` levels."""
        if verify_s > 0:
            x = float(self._probed(torch.tensor([tree_size]))[0]) - float(self.verify_s[0])
            self.verify_fit.observe(x, verify_s, self.update_rate)
        if levels > 0 and draft_s > 0:
            self.draft_fit.observe(float(levels), draft_s, self.update_rate)

    def to_dict(self) -> dict:
        return {"sizes": list(self.sizes), "verify_s": [round(t, 6) for t in self.verify_s],
                "draft_base_s": round(self.draft_base_s, 6), "draft_level_s": round(self.draft_level_s, 6),
                "meta": self.meta}

    @classmethod
    def from_dict(cls, d: dict, update_rate: float = 0.05) -> "CostModel":
        return cls(list(d["sizes"]), list(d["verify_s"]), float(d["draft_base_s"]), float(d["draft_level_s"]),
                   update_rate=update_rate, meta=dict(d.get("meta", {})))


# -- probing on the real model ---------------------------------------------------------------------------------
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
            "top_k": decoder.top_k, "max_n": decoder.total_tokens, "probe": PROBE_VERSION}


def _head_id(head) -> str:
    if head is None:
        return "none"
    n = sum(p.numel() for p in head.parameters())
    return f"{type(head).__name__}:{n}"


def load_or_probe(decoder, update_rate: float = 0.05, use_cache: bool = True) -> CostModel:
    key = cost_key(decoder)
    path = cache_path(key)
    if use_cache and path.is_file():
        try:
            data = json.loads(path.read_text())
            if data.get("meta", {}).get("key") == key:
                return CostModel.from_dict(data, update_rate)
        except (OSError, ValueError, KeyError):
            pass  # a stale or broken cache entry is measured again
    model = probe(decoder, update_rate=update_rate)
    model.meta["key"] = key
    if use_cache:
        store(model, key)
    return model


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


@torch.inference_mode()
def probe(decoder, update_rate: float = 0.05, prompt_len: int = 128, repeats: int = 5) -> CostModel:
    """Time the target's verification forward for PROBE_SIZES (up to the decoder's total_tokens) and the head's
    root forward and level forward, on a synthetic prompt. Each time is the fastest of ``repeats`` runs after a
    warm-up (noise only ever adds time), and the verify curve is made non-decreasing (a dip is noise: a larger
    tree never verifies faster). Leaves the target's cache reset."""
    from dyndepth.drafters.eagle import grow_pool
    from dyndepth.head import DraftKV
    from dyndepth.policies.classic import FixedDepth
    from dyndepth.tree import DraftTree

    target, head = decoder.target, decoder.head
    device = target.device
    vocab = target.lm_head.weight.shape[0]
    g = torch.Generator().manual_seed(0)
    prompt = torch.randint(0, vocab, (prompt_len,), generator=g).to(device)
    sizes = [n for n in PROBE_SIZES if n <= decoder.total_tokens]
    if sizes[-1] != decoder.total_tokens:
        sizes.append(decoder.total_tokens)

    def timed(fn) -> float:
        fn()  # warm-up
        out = []
        for _ in range(repeats):
            t0 = _now(device)
            fn()
            out.append(_now(device) - t0)
        return min(out)

    began = time.perf_counter()
    _, feats = target.prefill(prompt)
    verify = []
    for n in sizes:
        tree = DraftTree(tokens=prompt[:n].tolist(), parents=[-1] + [0] * (n - 1), depths=[0] + [1] * (n - 1))
        L = target.length
        positions = tree.position_ids(L, device)[0]
        visible = tree.visibility(L, device)

        def verify_once():  # the tree's entries are never committed: the next forward overwrites them
            target.forward(torch.tensor(tree.tokens, device=device), positions, visible)

        verify.append(timed(verify_once))
    base_s, level_s = 0.0, 0.0
    if head is not None:
        pair_tokens = torch.cat([prompt[1:], prompt[:1]])
        features = feats

        def draft(levels):
            def run():
                cache = DraftKV()
                grow_pool(head, cache, pair_tokens[:8], features[:8], FixedDepth(max_depth=levels), decoder.top_k)
            return run

        t1 = timed(draft(1))
        t3 = timed(draft(3))
        level_s = max((t3 - t1) / 2, 1e-6)
        base_s = max(t1 - level_s, 0.0)
    target.reset()
    verify = torch.cummax(torch.tensor(verify), 0).values.tolist()
    meta = {"probe_s": round(time.perf_counter() - began, 2), "prompt_len": prompt_len, "repeats": repeats}
    return CostModel(sizes, verify, base_s, level_s, update_rate=update_rate, meta=meta)


def _now(device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()
