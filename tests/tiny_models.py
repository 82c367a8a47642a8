"""Tiny randomly initialised targets of the supported architectures, built in code (no downloads)."""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM, Gemma3TextConfig, LlamaConfig, Qwen2Config

from dyndepth.decoder import SpeculativeDecoder
from dyndepth.head import DraftHead, head_config
from dyndepth.target import Target

VOCAB = 512
# Target engine options for every tiny target built here (tests/test_static_cache.py sets static_cache etc.)
ENGINE: dict = {}


def tiny_config(arch: str):
    common = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                  eos_token_id=VOCAB - 1, bos_token_id=0, pad_token_id=0)
    if arch == "llama":
        return LlamaConfig(**common)
    if arch == "qwen2":
        return Qwen2Config(**common)
    if arch == "gemma3":
        return Gemma3TextConfig(**common, head_dim=16, sliding_window=16, query_pre_attn_scalar=16)
    raise ValueError(arch)


def tiny_target(arch: str, seed: int = 0, dtype=torch.float32) -> Target:
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(arch), dtype=dtype)
    with torch.no_grad():  # larger logits: sharper, more decisive distributions than the default init
        model.get_output_embeddings().weight.mul_(8.0)
    model.generation_config.eos_token_id = VOCAB - 1
    return Target(model.eval(), tokenizer=None, **ENGINE)


def tiny_decoder(arch: str, policy="ddd", seed: int = 0, **kwargs) -> SpeculativeDecoder:
    target = tiny_target(arch, seed)
    torch.manual_seed(seed + 1)
    head = DraftHead(head_config(target.config)).to(target.dtype) if policy != "plain" else None
    return SpeculativeDecoder(target, head, policy=policy, **kwargs)


# -- EAGLE-3: deeper tiny targets (EAGLE-3 reads layers 2, L//2, L-3) and hand-built head checkpoints ----------
def tiny_deep_target(arch: str, layers: int = 7, seed: int = 0) -> Target:
    torch.manual_seed(seed)
    cfg = tiny_config(arch)
    cfg.num_hidden_layers = layers
    if getattr(cfg, "layer_types", None):
        cfg.layer_types = [cfg.layer_types[i % len(cfg.layer_types)] for i in range(layers)]
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    with torch.no_grad():
        model.get_output_embeddings().weight.mul_(8.0)
    model.generation_config.eos_token_id = VOCAB - 1
    return Target(model.eval(), tokenizer=None, **ENGINE)


def eagle3_checkpoint(target, folder, layout="official", fmt="safetensors", draft_vocab=None, embed=False,
                      layer_ids=None, layer_ids_in="top", seed=0, scale=0.05, extra_config=None, hidden=None):
    """Write an EAGLE-3 head by hand with the official (``midlayer.*``) or speculators (``layers.0.*``) key names,
    random weights. draft_vocab: sorted target ids [V_d] (None = full vocabulary, no d2t/t2d). Returns
    (folder, state dict as written)."""
    import json
    from pathlib import Path

    from safetensors.torch import save_file

    c = target.config
    h_t, V = c.hidden_size, c.vocab_size
    h = hidden or h_t
    nh, nkv, inter = c.num_attention_heads, c.num_key_value_heads, c.intermediate_size
    d = h // nh
    k = len(layer_ids) if layer_ids else 3
    vd = V if draft_vocab is None else len(draft_vocab)
    g = torch.Generator().manual_seed(seed)
    p = "midlayer." if layout == "official" else "layers.0."
    shapes = {"fc.weight": (h, k * h_t), p + "self_attn.q_proj.weight": (nh * d, 2 * h),
              p + "self_attn.k_proj.weight": (nkv * d, 2 * h), p + "self_attn.v_proj.weight": (nkv * d, 2 * h),
              p + "self_attn.o_proj.weight": (h, nh * d), p + "mlp.gate_proj.weight": (inter, h),
              p + "mlp.up_proj.weight": (inter, h), p + "mlp.down_proj.weight": (h, inter),
              "lm_head.weight": (vd, h)}
    state = {key: torch.randn(s, generator=g) * scale for key, s in shapes.items()}
    state["lm_head.weight"] *= 20  # confident drafts: deep trees
    for norm in ("input_layernorm", "hidden_norm", "post_attention_layernorm"):
        state[p + norm + ".weight"] = 1 + 0.1 * torch.randn(h, generator=g)
    state["norm.weight"] = 1 + 0.1 * torch.randn(h, generator=g)
    if embed:
        state["embed_tokens.weight"] = torch.randn(V, h, generator=g)
    if draft_vocab is not None:
        ids = torch.tensor(draft_vocab, dtype=torch.long)
        state["d2t"] = ids - torch.arange(vd)
        t2d = torch.zeros(V, dtype=torch.bool)
        t2d[ids] = True
        state["t2d"] = t2d
    layer = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": h,
             "intermediate_size": inter, "num_attention_heads": nh, "num_key_value_heads": nkv,
             "num_hidden_layers": 1, "rms_norm_eps": 1e-5, "vocab_size": V, "max_position_embeddings": 2048,
             "hidden_act": "silu", "tie_word_embeddings": False, "pad_token_id": 0}
    top = {"draft_vocab_size": vd}
    if h != h_t:
        top["target_hidden_size"] = h_t
    if layer_ids is not None:
        if layer_ids_in == "top":
            top["eagle_aux_hidden_state_layer_ids"] = list(layer_ids)
        else:  # SpecForge/ModelOpt: layer outputs, inside eagle_config
            top["eagle_config"] = {"eagle_aux_hidden_state_layer_ids": [i - 1 for i in layer_ids],
                                   "use_aux_hidden_state": True}
    if layout == "official":
        cfg = {**layer, **top, "architectures": ["LlamaForCausalLMEagle3"]}
    else:
        cfg = {"speculators_model_type": "eagle3", "architectures": ["Eagle3Speculator"],
               "transformer_layer_config": layer, "speculators_version": "0.1.0", "norm_before_residual": False,
               "norm_before_fc": False, "fc_norm": False, "norm_output": False, "embed_requires_grad": False,
               "speculators_config": {"algorithm": "eagle3", "default_proposal_method": "greedy",
                                      "proposal_methods": [{"proposal_type": "greedy", "speculative_tokens": 3}],
                                      "verifier": {"name_or_path": "tiny", "architectures": ["LlamaForCausalLM"]}},
               **top}
    cfg.update(extra_config or {})
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(cfg))
    if fmt == "safetensors":
        save_file(state, str(folder / "model.safetensors"))
    else:
        torch.save(state, folder / "pytorch_model.bin")
    return folder, state
