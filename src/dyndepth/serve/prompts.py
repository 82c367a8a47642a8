"""Prompts for the HTTP layer: chat template, tokenisation and the context-window check, before any engine work.

The HTTP layer tokenises on its own deep copy of the decoder's tokenizer: a Hugging Face fast tokenizer is one
Rust object that must not be used from two threads at once, and the engine's worker thread detokenises with the
original while requests are being tokenised here.
"""

from __future__ import annotations

import copy
import threading

from dyndepth import validate
from dyndepth.errors import DyndepthError
from dyndepth.serve.errors import APIError, from_dyndepth


class PromptBuilder:
    def __init__(self, tokenizer, max_context: int, tree_tokens: int, vocab_size: int):
        self.tokenizer = copy.deepcopy(tokenizer)
        self.max_context = max_context
        self.tree_tokens = tree_tokens  # tokens verified per step, root included (1 for plain decoding)
        self.vocab_size = vocab_size
        self._lock = threading.Lock()

    @classmethod
    def from_decoder(cls, dec) -> "PromptBuilder":
        tree = dec.total_tokens if dec.policy.max_depth > 0 else 1
        return cls(dec.tokenizer, dec.target.max_context, tree, dec.vocab_size)

    def chat(self, messages: list[dict]) -> list[int]:
        if not getattr(self.tokenizer, "chat_template", None):
            raise APIError(400, "this model's tokenizer has no chat template; use /v1/completions with a prompt",
                           param="messages", code="no_chat_template")
        try:
            with self._lock:
                out = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        except Exception as exc:  # noqa: BLE001 - the template refuses this conversation (e.g. a role order)
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            raise APIError(400, f"the model's chat template rejects these messages: {reason}", param="messages",
                           code="invalid_value") from None
        if isinstance(out, dict) or hasattr(out, "input_ids"):
            out = out["input_ids"]
        return self.checked(list(out), "messages")

    def text(self, prompt: str | list[int]) -> list[int]:
        if isinstance(prompt, str):
            with self._lock:
                ids = list(self.tokenizer(prompt)["input_ids"])
        else:
            try:
                ids = validate.token_ids("prompt", prompt, self.vocab_size)
            except DyndepthError as exc:
                raise from_dyndepth(exc) from None
        return self.checked(ids, "prompt")

    def budget(self, max_new_tokens: int, param: str) -> int:
        """Refuse a token budget above the context window, as OpenAI does (no answer of this model is longer)."""
        try:
            return validate.max_new_tokens_fit(max_new_tokens, self.max_context, option=param)
        except DyndepthError as exc:
            raise APIError(400, str(exc), param=param, code="context_length_exceeded") from None

    def checked(self, ids: list[int], param: str) -> list[int]:
        """Refuse a prompt that, with one draft tree, does not fit the context window (the engine's own check)."""
        if not ids:
            raise APIError(400, "the prompt is empty", param=param, code="invalid_value")
        if len(ids) + self.tree_tokens > self.max_context:
            raise APIError(400, f"the prompt has {len(ids)} tokens; with a draft tree of {self.tree_tokens} tokens "
                                f"it must fit the model's context of {self.max_context} tokens",
                           param=param, code="context_length_exceeded")
        return ids
