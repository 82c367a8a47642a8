"""One request inside the engine: its prompt and options, its caches, and how far it has got.

A sequence goes WAITING -> PREFILL (its prompt enters its KV cache, in chunks when long) -> DECODE (one tree per
step) -> DONE. It owns everything that is per request: the target KV row and the head's cache, the root token, the
committed pairs the head has not seen yet, its suffix drafter (prompt + committed tokens), the resolved options, its
own random generator, its text stream, its statistics. ``emit`` applies the request's stop conditions to the tokens
a step commits.
"""

from __future__ import annotations

import enum

import torch

from dyndepth.request import ResolvedRequest
from dyndepth.sampling import SamplingParams
from dyndepth.stats import GenerationStats
from dyndepth.text import TextChunk, TextStream


class State(enum.Enum):
    WAITING = "waiting"
    PREFILL = "prefill"
    DECODE = "decode"
    DONE = "done"


class Sequence:
    def __init__(self, prompt: torch.Tensor, request: ResolvedRequest, texts: TextStream | None = None,
                 stats: GenerationStats | None = None, row: int = 0):
        """prompt [L] token ids on the target's device; row: the prompt's index in its batch call."""
        self.prompt = prompt
        self.row = row
        self.request = request
        self.params = SamplingParams(request.temperature, request.top_p, request.top_k)
        self.generator: torch.Generator | None = None
        if not self.params.greedy:  # each row draws from its own generator: a seed gives the same text batched
            self.generator = torch.Generator(device=prompt.device)
            seed = request.request.seed
            self.generator.manual_seed(seed if seed is not None else int(torch.randint(0, 2**62, ()).item()))
        self.texts = texts
        self.stats = stats if stats is not None else GenerationStats()
        self.stats.prompt_tokens = prompt.numel()
        self.state = State.WAITING
        self.kv = None  # the target's RowKV, from admission to the end
        self.draft_kv = None  # the head's DraftKV (None without a head)
        self.suffix = None  # its SuffixDrafter from the first root on (drafters/stage.py; None: no suffix drafting)
        self.calibrations = None  # a seeded sampling row's own (suffix, head) calibrations (drafters/stage.py)
        self.prefilled = 0  # prompt tokens already in the KV cache
        self.root: int | None = None  # the last token produced, not yet in the KV cache
        # committed pairs the head has not seen (last token = root): per step tokens [n_i] and features [n_i, F],
        # joined only when the head takes them (a row that runs plain for long would otherwise copy its whole
        # backlog every step)
        self.pair_tokens: list[torch.Tensor] = []
        self.pair_feats: list[torch.Tensor] = []
        self.pair_steps = 1  # steps whose pairs wait (the prompt counts as one): > 1 at a draft = a backlog
        self.emitted = 0
        self.error: BaseException | None = None
        self.cancelled = False
        self.started: float | None = None  # clock time of admission
        stop_ids = request.stop_ids
        self.stop_ids = stop_ids
        self._suppress = (torch.tensor(sorted(stop_ids), dtype=torch.long, device=prompt.device)
                          if request.request.min_new_tokens and stop_ids else None)

    @property
    def finished(self) -> bool:
        return self.state is State.DONE

    def add_pairs(self, tokens: torch.Tensor, feats: torch.Tensor | None) -> None:
        """Append committed pairs (tokens [n], features [n, F]) for the head's next root forward."""
        if feats is None:
            return
        self.pair_steps += 1
        self.pair_tokens.append(tokens)
        if feats.untyped_storage().nbytes() > feats.numel() * feats.element_size():
            feats = feats.clone()  # a prompt chunk's slice would keep its whole step's features alive
        self.pair_feats.append(feats)

    def take_pairs(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Every waiting pair, oldest first: tokens [n], features [n, F]."""
        tokens, feats = self.pair_tokens, self.pair_feats
        self.pair_tokens, self.pair_feats = [], []
        self.pair_steps = 0
        if len(tokens) == 1:
            return tokens[0], feats[0]
        return torch.cat(tokens), torch.cat(feats)

    # -- what the target's logits become before a token is picked or verified ------------------------------------
    def processed(self, logits_at, depth_of):
        """Target logits as generate's logits processors see them: stop ids at -inf before min_new_tokens."""
        min_new = self.request.request.min_new_tokens
        if self._suppress is None or self.emitted >= min_new:
            return logits_at
        emitted, suppress = self.emitted, self._suppress
        return lambda i: (logits_at(i).index_fill(-1, suppress, float("-inf"))
                          if emitted + depth_of[i] < min_new else logits_at(i))

    # -- committed tokens out -------------------------------------------------------------------------------------
    def emit(self, tokens: list[int]) -> tuple[TextChunk, bool]:
        """Append committed tokens until a stop condition; the chunk holds what was kept."""
        out, done = [], False
        texts, stats = self.texts, self.stats
        for tok in tokens:
            out.append(tok)
            self.emitted += 1
            if tok in self.stop_ids:
                stats.stop_reason, done = "stop_token", True
            elif texts is not None and texts.push(tok):
                stats.stop_reason, done = "stop_string", True
            elif self.emitted >= self.request.request.max_new_tokens:
                stats.stop_reason, done = "max_new_tokens", True
            if done:
                break
        stats.new_tokens = self.emitted
        if done:
            self.state = State.DONE
        return TextChunk(out, texts.take(final=done) if texts is not None else None, self.row), done

    def end(self, reason: str) -> TextChunk | None:
        """Stop for ``reason`` (e.g. "context"); the text held back so far, if any."""
        self.stats.stop_reason = reason
        self.state = State.DONE
        tail = self.texts.take(final=True) if self.texts is not None else ""
        return TextChunk([], tail, self.row) if tail else None
