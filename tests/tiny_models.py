"""Tiny randomly initialised targets of the supported architectures, built in code (no downloads)."""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM, Gemma3TextConfig, LlamaConfig, Qwen2Config

from dyndepth.decoder import SpeculativeDecoder
from dyndepth.head import DraftHead, head_config
from dyndepth.target import Target

VOCAB = 512


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
    return Target(model.eval(), tokenizer=None)


def tiny_decoder(arch: str, policy="ddd", seed: int = 0, **kwargs) -> SpeculativeDecoder:
    target = tiny_target(arch, seed)
    torch.manual_seed(seed + 1)
    head = DraftHead(head_config(target.config)).to(target.dtype) if policy != "plain" else None
    return SpeculativeDecoder(target, head, policy=policy, **kwargs)
