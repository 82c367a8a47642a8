"""The EAGLE-1/2 draft head.

Data flow for one input pair (feature f_j of target position j, next token x_{j+1}):

    e   = embed(x_{j+1})                      # the target's own input embedding, [n, H]
    z   = fc(cat([e, f_j], -1))               # [n, 2H] -> [n, H]
    h   = z + Attn(z)                         # one Llama-style layer WITHOUT input_layernorm
    h   = h + MLP(post_attention_layernorm(h))
    p̂   = softmax(lm_head(h))                 # the target's own lm_head (optionally a row subset)

``h`` is both the predicted feature of position j+1 (fed back when drafting deeper) and the input of the LM
head. The pair (f_j, x_{j+1}) sits at draft position j. f is the target's final-normed last hidden state.

Checkpoint keys (official EAGLE layout; read and written by ``dyndepth.head.checkpoint``): ``fc.weight``,
``fc.bias`` (absent when ``bias: false``), ``layers.0.self_attn.{q,k,v,o}_proj.weight``,
``layers.0.mlp.{gate,up,down}_proj.weight``, ``layers.0.post_attention_layernorm.weight``; an
``embed_tokens.weight`` copy is accepted and ignored. A reduced draft vocabulary is stored EAGLE-3 style:
``draft_vocab_size`` in the config, ``d2t`` [V_d] offsets (target id = draft id + d2t[draft id]), ``t2d`` [V].
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from transformers import LlamaConfig
from transformers.models.llama.modeling_llama import LlamaMLP, LlamaRMSNorm, LlamaRotaryEmbedding

from dyndepth.errors import DyndepthError
from dyndepth.fastpath import PackedMatmul
from dyndepth.head.attention import EagleAttention
from dyndepth.head.kv import DraftKV


class EagleLayer(nn.Module):
    """A Llama decoder layer without the input norm."""

    def __init__(self, config: LlamaConfig):
        super().__init__()
        self.self_attn = EagleAttention(config)
        self.mlp = LlamaMLP(config)
        self.post_attention_layernorm = LlamaRMSNorm(config.hidden_size, eps=config.rms_norm_eps)

    def forward(self, x, cos, sin, cache, mask):
        h = x + self.self_attn(x, cos, sin, cache, mask)  # [B, n, H]
        return h + self.mlp(self.post_attention_layernorm(h))


def head_config(target_config, intermediate_size: int | None = None, **overrides) -> LlamaConfig:
    """An EAGLE-1/2 head config matching a target's shapes (optionally a narrower MLP)."""
    text = target_config.get_text_config() if hasattr(target_config, "get_text_config") else target_config
    n_heads = text.num_attention_heads
    params = dict(
        architectures=["LlamaForCausalLM"], hidden_size=text.hidden_size,
        intermediate_size=intermediate_size or text.intermediate_size,
        num_attention_heads=n_heads, num_key_value_heads=getattr(text, "num_key_value_heads", n_heads),
        head_dim=getattr(text, "head_dim", None) or text.hidden_size // n_heads,
        num_hidden_layers=1, rms_norm_eps=text.rms_norm_eps, vocab_size=text.vocab_size,
        max_position_embeddings=text.max_position_embeddings, hidden_act="silu", tie_word_embeddings=False,
        rope_theta=rope_theta(text), bias=True,
    )
    params.update(overrides)
    return LlamaConfig(**params)


def rope_theta(config) -> float:
    rp = getattr(config, "rope_parameters", None)
    if isinstance(rp, dict):
        if "rope_theta" in rp:
            return float(rp["rope_theta"])
        for sub in rp.values():  # per-layer-type parameters (Gemma 3)
            if isinstance(sub, dict) and "rope_theta" in sub:
                return float(sub["rope_theta"])
    return float(getattr(config, "rope_theta", 10000.0))


