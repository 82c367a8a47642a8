"""One engine step over a batch of sequences: draft every row's tree, verify them all in ONE target forward,
accept and commit per row.

    decode rows:   pools = drafting.pools(rows)    # drafters/stage.py: the head's shared forwards (one per depth),
                                                   # suffix matches, or both merged, per the decoder's drafter
                   sizes = policy.tree_sizes(pools, caps)                       # per row, priced by the batch
                   tree_r = pool_r.select(root_r, size_r - 1)                   # a row that does not draft: its root
    prefill rows:  the next chunk of the prompt (all of it when no row is decoding)
                   F = target.forward_rows(every row's tree or chunk)           # ONE forward, ragged
    decode rows:   path_r, bonus_r = verify(tree_r, logits of F_r)              # the row's own generator
                   commit root + accepted into row r's KV; emit accepted + bonus; bonus is the next root
    prefill rows:  commit the chunk; after the last one, pick the first token (the row's first root) and emit it

The lm_head runs once for all rows' most likely branches (verify.prefetch). A failure inside one row's
verification or emission ends that row only (``Event.error``); a failure of a shared stage (the draft, the
forward) is raised to the scheduler.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from dyndepth.engine.sequence import Sequence, State
from dyndepth.sampling import pick_token
from dyndepth.stats import StepStats
from dyndepth.target import RowInput
from dyndepth.text import TextChunk
from dyndepth.tree import SUFFIX, DraftTree
from dyndepth.verify import NodeLogits, prefetch, verify


@dataclass
class Event:
    """What one step gave one row: committed tokens and text (None when nothing), the step's statistics (None for
    the prefill's first token and for a final flush), whether the row is finished, and its error if it failed."""

    seq: Sequence
    chunk: TextChunk | None
    step: StepStats | None
    done: bool
    error: BaseException | None = None


def plan_prefill(rows: list[Sequence], budget: int | None) -> list[tuple[Sequence, int, int]]:
    """(row, start, stop) prompt chunks for this step: oldest first, at most ``budget`` tokens in all (None: no
    limit, when no row is decoding and nobody waits for a step)."""
    chunks = []
    for s in rows:
        if budget is not None and budget <= 0:
            break
        start = s.prefilled
        stop = s.prompt.numel() if budget is None else min(s.prompt.numel(), start + budget)
        chunks.append((s, start, stop))
        if budget is not None:
            budget -= stop - start
    return chunks


