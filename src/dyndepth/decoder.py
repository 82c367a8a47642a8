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

from dyndepth import validate
from dyndepth.draft import grow_pool
from dyndepth.errors import DyndepthError
from dyndepth.head import DraftHead, DraftKV, StaticDraftKV, head_config
from dyndepth.policies import AUTO_OPTIONS, DepthPolicy, make_policy
from dyndepth.request import GenerationRequest, ResolvedRequest
from dyndepth.sampling import SamplingParams, pick_token
from dyndepth.stats import GenerationStats, StepStats
from dyndepth.target import Target, parse_dtype
from dyndepth.text import TextChunk, TextStream
from dyndepth.tree import DraftTree
from dyndepth.validate import OptionError
from dyndepth.verify import NodeLogits, verify

# Tokens verified per step (root included). EAGLE-2 uses 60 on GPUs; a CPU's verify cost grows quickly with N.
DEFAULT_TOTAL_TOKENS = {"cpu": 24, "cuda": 60}
# The auto policy chooses N per step; this is only its upper bound (and the largest size it measures).
AUTO_TOTAL_TOKENS = {"cpu": 48, "cuda": 128}
DEFAULT_TOP_K = 10


@dataclass
class GenerationOutput:
    token_ids: list[int]  # the new tokens only (a final stop token included, like transformers' generate)
    stats: GenerationStats
    text: str | None = None


