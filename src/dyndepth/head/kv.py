"""The draft head's KV cache (shared by the EAGLE-1/2 and EAGLE-3 heads)."""

from __future__ import annotations

import torch


class DraftKV:
    """keys/values [1, n_kv, S, d_head]; the first ``committed`` entries are committed pairs, the rest is
    scratch from the current tree growth (dropped by ``crop_to_committed``)."""

    def __init__(self):
        self.keys: torch.Tensor | None = None
        self.values: torch.Tensor | None = None
        self.committed = 0

    @property
    def length(self) -> int:
        return 0 if self.keys is None else self.keys.shape[-2]

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.keys = k if self.keys is None else torch.cat([self.keys, k], dim=-2)
        self.values = v if self.values is None else torch.cat([self.values, v], dim=-2)
        return self.keys, self.values

    def commit(self) -> None:
        self.committed = self.length

    def crop_to_committed(self) -> None:
        if self.keys is not None and self.length > self.committed:
            self.keys = self.keys[..., : self.committed, :]
            self.values = self.values[..., : self.committed, :]
