"""The cost probe: t_verify(N) on the loaded target and t_draft(levels) on its head, robust to a busy machine.

A probe on a shared machine meets slow seconds. The old probe timed the repeats of one size back to back and took
a running max over the sizes, so one busy second (every repeat of N = 1 at 78 ms) became a curve of 78 ms for
every N, and ``auto``, seeing no cost in a bigger tree, verified 48 tokens on every step. Here:

- a warm-up round first, then ``repeats`` rounds, each timing every size once (N = 1, 2, 4, ... in turn), so a
  busy second slows one timing of several sizes, not every timing of one size;
- each size keeps its fastest timing: noise only ever adds time;
- the curve is the lower envelope, c(N) = min over N' >= N of the timing at N': a larger tree never verifies
  faster, so a timing above a larger tree's is noise (a running max would carry it to every larger N);
- the raw timings are checked: a smaller tree measured more than NOISE times (and SLACK_S) slower than a larger
  one, or a draft of 3 levels measured faster than one of 1 level by that much, means the machine was busy. The
  probe then measures again (ATTEMPTS in all); if it stays so, the envelope is used with a warning and marked
  ``suspect``, and ``load_or_probe`` does not cache it, so the next run measures again.

The draft head is timed over 1 and 3 levels (the fixed part: the root forward and the rerank; the slope: one
level). Batches: BATCH_ROWS rows, each holding the prompt, verify ROW_TOKENS tokens each in one forward (the
engine's batch step), in the same interleaved rounds; ``CostModel.batch`` keeps those curves over total tokens, so
``auto`` prices a batch step by its total tokens and rows. Leaves the target's cache reset.
"""

from __future__ import annotations

import logging
import time

import torch

from dyndepth.drafters.eagle import grow_pool
from dyndepth.head import DraftKV
from dyndepth.policies.classic import FixedDepth
from dyndepth.policies.costs import CostModel, cost_key, load, store
from dyndepth.tree import DraftTree

PROBE_SIZES = (1, 2, 4, 8, 12, 16, 24, 32, 48, 64)
NOISE = 1.3  # a smaller tree (or a shallower draft) measured this much slower than a larger one ...
SLACK_S = 0.002  # ... and by more than this (a scheduler time slice), so tiny models' sub-ms jitter is not a problem
ATTEMPTS = 2  # measurements of the curves before a suspect one is kept (with a warning, uncached)
BATCH_ROWS = (2, 4, 8, 16)  # rows of the batch steps measured (the dynamic engine only)
ROW_TOKENS = (1, 4, 12)  # tokens verified per row in them: plain decoding, a small and a CPU-sized tree

log = logging.getLogger("dyndepth.calibrate")


def load_or_probe(decoder, update_rate: float = 0.05, use_cache: bool = True) -> CostModel:
    """The cached cost model of this decoder's model, head, dtype, device, threads and beam width, or a new probe
    (stored unless it is suspect)."""
    key = cost_key(decoder)
    if use_cache:
        cached = load(key, update_rate)
        if cached is not None:
            return cached
    model = probe(decoder, update_rate=update_rate)
    model.meta["key"] = key
    if use_cache and not model.meta.get("suspect"):
        store(model, key)
    return model


@torch.inference_mode()
def probe(decoder, update_rate: float = 0.05, prompt_len: int = 128, repeats: int = 5) -> CostModel:
    """Measure the verify curve for PROBE_SIZES (up to the decoder's total_tokens) and the draft's fixed and
    per-level cost on a synthetic prompt -> CostModel (``meta`` holds the raw timings and any problem)."""
    target = decoder.target
    sizes = [n for n in PROBE_SIZES if n <= decoder.total_tokens]
    if sizes[-1] != decoder.total_tokens:
        sizes.append(decoder.total_tokens)
    began = time.perf_counter()
    problem = None
    for attempt in range(1, ATTEMPTS + 1):
        verify_raw, draft_raw, batch_raw = measure(decoder, sizes, prompt_len, repeats)
        problem = curve_problem(sizes, verify_raw, draft_raw)
        if problem is None:
            break
        if attempt < ATTEMPTS:
            log.warning("cost probe: %s (a busy machine?); measuring again", problem)
        else:
            log.warning("cost probe: %s again; using the lower envelope of the timings, not cached (the next "
                        "run measures again)", problem)
    target.reset()
    t1, t3 = draft_raw
    level_s = max((t3 - t1) / 2, 1e-6) if decoder.head is not None else 0.0
    base_s = max(t1 - level_s, 0.0) if decoder.head is not None else 0.0
    meta = {"probe_s": round(time.perf_counter() - began, 2), "prompt_len": prompt_len, "repeats": repeats,
            "attempts": attempt, "raw_verify_s": [round(t, 6) for t in verify_raw]}
    if problem is not None:
        meta["suspect"] = problem
    batch = {rows: (tokens, lower_envelope(times)) for rows, (tokens, times) in batch_raw.items()}
    return CostModel(sizes, lower_envelope(verify_raw), base_s, level_s, update_rate=update_rate, meta=meta,
                     batch=batch)


