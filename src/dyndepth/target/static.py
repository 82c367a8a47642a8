"""The target's static KV cache: preallocated buffers written at explicit slots, for capturable forwards.

With ``Target(..., static_cache=True, max_len=M)`` every decoder layer's keys and values live in one buffer
[1, n_kv, S, d], and a forward never changes a tensor's shape or address (until more rows are needed):

- **regions**: each row (sequence) of the batch owns a region of M slots, ``start .. start + M - 1``; slot
  ``start + j`` holds its position j. S = R * M + 1 for R regions; the last slot is the pad slot. A new row takes a
  free region; when none is free the buffers grow to twice the regions (the content is copied once; a compiled
  forward then compiles the new size once).
- **slots**: a forward over the flattened new tokens of several rows writes their KV at buffer indices ``slots``
  [n] (``index_copy_``), then attends over the whole buffer; the additive mask [1, 1, n, S] hides every slot a token
  must not see (other rows' regions, stale entries of earlier trees, the pad slot, the not yet written tail).
- **padding**: the n tokens are padded to the bucket ``padded_size(n)`` (1, 2, 4, 8, ... a few fixed sizes), so a
  compiled forward sees one shape per bucket. Pad tokens write their KV to the pad slot, see only that slot, and no
  real token sees them; their outputs are dropped, so they are never verified and never accepted.
- **commit**: the accepted path's entries are moved to ``start + L .. start + L + a`` in place (``index_select``
  then ``index_copy_`` on the same buffers); nothing is freed, the entries after them are simply masked later.

This is the approach of pytorch-labs/gpt-fast: the verify forward (fixed shapes, inputs as tensors, KV buffers
at fixed addresses) can be captured with ``torch.compile(mode="reduce-overhead")`` (CUDA graphs). Attention here is
dense over the whole buffer, which a CPU pays for with several rows; the dynamic engine (``target/rows.py``) attends
row by row and is the CPU default.
"""

from __future__ import annotations

import torch
from transformers.cache_utils import Cache, CacheLayerMixin

from dyndepth.errors import DyndepthError
from dyndepth.target.rows import RowKV

DEFAULT_MAX_LEN = 2048  # committed tokens + one tree; the model's own context when that is smaller
ATTENTION_LAYER_TYPES = {"full_attention", "sliding_attention"}


def padded_size(n: int) -> int:
    """The bucket a tree of n nodes is padded to: the next power of two (n >= 1)."""
    return 1 << max(0, int(n) - 1).bit_length()


def check_options(static_cache, max_len, compile) -> None:
    """The model-free checks of the engine options (one line each)."""
    if not isinstance(static_cache, bool):
        raise DyndepthError(f"static_cache must be true or false, got {static_cache!r}")
    if not isinstance(compile, bool):
        raise DyndepthError(f"compile must be true or false, got {compile!r}")
    if compile and not static_cache:
        raise DyndepthError("compile=True needs static_cache=True (only the static-cache forward is compiled)")
    if max_len is not None:
        if not static_cache:
            raise DyndepthError("max_len sizes the static KV buffers; it needs static_cache=True")
        if isinstance(max_len, bool) or not isinstance(max_len, int) or max_len < 2:
            raise DyndepthError(f"max_len must be an integer >= 2, got {max_len!r}")


def check_model(config) -> None:
    """Refuse a model whose layers are not all plain (full or sliding) attention layers."""
    kinds = set(getattr(config, "layer_types", None) or []) - ATTENTION_LAYER_TYPES
    if kinds:
        raise DyndepthError(f"model type {getattr(config, 'model_type', '?')!r} cannot use static_cache: it has "
                            f"layer types {sorted(kinds)} (only full and sliding attention layers are supported)")


class SlotLayer(CacheLayerMixin):
    """One decoder layer's buffers [1, n_kv, S, d]; ``update`` writes at the cache's current slots."""

    is_compileable = True

    def __init__(self, owner: "SlotCache"):
        self.owner = owner
        self._buffers: dict[str, torch.Tensor | None] = {"keys": None, "values": None}
        super().__init__()

    keys = property(lambda self: self._buffers["keys"], lambda self, t: self._assign("keys", t))
    values = property(lambda self: self._buffers["values"], lambda self, t: self._assign("values", t))

    def _assign(self, name: str, tensor: torch.Tensor | None) -> None:
        buf = self._buffers[name]
        if buf is not None and tensor is not None and tensor.data_ptr() == buf.data_ptr():
            return  # a prefix view of the buffer: the buffer keeps its address
        self._buffers[name] = tensor

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.allocate(key_states, value_states, self.owner.size)
        self.is_initialized = True

    def allocate(self, k: torch.Tensor, v: torch.Tensor, size: int) -> None:
        """Buffers of ``size`` slots shaped like k, v; what the old buffers held below the old pad slot is kept."""
        old_k, old_v = self._buffers["keys"], self._buffers["values"]
        self._buffers["keys"] = k.new_zeros(k.shape[0], k.shape[1], size, k.shape[-1])
        self._buffers["values"] = v.new_zeros(v.shape[0], v.shape[1], size, v.shape[-1])
        if old_k is not None:
            keep = min(old_k.shape[2], size) - 1
            self._buffers["keys"][:, :, :keep] = old_k[:, :, :keep]
            self._buffers["values"][:, :, :keep] = old_v[:, :, :keep]
        if not torch.compiler.is_compiling():
            torch._dynamo.mark_static_address(self._buffers["keys"])
            torch._dynamo.mark_static_address(self._buffers["values"])

    def update(self, key_states, value_states, *args, **kwargs):
        """key/value_states [1, n_kv, n, d] -> the whole buffers [1, n_kv, S, d], the new entries at slots."""
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        slots = self.owner.slots  # [n]
        self.keys.index_copy_(2, slots, key_states)
        self.values.index_copy_(2, slots, value_states)
        return self.keys, self.values

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.owner.size, 0

    def get_seq_length(self) -> int:
        return 0

    def get_max_length(self) -> int:
        return self.owner.size


