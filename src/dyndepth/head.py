"""The EAGLE-1/2 draft head, and its checkpoint format.

Data flow for one input pair (feature f_j of target position j, next token x_{j+1}):

    e   = embed(x_{j+1})                      # the target's own input embedding, [n, H]
    z   = fc(cat([e, f_j], -1))               # [n, 2H] -> [n, H]
    h   = z + Attn(z)                         # one Llama-style layer WITHOUT input_layernorm
    h   = h + MLP(post_attention_layernorm(h))
    p̂   = softmax(lm_head(h))                 # the target's own lm_head (optionally a row subset)

``h`` is both the predicted feature of position j+1 (fed back when drafting deeper) and the input of the LM
head. The pair (f_j, x_{j+1}) sits at draft position j.

Checkpoints use the official EAGLE layout (config.json + model.safetensors or pytorch_model.bin) with keys
``fc.weight``, ``fc.bias`` (absent when ``bias: false``), ``layers.0.self_attn.{q,k,v,o}_proj.weight``,
``layers.0.mlp.{gate,up,down}_proj.weight``, ``layers.0.post_attention_layernorm.weight``; an
``embed_tokens.weight`` copy is accepted and ignored (the target's embedding is used). A reduced draft
vocabulary is stored EAGLE-3 style: ``draft_vocab_size`` in the config and ``d2t`` [V_d] (offsets:
target id = draft id + d2t[draft id]) and ``t2d`` [V] (bool membership) tensors.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from transformers import LlamaConfig
from transformers.models.llama.modeling_llama import LlamaMLP, LlamaRMSNorm, LlamaRotaryEmbedding, apply_rotary_pos_emb

from dyndepth.errors import DyndepthError


class DraftKV:
    """The head's KV cache. keys/values [1, n_kv, S, d_head]; the first ``committed`` entries are committed
    pairs, the rest is scratch from the current tree growth (dropped by ``crop_to_committed``)."""

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


class EagleAttention(nn.Module):
    def __init__(self, config: LlamaConfig):
        super().__init__()
        self.n_heads = config.num_attention_heads
        self.n_kv = config.num_key_value_heads
        self.d_head = getattr(config, "head_dim", None) or config.hidden_size // self.n_heads
        h = config.hidden_size
        self.q_proj = nn.Linear(h, self.n_heads * self.d_head, bias=False)
        self.k_proj = nn.Linear(h, self.n_kv * self.d_head, bias=False)
        self.v_proj = nn.Linear(h, self.n_kv * self.d_head, bias=False)
        self.o_proj = nn.Linear(self.n_heads * self.d_head, h, bias=False)

    def forward(self, x, cos, sin, cache: DraftKV | None, mask: torch.Tensor | None):
        # x [B, n, H]; cos/sin [B, n, d_head]; mask: additive [B|1, 1, n, S] or None (= causal, no cache)
        b, n, _ = x.shape
        q = self.q_proj(x).view(b, n, self.n_heads, self.d_head).transpose(1, 2)  # [B, n_h, n, d]
        k = self.k_proj(x).view(b, n, self.n_kv, self.d_head).transpose(1, 2)  # [B, n_kv, n, d]
        v = self.v_proj(x).view(b, n, self.n_kv, self.d_head).transpose(1, 2)
        q, k = apply_rotary_pos_emb(q, k, cos, sin)
        if cache is not None:
            k, v = cache.append(k, v)  # [1, n_kv, S, d]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None,
                                             enable_gqa=self.n_kv != self.n_heads)  # [B, n_h, n, d]
        return self.o_proj(out.transpose(1, 2).reshape(b, n, self.n_heads * self.d_head))


class EagleLayer(nn.Module):
    """A Llama decoder layer without the input norm."""

    def __init__(self, config: LlamaConfig):
        super().__init__()
        self.self_attn = EagleAttention(config)
        self.mlp = LlamaMLP(config)
        self.post_attention_layernorm = LlamaRMSNorm(config.hidden_size, eps=config.rms_norm_eps)

    def forward(self, x, cos, sin, cache, mask):
        h = x + self.self_attn(x, cos, sin, cache, mask)
        return h + self.mlp(self.post_attention_layernorm(h))


def head_config(target_config, intermediate_size: int | None = None, **overrides) -> LlamaConfig:
    """A head config matching a target's shapes (optionally a narrower MLP)."""
    text = target_config.get_text_config() if hasattr(target_config, "get_text_config") else target_config
    n_heads = text.num_attention_heads
    params = dict(
        architectures=["LlamaForCausalLM"], hidden_size=text.hidden_size,
        intermediate_size=intermediate_size or text.intermediate_size,
        num_attention_heads=n_heads, num_key_value_heads=getattr(text, "num_key_value_heads", n_heads),
        head_dim=getattr(text, "head_dim", None) or text.hidden_size // n_heads,
        num_hidden_layers=1, rms_norm_eps=text.rms_norm_eps, vocab_size=text.vocab_size,
        max_position_embeddings=text.max_position_embeddings, hidden_act="silu", tie_word_embeddings=False,
        rope_theta=_rope_theta(text), bias=True,
    )
    params.update(overrides)
    return LlamaConfig(**params)


