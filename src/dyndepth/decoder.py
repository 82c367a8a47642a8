"""SpeculativeDecoder: the Python API over the engine (engine/: sequences, the batch step, the scheduler).

    dec = SpeculativeDecoder.from_pretrained(target, head, policy=...)
    dec.generate(prompt) -> GenerationOutput            dec.generate([p1, p2, ...]) -> [GenerationOutput, ...]
    dec.stream(prompt or prompts) -> token ids per step  dec.stream_text(...) -> TextChunk per row and step

Every call builds one Sequence per prompt and drives a Scheduler until all are done: rows join the batch as
others leave (``batch_size`` at a time), and each step is engine/step.py:

    prefill:  F = target(prompt)                     # chunked while other rows decode
              root = pick(logits[-1])                # the first new token; emitted at once
              pairs = (F[j], prompt[j+1]) .. (F[L-1], root)
    each step, for every row at once:
              pool = grow_pools(head, pairs)         # drafters/eagle.py: depth chosen per row by the depth policy
              tree = pool.select(root, N - 1)        # tree.py: rerank, connected, root first; N per row
              F = target(all rows' trees)            # ONE forward, each row with its own positions and tree mask
              path, bonus = verify(tree, logits of F) # verify.py: greedy match or rejection sampling, per row
              commit root + accepted nodes into the row's KV (L += a + 1); emit accepted + bonus
              pairs = (F[path], accepted tokens + bonus); root = bonus

Plain decoding is the same loop with the ``plain`` policy: no draft, every tree is the root alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch

from dyndepth import validate
from dyndepth.calibrate import provide_costs
from dyndepth.drafters.stage import DraftStage, resolve_drafter
from dyndepth.drafters.suffix import SuffixOptions
from dyndepth.engine.scheduler import DEFAULT_MAX_BATCH, Scheduler
from dyndepth.engine.sequence import Sequence
from dyndepth.errors import DyndepthError
from dyndepth.fastpath import apply_fast_path, half_weight, matrix_tiles, pack_linears, packed_matmul
from dyndepth.head import DraftHead, DraftKV, StaticDraftKV, head_config
from dyndepth.policies import AUTO_OPTIONS, DepthPolicy, make_policy
from dyndepth.request import GenerationRequest, ResolvedRequest
from dyndepth.stats import GenerationStats
from dyndepth.target import Target, parse_dtype
from dyndepth.text import TextChunk, TextStream
from dyndepth.validate import OptionError

# Tokens verified per step by the head's trees (root included), per machine class. EAGLE-2 uses 60 on GPUs. On a CPU
# the verify cost grows with N, least where half-precision matmuls run in AMX tiles (24, tuned on the AMX Xeon).
# Elsewhere, with bf16 in AVX512-BF16 vector instructions (a 24-token forward costs ~1.9 one-token forwards) or in
# float32 (a float32 model, or half weights upcast on a CPU without a native matmul: ~5), 4 tokens were the fastest
# tree of the head alone on MT-bench tuning questions, for both zoo models (docs/BENCHMARKS.md).
DEFAULT_TOTAL_TOKENS = {"cpu-amx": 24, "cpu": 4, "cuda": 60}
# A tree with suffix matches (suffix, hybrid, switch) holds this many: their nodes are accepted far more often than
# the head's; beside them a default-sized tree keeps the head's own share (DEFAULT_TOTAL_TOKENS) of head-only nodes.
SUFFIX_TOTAL_TOKENS = {"cpu": 24, "cuda": 60}
# The auto policy chooses N per step; this is only its upper bound (and the largest size it measures).
AUTO_TOTAL_TOKENS = {"cpu": 48, "cuda": 128}
DEFAULT_TOP_K = 10


def machine_class(target: Target) -> str:
    """Which DEFAULT_TOTAL_TOKENS the head's trees get: "cuda", "cpu-amx" (half-precision matmuls in AMX tiles) or
    "cpu" (float32 matmuls, or bf16 in AVX512-BF16 vector instructions)."""
    if target.device.type == "cuda":
        return "cuda"
    # a half model on a CPU without a native matmul computes in float32: its dtype is float32 by now (fastpath.py)
    return "cpu-amx" if target.dtype != torch.float32 and matrix_tiles() else "cpu"


@dataclass
class GenerationOutput:
    token_ids: list[int]  # the new tokens only (a final stop token included, like transformers' generate)
    stats: GenerationStats
    text: str | None = None
    error: str | None = None  # batch calls: why this row failed (the other rows are unaffected); else None


GENERATION_OPTIONS = ("max_new_tokens", "temperature", "top_p", "top_k", "seed", "stop", "stop_token_ids",
                      "min_new_tokens", "ignore_eos")
PER_PROMPT = ("max_new_tokens", "seed", "stop")  # options a batch call may give one value per prompt


class SpeculativeDecoder:
    def __init__(self, target: Target, head: DraftHead | None, policy: DepthPolicy | str = "ddd",
                 top_k: int | None = None, total_tokens: int | None = None, max_depth: int | None = None,
                 checks=None, threshold: float | None = None, *, drafter: str | None = None,
                 suffix_cache: int | None = None, suffix_options: SuffixOptions | None = None, **policy_options):
        """drafter: where draft nodes come from (drafters/stage.py): "head" (the EAGLE head), "suffix" (suffix
        matches over the prompt and the output: no head, any causal LM), "hybrid" (both in one tree) or "switch"
        (either/or per step, the baseline); None: "hybrid" when a head is given, else "suffix".
        suffix_cache: earlier outputs the suffix matches search (0: none). suffix_options: the suffix proposal's
        knobs (drafters/suffix.py). policy_options: the auto policy's knobs (min_depth, lookahead,
        prior_strength, update_rate, cost_update_rate, objective)."""
        self.target = target
        if isinstance(policy, DepthPolicy):
            tree = validate.tree_options("fixed" if policy.max_depth else "plain", top_k, total_tokens,
                                         drafter=drafter, suffix_cache=suffix_cache)
            self.policy = policy
        else:
            tree = validate.tree_options(policy, top_k, total_tokens, max_depth, checks, threshold, drafter,
                                         suffix_cache, **policy_options)
            knobs = {k: tree[k] for k in ("max_depth", "checks", "threshold", *AUTO_OPTIONS) if k in tree}
            self.policy = make_policy(policy, **knobs)
        kind = resolve_drafter(tree.get("drafter"), head is not None) if self.policy.max_depth > 0 else "head"
        validate.drafter_head(kind, head)
        if self.policy.max_depth > 0 and head is None and kind != "suffix":
            raise DyndepthError(f"the {self.policy.name!r} policy with the {kind!r} drafter needs a draft head "
                                f"(drafter 'suffix' drafts without one)")
        self.head = head
        self.drafting = DraftStage(kind, self.policy, suffix_options, tree.get("suffix_cache", 0))
        if head is not None:
            head.bind(target.embed, target.lm_head.weight, half_weight(target.lm_head), packed_matmul(target.lm_head))
        machine = machine_class(target)
        device = "cuda" if target.device.type == "cuda" else "cpu"
        if self.policy.name == "auto":
            default = AUTO_TOTAL_TOKENS[device]
        else:
            default = DEFAULT_TOTAL_TOKENS[machine] if kind == "head" else SUFFIX_TOTAL_TOKENS[device]
        self.total_tokens = int(tree.get("total_tokens") or default)
        # the head's own tree; beside suffix matches a default-sized tree keeps only this share of head-only nodes
        self.head_tokens = self.total_tokens if tree.get("total_tokens") else DEFAULT_TOTAL_TOKENS[machine]
        self.top_k = int(tree.get("top_k") or DEFAULT_TOP_K)
        if self.policy.max_depth > 0:
            if head is not None and self.top_k > head.draft_vocab_size:
                raise OptionError("draft top_k", self.top_k, f"must be <= the draft vocabulary ({head.draft_vocab_size})")
            if self.total_tokens >= target.max_context:
                raise OptionError("total_tokens", self.total_tokens,
                                  f"must be below the model's context of {target.max_context} tokens")
        self.stop_ids = target.stop_token_ids()
        self.last_stats: GenerationStats | None = None
        self.last_request: ResolvedRequest | None = None  # the options of the latest generation, defaults filled
        provide_costs(self)  # auto: load or measure this machine's cost curves
        self.policy.prepare(self)

    # -- construction ----------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, target: str, head: str | Path | None = None, dtype: str = "float32",
                        device: str = "cpu", policy: str = "ddd", seed: int = 0, *, static_cache: bool = False,
                        max_len: int | None = None, compile: bool = False, fast_path: bool | str = True,
                        **tree_and_policy_kwargs):
        """target: a zoo name, a local HF model directory or a Hub id. head: an EAGLE-format directory,
        "random" (a randomly initialised head, for tests and timing), or None for the head shipped with a
        zoo model; with ``drafter="suffix"`` no head is loaded (any causal LM works). No drafter named: ``hybrid``
        where a head is given or ships, else ``suffix``. static_cache, max_len, compile:
        the target's engine (see ``Target``); fast_path: the faster CPU forward where it pays (``dyndepth.fastpath``;
        describe()["forward"] says what ran). tree_and_policy_kwargs: top_k, total_tokens, max_depth, checks,
        threshold, drafter, suffix_cache, suffix_options and the auto policy's knobs."""
        drafts = policy.max_depth > 0 if isinstance(policy, DepthPolicy) else policy != "plain"
        if not drafts and head is not None:
            raise OptionError("head", head, "does not apply to the 'plain' policy (it drafts nothing)")
        if not isinstance(policy, DepthPolicy):
            knobs = {k: v for k, v in tree_and_policy_kwargs.items() if k != "suffix_options"}
            validate.tree_options(policy, **knobs)  # every model-free check before loading
        drafter = tree_and_policy_kwargs.get("drafter")
        validate.drafter_head(drafter, head)
        validate.device(device)
        parse_dtype(dtype)
        if not isinstance(fast_path, bool) and fast_path != "pack":
            raise OptionError("fast_path", fast_path, "must be True, False or 'pack'")
        tgt = Target.from_pretrained(target, dtype=dtype, device=device, static_cache=static_cache, max_len=max_len,
                                     compile=compile, fast_path=fast_path)
        draft = None
        if drafts and drafter is None and head is None:  # no drafter named: hybrid with a shipped head, else suffix
            from dyndepth.head_weights import shipped_head

            tree_and_policy_kwargs["drafter"] = resolve_drafter(None, shipped_head(str(target)) is not None)
            drafter = tree_and_policy_kwargs["drafter"]
        if drafts and drafter != "suffix":
            draft = load_head(head, str(target), tgt, seed=seed)
        return cls(tgt, draft, policy=policy, **tree_and_policy_kwargs)

    @property
    def tokenizer(self):
        return self.target.tokenizer

    def describe(self) -> dict:
        d = {"top_k": self.top_k, "total_tokens": self.total_tokens, "dtype": str(self.target.dtype),
             "device": str(self.target.device), "forward": self.target.fast_path}
        d.update(self.policy.describe())
        if self.policy.max_depth > 0:
            d.update(self.drafting.describe())
            if self.drafting.kind != "head" and not self.policy.prices_nodes and self.head_tokens < self.total_tokens:
                d["head_tokens"] = self.head_tokens  # the head-only nodes' share of a tree beside suffix matches
        return d

    def chat_ids(self, prompt: str | list[dict]) -> list[int]:
        """Apply the tokenizer's chat template to a user message, or to a list of {"role", "content"} messages
        (system, user, assistant turns; the template adds the assistant's generation prompt)."""
        messages = validate.chat_messages(prompt)
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
    # One decoder runs one generation call at a time (one prompt, or one batch of prompts). Starting a call
    # (generate, stream, stream_text) takes the target over; a stream that was open before is then invalidated,
    # and its next ``next()`` raises DyndepthError.

    def generate(self, input_ids, max_new_tokens=256, temperature: float | None = None, top_p: float | None = None,
                 top_k: int | None = None, seed=None, *, stop=None, stop_token_ids=(), min_new_tokens: int = 0,
                 ignore_eos: bool = False, batch_size: int | None = None):
        """Decode to the end. One prompt (token ids) -> GenerationOutput (token_ids, stats, text); a list of
        prompts -> a list of GenerationOutput in the same order, decoded ``batch_size`` rows at a time (default 8
        on a CPU), a row that fails carrying its ``error`` while the others complete. ``max_new_tokens``, ``seed``
        and ``stop`` may give one value per prompt. Options left None take the target's generation_config.json
        values (greedy when it does not sample); see dyndepth.request."""
        options = dict(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, top_k=top_k, seed=seed,
                       stop=stop, stop_token_ids=stop_token_ids, min_new_tokens=min_new_tokens, ignore_eos=ignore_eos)
        seqs, batch = self._sequences(input_ids, options, want_text=self.tokenizer is not None)
        outs: list[GenerationOutput | None] = [None] * len(seqs)
        for row, out in self._outputs(seqs, batch_size, raise_errors=not batch):
            outs[row] = out
        return outs if batch else outs[0]

    def generate_iter(self, prompts, max_new_tokens=256, temperature: float | None = None,
                      top_p: float | None = None, top_k: int | None = None, seed=None, *, stop=None,
                      stop_token_ids=(), min_new_tokens: int = 0, ignore_eos: bool = False,
                      batch_size: int | None = None) -> Iterator[tuple[int, GenerationOutput]]:
        """Like ``generate`` on a list of prompts, but yields (index, GenerationOutput) for each prompt as soon as
        it is done, in the order they finish: an offline job can write results while the rest decode. Every option
        is checked before the first ``next()``."""
        options = dict(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, top_k=top_k, seed=seed,
                       stop=stop, stop_token_ids=stop_token_ids, min_new_tokens=min_new_tokens, ignore_eos=ignore_eos)
        seqs, _ = self._sequences(prompts, options, want_text=self.tokenizer is not None)
        return self._outputs(seqs, batch_size, raise_errors=False)

    def _outputs(self, seqs: list[Sequence], batch_size, raise_errors: bool):
        """(row, GenerationOutput) per sequence as it finishes."""
        tokens: list[list[int]] = [[] for _ in seqs]
        texts: list[list[str]] = [[] for _ in seqs]
        errors: list[str | None] = [None] * len(seqs)
        for chunk, error in self._run(seqs, batch_size, raise_errors):
            r = chunk.row
            if error is not None:
                errors[r] = _one_line(error)
            else:
                tokens[r].extend(chunk.token_ids)
                texts[r].append(chunk.text or "")
            if seqs[r].finished:
                yield r, GenerationOutput(tokens[r], seqs[r].stats,
                                          "".join(texts[r]) if self.tokenizer is not None else None, errors[r])

    def stream(self, input_ids, max_new_tokens=256, temperature: float | None = None, top_p: float | None = None,
               top_k: int | None = None, seed=None, *, stop=None, stop_token_ids=(), min_new_tokens: int = 0,
               ignore_eos: bool = False, stats: GenerationStats | None = None,
               batch_size: int | None = None) -> Iterator[list[int]]:
        """Yield the token ids committed at each step (the first chunk is the prefill's token); for a list of
        prompts, use ``stream_text`` (its chunks name their row). Every option is checked here, before the first
        ``next()``."""
        options = dict(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, top_k=top_k, seed=seed,
                       stop=stop, stop_token_ids=stop_token_ids, min_new_tokens=min_new_tokens, ignore_eos=ignore_eos)
        seqs, batch = self._sequences(input_ids, options, want_text=False, stats=stats)
        if batch:
            raise DyndepthError("stream() takes one prompt; for a list of prompts use stream_text(), whose chunks "
                                "carry their row")
        return _token_ids_of(self._run(seqs, batch_size, raise_errors=True))

    def stream_text(self, input_ids, max_new_tokens=256, temperature: float | None = None,
                    top_p: float | None = None, top_k: int | None = None, seed=None, *, stop=None,
                    stop_token_ids=(), min_new_tokens: int = 0, ignore_eos: bool = False,
                    stats: GenerationStats | None = None, batch_size: int | None = None) -> Iterator[TextChunk]:
        """Like ``stream``, but each step yields a TextChunk per row: its token ids, the text they add, detokenised
        incrementally (multi-byte characters are never split; text that may begin a stop string is held back), and
        ``row``, the prompt's index (0 for a single prompt). For a list of prompts a row that fails ends alone:
        the stream raises its error once the other rows are done."""
        if self.tokenizer is None:
            raise DyndepthError("stream_text needs a target with a tokenizer; use stream() for token ids")
        options = dict(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, top_k=top_k, seed=seed,
                       stop=stop, stop_token_ids=stop_token_ids, min_new_tokens=min_new_tokens, ignore_eos=ignore_eos)
        seqs, batch = self._sequences(input_ids, options, want_text=True, stats=stats)
        return _chunks_of(self._run(seqs, batch_size, raise_errors=not batch))

    # -- building sequences ------------------------------------------------------------------------------------
    def sequence(self, input_ids, options: dict, want_text: bool, stats: GenerationStats | None = None,
                 row: int = 0) -> Sequence:
        """One prompt and its generation options (GenerationRequest's keywords) -> a checked Sequence."""
        ids = self._prepare_ids(input_ids)  # [L]
        req = GenerationRequest(**options).resolved(getattr(self.target.model, "generation_config", None),
                                                    self.vocab_size, self.stop_ids, context=self.target.max_context)
        if req.request.stop and self.tokenizer is None:
            raise DyndepthError("stop strings need a target with a tokenizer")
        context = self.target.max_context
        if ids.numel() >= context:
            raise DyndepthError(f"prompt of {ids.numel()} tokens is too long: the model's context is {context} "
                                f"tokens, and at least one new token must fit")
        texts = TextStream(self.tokenizer, req.request.stop) if (want_text or req.request.stop) else None
        return Sequence(ids, req, texts, stats, row)

    def _sequences(self, input_ids, options: dict, want_text: bool, stats=None) -> tuple[list[Sequence], bool]:
        prompts, batch = self._split_prompts(input_ids)
        if not batch:
            seq = self.sequence(prompts[0], options, want_text, stats)
            self.last_stats, self.last_request = seq.stats, seq.request
            return [seq], False
        per_row = _per_prompt_options(options, len(prompts))
        seqs = []
        for i, (prompt, opts) in enumerate(zip(prompts, per_row)):
            try:
                seqs.append(self.sequence(prompt, opts, want_text, row=i))
            except DyndepthError as exc:  # name the row: one line
                raise DyndepthError(f"prompt {i}: {exc}") from None
        self.last_stats, self.last_request = [s.stats for s in seqs], [s.request for s in seqs]
        return seqs, True

    def _run(self, seqs: list[Sequence], batch_size, raise_errors: bool):
        """Drive a Scheduler over ``seqs`` until every row is done -> (TextChunk, None) per row and step, and
        (a chunk naming the row, error) for a row that failed (raised instead when ``raise_errors``)."""
        size = validate.integer("batch_size", batch_size, lo=1) if batch_size is not None else None
        default = DEFAULT_MAX_BATCH["cuda" if self.target.device.type == "cuda" else "cpu"]
        scheduler = Scheduler(self, max_batch_size=size or min(len(seqs), default))
        provide_costs(self)  # a cost model the drift check found stale is measured again, between generations
        for seq in seqs:
            scheduler.add(seq)
        owner = self.target.claim()  # from here on, any older stream of this target is invalid
        return self._drive(scheduler, owner, raise_errors)

    def _drive(self, scheduler: Scheduler, owner, raise_errors: bool):
        target = self.target
        try:
            while scheduler.has_work:
                if target.owner is not owner:
                    raise DyndepthError("this stream was invalidated: a newer generation started on the same "
                                        "decoder (one decoder runs one generation at a time)")
                for event in scheduler.step():
                    if event.error is not None:
                        if raise_errors:
                            raise event.error
                        yield TextChunk([], None, event.seq.row), event.error
                    elif event.chunk is not None:
                        yield event.chunk, None
                    elif event.done:  # e.g. the context end with no held-back text: say the row is done
                        yield TextChunk([], "" if event.seq.texts is not None else None, event.seq.row), None
        finally:
            scheduler.close()
            target.release(owner)

    def new_draft_cache(self) -> DraftKV:
        """An empty draft KV cache for one row: static buffers when the target is static."""
        if not self.target.static_cache:
            return DraftKV()
        return StaticDraftKV(self.target.max_context + max(1, self.policy.max_depth) * self.top_k)  # + scratch

    @property
    def vocab_size(self) -> int:
        return int(self.target.lm_head.weight.shape[0])

    def _split_prompts(self, input_ids) -> tuple[list, bool]:
        """-> (prompts, is_batch). A list (or tuple) whose items are sequences or tensors is a batch, as is a 2-D
        tensor (or array) with more than one row; anything else is one prompt ([L], or [1, L] as transformers)."""
        if isinstance(input_ids, torch.Tensor) or hasattr(input_ids, "ndim"):
            if getattr(input_ids, "ndim", 1) == 2 and input_ids.shape[0] > 1:
                return [input_ids[i] for i in range(input_ids.shape[0])], True
            if getattr(input_ids, "ndim", 1) == 2 and input_ids.shape[0] == 1:
                return [input_ids[0]], False
            return [input_ids], False
        if isinstance(input_ids, (list, tuple)) and input_ids and all(
                isinstance(r, (list, tuple, torch.Tensor)) or hasattr(r, "ndim") for r in input_ids):
            return list(input_ids), True
        return [input_ids], False

    def _prepare_ids(self, input_ids) -> torch.Tensor:
        """One prompt of token ids -> [L] long tensor on the target's device. Refuses strings, floats, bools and
        out-of-range ids."""
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
            ids = torch.tensor(validate.token_ids("input_ids", rows, self.vocab_size), dtype=torch.long)
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
        for chunk, _ in loop:
            yield chunk.token_ids
    finally:
        loop.close()


