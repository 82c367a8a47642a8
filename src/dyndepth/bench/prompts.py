"""Chat prompts for benchmark turns, built with the model's own chat template (FastChat's protocol: turn k
is asked after the method's own answers to turns 1..k-1)."""

from __future__ import annotations

from dyndepth.errors import DyndepthError


def chat_ids(tokenizer, messages: list[dict]) -> list[int]:
    """Token ids of a conversation ending with a user message, plus the assistant generation prompt."""
    if not getattr(tokenizer, "chat_template", None):
        raise DyndepthError("the model's tokenizer has no chat template; chat benchmarks need an instruct model")
    out = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    if isinstance(out, dict) or hasattr(out, "input_ids"):
        out = out["input_ids"]
    return [int(t) for t in out]


def answer_text(tokenizer, token_ids: list[int]) -> str:
    """The answer as FastChat stores it: special tokens skipped, surrounding whitespace stripped."""
    return tokenizer.decode(token_ids, skip_special_tokens=True).strip()