class SlotCache(Cache):
    """The target's static cache: ``num_layers`` SlotLayers of ``size`` = regions * region + 1 slots; ``slots`` [n]
    is where the next forward writes (set by the Target before each forward)."""

    def __init__(self, num_layers: int, region: int, regions: int = 1):
        self.region = region
        self.regions = regions
        self.size = regions * region + 1
        self.slots: torch.Tensor | None = None
        self.free = list(range(regions))  # free region indices
        super().__init__(layers=[SlotLayer(self) for _ in range(num_layers)])

    @property
    def pad_slot(self) -> int:
        return self.size - 1

    @property
    def written(self) -> bool:
        """Whether every layer has been written at least once (a model that bypasses the cache fails this)."""
        return all(layer.is_initialized for layer in self.layers)

    def take_region(self) -> int:
        """A free region's start slot; doubles the regions (copying the buffers once) when none is free."""
        if not self.free:
            old = self.regions
            self.regions *= 2
            self.size = self.regions * self.region + 1
            self.free = list(range(old, self.regions))
            for layer in self.layers:
                if layer.is_initialized:
                    layer.allocate(layer.keys, layer.values, self.size)
        return self.free.pop(0) * self.region

    def give_back(self, start: int) -> None:
        self.free.append(start // self.region)
        self.free.sort()

    def compact(self, start: int, path: torch.Tensor) -> None:
        """Move the entries at ``start + path`` (path [k], tree indices) to ``start .. start+k-1``, in place."""
        src = start + path
        dst = torch.arange(start, start + path.numel(), device=path.device)
        for layer in self.layers:
            for buf in (layer.keys, layer.values):  # [1, n_kv, S, d]
                buf.index_copy_(2, dst, buf.index_select(2, src))  # gather first (a copy), then write


class SlotRow(RowKV):
    """A row of the static engine: its committed entries live in a region of the shared SlotCache."""

    def __init__(self, cache: SlotCache):
        super().__init__(len(cache.layers), cache.region)
        self.cache = cache
        self.start: int | None = cache.take_region()

    def write(self, layer, k, v):
        raise RuntimeError("the static engine writes through SlotCache.update, not row by row")

    @torch.inference_mode()
    def commit(self, n: int, keep: torch.Tensor | None = None) -> None:
        if keep is not None:
            n = keep.numel()
            if keep.tolist() != list(range(n)):
                self.cache.compact(self.start + self.length, keep.to(self.cache.layers[0].keys.device))
        self.length += n

    def release(self) -> None:
        if self.start is not None:
            self.cache.give_back(self.start)
            self.start = None
        self.length = 0


def padded_rows(rows, bucket: int, cache: SlotCache):
    """The flattened new tokens of static rows, padded to ``bucket``, over the cache's S slots ->
    (tokens [b], positions [b], slots [b], visible [b, S] bool, key positions [S]).

    Row r's tokens write at ``start_r + L_r + i`` and see its region's committed slots and the new slots their
    ``visible`` allows; pad tokens repeat the first token, write to the pad slot and see only it."""
    size, pad_slot = cache.size, cache.pad_slot
    device = rows[0].tokens.device
    n = sum(r.size for r in rows)
    toks, poss, slots = [], [], []
    vis = torch.zeros(bucket, size, dtype=torch.bool, device=device)
    k_pos = torch.zeros(size, dtype=torch.long, device=device)
    i = 0
    for r in rows:
        kv, t = r.kv, r.size
        s, L = kv.start, kv.length
        if L + t > cache.region:
            raise RuntimeError(f"static row of {cache.region} slots is full")  # sized by the engine
        row_slots = torch.arange(s + L, s + L + t, device=device)
        toks.append(r.tokens)
        poss.append(r.positions)
        slots.append(row_slots)
        visible = r.visible
        if visible is None:  # causal over the new tokens
            visible = torch.ones(t, L + t, dtype=torch.bool, device=device)
            visible[:, L:] = torch.ones(t, t, dtype=torch.bool, device=device).tril()
        vis[i:i + t, s:s + L + t] = visible
        k_pos[s:s + L] = torch.arange(L, device=device)
        k_pos[s + L:s + L + t] = r.positions
        i += t
    pad = bucket - n
    tok = torch.cat(toks + [toks[0][:1].expand(pad)])  # [b]
    pos = torch.cat(poss + [poss[0][:1].expand(pad)])  # [b]
    slot = torch.cat(slots + [torch.full((pad,), pad_slot, dtype=torch.long, device=device)])  # [b]
    vis[n:, pad_slot] = True
    return tok, pos, slot, vis, k_pos
