"""The draft head's KV cache (shared by the EAGLE-1/2 and EAGLE-3 heads): growing, or static buffers; and
``DraftRows``, several rows' caches in one ragged head forward."""

from __future__ import annotations

import torch

from dyndepth.ragged import RowSpan, attend


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

    def widen(self, mask: torch.Tensor | None) -> torch.Tensor | None:
        """The attention mask over what ``append`` returned: unchanged here (the keys are exactly the entries)."""
        return mask

    def commit(self) -> None:
        self.committed = self.length

    def crop_to_committed(self) -> None:
        if self.keys is not None and self.length > self.committed:
            self.keys = self.keys[..., : self.committed, :]
            self.values = self.values[..., : self.committed, :]


class StaticDraftKV(DraftKV):
    """The same cache in buffers [1, n_kv, capacity, d_head] allocated on first use and never reallocated:
    ``append`` writes at ``length`` and returns the whole buffers, ``widen`` masks the unwritten tail, and
    dropping the scratch only moves ``length`` back. Every forward then sees keys of one fixed shape."""

    def __init__(self, capacity: int):
        super().__init__()
        self.capacity = int(capacity)
        self._length = 0

    @property
    def length(self) -> int:
        return self._length

    def reset(self) -> None:
        """Empty the cache for a new generation (the buffers stay)."""
        self._length = self.committed = 0

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # k, v [1, n_kv, n, d] -> the buffers [1, n_kv, capacity, d], the new entries at length .. length+n-1
        if self.keys is None:
            shape = (*k.shape[:2], self.capacity)
            self.keys = k.new_zeros(*shape, k.shape[-1])
            self.values = v.new_zeros(*shape, v.shape[-1])
        n = k.shape[-2]
        if self._length + n > self.capacity:
            raise RuntimeError(f"static draft cache of {self.capacity} entries is full")  # sized by the decoder
        self.keys[..., self._length:self._length + n, :] = k
        self.values[..., self._length:self._length + n, :] = v
        self._length += n
        return self.keys, self.values

    def widen(self, mask: torch.Tensor | None) -> torch.Tensor | None:
        """mask [B|1, 1, n, length] (additive or bool) -> [.., capacity]: the unwritten tail never visible."""
        if mask is None:
            return None
        tail = self.capacity - mask.shape[-1]
        fill = False if mask.dtype == torch.bool else torch.finfo(mask.dtype).min
        return torch.nn.functional.pad(mask, (0, tail), value=fill)

    def crop_to_committed(self) -> None:
        self._length = self.committed


class DraftRows:
    """Several rows in one head forward (their tokens flattened, B = 1): row i's tokens are ``spans[i]``, its cache
    ``caches[i]``, its additive mask ``masks[i]`` [1, 1, t_i, S_i] over its cache's entries after this forward's
    are appended (None: each new token sees every entry)."""

    def __init__(self, caches: list[DraftKV], spans: list[RowSpan], masks: list[torch.Tensor | None]):
        self.caches, self.spans, self.masks = caches, spans, masks

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, gqa: bool) -> torch.Tensor:
        """q [1, h, T, d], k/v [1, n_kv, T, d] (the new entries) -> [1, h, T, d]."""
        written = [c.append(k[:, :, s.start:s.stop], v[:, :, s.start:s.stop]) for c, s in zip(self.caches, self.spans)]
        masks = [c.widen(m) for c, m in zip(self.caches, self.masks)]
        return attend(q, self.spans, written.__getitem__, masks.__getitem__, None, gqa)