def measure(decoder, sizes: list[int], prompt_len: int, repeats: int):
    """One measurement -> (fastest verify time per size, (fastest draft of 1 level, of 3 levels), {rows: (total
    tokens, fastest time)}); a warm-up round, then ``repeats`` rounds that time every job once each."""
    target, head = decoder.target, decoder.head
    device = target.device
    vocab = target.lm_head.weight.shape[0]
    g = torch.Generator().manual_seed(0)
    prompt = torch.randint(0, vocab, (prompt_len,), generator=g).to(device)  # [P]
    _, _, head_feats = target.prefill_features(prompt, head)  # [P, F]
    L = target.length
    jobs = [(("verify", n), _verify_once(target, prompt, n, L)) for n in sizes]
    if head is not None:
        pair_tokens = torch.cat([prompt[1:], prompt[:1]])[:8]  # [8]: a step's new pairs, the last one the root
        for levels in (1, 3):
            jobs.append((("draft", levels), _draft_once(head, pair_tokens, head_feats[:8], levels, decoder.top_k)))
    per_row = [n for n in ROW_TOKENS if n <= decoder.total_tokens]
    rows = _prefilled_rows(target, prompt, max(BATCH_ROWS)) if not target.static_cache else []
    for b in BATCH_ROWS if rows else ():
        for n in per_row:
            jobs.append((("batch", b, n), _batch_once(target, prompt, rows[:b], n)))
    best = {label: float("inf") for label, _ in jobs}
    for _, fn in jobs:  # warm-up: first calls pay one-off allocation costs
        fn()
    for _ in range(repeats):
        for label, fn in jobs:
            best[label] = min(best[label], _elapsed(fn, device, label))
    verify = [best[("verify", n)] for n in sizes]
    draft = (best[("draft", 1)], best[("draft", 3)]) if head is not None else (0.0, 0.0)
    batch = {b: ([b * n for n in per_row], [best[("batch", b, n)] for n in per_row])
             for b in BATCH_ROWS if rows}
    for kv in rows:
        kv.release()
    return verify, draft, batch


def curve_problem(sizes: list[int], verify: list[float], draft: tuple[float, float]) -> str | None:
    """What in the raw timings no quiet machine produces (None: nothing): a smaller tree more than NOISE times
    (plus SLACK_S) slower than a larger one, or 3 draft levels that much faster than 1."""
    for i in range(len(sizes) - 1):
        j = min(range(i + 1, len(sizes)), key=lambda k: verify[k])  # the fastest larger tree
        if verify[i] > NOISE * verify[j] + SLACK_S:
            return (f"verifying N = {sizes[i]} measured {1000 * verify[i]:.1f} ms, slower than N = {sizes[j]} at "
                    f"{1000 * verify[j]:.1f} ms")
    t1, t3 = draft
    if t3 > 0 and t1 > NOISE * t3 + SLACK_S:
        return f"drafting 1 level measured {1000 * t1:.1f} ms, slower than 3 levels at {1000 * t3:.1f} ms"
    return None


def lower_envelope(times: list[float]) -> list[float]:
    """c[i] = min(times[i:]): the largest non-decreasing curve under the timings (noise only adds time)."""
    out, low = [], float("inf")
    for t in reversed(times):
        low = min(low, t)
        out.append(low)
    return out[::-1]


def _verify_once(target, prompt: torch.Tensor, n: int, L: int):
    """A verification forward of a star tree of n tokens over the L prompt tokens (never committed: the next
    forward overwrites its entries)."""
    tree = DraftTree(tokens=prompt[:n].tolist(), parents=[-1] + [0] * (n - 1), depths=[0] + [1] * (n - 1))
    device = target.device
    tokens = torch.tensor(tree.tokens, device=device)  # [n]
    positions = tree.position_ids(L, device)[0]  # [n]
    visible = tree.visibility(L, device)  # [n, L + n]

    def run():
        target.forward(tokens, positions, visible)

    return run


def _prefilled_rows(target, prompt: torch.Tensor, count: int) -> list:
    """``count`` row caches each holding the prompt (one batched forward)."""
    from dyndepth.target import RowInput

    rows = [target.new_row(prompt.numel() + max(ROW_TOKENS)) for _ in range(count)]
    positions = torch.arange(prompt.numel(), device=prompt.device)
    target.forward_rows([RowInput(kv, prompt, positions) for kv in rows])
    for kv in rows:
        kv.commit(prompt.numel())
    return rows


def _batch_once(target, prompt: torch.Tensor, rows: list, n: int):
    """One batch step: every row verifies a star tree of n tokens (never committed)."""
    from dyndepth.target import RowInput

    tree = DraftTree(tokens=prompt[:n].tolist(), parents=[-1] + [0] * (n - 1), depths=[0] + [1] * (n - 1))
    L, device = prompt.numel(), target.device
    tokens = torch.tensor(tree.tokens, device=device)  # [n]
    positions = tree.position_ids(L, device)[0]  # [n]
    visible = tree.visibility(L, device) if n > 1 else None  # [n, L + n]

    def run():
        target.forward_rows([RowInput(kv, tokens, positions, visible) for kv in rows])

    return run


def _draft_once(head, pair_tokens: torch.Tensor, feats: torch.Tensor, levels: int, top_k: int):
    def run():
        grow_pool(head, DraftKV(), pair_tokens, feats, FixedDepth(max_depth=levels), top_k)

    return run


def _elapsed(fn, device, label) -> float:
    """Seconds ``fn()`` takes (``label`` names the timing: ("verify", N) or ("draft", levels))."""
    t0 = _now(device)
    fn()
    return _now(device) - t0


def _now(device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()
