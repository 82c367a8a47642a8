"""The EAGLE-3 draft head (SafeAILab/EAGLE reference architecture; see docs/ALGORITHM.md, "EAGLE-3").

One draft step for the pair (target features of position j, next token x_{j+1}):

    a   = cat(l_j, m_j, h_j)                         # target hidden states at 3 chosen layers, [n, 3·H_t]
    g   = fc(a)                                      # [n, 3·H_t] -> [n, H], no bias (``project``)
    e   = embed(x_{j+1})                             # [n, H]: the target's embedding, or the head's own copy
    x   = cat(input_layernorm(e), hidden_norm(g))    # [n, 2H]: embedding first
    y   = g + o_proj(Attn(q/k/v_proj(x)))            # q/k/v take 2H; residual on g (hidden_norm(g) if
                                                     #   norm_before_residual)
    out = y + MLP(post_attention_layernorm(y))       # [n, H]: the PRE-norm output, fed back when drafting deeper
    p̂   = softmax(lm_head(norm(out)))                # the head's own lm_head over the draft vocabulary [V_d]

Drafting deeper feeds ``out`` back in place of ``g`` (fc is skipped: ``project`` runs only on target features).
Draft id i stands for target id ``i + d2t[i]``. RoPE uses the head's own parameters (theta 10000 when the
config has none); head_dim is the config's ``head_dim``, else H // n_h.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from transformers import LlamaConfig
from transformers.models.llama.modeling_llama import LlamaMLP, LlamaRMSNorm, LlamaRotaryEmbedding

from dyndepth.errors import DyndepthError
from dyndepth.head.attention import EagleAttention
from dyndepth.head.kv import DraftKV


def default_layers(num_layers: int) -> tuple[int, int, int]:
    """EAGLE-3's default target layers, as HF ``output_hidden_states`` indices (= inputs of those decoder layers)."""
    return 2, num_layers // 2, num_layers - 3


def eagle3_config(target_config, intermediate_size: int | None = None, draft_vocab_size: int | None = None,
                  layer_ids=None, **overrides) -> LlamaConfig:
    """An EAGLE-3 head config for a target (H = H_t, the target's attention shapes, RoPE theta 10000 unless
    overridden). ``layer_ids`` None = the default (2, L//2, L-3)."""
    text = target_config.get_text_config() if hasattr(target_config, "get_text_config") else target_config
    n_heads = text.num_attention_heads
    h = text.hidden_size
    params = dict(
        architectures=["LlamaForCausalLMEagle3"], hidden_size=h,
        intermediate_size=intermediate_size or text.intermediate_size, num_attention_heads=n_heads,
        num_key_value_heads=getattr(text, "num_key_value_heads", n_heads),
        head_dim=getattr(text, "head_dim", None) or h // n_heads, num_hidden_layers=1,
        rms_norm_eps=text.rms_norm_eps, vocab_size=text.vocab_size, max_position_embeddings=text.max_position_embeddings,
        hidden_act="silu", tie_word_embeddings=False, rope_theta=10000.0,
    )
    params.update(overrides)
    config = LlamaConfig(**params)
    config.draft_vocab_size = int(draft_vocab_size or text.vocab_size)
    config.target_hidden_size = h
    config.aux_layer_ids = None if layer_ids is None else tuple(int(i) for i in layer_ids)
    config.norm_before_residual = False
    return config


class Eagle3Layer(nn.Module):
    """``midlayer``: a Llama decoder layer over cat(input_layernorm(e), hidden_norm(g)), residual on g."""

    def __init__(self, config: LlamaConfig):
        super().__init__()
        h = config.hidden_size
        self.norm_before_residual = bool(getattr(config, "norm_before_residual", False))
        self.self_attn = EagleAttention(config, in_size=2 * h)
        self.mlp = LlamaMLP(config)
        self.input_layernorm = LlamaRMSNorm(h, eps=config.rms_norm_eps)
        self.hidden_norm = LlamaRMSNorm(h, eps=config.rms_norm_eps)
        self.post_attention_layernorm = LlamaRMSNorm(h, eps=config.rms_norm_eps)

    def forward(self, e, g, cos, sin, cache, mask):
        # e, g [B, n, H] -> out [B, n, H] (pre-norm)
        gn = self.hidden_norm(g)
        x = torch.cat([self.input_layernorm(e), gn], dim=-1)  # [B, n, 2H]
        y = (gn if self.norm_before_residual else g) + self.self_attn(x, cos, sin, cache, mask)
        return y + self.mlp(self.post_attention_layernorm(y))


