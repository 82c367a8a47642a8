"""Logits processing shared by every place a target probability is used.

``target_probs`` is the only function that turns target logits into the distribution tokens are drawn from:
plain decoding, every tree node during verification, and the bonus token all go through it, so temperature,
top-k and top-p are applied identically everywhere (the losslessness argument depends on that).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dyndepth.errors import DyndepthError


@dataclass(frozen=True)
class SamplingParams:
    """How the target's next token is chosen. ``temperature == 0`` means greedy (argmax)."""

    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0  # 0 = no top-k filter

    def __post_init__(self):
        if not self.temperature >= 0:
            raise DyndepthError(f"temperature must be >= 0, got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise DyndepthError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise DyndepthError(f"top_k must be >= 0, got {self.top_k}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


def target_probs(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """Processed target distribution. logits [..., V] -> probs [..., V] in float32.

    Order: temperature, then top-k, then top-p (nucleus, keeping the smallest set of most likely tokens whose
    mass reaches ``top_p``; the most likely token is always kept).
    """
    x = logits.float() / params.temperature  # [..., V]
    if params.top_k and params.top_k < x.shape[-1]:
        kth = torch.topk(x, params.top_k, dim=-1).values[..., -1:]  # [..., 1]
        x = x.masked_fill(x < kth, float("-inf"))
    if params.top_p < 1.0:
        sorted_x, order = torch.sort(x, dim=-1, descending=True)  # [..., V]
        sorted_p = torch.softmax(sorted_x, dim=-1)
        mass_before = torch.cumsum(sorted_p, dim=-1) - sorted_p  # mass of strictly more likely tokens
        drop_sorted = mass_before >= params.top_p  # the first token has mass_before 0: always kept
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        x = x.masked_fill(drop, float("-inf"))
    return torch.softmax(x, dim=-1)


def pick_token(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None) -> int:
    """Choose one token from logits [V]: argmax when greedy, else a draw from ``target_probs``."""
    if params.greedy:
        return int(torch.argmax(logits))
    return int(torch.multinomial(target_probs(logits, params), 1, generator=generator))
