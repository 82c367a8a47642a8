"""The target's static KV cache: preallocated buffers written at explicit slots, for capturable forwards.

With ``Target(..., static_cache=True, max_len=M)`` every decoder layer's keys and values live in one buffer
[1, n_kv, S, d] allocated once (S = M + 1), and a forward never changes a tensor's shape or address:

- **slots**: a forward over n tokens writes their KV at buffer indices ``slots`` [n] (``index_copy_``), then
  attends over the whole buffer; the additive mask [1, 1, n, S] hides every slot a token must not see
  (stale entries of earlier trees, the pad slot, the not yet written tail).
- **padding**: a tree of n nodes is padded to the bucket ``padded_size(n)`` (1, 2, 4, 8, ... a few fixed
  sizes), so a compiled forward sees one shape per bucket. Pad nodes write their KV to the last buffer slot
  (``pad_slot`` = M, never a real position), see only that slot, and no real node sees them; their outputs
  are dropped, so they are never verified and never accepted.
- **commit**: the accepted path's entries are moved to ``L .. L+a`` in place (``index_select`` then
  ``index_copy_`` on the same buffers); nothing is freed, the entries after ``L+a`` are simply masked later.

This is the approach of pytorch-labs/gpt-fast: the verify forward (fixed shapes, inputs as tensors, KV buffers
at fixed addresses) can be captured with ``torch.compile(mode="reduce-overhead")`` (CUDA graphs).
"""

from __future__ import annotations

import torch
from transformers.cache_utils import Cache, CacheLayerMixin

from dyndepth.errors import DyndepthError

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

    # ``layer.keys = layer.keys[..., :L, :]`` (the DynamicCache idiom that drops a tree's entries, as the cost
    # probe does) keeps the buffer: entries past L are masked anyway, and the buffer must keep its address.
    keys = property(lambda self: self._buffers["keys"], lambda self, t: self._assign("keys", t))
    values = property(lambda self: self._buffers["values"], lambda self, t: self._assign("values", t))

    def _assign(self, name: str, tensor: torch.Tensor | None) -> None:
        buf = self._buffers[name]
        if buf is not None and tensor is not None and tensor.data_ptr() == buf.data_ptr():
            return  # a prefix view of the buffer
        self._buffers[name] = tensor

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        b, n_kv, _, d = key_states.shape
        size = self.owner.size
        self.keys = torch.zeros(b, n_kv, size, d, dtype=key_states.dtype, device=key_states.device)
        self.values = torch.zeros(b, n_kv, size, value_states.shape[-1], dtype=value_states.dtype,
                                  device=value_states.device)
        if not torch.compiler.is_compiling():
            torch._dynamo.mark_static_address(self.keys)
            torch._dynamo.mark_static_address(self.values)
        self.is_initialized = True

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
        return self.owner.length

    def get_max_length(self) -> int:
        return self.owner.size


class SlotCache(Cache):
    """The target's static cache: ``num_layers`` SlotLayers of ``size`` slots; ``slots`` [n] is where the next
    forward writes (set by the Target before each forward); ``length`` mirrors the Target's committed L."""

    def __init__(self, num_layers: int, size: int):
        self.size = size
        self.length = 0
        self.slots: torch.Tensor | None = None
        super().__init__(layers=[SlotLayer(self) for _ in range(num_layers)])

    @property
    def written(self) -> bool:
        """Whether every layer has been written at least once (a model that bypasses the cache fails this)."""
        return all(layer.is_initialized for layer in self.layers)

    def compact(self, start: int, path: torch.Tensor) -> None:
        """Move the entries at ``start + path`` (path [k], tree indices) to ``start .. start+k-1``, in place."""
        src = start + path
        dst = torch.arange(start, start + path.numel(), device=path.device)
        for layer in self.layers:
            for buf in (layer.keys, layer.values):  # [1, n_kv, S, d]
                buf.index_copy_(2, dst, buf.index_select(2, src))  # gather first (a copy), then write


def padded_inputs(tokens: torch.Tensor, positions: torch.Tensor, visible: torch.Tensor, start: int, bucket: int,
                  size: int):
    """A forward of n tokens after ``start`` committed entries, padded to ``bucket`` rows over ``size`` slots.

    tokens [n], positions [n], visible [n, start + n] bool ->
    (tokens [b], positions [b], slots [b], visible [b, S] bool, key positions [S]); pad rows repeat token 0's
    id and position, write to the pad slot S - 1 and see only it; no real row sees a slot >= start + n."""
    n = tokens.numel()
    device = tokens.device
    pad_slot = size - 1
    pad = bucket - n
    tok = torch.cat([tokens, tokens[:1].expand(pad)])  # [b]
    pos = torch.cat([positions, positions[:1].expand(pad)])  # [b]
    slots = torch.cat([torch.arange(start, start + n, device=device),
                       torch.full((pad,), pad_slot, dtype=torch.long, device=device)])  # [b]
    vis = torch.zeros(bucket, size, dtype=torch.bool, device=device)
    vis[:n, :start + n] = visible
    vis[n:, pad_slot] = True
    k_pos = torch.arange(size, device=device)  # [S]: slot j < start holds position j
    k_pos[start:start + n] = positions
    return tok, pos, slots, vis, k_pos