class DraftHead(nn.Module):
    """EAGLE-1/2 head. Call ``bind(embed, lm_head_weight)`` with the target's modules before use."""

    arch = "eagle"

    def __init__(self, config: LlamaConfig, draft_vocab: torch.Tensor | None = None):
        super().__init__()
        self.config = config
        h = config.hidden_size
        self.bias = bool(getattr(config, "bias", True))
        self.fc = nn.Linear(2 * h, h, bias=self.bias)
        self.layers = nn.ModuleList([EagleLayer(config)])
        self.rotary = LlamaRotaryEmbedding(config)
        # target ids of the draft vocabulary [V_d], sorted; None = the full target vocabulary
        self.register_buffer("draft_vocab", None if draft_vocab is None else draft_vocab.long().sort().values,
                             persistent=False)
        self._target = {}  # the target's embedding module and lm_head weight (not parameters of the head)

    # -- binding to the target ------------------------------------------------------------------------
    def bind(self, embed: nn.Module, lm_head_weight: torch.Tensor, lm_head_half: torch.Tensor | None = None,
             lm_head_packed: PackedMatmul | None = None) -> "DraftHead":
        """lm_head_half: the target's lm_head in its half checkpoint dtype where its fast path reads those
        (fastpath.half_weight): the draft logits of a few frontier nodes then read it too."""
        if lm_head_weight.shape[-1] != self.config.hidden_size:
            raise DyndepthError(f"head hidden_size {self.config.hidden_size} does not match the target's "
                                f"{lm_head_weight.shape[-1]}")
        if lm_head_weight.shape[0] != self.config.vocab_size:
            raise DyndepthError(f"head vocab_size {self.config.vocab_size} does not match the target's "
                                f"{lm_head_weight.shape[0]}")
        self._target["embed"] = embed
        self._target["lm_head"] = lm_head_weight
        self._target["lm_head_half"] = lm_head_half
        self._target["lm_head_packed"] = lm_head_packed
        self.refresh_draft_lm_head()
        return self

    def refresh_draft_lm_head(self) -> None:
        w, half = self._target["lm_head"], self._target.get("lm_head_half")
        if self.draft_vocab is not None:
            w = w[self.draft_vocab.to(w.device)]
            half = None if half is None else half[self.draft_vocab.to(half.device)]
        self._target["draft_lm_head"] = w  # [V_d, H]
        packed = self._target.get("lm_head_packed")
        if half is not None:
            self._target["draft_matmul"] = PackedMatmul(w, None, pack=False, half=half)
        elif packed is not None:  # the target's prepacked bf16 lm_head: shared, or the draft rows' own packed copy
            self._target["draft_matmul"] = packed if self.draft_vocab is None else PackedMatmul(w, None)
        else:
            self._target["draft_matmul"] = None

    def set_draft_vocab(self, target_ids: torch.Tensor | None) -> None:
        self.draft_vocab = None if target_ids is None else target_ids.long().sort().values.to(self.fc.weight.device)
        if "lm_head" in self._target:
            self.refresh_draft_lm_head()

    @property
    def draft_vocab_size(self) -> int:
        return self.config.vocab_size if self.draft_vocab is None else self.draft_vocab.numel()

    def feature_layers(self, num_layers: int) -> tuple[int, ...] | None:
        """Which target hidden states the head reads: None = the final-normed last hidden state (the lm_head input)."""
        return None

    # -- forward -------------------------------------------------------------------------------------
    def project(self, features: torch.Tensor) -> torch.Tensor:
        """Target features -> what ``forward`` takes as ``features``: the identity here (fc is inside forward)."""
        return features

    def forward(self, tokens: torch.Tensor, features: torch.Tensor, positions: torch.Tensor,
                cache: DraftKV | None = None, mask: torch.Tensor | None = None) -> torch.Tensor:
        """tokens [B, n] target ids, features [B, n, H], positions [B, n] -> hidden [B, n, H].

        mask: additive [B|1, 1, n, S] over cached + new keys, or None for plain causal attention over the
        new pairs only (training, or a first chunk with an empty cache)."""
        e = self._target["embed"](tokens).to(features.dtype)  # [B, n, H]
        x = self.fc(torch.cat([e, features], dim=-1))  # [B, n, H]
        cos, sin = self.rotary(x, positions)  # [B, n, d_head]
        for layer in self.layers:
            x = layer(x, cos, sin, cache, mask)
        return x

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden [..., H] -> draft logits [..., V_d] (over the draft vocabulary)."""
        matmul = self._target.get("draft_matmul")
        return F.linear(hidden, self._target["draft_lm_head"]) if matmul is None else matmul(hidden)

    def to_target_ids(self, draft_ids: torch.Tensor) -> torch.Tensor:
        return draft_ids if self.draft_vocab is None else self.draft_vocab[draft_ids]

    # -- checkpoints ---------------------------------------------------------------------------------
    def expected_shapes(self) -> dict[str, tuple[int, ...]]:
        return {k: tuple(v.shape) for k, v in self.state_dict().items()}

    def save_pretrained(self, out_dir: str | Path, dtype: torch.dtype = torch.bfloat16, extra: dict | None = None):
        """Write config.json + model.safetensors in the official EAGLE format (without the embedding copy)."""
        from dyndepth.head.checkpoint import save_eagle

        return save_eagle(self, out_dir, dtype, extra)

    @classmethod
    def from_pretrained(cls, path: str | Path, dtype: torch.dtype | None = None, device="cpu") -> "DraftHead":
        from dyndepth.head.checkpoint import load_head_dir

        head = load_head_dir(path, dtype=dtype, device=device)
        if not isinstance(head, cls):
            raise DyndepthError(f"{path} holds an EAGLE-3 head, not an EAGLE-1/2 one; load it with "
                                f"dyndepth.head.load_head_dir")
        return head