def _chunks_of(loop) -> Iterator[TextChunk]:
    """A batch stream's chunks; a failed row's error is raised once every other row is done."""
    failed = None
    try:
        for chunk, error in loop:
            if error is None:
                yield chunk
            elif failed is None:
                failed = error
    finally:
        loop.close()
    if failed is not None:
        raise failed


def _per_prompt_options(options: dict, n: int) -> list[dict]:
    """Options for each of n prompts: ``max_new_tokens``, ``seed`` and ``stop`` may hold one value per prompt
    (a list of n; for ``stop`` a list of n lists); every other option applies to all."""
    rows = [dict(options) for _ in range(n)]
    for name in PER_PROMPT:
        value = options.get(name)
        per = isinstance(value, (list, tuple)) and (name != "stop" or any(not isinstance(v, str) for v in value))
        if not per:
            continue
        if len(value) != n:
            raise OptionError(name, f"{len(value)} values", f"must give one value per prompt ({n}) or one for all")
        for row, v in zip(rows, value):
            row[name] = v
    return rows


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


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
    packed = packed_matmul(target.lm_head) is not None  # the target runs on prepacked bf16 weights: so does the head
    if str(head) == "random":
        torch.manual_seed(seed)
        draft = DraftHead(head_config(target.config)).to(device=target.device, dtype=target.dtype)
        if packed:
            pack_linears(draft, dtype=target.dtype)
        return draft
    from dyndepth.head import load_head_dir

    half = half_weight(target.lm_head) is not None  # the target reads its half weights: so does the head
    draft = load_head_dir(head, dtype=None if half else target.dtype, device=target.device)
    if half and next(draft.parameters()).dtype in (torch.bfloat16, torch.float16):
        apply_fast_path(draft, upcast=True)  # float32 math, few-row linears read the checkpoint's half weights
    draft.to(dtype=target.dtype)
    if packed:
        pack_linears(draft, dtype=target.dtype)
    draft.feature_layers(target.num_layers)  # an EAGLE-3 head's layers must exist in this target
    return draft