@torch.inference_mode()
def run_step(dec, rows: list[Sequence], prefill_budget: int | None) -> list[Event]:
    """One step of the rows that are prefilling or decoding; ``dec`` is the SpeculativeDecoder (target, head,
    policy, tree knobs)."""
    target, head, policy = dec.target, dec.head, dec.policy
    device = target.device
    context = target.max_context
    events: list[Event] = []
    t0 = _now(device)
    if head is not None:
        layers = getattr(head, "feature_layers", None)
        target.capture(None if layers is None else layers(target.num_layers))
    decode = []
    for s in rows:
        if s.state is State.DECODE:
            if s.kv.length + 1 > context:  # not even the root fits
                events.append(Event(s, s.end("context"), None, True))
            else:
                decode.append(s)
    prefill = plan_prefill([s for s in rows if s.state is State.PREFILL], prefill_budget)

    # 1. Draft: every drafting row's pool (the drafter stage); tree sizes chosen for the batch.
    n_tree = dec.total_tokens if policy.max_depth > 0 else 1
    caps = [min(n_tree, context - s.kv.length) for s in decode]  # near the context end the tree shrinks
    trees: list[DraftTree] = [DraftTree.root_only(s.root) for s in decode]
    base = len(decode) + sum(b - a for _, a, b in prefill)  # every row's root, every prompt chunk
    pools = dec.drafting.pools(dec, decode, caps, base) if decode else []
    drafting = [i for i, pool in enumerate(pools) if pool is not None]
    if drafting:
        sizes = policy.tree_sizes([pools[i] for i in drafting], [caps[i] for i in drafting], base)
        for i, n in zip(drafting, sizes):
            trees[i] = pools[i].select(decode[i].root, n - 1)
    t1 = _now(device)

    # 2. One target forward over every row's tree and every prefill chunk.
    inputs = []
    for s, tree in zip(decode, trees):
        L = s.kv.length
        visible = tree.visibility(L, device) if len(tree) > 1 else None
        inputs.append(RowInput(s.kv, torch.tensor(tree.tokens, device=device), tree.position_ids(L, device)[0],
                               visible))
    for s, a, b in prefill:
        inputs.append(RowInput(s.kv, s.prompt[a:b], torch.arange(a, b, device=device)))
    if not inputs:
        return events
    context = max([s.kv.length for s in decode] + [b for _, _, b in prefill])  # the longest attention span
    feats = target.forward_rows(inputs)  # [T, H]
    head_feats = target.head_features(feats) if head is not None else None  # [T, F]
    bounds, start = [], 0
    for r in inputs:
        bounds.append((start, start + r.size))
        start += r.size
    n_dec = len(decode)
    finishing = [j for j, (s, a, b) in enumerate(prefill) if b == s.prompt.numel()]
    node_logits = [NodeLogits(feats[a:b], target.logits, tree) for (a, b), tree in zip(bounds, trees)]
    last_logits = {j: NodeLogits(feats[bounds[n_dec + j][1] - 1:bounds[n_dec + j][1]], target.logits)
                   for j in finishing}
    prefetch(node_logits + list(last_logits.values()))
    rows_in_forward, tokens_in_forward = len(inputs), int(start)

    # 3. Accept and commit, row by row.
    for i, s in enumerate(decode):
        a, b = bounds[i]
        try:
            tree = trees[i]
            logits_at = s.processed(node_logits[i], tree.depths)
            path, bonus = verify(tree, logits_at, s.params, s.generator)
            path_t = torch.tensor(path, device=device)  # [a + 1] tree indices, root first
            s.kv.commit(len(path), keep=path_t)
            new = [tree.tokens[j] for j in path[1:]] + [bonus]  # accepted nodes + bonus
            if head_feats is not None:
                s.add_pairs(torch.tensor(new, device=device), head_feats[a:b][path_t])  # [a + 1], [a + 1, F]
            s.root = bonus
            dec.drafting.commit(s, new)
            chunk, done = s.emit(new)
            pool = pools[i]
            dec.drafting.observe(s, pool, tree, path)
            on_path = set(path)
            step = StepStats(committed=len(chunk.token_ids), accepted=min(len(path) - 1, len(chunk.token_ids)),
                             depth=pool.depth if pool is not None else 0, tree_size=len(tree),
                             draft_time_s=t1 - t0, verify_time_s=0.0,
                             beam_log_mass=float(pool.beam_log_mass) if pool is not None and
                             pool.beam_log_mass is not None else None,
                             predicted_accepted=getattr(pool, "predicted_accepted", None),
                             batch_rows=rows_in_forward, batch_tokens=tokens_in_forward, tree_depth=tree.max_depth,
                             context_tokens=context,
                             accepted_suffix=sum(1 for j in path[1:] if tree.sources and tree.sources[j] & SUFFIX),
                             node_values=tree.values[1:], node_parents=tree.parents[1:],
                             node_depths=tree.depths[1:], node_accepted=[j in on_path for j in range(1, len(tree))],
                             node_sources=tree.sources[1:] if tree.sources else [])
            s.stats.step_stats.append(step)
            events.append(Event(s, chunk, step, done))
        except Exception as exc:  # noqa: BLE001 - one row's failure ends that row only
            s.error, s.state = exc, State.DONE
            events.append(Event(s, None, None, True, exc))
    for j, (s, a, b) in enumerate(prefill):
        lo, hi = bounds[n_dec + j]
        try:
            s.kv.commit(b - a)
            s.prefilled = b
            if j not in last_logits:
                if head_feats is not None:
                    s.add_pairs(s.prompt[a + 1:b + 1], head_feats[lo:hi])
                continue
            logits = last_logits[j](0)  # [V]
            root = pick_token(s.processed(lambda _: logits, [0])(0), s.params, s.generator)
            if head_feats is not None:  # pairs (F[j], token j + 1); the last one's token is the root
                s.add_pairs(torch.cat([s.prompt[a + 1:b], torch.tensor([root], device=device)]), head_feats[lo:hi])
            s.root, s.state = root, State.DECODE
            dec.drafting.open(s)
            s.stats.prefill_time_s = time.perf_counter() - s.started
            chunk, done = s.emit([root])
            events.append(Event(s, chunk, None, done))
        except Exception as exc:  # noqa: BLE001
            s.error, s.state = exc, State.DONE
            events.append(Event(s, None, None, True, exc))
    t2 = _now(device)
    steps = [e.step for e in events if e.step is not None]
    for step in steps:
        step.verify_time_s = t2 - t1
    policy.observe_batch(steps)
    return events


def _now(device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()
