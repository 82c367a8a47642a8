"""One sequence's target KV cache (a row of the batch), and what a row brings to a forward.

    RowKV     per decoder layer, keys and values [1, n_kv, capacity, d]; entries 0 .. L-1 are committed (entry j is
              position j), a forward writes its n new entries at L .. L+n-1, and ``commit`` keeps some of them:
              a tree's accepted path is moved to L .. L+a (``keep``), a prefill chunk is kept whole. Nothing else is
              ever moved: the next forward simply overwrites what was not kept.
    RowInput  a row's part of one target forward: its cache, its new tokens with their position ids, and which
              keys each new token sees.

Buffers are allocated at the first write with the capacity the engine asked for (prompt + new tokens + a tree) and
doubled if a row ever outgrows them, so a running row never copies its cache (a ``DynamicCache`` concatenates the
whole cache at every forward).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


class RowKV:
    def __init__(self, num_layers: int, capacity: int = 256):
        self.keys: list[torch.Tensor | None] = [None] * num_layers  # per layer [1, n_kv, capacity, d]
        self.values: list[torch.Tensor | None] = [None] * num_layers
        self.capacity = max(1, int(capacity))
        self.length = 0  # L: committed entries

    def write(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """k, v [1, n_kv, n, d]: this forward's new entries -> the layer's keys, values [1, n_kv, L + n, d]."""
        end = self.length + k.shape[-2]
        if self.keys[layer] is None or end > self.keys[layer].shape[-2]:
            self._grow(layer, k, v, end)
        keys, values = self.keys[layer], self.values[layer]
        keys[..., self.length:end, :] = k
        values[..., self.length:end, :] = v
        return keys[..., :end, :], values[..., :end, :]

    def _grow(self, layer: int, k: torch.Tensor, v: torch.Tensor, end: int) -> None:
        old_k, old_v = self.keys[layer], self.values[layer]
        size = max(end, self.capacity if old_k is None else 2 * old_k.shape[-2])
        self.keys[layer] = k.new_zeros(*k.shape[:2], size, k.shape[-1])  # zeros: never NaN in masked slots
        self.values[layer] = v.new_zeros(*v.shape[:2], size, v.shape[-1])
        if old_k is not None:
            self.keys[layer][..., :self.length, :] = old_k[..., :self.length, :]
            self.values[layer][..., :self.length, :] = old_v[..., :self.length, :]

    @torch.inference_mode()
    def commit(self, n: int, keep: torch.Tensor | None = None) -> None:
        """Keep the last forward's entries: all n of them in order (``keep`` None: a prefill chunk or a path that
        is a prefix of the tree), or the tree entries ``keep`` [a+1] (tree indices, root first) at L .. L+a."""
        L = self.length
        if keep is not None:
            count = keep.numel()
            if keep.tolist() != list(range(count)):
                src = L + keep.to(self.keys[0].device)
                for bufs in (self.keys, self.values):
                    for buf in bufs:
                        if buf is not None:
                            buf[..., L:L + count, :] = buf.index_select(-2, src)  # gather first (a copy), then write
            n = count
        self.length = L + n

    def release(self) -> None:
        self.keys = [None] * len(self.keys)
        self.values = [None] * len(self.values)
        self.length = 0


@dataclass
class RowInput:
    """One row's part of a target forward: tokens [t] at positions [t]; visible [t, L + t] bool (which keys each
    new token sees: the committed prefix and its tree ancestors), or None for a causal chunk (a prefill chunk, or a
    single token that sees everything)."""

    kv: RowKV
    tokens: torch.Tensor
    positions: torch.Tensor
    visible: torch.Tensor | None = None

    @property
    def size(self) -> int:
        return self.tokens.numel()