class SpeculativeDecoder:
    def __init__(self, target: Target, head: DraftHead | None, policy: DepthPolicy | str = "ddd",
                 top_k: int | None = None, total_tokens: int | None = None, max_depth: int | None = None,
                 checks=None, threshold: float | None = None, **policy_options):
        """policy_options: the auto policy's knobs (min_depth, lookahead, prior_strength, update_rate,
        cost_update_rate, objective)."""
        self.target = target
        if isinstance(policy, DepthPolicy):
            tree = validate.tree_options("fixed" if policy.max_depth else "plain", top_k, total_tokens)
            self.policy = policy
        else:
            tree = validate.tree_options(policy, top_k, total_tokens, max_depth, checks, threshold, **policy_options)
            knobs = {k: tree[k] for k in ("max_depth", "checks", "threshold", *AUTO_OPTIONS) if k in tree}
            self.policy = make_policy(policy, **knobs)
        if self.policy.max_depth > 0 and head is None:
            raise DyndepthError(f"the {self.policy.name!r} policy needs a draft head")
        self.head = head
        if head is not None:
            head.bind(target.embed, target.lm_head.weight)
        device_kind = "cuda" if target.device.type == "cuda" else "cpu"
        defaults = AUTO_TOTAL_TOKENS if self.policy.name == "auto" else DEFAULT_TOTAL_TOKENS
        self.total_tokens = int(tree.get("total_tokens") or defaults[device_kind])
        self.top_k = int(tree.get("top_k") or DEFAULT_TOP_K)
        if self.policy.max_depth > 0:
            if self.top_k > head.draft_vocab_size:
                raise OptionError("draft top_k", self.top_k, f"must be <= the draft vocabulary ({head.draft_vocab_size})")
            if self.total_tokens >= target.max_context:
                raise OptionError("total_tokens", self.total_tokens,
                                  f"must be below the model's context of {target.max_context} tokens")
        self.stop_ids = target.stop_token_ids()
        self.last_stats: GenerationStats | None = None
        self.last_request: ResolvedRequest | None = None  # the options of the latest generation, defaults filled
        self.policy.prepare(self)  # auto: load or measure this machine's cost curves

    # -- construction ----------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, target: str, head: str | Path | None = None, dtype: str = "float32",
                        device: str = "cpu", policy: str = "ddd", seed: int = 0, *, static_cache: bool = False,
                        max_len: int | None = None, compile: bool = False, **tree_and_policy_kwargs):
        """target: a zoo name, a local HF model directory or a Hub id. head: an EAGLE-format directory,
        "random" (a randomly initialised head, for tests and timing), or None for the head shipped with a
        zoo model. static_cache, max_len, compile: the target's engine (see ``Target``). tree_and_policy_kwargs:
        top_k, total_tokens, max_depth, checks, threshold."""
        drafts = policy.max_depth > 0 if isinstance(policy, DepthPolicy) else policy != "plain"
        if not isinstance(policy, DepthPolicy):
            validate.tree_options(policy, **tree_and_policy_kwargs)  # every model-free check before loading
        validate.device(device)
        parse_dtype(dtype)
        tgt = Target.from_pretrained(target, dtype=dtype, device=device, static_cache=static_cache, max_len=max_len,
                                     compile=compile)
        draft = None
        if drafts:
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
        """Apply the tokenizer's chat template to a user message, or to a list of {"role", "content"} messages
        (system, user, assistant turns; the template adds the assistant's generation prompt)."""
        messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
        if not isinstance(messages, (list, tuple)) or not messages:
            raise OptionError("messages", messages, "must be a string or a non-empty list of {role, content} dicts")
        for i, m in enumerate(messages):
            if not (isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)):
                raise OptionError("messages", m, f"item {i} must be a dict with string 'role' and 'content'")
            validate.utf8_text("messages", m["content"])
        if not getattr(self.tokenizer, "chat_template", None):
            raise DyndepthError("this model's tokenizer has no chat template; pass a plain prompt instead")
        try:
            out = self.tokenizer.apply_chat_template(list(messages), add_generation_prompt=True, tokenize=True)
        except Exception as exc:  # noqa: BLE001 - the template rejects these messages (e.g. a role it lacks)
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            raise DyndepthError(f"the model's chat template rejects these messages: {reason}") from None
        if isinstance(out, dict) or hasattr(out, "input_ids"):
            out = out["input_ids"]
        return list(out)

    # -- generation ------------------------------------------------------------------------------------
    # One decoder (more exactly: one Target, which owns the KV cache) runs one generation at a time. Starting a
    # generation (generate, stream, stream_text) takes the target over; a stream that was open before is then
    # invalidated, and its next ``next()`` raises DyndepthError instead of returning corrupted tokens.

    def generate(self, input_ids, max_new_tokens: int = 256, temperature: float | None = None,
                 top_p: float | None = None, top_k: int | None = None, seed: int | None = None, *,
                 stop=None, stop_token_ids=(), min_new_tokens: int = 0, ignore_eos: bool = False) -> GenerationOutput:
        """Decode to the end -> GenerationOutput (token_ids, stats, text). Options left None take the target's
        generation_config.json values (greedy when it does not sample); see dyndepth.request."""
        stats = GenerationStats()
        tokens: list[int] = []
        texts: list[str] = []
        request = GenerationRequest(max_new_tokens, temperature, top_p, top_k, seed, stop, stop_token_ids,
                                    min_new_tokens, ignore_eos)
        for chunk in self._start(input_ids, request, stats, want_text=self.tokenizer is not None):
            tokens.extend(chunk.token_ids)
            texts.append(chunk.text or "")
        return GenerationOutput(tokens, stats, "".join(texts) if self.tokenizer is not None else None)

    def stream(self, input_ids, max_new_tokens: int = 256, temperature: float | None = None,
               top_p: float | None = None, top_k: int | None = None, seed: int | None = None, *,
               stop=None, stop_token_ids=(), min_new_tokens: int = 0, ignore_eos: bool = False,
               stats: GenerationStats | None = None) -> Iterator[list[int]]:
        """Yield the token ids committed at each step (the first chunk is the prefill's token). Every option is
        checked here, before the first ``next()``."""
        loop = self._start(input_ids, GenerationRequest(max_new_tokens, temperature, top_p, top_k, seed, stop,
                                                        stop_token_ids, min_new_tokens, ignore_eos), stats, False)
        return _token_ids_of(loop)

    def stream_text(self, input_ids, max_new_tokens: int = 256, temperature: float | None = None,
                    top_p: float | None = None, top_k: int | None = None, seed: int | None = None, *,
                    stop=None, stop_token_ids=(), min_new_tokens: int = 0, ignore_eos: bool = False,
                    stats: GenerationStats | None = None) -> Iterator[TextChunk]:
        """Like ``stream``, but each step yields a TextChunk: its token ids and the text they add, detokenised
        incrementally (multi-byte characters are never split; text that may begin a stop string is held back)."""
        if self.tokenizer is None:
            raise DyndepthError("stream_text needs a target with a tokenizer; use stream() for token ids")
        return self._start(input_ids, GenerationRequest(max_new_tokens, temperature, top_p, top_k, seed, stop,
                                                        stop_token_ids, min_new_tokens, ignore_eos), stats, True)

    def _start(self, input_ids, request: GenerationRequest, stats, want_text: bool):
        ids = self._prepare_ids(input_ids)  # [L]
        req = request.resolved(getattr(self.target.model, "generation_config", None), self.vocab_size,
                               self.stop_ids)
        if req.request.stop and self.tokenizer is None:
            raise DyndepthError("stop strings need a target with a tokenizer")
        params = SamplingParams(req.temperature, req.top_p, req.top_k)
        n_tree = self.total_tokens if self.policy.max_depth > 0 else 1
        context = self.target.max_context
        if ids.numel() + n_tree > context:
            raise DyndepthError(f"prompt of {ids.numel()} tokens is too long: it plus a tree of {n_tree} tokens "
                                f"must fit the model's context of {context} tokens")
        stats = stats if stats is not None else GenerationStats()
        self.last_stats, self.last_request = stats, req
        generator = None
        if not params.greedy:
            generator = torch.Generator(device=self.target.device)
            seed = req.request.seed
            generator.manual_seed(seed if seed is not None else int(torch.randint(0, 2**62, ()).item()))
        texts = TextStream(self.tokenizer, req.request.stop) if (want_text or req.request.stop) else None
        owner = self.target.claim()  # from here on, any older stream of this target is invalid
        return self._loop(ids, req, params, generator, stats, texts, owner)

    def _loop(self, ids, req: ResolvedRequest, params, generator, stats, texts, owner) -> Iterator[TextChunk]:
        target, head, policy = self.target, self.head, self.policy
        device = target.device
        max_new_tokens, min_new_tokens = req.request.max_new_tokens, req.request.min_new_tokens
        stop_ids = req.stop_ids
        suppress = torch.tensor(sorted(stop_ids), dtype=torch.long, device=device) if min_new_tokens else None
        stats.prompt_tokens = ids.numel()
        start = _now(device)
        emitted = 0

        def emit(tokens: list[int]) -> tuple[TextChunk, bool]:
            """Append committed tokens until a stop condition; the chunk holds what was kept."""
            nonlocal emitted
            out, done = [], False
            for tok in tokens:
                out.append(tok)
                emitted += 1
                if tok in stop_ids:
                    stats.stop_reason, done = "stop_token", True
                elif texts is not None and texts.push(tok):
                    stats.stop_reason, done = "stop_string", True
                elif emitted >= max_new_tokens:
                    stats.stop_reason, done = "max_new_tokens", True
                if done:
                    break
            return TextChunk(out, texts.take(final=done) if texts is not None else None), done

        def processed(logits_at, depth_of):
            """Target logits as generate's logits processors see them: stop ids at -inf before min_new_tokens."""
            if suppress is None or emitted >= min_new_tokens:
                return logits_at
            return lambda i: (logits_at(i).index_fill(-1, suppress, float("-inf"))
                              if emitted + depth_of[i] < min_new_tokens else logits_at(i))

        def check_owner():
            if target.owner is not owner:
                raise DyndepthError("this stream was invalidated: a newer generation started on the same "
                                    "decoder (one decoder runs one generation at a time)")

        try:
            check_owner()
            logits, feats, head_feats = target.prefill_features(ids, head)  # [V], [L, H], [L, F] (F: head's input)
            root = pick_token(processed(lambda _: logits, [0])(0), params, generator)
            pair_tokens = torch.cat([ids[1:], torch.tensor([root], device=device)])  # [L]
            pair_feats = head_feats  # [L, F]
            draft_cache = self._draft_cache()
            stats.prefill_time_s = _now(device) - start
            chunk, done = emit([root])
            stats.new_tokens = emitted
            yield chunk
            n_tree = self.total_tokens if policy.max_depth > 0 else 1
            while not done:
                check_owner()
                L = target.length
                if L + n_tree > target.max_context:
                    stats.stop_reason = "context"
                    tail = texts.take(final=True) if texts is not None else ""
                    if tail:
                        yield TextChunk([], tail)
                    break
                t0 = _now(device)
                pool = None
                if policy.max_depth > 0:
                    pool = grow_pool(head, draft_cache, pair_tokens, pair_feats, policy, self.top_k)
                    tree = pool.select(root, policy.tree_size(pool, n_tree) - 1)
                    depth = pool.depth
                else:
                    tree, depth = DraftTree.root_only(root), 0
                t1 = _now(device)
                tree_tokens = torch.tensor(tree.tokens, device=device)  # [N]
                feats, head_feats = target.forward_features(tree_tokens, tree.position_ids(L, device)[0],
                                                            tree.visibility(L, device))  # [N, H], [N, F]
                logits_at = processed(NodeLogits(feats, target.logits, tree), tree.depths)
                path, bonus = verify(tree, logits_at, params, generator)
                path_t = torch.tensor(path, device=device)  # [a + 1] tree indices, root first
                target.commit_path(path_t)
                t2 = _now(device)
                new = [tree.tokens[i] for i in path[1:]] + [bonus]  # accepted nodes + bonus
                pair_tokens = torch.tensor(new, device=device)  # [a + 1]
                pair_feats = head_feats[path_t]  # [a + 1, F]
                root = bonus
                chunk, done = emit(new)
                on_path = set(path)
                step = StepStats(committed=len(chunk.token_ids), accepted=len(path) - 1, depth=depth,
                                 tree_size=len(tree), draft_time_s=t1 - t0, verify_time_s=t2 - t1,
                                 beam_log_mass=float(pool.beam_log_mass) if pool is not None else None,
                                 predicted_accepted=policy.prediction(), node_values=tree.values[1:],
                                 node_parents=tree.parents[1:], node_depths=tree.depths[1:],
                                 node_accepted=[i in on_path for i in range(1, len(tree))])
                stats.step_stats.append(step)
                stats.new_tokens = emitted
                policy.observe(step)
                yield chunk
        finally:
            stats.total_time_s = _now(device) - start
            target.release(owner)

    def _draft_cache(self) -> DraftKV:
        """An empty draft KV cache: static buffers (kept across generations) when the target is static."""
        if not self.target.static_cache:
            return DraftKV()
        capacity = self.target.max_context + max(1, self.policy.max_depth) * self.top_k  # committed + scratch
        cache = getattr(self, "_static_draft", None)
        if cache is None or cache.capacity != capacity:
            cache = self._static_draft = StaticDraftKV(capacity)
        cache.reset()
        return cache

    @property
    def vocab_size(self) -> int:
        return int(self.target.lm_head.weight.shape[0])

    def _prepare_ids(self, input_ids) -> torch.Tensor:
        """One prompt of token ids -> [L] long tensor on the target's device. Refuses strings, floats, bools,
        out-of-range ids and batches of several prompts (batch > 1 is not supported yet)."""
        if isinstance(input_ids, (str, bytes)):
            raise DyndepthError("input_ids must be token ids; use dec.tokenizer(...) or dec.chat_ids(...) first")
        if isinstance(input_ids, torch.Tensor):
            if input_ids.dtype.is_floating_point or input_ids.dtype == torch.bool or input_ids.is_complex():
                raise OptionError("input_ids", f"a {input_ids.dtype} tensor", "must hold integer token ids")
            ids = input_ids.detach()
        else:
            if hasattr(input_ids, "tolist"):  # numpy arrays and the like
                input_ids = input_ids.tolist() if getattr(input_ids, "ndim", 1) else [input_ids.tolist()]
            try:
                rows = list(input_ids)
            except TypeError:
                raise OptionError("input_ids", input_ids, "must be a sequence of token ids") from None
            if rows and all(isinstance(r, (list, tuple)) for r in rows):
                if len(rows) > 1:
                    raise DyndepthError(f"batch input ({len(rows)} prompts) is not supported yet: dyndepth "
                                        f"decodes one prompt at a time (batch > 1 is planned); pass one prompt")
                rows = list(rows[0])
            ids = torch.tensor(validate.token_ids("input_ids", rows, self.vocab_size), dtype=torch.long)
        if ids.dim() == 2 and ids.shape[0] > 1:
            raise DyndepthError(f"batch input ({ids.shape[0]} prompts) is not supported yet: dyndepth decodes "
                                f"one prompt at a time (batch > 1 is planned); pass one prompt")
        if ids.dim() > 2 or (ids.dim() == 2 and ids.shape[0] != 1):
            raise OptionError("input_ids", f"a tensor of shape {tuple(ids.shape)}", "must be [L] or [1, L]")
        ids = ids.reshape(-1).long()
        if ids.numel() == 0:
            raise DyndepthError("the prompt is empty")
        if int(ids.min()) < 0 or int(ids.max()) >= self.vocab_size:
            raise OptionError("input_ids", int(ids.max() if int(ids.max()) >= self.vocab_size else ids.min()),
                              f"must hold token ids in 0..{self.vocab_size - 1}")
        return ids.to(self.target.device)


def _token_ids_of(loop) -> Iterator[list[int]]:
    try:
        for chunk in loop:
            yield chunk.token_ids
    finally:
        loop.close()


def load_head(head, target_name: str, target: Target, seed: int = 0):
    """Resolve a head argument: a directory (EAGLE-1/2 or EAGLE-3, told by the checkpoint), "random" (EAGLE-1/2),
    or None (the head shipped for a zoo model)."""
    if head is None:
        from dyndepth.head_weights import shipped_head

        path = shipped_head(target_name)
        if path is None:
            raise DyndepthError(f"no draft head ships for {target_name!r}; pass --head DIR (EAGLE format), "
                                f"--head random, or train one with `dyndepth train-head`")
        head = path
    if str(head) == "random":
        torch.manual_seed(seed)
        draft = DraftHead(head_config(target.config))
        return draft.to(device=target.device, dtype=target.dtype)
    from dyndepth.head import load_head_dir

    draft = load_head_dir(head, dtype=target.dtype, device=target.device)
    draft.feature_layers(target.num_layers)  # an EAGLE-3 head's layers must exist in this target
    return draft


def _now(device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()
