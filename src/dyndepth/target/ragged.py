"""The target's ragged forward: several rows' new tokens in one call of the unmodified transformers model.

transformers resolves each attention layer's function by name (``AttentionInterface``); dyndepth registers its own,
``"dyndepth"``, on the targets it wraps. Called inside a ragged forward (the model's forward got ``dyndepth_rows=``, a
``RaggedRows``, which transformers hands down to every attention call), it writes the layer's new keys and values
into each row's ``RowKV`` and attends row by row (``dyndepth.ragged.attend``). Called any other way (transformers'
own ``generate`` on the same model, training's feature extraction, the static engine's dense masks) it is exactly
transformers' SDPA attention, so a model keeps behaving as before for everyone else.

The model's forward runs with ``use_cache=False`` (the rows are the cache) and a placeholder 4D mask, which
transformers passes through untouched; the real masks are the rows' own, built once per forward, one per kind of
layer (full attention, and sliding-window layers where the model has them).
"""

from __future__ import annotations

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from dyndepth.errors import DyndepthError
from dyndepth.ragged import RowSpan, additive, attend
from dyndepth.target.rows import RowInput

ATTENTION = "dyndepth"


class RaggedRows:
    """What every attention layer of one ragged forward needs: per row its span, cache and masks."""

    def __init__(self, rows: list[RowInput], dtype, window: int | None, sliding: bool):
        self.rows = rows
        self.spans: list[RowSpan] = []
        self.masks: list[torch.Tensor | None] = []  # per row [1, 1, t, L + t] additive, None = sees everything
        self.sliding_masks: list[torch.Tensor | None] = []  # the same for sliding-window layers
        start = 0
        for row in rows:
            t, L = row.size, row.kv.length
            self.spans.append(RowSpan(start, start + t))
            start += t
            visible = row.visible
            if visible is None and t > 1:  # a causal chunk: every committed key, then the chunk up to itself
                visible = torch.ones(t, L + t, dtype=torch.bool, device=row.tokens.device)
                visible[:, L:] = torch.ones(t, t, dtype=torch.bool, device=row.tokens.device).tril()
            self.masks.append(None if visible is None else additive(visible, dtype))
            if sliding:
                k_pos = torch.cat([torch.arange(L, device=row.positions.device), row.positions])  # [L + t]
                in_window = k_pos[None, :] > (row.positions[:, None] - window)  # [t, L + t]
                self.sliding_masks.append(additive(in_window if visible is None else visible & in_window, dtype))
        self.total = start


def ragged_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """query [1, h, T, d], key/value [1, n_kv, T, d] (this forward's new entries) -> ([1, T, h, d], None)."""
    batch: RaggedRows | None = kwargs.pop("dyndepth_rows", None)
    if batch is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout,
                                      **kwargs)
    if kwargs.get("softcap") is not None:
        raise DyndepthError("attention logit soft-capping is not supported by dyndepth's batched attention")
    layer = module.layer_idx
    masks = batch.sliding_masks if getattr(module, "sliding_window", None) else batch.masks
    written = [row.kv.write(layer, key[:, :, s.start:s.stop], value[:, :, s.start:s.stop])
               for row, s in zip(batch.rows, batch.spans)]
    out = attend(query, batch.spans, written.__getitem__, masks.__getitem__, scaling,
                 gqa=query.shape[1] != key.shape[1])  # [1, h, T, d]
    return out.transpose(1, 2).contiguous(), None


def install(model) -> None:
    """Route the model's attention through ``ragged_attention`` (SDPA itself outside ragged forwards)."""
    AttentionInterface.register(ATTENTION, ragged_attention)
    AttentionMaskInterface.register(ATTENTION, sdpa_mask)
    if getattr(model.config, "_attn_implementation", None) != ATTENTION:
        model.set_attn_implementation(ATTENTION)