def _rope_theta(config) -> float:
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
    def bind(self, embed: nn.Module, lm_head_weight: torch.Tensor) -> "DraftHead":
        if lm_head_weight.shape[-1] != self.config.hidden_size:
            raise DyndepthError(f"head hidden_size {self.config.hidden_size} does not match the target's "
                                f"{lm_head_weight.shape[-1]}")
        if lm_head_weight.shape[0] != self.config.vocab_size:
            raise DyndepthError(f"head vocab_size {self.config.vocab_size} does not match the target's "
                                f"{lm_head_weight.shape[0]}")
        self._target["embed"] = embed
        self._target["lm_head"] = lm_head_weight
        self.refresh_draft_lm_head()
        return self

    def refresh_draft_lm_head(self) -> None:
        w = self._target["lm_head"]
        self._target["draft_lm_head"] = w if self.draft_vocab is None else w[self.draft_vocab.to(w.device)]

    def set_draft_vocab(self, target_ids: torch.Tensor | None) -> None:
        self.draft_vocab = None if target_ids is None else target_ids.long().sort().values.to(self.fc.weight.device)
        if "lm_head" in self._target:
            self.refresh_draft_lm_head()

    @property
    def draft_vocab_size(self) -> int:
        return self.config.vocab_size if self.draft_vocab is None else self.draft_vocab.numel()

    # -- forward -------------------------------------------------------------------------------------
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
        return F.linear(hidden, self._target["draft_lm_head"])

    def to_target_ids(self, draft_ids: torch.Tensor) -> torch.Tensor:
        return draft_ids if self.draft_vocab is None else self.draft_vocab[draft_ids]

    # -- checkpoints ---------------------------------------------------------------------------------
    def expected_shapes(self) -> dict[str, tuple[int, ...]]:
        return {k: tuple(v.shape) for k, v in self.state_dict().items()}

    def save_pretrained(self, out_dir: str | Path, dtype: torch.dtype = torch.bfloat16, extra: dict | None = None):
        """Write config.json + model.safetensors in the official EAGLE format (without the embedding copy)."""
        from safetensors.torch import save_file

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        cfg = self.config.to_dict()
        cfg.update(bias=self.bias, num_hidden_layers=1, torch_dtype=str(dtype).replace("torch.", ""))
        tensors = {k: v.detach().to("cpu", dtype).contiguous() for k, v in self.state_dict().items()}
        if self.draft_vocab is not None:
            ids = self.draft_vocab.cpu()
            cfg["draft_vocab_size"] = int(ids.numel())
            tensors["d2t"] = ids - torch.arange(ids.numel())
            t2d = torch.zeros(self.config.vocab_size, dtype=torch.bool)
            t2d[ids] = True
            tensors["t2d"] = t2d
        if extra:
            cfg.update(extra)
        (out / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True, default=str) + "\n")
        save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
        return out

    @classmethod
    def from_pretrained(cls, path: str | Path, dtype: torch.dtype | None = None, device="cpu") -> "DraftHead":
        path = Path(path)
        cfg_file = path / "config.json"
        if not cfg_file.is_file():
            raise DyndepthError(f"not a draft head directory (no config.json): {path}")
        raw = json.loads(cfg_file.read_text())
        if raw.get("num_hidden_layers", 1) != 1:
            raise DyndepthError(f"{cfg_file}: an EAGLE-1/2 head has num_hidden_layers 1, got {raw['num_hidden_layers']}")
        raw.setdefault("bias", True)
        config = LlamaConfig(**raw)
        config.bias = bool(raw["bias"])
        state = _load_state_dict(path)
        draft_vocab = None
        if "d2t" in state:
            d2t = state.pop("d2t").long()
            draft_vocab = d2t + torch.arange(d2t.numel())
            state.pop("t2d", None)
        state.pop("embed_tokens.weight", None)  # a copy of the target's embedding; the target's own is used
        head = cls(config, draft_vocab)
        expected = head.expected_shapes()
        for key, shape in expected.items():
            if key not in state:
                raise DyndepthError(f"draft head checkpoint {path} is missing key {key!r}")
            if tuple(state[key].shape) != shape:
                raise DyndepthError(f"draft head checkpoint {path}: key {key!r} has shape "
                                    f"{tuple(state[key].shape)}, expected {shape}")
        unexpected = sorted(set(state) - set(expected))
        if unexpected:
            raise DyndepthError(f"draft head checkpoint {path} has unexpected key(s): {', '.join(unexpected)}")
        head.load_state_dict(state)
        dtype = dtype or getattr(torch, str(raw.get("torch_dtype", "float32")), torch.float32)
        return head.to(device=device, dtype=dtype)


def _load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    st = path / "model.safetensors"
    if st.is_file():
        from safetensors.torch import load_file

        return load_file(str(st))
    pt = path / "pytorch_model.bin"
    if pt.is_file():
        try:
            return torch.load(pt, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - any unpickling failure is a bad checkpoint
            raise DyndepthError(f"cannot read {pt} as a plain tensor state dict: {exc}") from None
    raise DyndepthError(f"draft head directory {path} has neither model.safetensors nor pytorch_model.bin")
