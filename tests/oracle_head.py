"""A test double for the draft head that drafts (a noisy version of) the target's own predictions.

A random head is almost never accepted, which would leave the acceptance, multi-token commit and deep-tree
code paths untested. The oracle runs the target itself on each drafted path (tiny models only), so most
drafts are accepted; ``noise`` > 0 perturbs its logits so that some are rejected at varying depths.
Each output "hidden" row carries a path id in its first element; ``logits`` looks the path up.
"""

from __future__ import annotations

import torch

from dyndepth.head import DraftHead, head_config
from dyndepth.head.kv import DraftRows


class OracleHead(DraftHead):
    """prompt_first_token: the prompt's first token, or a list of them, one per row of a batch in the order the
    rows are admitted (each row's committed context is keyed by its draft cache)."""

    def __init__(self, target, prompt_first_token, noise: float = 0.0, seed: int = 0, sharpness: float = 20.0):
        super().__init__(head_config(target.config))
        self.to(target.dtype)
        self.oracle_target = target
        firsts = prompt_first_token if isinstance(prompt_first_token, (list, tuple)) else [prompt_first_token]
        self.firsts = list(firsts)
        self.contexts: dict[int, list[int]] = {}  # id(draft cache) -> that row's committed tokens
        self._seen: list = []
        self.paths: dict[int, tuple[int, ...]] = {}
        self.noise = noise
        self.sharpness = sharpness
        self.gen = torch.Generator().manual_seed(seed)

    def _path_logits(self, path: tuple[int, ...]) -> torch.Tensor:
        with torch.no_grad():
            out = self.oracle_target.model(torch.tensor([path]))
        logits = out.logits[0, -1].float()
        if self.noise:
            logits = logits + self.noise * logits.std() * torch.randn(logits.shape, generator=self.gen)
        return logits * self.sharpness  # a confident draft grows deep trees

    MARK = 12345.0  # hidden[..., 1] of the oracle's own outputs; target features never hold it exactly

    def _context(self, cache) -> list[int]:
        if id(cache) not in self.contexts:
            self._seen.append(cache)  # kept alive: a freed cache's id could be reused by a later row's
            self.contexts[id(cache)] = [self.firsts.pop(0) if len(self.firsts) > 1 else self.firsts[0]]
        return self.contexts[id(cache)]

    def forward(self, tokens, features, positions, cache=None, mask=None):
        b, n = tokens.shape
        hidden = torch.zeros(b, n, self.config.hidden_size, dtype=features.dtype)
        hidden[..., 1] = self.MARK
        expansion = bool((features[0, :, 1] == self.MARK).all())
        if not expansion:  # root forward over new committed pairs: extend each row's committed context
            rows = list(zip(cache.caches, cache.spans)) if isinstance(cache, DraftRows) else [(cache, None)]
            for c, span in rows:
                lo, hi = (0, n) if span is None else (span.start, span.stop)
                context = self._context(c)
                context.extend(int(t) for t in tokens[0, lo:hi])
                pid = len(self.paths) + 1
                self.paths[pid] = tuple(context)
                hidden[0, hi - 1, 0] = pid
        else:  # expansion: each row extends its parent's path by its own token
            for i in range(n):
                pid = len(self.paths) + 1
                self.paths[pid] = self.paths[int(features[0, i, 0])] + (int(tokens[0, i]),)
                hidden[0, i, 0] = pid
        rows = cache.caches if isinstance(cache, DraftRows) else [] if cache is None else [cache]
        sizes = [s.size for s in cache.spans] if isinstance(cache, DraftRows) else [n]
        for c, size in zip(rows, sizes):  # keep the cache length bookkeeping of a real head
            c.keys = c.values = torch.zeros(1, 1, c.length + size, 1)
        return hidden

    def logits(self, hidden):
        rows = hidden.reshape(-1, hidden.shape[-1])
        out = torch.stack([self._path_logits(self.paths[int(r[0])]) for r in rows])
        return out.reshape(*hidden.shape[:-1], -1)
