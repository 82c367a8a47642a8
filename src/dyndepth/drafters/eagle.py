"""Tree growth with the EAGLE draft head: a pool of candidate nodes per row, one depth per head forward.

All rows that draft this step share every head forward (their tokens flattened, ``dyndepth.ragged``); each row
keeps its own draft KV cache, pool and depth decision.

1. Root forward: every row's new committed pairs (feature, next token) go through the head at once; their KV is
   appended to each row's committed cache, and a row's last output predicts its depth 1: the ``top_k`` best tokens
   become depth-1 nodes (the row's first beam). Target features go through ``head.project`` first: EAGLE-3's fc
   (k·H_t -> H) runs only on target features; for EAGLE-1/2 it is the identity (fc is inside ``forward``).
2. Expansion of depth d -> d+1: one forward over the ``top_k`` beam nodes of every row still growing (a row's
   beam sits at draft position ``L_r + d - 1``; each node sees its row's committed cache, its own ancestors' scratch
   entries and itself). Each beam node's ``top_k`` children enter the row's pool with path value parent value +
   child log-prob; the ``top_k`` best children over the row's whole level form its next beam.
3. The depth policy is asked after every depth whether each row stops (all rows in one call,
   ``should_stop_rows``); growth never exceeds its ``max_depth``, nor the row's ``levels``: a tree of N tokens is
   connected, so it holds no node deeper than N - 1, and a deeper level would be drafted for nothing. Afterwards
   the scratch KV is dropped: a head cache only ever holds committed pairs.

The draft never samples: nodes are deterministic top-k picks of the untempered draft distribution.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dyndepth.head import DraftHead, DraftKV
from dyndepth.head.kv import DraftRows
from dyndepth.policies import DepthPolicy
from dyndepth.ragged import RowSpan, causal_mask
from dyndepth.tree import DraftPool


@dataclass
class DraftInput:
    """One row's draft input this step: its head cache and the committed pairs the head has not seen yet,
    tokens [n] (target ids; the last is the root) and target features [n, F] (F = H for EAGLE-1/2, k·H_t for
    EAGLE-3)."""

    cache: DraftKV
    tokens: torch.Tensor
    features: torch.Tensor


@torch.inference_mode()
def grow_pools(head: DraftHead, rows: list[DraftInput], policy: DepthPolicy, top_k: int,
               pools: list[DraftPool] | None = None, levels: list[int] | None = None) -> list[DraftPool]:
    """One pool per row (``pools``: empty pools to grow into, e.g. carrying a hybrid row's suffix candidates for
    the policy); ``pool.depth`` is the number of levels that row grew. levels: the most levels each row may use
    (its tree's tokens - 1); None: ``policy.max_depth`` for every row."""
    pools = pools if pools is not None else [DraftPool() for _ in rows]
    features = torch.cat([r.features for r in rows])  # [T, F]
    device, dtype = features.device, features.dtype
    caches = [r.cache for r in rows]
    K = top_k

    # 1. Root forward over every row's new pairs (causal among themselves, all of the row's cache visible).
    spans, masks, positions, start = [], [], [], 0
    for r in rows:
        n, past = r.tokens.numel(), r.cache.length
        spans.append(RowSpan(start, start + n))
        masks.append(causal_mask(n, past, dtype, device))  # [1, 1, n, past + n]
        positions.append(torch.arange(past, past + n, device=device))
        start += n
    tokens = torch.cat([r.tokens for r in rows])  # [T]
    hidden = head(tokens[None], head.project(features[None]), torch.cat(positions)[None],
                  DraftRows(caches, spans, masks), None)[0]  # [T, H]
    for c in caches:
        c.commit()
    h_root = hidden[torch.tensor([s.stop - 1 for s in spans], device=device)]  # [B, H]
    logp = torch.log_softmax(head.logits(h_root).float(), dim=-1)  # [B, V_d]
    beam_values, draft_ids = torch.topk(logp, K, dim=-1)  # [B, K], [B, K]
    beam_tokens = head.to_target_ids(draft_ids)  # [B, K]
    no_parent = torch.full((K,), -1, device=device)
    beam_pool = [p.add_level(beam_tokens[b], beam_values[b], no_parent) for b, p in enumerate(pools)]  # [K] each
    beam_hidden = h_root[:, None].expand(-1, K, -1)  # [B, K, H]: each beam node's parent output
    eye = torch.eye(K, dtype=torch.bool, device=device)
    ancestors = [eye] * len(rows)  # per row [K, K·depth] over its scratch entries

    levels = levels or [policy.max_depth] * len(rows)
    growing = list(range(len(rows)))
    depth = 1
    while depth < policy.max_depth:
        asked = [b for b in growing if depth < levels[b]]
        stops = policy.should_stop_rows(depth, beam_values[asked], [pools[b] for b in asked]) if asked else []
        growing = [b for b, stop in zip(asked, stops) if not stop]
        if not growing:
            break
        # 2. Expand the beams of `depth` into depth + 1, all growing rows in one head forward.
        idx = torch.tensor(growing, device=device)
        spans, masks, positions = [], [], []
        for i, b in enumerate(growing):
            committed = caches[b].committed
            scratch = torch.zeros(K, committed + ancestors[b].shape[1], dtype=dtype, device=device)
            scratch[:, committed:].masked_fill_(~ancestors[b], torch.finfo(dtype).min)
            spans.append(RowSpan(i * K, (i + 1) * K))
            masks.append(scratch[None, None])  # [1, 1, K, committed + K·depth]
            positions.append(torch.full((K,), committed + depth - 1, device=device))  # one position per level
        h = head(beam_tokens[idx].reshape(1, -1), beam_hidden[idx].reshape(1, -1, beam_hidden.shape[-1]),
                 torch.cat(positions)[None], DraftRows([caches[b] for b in growing], spans, masks), None)[0]
        h = h.reshape(len(growing), K, -1)  # [A, K, H]
        logp = torch.log_softmax(head.logits(h).float(), dim=-1)  # [A, K, V_d]
        child_logp, child_ids = torch.topk(logp, K, dim=-1)  # [A, K, K]
        child_values = beam_values[idx][:, :, None] + child_logp  # [A, K, K] path values of all children
        child_tokens = head.to_target_ids(child_ids)  # [A, K, K]
        values, flat = torch.topk(child_values.flatten(1), K, dim=-1)  # [A, K]: each row's next beam
        parent_slot = flat // K  # [A, K] beam slot of each new beam node's parent
        beam_values = beam_values.clone()
        beam_values[idx] = values
        beam_tokens = beam_tokens.clone()
        beam_tokens[idx] = child_tokens.flatten(1).gather(1, flat)
        beam_hidden = beam_hidden.clone()
        beam_hidden[idx] = h.gather(1, parent_slot[:, :, None].expand(-1, -1, h.shape[-1]))
        for i, b in enumerate(growing):
            child_pool = pools[b].add_level(child_tokens[i], child_values[i], beam_pool[b][:, None].expand(-1, K))
            beam_pool[b] = child_pool[flat[i]]
            ancestors[b] = torch.cat([ancestors[b][parent_slot[i]], eye], dim=1)
        depth += 1

    for b, (c, p) in enumerate(zip(caches, pools)):
        c.crop_to_committed()
        p.beam_log_mass = torch.logsumexp(beam_values[b].float(), dim=-1)  # 0-d: the deepest beam's log mass
    return pools


def grow_pool(head: DraftHead, cache: DraftKV, tokens: torch.Tensor, features: torch.Tensor,
              policy: DepthPolicy, top_k: int) -> DraftPool:
    """One row: tokens [n] and features [n, F], the new committed pairs whose last token is the root."""
    return grow_pools(head, [DraftInput(cache, tokens, features)], policy, top_k)[0]
