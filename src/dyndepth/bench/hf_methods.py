"""transformers' own ``generate`` as benchmark methods: ``vanilla``, ``assisted`` and ``prompt-lookup``.

Both run on the very model object the tree methods use (same weights, dtype and attention implementation).
Sampling settings are passed explicitly, so no default of the model's generation config (e.g. a top-k of 50)
leaks in. Forward hooks count and time the target's (and the assistant's) forward calls, which gives steps
and the prefill / draft / verify split without touching transformers' internals.
"""

from __future__ import annotations

import importlib.util
import sys
import time

from dyndepth.bench.base import BenchMethod, GenParams, MethodSkipped, now, trim_at_stop
from dyndepth.bench.records import TurnResult

DEFAULT_ASSISTANT = "qwen2.5-coder-0.5b-instruct"


class ForwardTimer:
    """Counts a module's forward calls and sums their durations (synchronising on CUDA)."""

    def __init__(self, module, device):
        self.device = device
        self.durations: list[float] = []
        self._t0 = 0.0
        self._handles = [module.register_forward_pre_hook(self._pre), module.register_forward_hook(self._post)]

    def _pre(self, module, args):
        self._t0 = now(self.device)

    def _post(self, module, args, output):
        self.durations.append(now(self.device) - self._t0)

    def reset(self) -> None:
        self.durations = []

    def close(self) -> None:
        for h in self._handles:
            h.remove()


class HFGenerate(BenchMethod):
    """transformers ``model.generate``; with an assistant model, assisted generation; with
    ``prompt_lookup`` = n, prompt lookup decoding (n candidate tokens copied from the context per step)."""

    family = "hf"

    def __init__(self, name: str, target, assistant=None, assistant_name: str | None = None,
                 prompt_lookup: int | None = None):
        self.name = name
        self.target = target
        self.model = target.model
        self.device = target.device
        self.assistant = assistant
        self.assistant_name = assistant_name
        self.prompt_lookup = prompt_lookup
        self.stop_ids = target.stop_token_ids()
        tok = target.tokenizer
        pad = getattr(tok, "pad_token_id", None) if tok is not None else None
        self.pad_id = pad if pad is not None else min(self.stop_ids, default=0)

    def settings(self) -> dict:
        impl = getattr(self.model.config, "_attn_implementation", None)
        d = {"backend": "transformers.generate", "dtype": str(self.target.dtype), "device": str(self.device),
             "attn_implementation": "sdpa" if impl == "dyndepth" else impl}  # dyndepth's is SDPA outside batches
        if self.assistant is not None:
            from transformers import GenerationConfig

            defaults = GenerationConfig._get_default_generation_params()
            cfg = self.assistant.generation_config
            d["assistant"] = self.assistant_name
            for key in ("num_assistant_tokens", "num_assistant_tokens_schedule", "assistant_confidence_threshold"):
                value = getattr(cfg, key, None)
                d[key] = value if value is not None else defaults.get(key)
            d["confidence_threshold_adaptation"] = importlib.util.find_spec("sklearn") is not None
        if self.prompt_lookup is not None:
            from transformers import GenerationConfig

            d["prompt_lookup_num_tokens"] = self.prompt_lookup
            d["max_matching_ngram_size"] = GenerationConfig().max_matching_ngram_size or 2  # None: transformers' 2
        return d

    def generate(self, ids: list[int], params: GenParams, seed: int) -> TurnResult:
        import torch

        input_ids = torch.tensor([ids], device=self.device)
        kwargs = dict(max_new_tokens=params.max_new_tokens, eos_token_id=sorted(self.stop_ids) or None,
                      pad_token_id=self.pad_id, attention_mask=torch.ones_like(input_ids), use_cache=True)
        if params.greedy:
            kwargs["do_sample"] = False
        else:
            kwargs.update(do_sample=True, temperature=params.temperature, top_p=params.top_p, top_k=params.top_k)
            torch.manual_seed(seed)
        if self.assistant is not None:
            kwargs["assistant_model"] = self.assistant
        if self.prompt_lookup is not None:
            kwargs["prompt_lookup_num_tokens"] = self.prompt_lookup
        target_timer = ForwardTimer(self.model, self.device)
        draft_timer = ForwardTimer(self.assistant, self.device) if self.assistant is not None else None
        try:
            t0 = now(self.device)
            with torch.inference_mode():
                out = self.model.generate(input_ids, **kwargs)
            wall = now(self.device) - t0
        finally:
            target_timer.close()
            if draft_timer:
                draft_timer.close()
        new = trim_at_stop(out[0, len(ids):].tolist(), self.stop_ids, params.max_new_tokens)
        calls = target_timer.durations
        if self.assistant is None and self.prompt_lookup is None:  # the prefill, then one token per call
            steps = max(0, len(new) - 1)
            return TurnResult(new, wall, steps, accept_lengths=[1] * steps,
                              prefill_time=calls[0] if calls else 0.0, verify_time=sum(calls[1:]))
        # assisted / prompt lookup: the prefill is merged into the first verification; every target call is a step
        return TurnResult(new, wall, len(calls), verify_time=sum(calls),
                          draft_time=sum(draft_timer.durations) if draft_timer else 0.0)


    def generate_batch(self, prompts: list[list[int]], params: GenParams, seed: int, batch_size: int):
        """What a user writes with transformers: ``generate`` on static batches of ``batch_size`` prompts, left
        padded (each batch runs until its longest answer ends)."""
        import torch

        from dyndepth.bench.throughput import BatchResult

        if self.assistant is not None:
            raise MethodSkipped("transformers refuses batched assisted generation")
        outputs: list[list[int]] = []
        t0 = now(self.device)
        for i in range(0, len(prompts), batch_size):
            chunk = prompts[i:i + batch_size]
            width = max(len(p) for p in chunk)
            ids = torch.tensor([[self.pad_id] * (width - len(p)) + p for p in chunk], device=self.device)
            mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in chunk], device=self.device)
            kwargs = dict(max_new_tokens=params.max_new_tokens, eos_token_id=sorted(self.stop_ids) or None,
                          pad_token_id=self.pad_id, attention_mask=mask, use_cache=True)
            if params.greedy:
                kwargs["do_sample"] = False
            else:
                kwargs.update(do_sample=True, temperature=params.temperature, top_p=params.top_p,
                              top_k=params.top_k)
                torch.manual_seed(seed + i)
            with torch.inference_mode():
                out = self.model.generate(ids, **kwargs)
            outputs += [trim_at_stop(row[width:].tolist(), self.stop_ids, params.max_new_tokens) for row in out]
        wall = now(self.device) - t0
        tokens = sum(len(o) for o in outputs)
        return BatchResult(self.name, batch_size, wall, tokens, tokens, outputs)


