"""Self-distillation: replace the assistant reply by the target's own greedy reply to the first user turn.

The head is then trained on exactly the distribution it must predict at decode time. Each example is the
chat-template prompt (mask 0) followed by the generated tokens up to and including the first stop token
(mask 1), as token ids: no detokenize/retokenize round trip.
"""

from __future__ import annotations

import time

import torch
from tqdm import tqdm

from dyndepth.train.extract import Example


def prompt_ids(tokenizer, messages: list[dict]) -> list[int]:
    out = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    if isinstance(out, dict) or hasattr(out, "input_ids"):
        out = out["input_ids"]
    return list(out)


@torch.inference_mode()
def generate_batch(target, prompts: list[list[int]], max_new_tokens: int) -> list[list[int]]:
    """Greedy replies (left-padded batch); each cut after its first stop token."""
    stops = target.stop_token_ids()
    pad = target.tokenizer.pad_token_id if target.tokenizer.pad_token_id is not None else min(stops)
    n = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), n), pad, dtype=torch.long)  # [B, n]
    att = torch.zeros(len(prompts), n, dtype=torch.long)
    for b, p in enumerate(prompts):
        ids[b, n - len(p):] = torch.tensor(p)
        att[b, n - len(p):] = 1
    out = target.model.generate(input_ids=ids.to(target.device), attention_mask=att.to(target.device),
                                max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=sorted(stops),
                                pad_token_id=pad)
    replies = []
    for row in out[:, n:].tolist():  # [B, new]
        cut = next((k + 1 for k, t in enumerate(row) if t in stops), len(row))
        replies.append(row[:cut])
    return replies


def self_distill(target, conversations: list[list[dict]], token_budget: int, max_prompt: int = 384,
                 max_new_tokens: int = 384, batch_size: int = 16, progress: bool = True, log=print) -> list[Example]:
    """Examples from the first user turns of `conversations` until `token_budget` tokens (prompt + reply)."""
    tok = target.tokenizer
    examples: list[Example] = []
    total, t0 = 0, time.perf_counter()
    bar = tqdm(total=token_budget, unit="tok", unit_scale=True, desc="self-distill (generate)",
               disable=not progress, dynamic_ncols=True)
    pending = [p for p in (prompt_ids(tok, c[:1]) for c in conversations) if len(p) <= max_prompt]
    for s in range(0, len(pending), batch_size * 4):
        group = sorted(pending[s: s + batch_size * 4], key=len)  # similar lengths: less padding
        for b in range(0, len(group), batch_size):
            prompts = group[b: b + batch_size]
            for p, r in zip(prompts, generate_batch(target, prompts, max_new_tokens)):
                examples.append((p + r, [0] * len(p) + [1] * len(r)))
                total += len(p) + len(r)
                bar.update(len(p) + len(r))
            if total >= token_budget:
                bar.close()
                log(f"self-distilled {len(examples)} replies, {total} tokens in {time.perf_counter() - t0:.0f} s")
                return examples
    bar.close()
    return examples