class Eagle3Head(nn.Module):
    """EAGLE-3 head. ``bind(embed, lm_head_weight)`` with the target's modules before use (the embedding is used
    unless the checkpoint ships its own; the target's lm_head only checks shapes: the head has its own)."""

    arch = "eagle3"

    def __init__(self, config: LlamaConfig, draft_to_target: torch.Tensor | None = None, own_embed: bool = False):
        super().__init__()
        self.config = config
        h = config.hidden_size
        self.target_hidden_size = int(getattr(config, "target_hidden_size", None) or h)
        self.aux_layer_ids = getattr(config, "aux_layer_ids", None)
        n_in = len(self.aux_layer_ids) if self.aux_layer_ids else 3
        vd = int(getattr(config, "draft_vocab_size", None) or config.vocab_size)
        self.fc = nn.Linear(n_in * self.target_hidden_size, h, bias=False)
        self.midlayer = Eagle3Layer(config)
        self.norm = LlamaRMSNorm(h, eps=config.rms_norm_eps)
        self.lm_head = nn.Linear(h, vd, bias=False)
        if own_embed:
            self.embed_tokens = nn.Embedding(config.vocab_size, h)
        self.rotary = LlamaRotaryEmbedding(config)
        # target id of each draft id [V_d] (= arange + d2t); None = the identity (V_d == V)
        if draft_to_target is not None and draft_to_target.numel() != vd:
            raise ValueError("draft_to_target must have draft_vocab_size entries")
        self.register_buffer("draft_to_target", None if draft_to_target is None else draft_to_target.long(),
                             persistent=False)
        self._target = {}

    # -- binding to the target ------------------------------------------------------------------------
    def bind(self, embed: nn.Module, lm_head_weight: torch.Tensor, lm_head_half: torch.Tensor | None = None,
             lm_head_packed=None) -> "Eagle3Head":
        if lm_head_weight.shape[-1] != self.target_hidden_size:
            raise DyndepthError(f"EAGLE-3 head target_hidden_size {self.target_hidden_size} does not match the "
                                f"target's hidden size {lm_head_weight.shape[-1]}")
        if lm_head_weight.shape[0] != self.config.vocab_size:
            raise DyndepthError(f"EAGLE-3 head vocab_size {self.config.vocab_size} does not match the target's "
                                f"{lm_head_weight.shape[0]}")
        if not hasattr(self, "embed_tokens") and embed.weight.shape[-1] != self.config.hidden_size:
            raise DyndepthError(f"EAGLE-3 head hidden_size {self.config.hidden_size} differs from the target's "
                                f"embedding width {embed.weight.shape[-1]}, and the checkpoint ships no embed_tokens")
        self._target["embed"] = embed
        return self

    @property
    def draft_vocab_size(self) -> int:
        return self.lm_head.weight.shape[0]

    @property
    def draft_vocab(self) -> torch.Tensor | None:
        """Target ids of the draft vocabulary [V_d], in draft-id order; None = the full target vocabulary."""
        return self.draft_to_target

    def set_draft_vocab(self, target_ids: torch.Tensor | None) -> None:
        """Draft id i -> target id target_ids[i] (sorted ascending, as EAGLE-3's training writes it)."""
        if target_ids is None:
            self.draft_to_target = None
            return
        ids = target_ids.long().sort().values.to(self.lm_head.weight.device)
        if ids.numel() != self.draft_vocab_size:
            raise DyndepthError(f"draft vocabulary of {ids.numel()} ids for a head with draft_vocab_size "
                                f"{self.draft_vocab_size}")
        self.draft_to_target = ids

    def feature_layers(self, num_layers: int) -> tuple[int, ...]:
        """The target hidden states the head reads, as ``output_hidden_states`` indices, checked against the
        target's number of decoder layers."""
        ids = self.aux_layer_ids or default_layers(num_layers)
        bad = [i for i in ids if not 0 <= i < num_layers]
        if bad:
            where = "eagle_aux_hidden_state_layer_ids" if self.aux_layer_ids else "the default layers (2, L//2, L-3)"
            raise DyndepthError(f"EAGLE-3 head: {where} {list(ids)} must lie in 0..{num_layers - 1} for a target "
                                f"with {num_layers} decoder layers")
        return tuple(ids)

    # -- forward -------------------------------------------------------------------------------------
    def project(self, target_features: torch.Tensor) -> torch.Tensor:
        """Fused target features [..., k·H_t] -> g [..., H]."""
        return self.fc(target_features.to(self.fc.weight.dtype))

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        module = self.embed_tokens if hasattr(self, "embed_tokens") else self._target["embed"]
        return module(tokens)

    def forward(self, tokens: torch.Tensor, hidden: torch.Tensor, positions: torch.Tensor,
                cache: DraftKV | None = None, mask: torch.Tensor | None = None) -> torch.Tensor:
        """tokens [B, n] target ids, hidden [B, n, H] (``project``-ed target features, or a fed-back output),
        positions [B, n] -> pre-norm output [B, n, H]. mask as in DraftHead.forward."""
        e = self.embed(tokens).to(hidden.dtype)  # [B, n, H]
        cos, sin = self.rotary(hidden, positions)  # [B, n, d_head]
        return self.midlayer(e, hidden, cos, sin, cache, mask)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """pre-norm output [..., H] -> draft logits [..., V_d]."""
        return self.lm_head(self.norm(hidden))

    def to_target_ids(self, draft_ids: torch.Tensor) -> torch.Tensor:
        return draft_ids if self.draft_to_target is None else self.draft_to_target[draft_ids]

    # -- checkpoints ---------------------------------------------------------------------------------
    def expected_shapes(self) -> dict[str, tuple[int, ...]]:
        return {k: tuple(v.shape) for k, v in self.state_dict().items()}

    def save_pretrained(self, out_dir: str | Path, dtype: torch.dtype = torch.bfloat16, extra: dict | None = None):
        """Write config.json + model.safetensors in the official EAGLE-3 layout (``midlayer.*``)."""
        from dyndepth.head.checkpoint import save_eagle3

        return save_eagle3(self, out_dir, dtype, extra)

    @classmethod
    def from_pretrained(cls, path: str | Path, dtype: torch.dtype | None = None, device="cpu") -> "Eagle3Head":
        from dyndepth.head.checkpoint import load_head_dir

        head = load_head_dir(path, dtype=dtype, device=device)
        if not isinstance(head, cls):
            raise DyndepthError(f"{path} holds an EAGLE-1/2 head, not an EAGLE-3 one")
        return head
