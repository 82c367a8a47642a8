"""Reduced draft vocabulary: the most frequent assistant tokens of the training data, plus special tokens.

The draft LM head costs V*H multiply-adds per drafted node; drafting from the V_d most frequent tokens cuts
that by V/V_d. Verification still uses the target's full vocabulary, so output stays lossless; a target token
outside the subset simply cannot be drafted (``coverage`` measures how often that happens).
"""

from __future__ import annotations

import torch


def special_ids(tokenizer, stop_ids=()) -> set[int]:
    ids = set(int(i) for i in stop_ids)
    if tokenizer is not None:
        ids.update(int(i) for i in getattr(tokenizer, "all_special_ids", []) or [])
        for tok in getattr(tokenizer, "added_tokens_decoder", {}).keys():
            ids.add(int(tok))
    return ids


def token_counts(examples, vocab_size: int) -> torch.Tensor:
    """Counts [V] of the assistant tokens (mask 1) over examples [(ids, mask)]."""
    counts = torch.zeros(vocab_size, dtype=torch.long)
    for ids, mask in examples:
        t = torch.as_tensor(ids)[torch.as_tensor(mask, dtype=torch.bool)]
        counts += torch.bincount(t, minlength=vocab_size)[:vocab_size]
    return counts


def frequent_tokens(counts: torch.Tensor, size: int, always: set[int]) -> torch.Tensor:
    """The `size` most frequent ids (those in `always` first), sorted -> [size]."""
    size = min(size, counts.numel())
    keep = sorted(i for i in always if 0 <= i < counts.numel())[:size]
    score = counts.clone().float()
    score[keep] = float("inf")
    return torch.topk(score, size).indices.sort().values


def coverage(subset: torch.Tensor, tokens: torch.Tensor) -> float:
    """Fraction of `tokens` (e.g. the target's argmax tokens on held-out text) inside `subset`."""
    member = torch.zeros(int(max(subset.max(), tokens.max())) + 1, dtype=torch.bool)
    member[subset] = True
    return float(member[tokens].float().mean()) if tokens.numel() else 1.0
