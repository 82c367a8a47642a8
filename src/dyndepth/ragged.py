"""Ragged batches: the tokens of several sequences flattened into one forward, each attending only to its own KV.

A forward over rows r = 0..B-1 takes their new tokens one after another, [T] with T = sum of t_r, so every linear
layer runs once over all of them (on a CPU a forward over 24 tokens costs little more than over one). Attention is
the only part that must not mix rows: row r's queries, ``query[:, :, start_r:stop_r]``, see only row r's keys, its
committed entries and the new ones its mask allows (a tree's ancestors, a chunk's causal past). ``attend`` runs one
scaled-dot-product attention per row over that row's own keys, so no row pays for another's context (a single
masked attention over every row's keys would cost T x sum of the rows' lengths). The target (``target/ragged.py``)
and the draft heads (``head/attention.py``) both attend this way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F


@dataclass
class RowSpan:
    """One row's part of a ragged forward: its tokens are ``start .. stop - 1`` of the flattened batch."""

    start: int
    stop: int

    @property
    def size(self) -> int:
        return self.stop - self.start


def attend(query: torch.Tensor, spans, keys_of: Callable, mask_of: Callable, scale: float | None,
           gqa: bool) -> torch.Tensor:
    """query [1, h, T, d] -> attention output [1, h, T, d], row by row.

    spans: the rows' RowSpans in order; ``keys_of(i)`` -> row i's (keys, values) [1, n_kv, S_i, d] (already holding
    its new entries); ``mask_of(i)`` -> its additive mask [1, 1, t_i, S_i], or None when each of its new tokens sees
    every key (plain decoding's single token)."""
    outs = []
    for i, span in enumerate(spans):
        k, v = keys_of(i)
        outs.append(sdpa(query[:, :, span.start:span.stop], k, v, mask_of(i), scale, gqa))  # [1, h, t_i, d]
    return outs[0] if len(outs) == 1 else torch.cat(outs, dim=2)


def sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, scale: float | None,
         gqa: bool) -> torch.Tensor:
    """q [1, h, t, d], k/v [1, n_kv, S, d], mask [1, 1, t, S] or None -> [1, h, t, d].

    On a CPU, PyTorch's kernel for a single bf16/fp16 query is several times slower than the same attention in
    float32 (torch 2.13, Qwen2.5-1.5B's shape at S = 250: 350-430 us against 55-70 us, upcast included; with two or
    more queries the kernels are level), and plain decoding or a batch's rows that do not draft send one query per
    row and layer. Such a query attends in float32, which is at least as exact (the bf16 kernel accumulates in
    float32 too); the output is rounded back to the model's dtype."""
    if q.shape[2] == 1 and q.device.type == "cpu" and q.dtype in (torch.bfloat16, torch.float16):
        out = F.scaled_dot_product_attention(q.float(), k.float(), v.float(),
                                             attn_mask=None if mask is None else mask.float(), scale=scale,
                                             enable_gqa=gqa)
        return out.to(q.dtype)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale, enable_gqa=gqa)


def causal_mask(n: int, past: int, dtype, device) -> torch.Tensor:
    """[1, 1, n, past + n] additive: every new token sees the ``past`` entries and the new ones up to itself."""
    mask = torch.zeros(n, past + n, dtype=dtype, device=device)
    mask[:, past:] = torch.full((n, n), torch.finfo(dtype).min, dtype=dtype, device=device).triu(1)
    return mask[None, None]


def additive(visible: torch.Tensor, dtype) -> torch.Tensor:
    """visible [n, S] bool -> additive mask [1, 1, n, S]: 0 where visible, the dtype's lowest value elsewhere."""
    return torch.zeros(visible.shape, dtype=dtype, device=visible.device).masked_fill_(
        ~visible, torch.finfo(dtype).min)[None, None]
