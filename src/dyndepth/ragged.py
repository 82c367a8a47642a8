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
        outs.append(F.scaled_dot_product_attention(query[:, :, span.start:span.stop], k, v, attn_mask=mask_of(i),
                                                   scale=scale, enable_gqa=gqa))  # [1, h, t_i, d]
    return outs[0] if len(outs) == 1 else torch.cat(outs, dim=2)


def causal_mask(n: int, past: int, dtype, device) -> torch.Tensor:
    """[1, 1, n, past + n] additive: every new token sees the ``past`` entries and the new ones up to itself."""
    mask = torch.zeros(n, past + n, dtype=dtype, device=device)
    mask[:, past:] = torch.full((n, n), torch.finfo(dtype).min, dtype=dtype, device=device).triu(1)
    return mask[None, None]


def additive(visible: torch.Tensor, dtype) -> torch.Tensor:
    """visible [n, S] bool -> additive mask [1, 1, n, S]: 0 where visible, the dtype's lowest value elsewhere."""
    return torch.zeros(visible.shape, dtype=dtype, device=visible.device).masked_fill_(
        ~visible, torch.finfo(dtype).min)[None, None]
