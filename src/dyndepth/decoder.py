"""SpeculativeDecoder: the one generation loop.

    prefill:  logits, F = target(prompt)            # F: the target's features [L, H]
              root = pick(logits[-1])               # the first new token; emitted at once
              pairs = (F[j], prompt[j+1]) .. (F[L-1], root)
    each step:
              pool = grow_pool(head, pairs)         # draft.py: depth chosen by the depth policy
              tree = pool.select(root, N - 1)       # tree.py: rerank, connected, root first
              F = target(tree.tokens, positions L + depth, tree mask)   # ONE forward
              path, bonus = verify(tree, logits of F) # verify.py: greedy match or rejection sampling
              commit root + accepted nodes into the target KV (L += a + 1); emit accepted + bonus
              pairs = (F[path], accepted tokens + bonus); root = bonus

Plain decoding is the same loop with the ``plain`` policy: no draft, every tree is the root alone.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch

from dyndepth.draft import grow_pool
from dyndepth.errors import DyndepthError
from dyndepth.head import DraftHead, DraftKV, head_config
from dyndepth.policies import DepthPolicy, make_policy
from dyndepth.sampling import SamplingParams, pick_token
from dyndepth.stats import GenerationStats, StepStats
from dyndepth.target import Target
from dyndepth.tree import DraftTree
from dyndepth.verify import NodeLogits, verify

# Tokens verified per step (root included). EAGLE-2 uses 60 on GPUs; a CPU's verify cost grows quickly with N.
DEFAULT_TOTAL_TOKENS = {"cpu": 24, "cuda": 60}
DEFAULT_TOP_K = 10


@dataclass
class GenerationOutput:
    token_ids: list[int]  # the new tokens only (a final stop token included, like transformers' generate)
    stats: GenerationStats
    text: str | None = None


class SpeculativeDecoder:
    def __init__(self, target: Target, head: DraftHead | None, policy: DepthPolicy | str = "ddd",
                 top_k: int = DEFAULT_TOP_K, total_tokens: int | None = None, max_depth: int | None = None,
                 checks=None, threshold: float | None = None):
        self.target = target
        self.policy = make_policy(policy, max_depth=max_depth, checks=checks, threshold=threshold)
        if self.policy.max_depth > 0 and head is None:
            raise DyndepthError(f"the {self.policy.name!r} policy needs a draft head")
        self.head = head
        if head is not None:
            head.bind(target.embed, target.lm_head.weight)
        device_kind = "cuda" if target.device.type == "cuda" else "cpu"
        self.total_tokens = int(total_tokens or DEFAULT_TOTAL_TOKENS[device_kind])
        self.top_k = int(top_k)
        if self.top_k < 1:
            raise DyndepthError(f"draft top_k must be >= 1, got {top_k}")
        if self.total_tokens < 1:
            raise DyndepthError(f"total_tokens must be >= 1 (it counts the root), got {total_tokens}")
        if head is not None and self.top_k > head.draft_vocab_size:
            raise DyndepthError(f"draft top_k {top_k} exceeds the draft vocabulary ({head.draft_vocab_size})")
        self.stop_ids = target.stop_token_ids()
        self.last_stats: GenerationStats | None = None

    # -- construction ----------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, target: str, head: str | Path | None = None, dtype: str = "float32",
                        device: str = "cpu", policy: str = "ddd", seed: int = 0, **tree_and_policy_kwargs):
        """target: a zoo name, a local HF model directory or a Hub id. head: an EAGLE-format directory,
        "random" (a randomly initialised head, for tests and timing), or None for the head shipped with a
        zoo model. tree_and_policy_kwargs: top_k, total_tokens, max_depth, checks, threshold."""
        tgt = Target.from_pretrained(target, dtype=dtype, device=device)
        draft = None
        if make_policy(policy).name != "plain":
            draft = load_head(head, str(target), tgt, seed=seed)
        return cls(tgt, draft, policy=policy, **tree_and_policy_kwargs)

    @property
    def tokenizer(self):
        return self.target.tokenizer

    def describe(self) -> dict:
        d = {"top_k": self.top_k, "total_tokens": self.total_tokens, "dtype": str(self.target.dtype),
             "device": str(self.target.device)}
        d.update(self.policy.describe())
        return d

    def chat_ids(self, prompt: str | list[dict]) -> list[int]:
        """Apply the tokenizer's chat template to a user message (or a list of messages)."""
        messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
        if not getattr(self.tokenizer, "chat_template", None):
            raise DyndepthError("this model's tokenizer has no chat template; pass a plain prompt instead")
        out = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        if isinstance(out, dict) or hasattr(out, "input_ids"):
            out = out["input_ids"]
        return list(out)

    # -- generation ------------------------------------------------------------------------------------
    def generate(self, input_ids, max_new_tokens: int = 256, temperature: float = 0.0, top_p: float = 1.0,
                 top_k: int = 0, seed: int | None = None) -> GenerationOutput:
        stats = GenerationStats()
        tokens: list[int] = []
        for chunk in self.stream(input_ids, max_new_tokens, temperature, top_p, top_k, seed, stats=stats):
            tokens.extend(chunk)
        text = self.tokenizer.decode(tokens, skip_special_tokens=True) if self.tokenizer is not None else None
        return GenerationOutput(tokens, stats, text)

    def stream(self, input_ids, max_new_tokens: int = 256, temperature: float = 0.0, top_p: float = 1.0,
               top_k: int = 0, seed: int | None = None, stats: GenerationStats | None = None) -> Iterator[list[int]]:
        """Yield the token ids committed at each step (the first chunk is the prefill's token)."""
        params = SamplingParams(float(temperature), float(top_p), int(top_k))
        ids = self._prepare_ids(input_ids)  # [L]
        if max_new_tokens < 1:
            raise DyndepthError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        n_tree = self.total_tokens if self.policy.max_depth > 0 else 1
        context = self.target.max_context
        if ids.numel() + n_tree > context:
            raise DyndepthError(f"prompt of {ids.numel()} tokens is too long: it plus a tree of {n_tree} tokens "
                                f"must fit the model's context of {context} tokens")
        stats = stats if stats is not None else GenerationStats()
        self.last_stats = stats
        generator = None
        if not params.greedy:
            generator = torch.Generator(device=self.target.device)
            generator.manual_seed(seed if seed is not None else int(torch.randint(0, 2**62, ()).item()))
        return self._loop(ids, max_new_tokens, params, generator, stats)

    def _loop(self, ids, max_new_tokens, params, generator, stats) -> Iterator[list[int]]:
        target, head, policy = self.target, self.head, self.policy
        device = target.device
        stats.prompt_tokens = ids.numel()
        start = _now(device)
        emitted = 0

        def emit(tokens: list[int]) -> tuple[list[int], bool]:
            nonlocal emitted
            out = []
            for tok in tokens:
                out.append(tok)
                emitted += 1
                if tok in self.stop_ids:
                    stats.stop_reason = "stop_token"
                    return out, True
                if emitted >= max_new_tokens:
                    stats.stop_reason = "max_new_tokens"
                    return out, True
            return out, False

        try:
            logits, feats = target.prefill(ids)  # [V], [L, H]
            root = pick_token(logits, params, generator)
            pair_tokens = torch.cat([ids[1:], torch.tensor([root], device=device)])  # [L]
            pair_feats = feats  # [L, H]
            draft_cache = DraftKV()
            stats.prefill_time_s = _now(device) - start
            chunk, done = emit([root])
            stats.new_tokens = emitted
            yield chunk
            n_tree = self.total_tokens if policy.max_depth > 0 else 1
            while not done:
                L = target.length
                if L + n_tree > target.max_context:
                    stats.stop_reason = "context"
                    break
                t0 = _now(device)
                if policy.max_depth > 0:
                    pool = grow_pool(head, draft_cache, pair_tokens, pair_feats, policy, self.top_k)
                    tree = pool.select(root, n_tree - 1)
                    depth = pool.depth
                else:
                    tree, depth = DraftTree.root_only(root), 0
                t1 = _now(device)
                tree_tokens = torch.tensor(tree.tokens, device=device)  # [N]
                feats = target.forward(tree_tokens, tree.position_ids(L, device)[0],
                                       tree.visibility(L, device))  # [N, H]
                path, bonus = verify(tree, NodeLogits(feats, target.logits), params, generator)
                path_t = torch.tensor(path, device=device)  # [a + 1] tree indices, root first
                target.commit_path(path_t)
                t2 = _now(device)
                new = [tree.tokens[i] for i in path[1:]] + [bonus]  # accepted nodes + bonus
                pair_tokens = torch.tensor(new, device=device)  # [a + 1]
                pair_feats = feats[path_t]  # [a + 1, H]
                root = bonus
                chunk, done = emit(new)
                step = StepStats(committed=len(chunk), accepted=len(path) - 1, depth=depth, tree_size=len(tree),
                                 draft_time_s=t1 - t0, verify_time_s=t2 - t1)
                stats.step_stats.append(step)
                stats.new_tokens = emitted
                policy.observe(step)
                yield chunk
        finally:
            stats.total_time_s = _now(device) - start

    def _prepare_ids(self, input_ids) -> torch.Tensor:
        if isinstance(input_ids, str):
            raise DyndepthError("input_ids must be token ids; use dec.tokenizer(...) or dec.chat_ids(...) first")
        ids = torch.as_tensor(input_ids, dtype=torch.long).reshape(-1)
        if ids.numel() == 0:
            raise DyndepthError("the prompt is empty")
        vocab = self.target.lm_head.weight.shape[0]
        if int(ids.min()) < 0 or int(ids.max()) >= vocab:
            raise DyndepthError(f"prompt token ids must lie in 0..{vocab - 1}")
        return ids.to(self.target.device)


def load_head(head, target_name: str, target: Target, seed: int = 0) -> DraftHead:
    """Resolve a head argument: a directory, "random", or None (the head shipped for a zoo model)."""
    if head is None:
        from dyndepth.heads import shipped_head

        path = shipped_head(target_name)
        if path is None:
            raise DyndepthError(f"no draft head ships for {target_name!r}; pass --head DIR (EAGLE format), "
                                f"--head random, or train one with `dyndepth train-head`")
        head = path
    if str(head) == "random":
        torch.manual_seed(seed)
        draft = DraftHead(head_config(target.config))
        return draft.to(device=target.device, dtype=target.dtype)
    return DraftHead.from_pretrained(head, dtype=target.dtype, device=target.device)


def _now(device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()
