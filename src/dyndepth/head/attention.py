"""The draft heads' attention: Llama-style GQA with RoPE over (cached + new) keys, any input width."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import LlamaConfig
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

from dyndepth.head.kv import DraftKV, DraftRows


def head_dim_of(config) -> int:
    """``head_dim`` when the config gives one, else hidden_size // num_attention_heads."""
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


class EagleAttention(nn.Module):
    """q/k/v take ``in_size`` inputs (H for EAGLE-1/2, 2H for EAGLE-3's [embedding, hidden] concat)."""

    def __init__(self, config: LlamaConfig, in_size: int | None = None):
        super().__init__()
        self.n_heads = config.num_attention_heads
        self.n_kv = config.num_key_value_heads
        self.d_head = head_dim_of(config)
        h = config.hidden_size
        in_size = in_size or h
        self.q_proj = nn.Linear(in_size, self.n_heads * self.d_head, bias=False)
        self.k_proj = nn.Linear(in_size, self.n_kv * self.d_head, bias=False)
        self.v_proj = nn.Linear(in_size, self.n_kv * self.d_head, bias=False)
        self.o_proj = nn.Linear(self.n_heads * self.d_head, h, bias=False)

    def forward(self, x, cos, sin, cache: DraftKV | DraftRows | None, mask: torch.Tensor | None):
        # x [B, n, in]; cos/sin [B, n, d_head]; mask: additive or bool [B|1, 1, n, S], or None (= causal, no cache)
        b, n, _ = x.shape
        q = self.q_proj(x).view(b, n, self.n_heads, self.d_head).transpose(1, 2)  # [B, n_h, n, d]
        k = self.k_proj(x).view(b, n, self.n_kv, self.d_head).transpose(1, 2)  # [B, n_kv, n, d]
        v = self.v_proj(x).view(b, n, self.n_kv, self.d_head).transpose(1, 2)
        q, k = apply_rotary_pos_emb(q, k, cos, sin)
        if isinstance(cache, DraftRows):  # several rows flattened into n (B = 1): each attends to its own cache
            out = cache.attend(q, k, v, gqa=self.n_kv != self.n_heads)  # [1, n_h, n, d]
            return self.o_proj(out.transpose(1, 2).reshape(b, n, self.n_heads * self.d_head))
        if cache is not None:
            k, v = cache.append(k, v)  # [B, n_kv, S, d]
            mask = cache.widen(mask)  # a static cache returns its whole buffers: mask their unwritten tail
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None,
                                             enable_gqa=self.n_kv != self.n_heads)  # [B, n_h, n, d]
        return self.o_proj(out.transpose(1, 2).reshape(b, n, self.n_heads * self.d_head))  # [B, n, H]
