"""What one generation asks for, checked and completed from the target's own defaults.

``GenerationRequest`` holds every per-generation option of ``SpeculativeDecoder.generate/stream``. Options the
caller leaves ``None`` take the target's ``generation_config.json`` values, as ``transformers`` generate does:

    temperature  generation_config.temperature if generation_config.do_sample else 0 (greedy)
    top_p/top_k  generation_config.top_p / top_k (transformers' own defaults when unset: 1.0 / 50)
    stop ids     the model's eos ids (config, generation config, tokenizer) + chat end-of-turn tokens
                 + ``stop_token_ids``; ``ignore_eos`` drops the eos ids (extra ``stop_token_ids`` still stop)

``min_new_tokens`` suppresses every stop token id (logit -inf) until that many tokens are out, exactly like
transformers' ``MinNewTokensLengthLogitsProcessor``, so it too is lossless against ``generate``.
"""

from __future__ import annotations

from dataclasses import dataclass

from dyndepth import validate as v

HF_DEFAULTS = {"temperature": 1.0, "top_p": 1.0, "top_k": 50}  # transformers' defaults for unset fields


@dataclass
class GenerationRequest:
    max_new_tokens: int = 256
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    seed: int | None = None
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    min_new_tokens: int = 0
    ignore_eos: bool = False

    def check(self) -> "GenerationRequest":
        """Model-free checks; raises OptionError. Returns self with normalised types."""
        self.max_new_tokens = v.integer("max_new_tokens", self.max_new_tokens, lo=1)
        if self.temperature is not None:
            self.temperature = v.temperature(self.temperature)
        if self.top_p is not None:
            self.top_p = v.top_p(self.top_p)
        if self.top_k is not None:
            self.top_k = v.integer("top_k", self.top_k, lo=0)
        if self.seed is not None:
            self.seed = v.integer("seed", self.seed, lo=0, hi=v.SEED_MAX)
        self.stop = v.stop_strings(self.stop)
        if isinstance(self.stop_token_ids, (str, bytes)) or not hasattr(self.stop_token_ids, "__iter__"):
            self.stop_token_ids = (self.stop_token_ids,)
        self.stop_token_ids = tuple(self.stop_token_ids)
        for t in self.stop_token_ids:
            v.integer("stop_token_ids", t, lo=0)
        self.min_new_tokens = v.integer("min_new_tokens", self.min_new_tokens, lo=0)
        if self.min_new_tokens > self.max_new_tokens:
            raise v.OptionError("min_new_tokens", self.min_new_tokens,
                                f"must be <= max_new_tokens ({self.max_new_tokens})")
        if not isinstance(self.ignore_eos, bool):
            raise v.OptionError("ignore_eos", self.ignore_eos, "must be True or False")
        return self

    def resolved(self, generation_config, vocab: int, eos_ids: set[int],
                 context: int | None = None) -> "ResolvedRequest":
        """Fill unset sampling options from the target's generation config; check ids against the vocabulary
        and, given the model's ``context``, ``max_new_tokens`` against it."""
        self.check()
        if context is not None:
            v.max_new_tokens_fit(self.max_new_tokens, context)
        gc = generation_config

        def from_config(name):
            value = getattr(gc, name, None) if gc is not None else None
            return HF_DEFAULTS[name] if value is None else value

        if self.temperature is not None:
            temperature = self.temperature
        else:
            temperature = v.temperature(from_config("temperature")) if getattr(gc, "do_sample", False) else 0.0
        top_p = self.top_p if self.top_p is not None else v.top_p(from_config("top_p"))
        top_k = self.top_k if self.top_k is not None else int(from_config("top_k") or 0)
        extra = set(v.token_ids("stop_token_ids", self.stop_token_ids, vocab))
        stop_ids = (set() if self.ignore_eos else set(eos_ids)) | extra
        return ResolvedRequest(self, float(temperature), float(top_p), int(top_k), frozenset(stop_ids))


@dataclass(frozen=True)
class ResolvedRequest:
    request: GenerationRequest
    temperature: float
    top_p: float
    top_k: int
    stop_ids: frozenset[int]

    def describe(self) -> dict:
        r = self.request
        return {"max_new_tokens": r.max_new_tokens, "temperature": self.temperature, "top_p": self.top_p,
                "top_k": self.top_k, "seed": r.seed, "stop": list(r.stop), "stop_token_ids": sorted(self.stop_ids),
                "min_new_tokens": r.min_new_tokens, "ignore_eos": r.ignore_eos}
