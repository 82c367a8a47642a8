"""Tree growth: the draft head grows a pool of candidate nodes, one depth per draft forward.

1. Root forward: the head consumes the step's new committed pairs (feature, next token), appends their KV to
   its committed cache, and its last output predicts depth 1: the ``top_k`` best tokens become depth-1 nodes
   (the first beam). The target features go through ``head.project`` first: EAGLE-3's fc (k·H_t -> H) runs
   only on target features; for EAGLE-1/2 it is the identity (fc is inside ``forward``).
2. Expansion of depth d -> d+1: one forward over the ``top_k`` beam nodes of depth d (all at draft position
   ``L + d - 1``; each sees the committed cache, its own ancestors' scratch entries and itself). Each beam
   node's ``top_k`` children enter the pool with path value parent value + child log-prob; the ``top_k`` best
   children over the whole level form the next beam.
3. The depth policy is asked after every depth whether to stop; growth never exceeds its ``max_depth``.
   Afterwards the scratch KV is dropped: the head's committed cache only ever holds committed pairs.

The draft never samples: nodes are deterministic top-k picks of the untempered draft distribution.
"""

from __future__ import annotations

import torch

from dyndepth.head import DraftHead, DraftKV
from dyndepth.policies import DepthPolicy
from dyndepth.tree import DraftPool


@torch.inference_mode()
def grow_pool(head: DraftHead, cache: DraftKV, tokens: torch.Tensor, features: torch.Tensor,
              policy: DepthPolicy, top_k: int) -> DraftPool:
    """tokens [n] (target ids) and features [n, F]: the new committed pairs, whose last token is the root
    (F = H for EAGLE-1/2, k·H_t for EAGLE-3).

    Returns the pool; ``pool.depth`` is the number of levels grown."""
    pool = DraftPool()
    device, dtype = features.device, features.dtype
    start = cache.length  # committed draft length before this step
    n = tokens.numel()

    # 1. Root forward over the new committed pairs (causal among themselves, all of the cache visible).
    positions = torch.arange(start, start + n, device=device)[None]  # [1, n]
    mask = _causal_mask(n, start, dtype, device)  # [1, 1, n, start + n]
    hidden = head(tokens[None], head.project(features[None]), positions, cache, mask)[0]  # [n, H]
    cache.commit()
    h_root = hidden[-1:]  # [1, H]
    logp = torch.log_softmax(head.logits(h_root).float(), dim=-1)  # [1, V_d]
    beam_values, draft_ids = torch.topk(logp[0], top_k)  # [K], [K]
    beam_tokens = head.to_target_ids(draft_ids)  # [K]
    beam_pool = pool.add_level(beam_tokens, beam_values, torch.full((top_k,), -1, device=device))
    beam_hidden = h_root.expand(top_k, -1)  # [K, H]: each beam node's parent output
    ancestors = torch.eye(top_k, dtype=torch.bool, device=device)  # [K, K·depth] over scratch entries

    depth = 1
    while depth < policy.max_depth and not policy.should_stop(depth, beam_values, pool):
        # 2. Expand the beam of `depth` into depth + 1.
        committed = cache.committed
        scratch_mask = torch.zeros(top_k, committed + ancestors.shape[1], dtype=dtype, device=device)
        scratch_mask[:, committed:].masked_fill_(~ancestors, torch.finfo(dtype).min)
        positions = torch.full((1, top_k), committed + depth - 1, device=device)  # one position per level
        h = head(beam_tokens[None], beam_hidden[None], positions, cache, scratch_mask[None, None])[0]  # [K, H]
        logp = torch.log_softmax(head.logits(h).float(), dim=-1)  # [K, V_d]
        child_logp, child_ids = torch.topk(logp, top_k, dim=-1)  # [K, K]
        child_values = beam_values[:, None] + child_logp  # [K, K] path values of all children
        child_tokens = head.to_target_ids(child_ids)  # [K, K]
        child_pool = pool.add_level(child_tokens, child_values, beam_pool[:, None].expand(-1, top_k))  # [K·K]
        beam_values, flat = torch.topk(child_values.flatten(), top_k)  # [K]
        parent_slot = flat // top_k  # [K] beam slot of each new beam node's parent
        beam_tokens = child_tokens.flatten()[flat]
        beam_pool = child_pool[flat]
        beam_hidden = h[parent_slot]
        ancestors = torch.cat([ancestors[parent_slot], torch.eye(top_k, dtype=torch.bool, device=device)], dim=1)
        depth += 1

    cache.crop_to_committed()
    pool.beam_log_mass = torch.logsumexp(beam_values.float(), dim=-1)  # 0-d: the deepest beam's log mass
    return pool


def _causal_mask(n: int, past: int, dtype, device) -> torch.Tensor:
    mask = torch.zeros(n, past + n, dtype=dtype, device=device)
    mask[:, past:] = torch.full((n, n), torch.finfo(dtype).min, dtype=dtype, device=device).triu(1)
    return mask[None, None]
