"""The cost model: how long one draft level and one verification of N tokens take on the running machine.

    t_draft(levels) = draft_base_s + levels * draft_level_s        # root forward + one forward per level
    t_verify(N)     = piecewise-linear interpolation of the measured curve verify_s[N]

``probe`` measures both once on the loaded target and head (a short synthetic prompt, a few repetitions, the
median), and the result is cached as JSON under ``$DYNDEPTH_HOME/costs/`` keyed by model, head, dtype, device,
threads and beam width, so later runs start instantly. While decoding, ``observe`` corrects both curves online by
an exponential moving average of measured / predicted time (``update_rate``), so a machine that gets busier or a
longer context (attention grows with it) is followed.
"""

from __future__ import annotations

import hashlib
import json
import os
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

PROBE_SIZES = (1, 2, 4, 8, 12, 16, 24, 32, 48, 64)


@dataclass
class CostModel:
    sizes: list[int]  # N values measured, ascending, starting at 1
    verify_s: list[float]  # seconds per verification forward of N tokens (root included)
    draft_base_s: float  # seconds of a step's draft that do not depend on depth (root forward, rerank)
    draft_level_s: float  # seconds per draft level
    update_rate: float = 0.05
    verify_scale: float = 1.0  # online corrections (measured / predicted), start neutral
    draft_scale: float = 1.0
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        if not self.sizes or self.sizes[0] != 1 or list(self.sizes) != sorted(self.sizes):
            raise ValueError("cost sizes must start at 1 and ascend")
        self._n = torch.tensor(self.sizes, dtype=torch.float32)
        self._t = torch.tensor(self.verify_s, dtype=torch.float32)
        self._curve: torch.Tensor | None = None  # verify_curve's interpolation, unscaled

    # -- prediction (vectorised over N) -------------------------------------------------------------------
    def verify_time(self, n: torch.Tensor) -> torch.Tensor:
        """n [m] token counts (float or int) -> seconds [m]; linear beyond the last measured size."""
        n = n.float().cpu()
        idx = torch.searchsorted(self._n, n).clamp(1, len(self.sizes) - 1)
        n0, n1 = self._n[idx - 1], self._n[idx]
        t0, t1 = self._t[idx - 1], self._t[idx]
        return self.verify_scale * (t0 + (t1 - t0) * (n - n0) / (n1 - n0))

    def verify_curve(self, n_max: int) -> torch.Tensor:
        """[n_max] seconds to verify N = 1 .. n_max tokens (the policy's hot path: interpolated once, scaled)."""
        if self._curve is None or self._curve.numel() != n_max:
            self._curve = self.verify_time(torch.arange(1, n_max + 1)) / self.verify_scale  # unscaled
        return self._curve * self.verify_scale

    def draft_time(self, levels: int) -> float:
        return self.draft_scale * (self.draft_base_s + levels * self.draft_level_s)

    # -- online correction ---------------------------------------------------------------------------------
    def observe(self, tree_size: int, verify_s: float, levels: int, draft_s: float) -> None:
        a = self.update_rate
        pred_v = float(self.verify_time(torch.tensor([tree_size]))[0]) / self.verify_scale
        if pred_v > 0 and verify_s > 0:
            self.verify_scale = (1 - a) * self.verify_scale + a * verify_s / pred_v
        if levels > 0 and draft_s > 0:
            pred_d = self.draft_base_s + levels * self.draft_level_s
            self.draft_scale = (1 - a) * self.draft_scale + a * draft_s / pred_d

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
            "top_k": decoder.top_k, "max_n": decoder.total_tokens}


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
def probe(decoder, update_rate: float = 0.05, prompt_len: int = 64, repeats: int = 3) -> CostModel:
    """Time the target's verification forward for PROBE_SIZES (up to the decoder's total_tokens) and the head's
    root forward and level forward, on a synthetic prompt. Leaves the target's cache reset."""
    from dyndepth.draft import grow_pool
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
        return statistics.median(out)

    began = time.perf_counter()
    _, feats = target.prefill(prompt)
    verify = []
    for n in sizes:
        tree = DraftTree(tokens=prompt[:n].tolist(), parents=[-1] + [0] * (n - 1), depths=[0] + [1] * (n - 1))
        L = target.length
        positions = tree.position_ids(L, device)[0]
        visible = tree.visibility(L, device)

        def verify_once():
            target.forward(torch.tensor(tree.tokens, device=device), positions, visible)
            for layer in target.cache.layers:  # drop the N tree entries again: the cache holds L
                layer.keys, layer.values = layer.keys[..., :L, :], layer.values[..., :L, :]

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
    meta = {"probe_s": round(time.perf_counter() - began, 2), "prompt_len": prompt_len, "repeats": repeats}
    return CostModel(sizes, verify, base_s, level_s, update_rate=update_rate, meta=meta)


def _now(device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()