def vanilla_factory(ctx, name: str, settings: dict) -> HFGenerate:
    return HFGenerate(name, ctx.target())


def prompt_lookup_factory(ctx, name: str, settings: dict) -> HFGenerate:
    return HFGenerate(name, ctx.target(), prompt_lookup=int(settings.get("prompt_lookup_num_tokens") or 10))


def assisted_factory(ctx, name: str, settings: dict) -> HFGenerate:
    assistant_name = settings.get("assistant") or DEFAULT_ASSISTANT
    target = ctx.target()
    if str(assistant_name) == str(ctx.model):
        raise MethodSkipped(f"the assistant {assistant_name} is the target itself")
    family = getattr(target.config, "model_type", "")
    if assistant_name == DEFAULT_ASSISTANT and family != "qwen2":
        raise MethodSkipped(f"needs a Qwen2.5 target sharing the tokenizer of {DEFAULT_ASSISTANT}; "
                            f"{ctx.model_id} is a {family or 'different'} model")
    started = time.perf_counter()
    assistant = ctx.assistant(assistant_name)
    if assistant.tokenizer is not None and target.tokenizer is not None:
        if assistant.tokenizer.get_vocab() != target.tokenizer.get_vocab():
            raise MethodSkipped(f"{assistant_name} does not share the target's tokenizer")
    print(f"assisted: loaded {assistant_name} in {time.perf_counter() - started:.1f} s", file=sys.stderr)
    return HFGenerate(name, target, assistant=assistant.model, assistant_name=assistant_name)
