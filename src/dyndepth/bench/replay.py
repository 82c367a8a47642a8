"""Counterfactual replay of depth policies: what each policy would draft, verify and commit, from one recording.

The draft head's state at an output position depends only on the text committed before it (the committed pairs
carry the target's features, whatever steps produced them), so the pool that any policy's tree is cut from at
position p is the same for every policy. ``record`` grows the full pool (``max_depth`` levels, beam ``top_k``)
once at every position of a greedy answer. A node is on the *chain* when its path spells the answer's next
tokens: exactly the nodes greedy verification would accept. Then a policy is replayed without the target:

    at position p:  grow the recorded levels one by one while policy.should_stop says go on
                    N = policy.tree_size(pool, n_max); tree = pool.select(root, N - 1)    # the real code
                    a = chain nodes in the tree; commit a + 1 tokens; p += a + 1
                    price the step: t_draft(levels) + t_verify(N) from a cost model; policy.observe(step)

so the policy's own decisions, calibration and cost fit run as they would in the decoder, and the time is the
price model's, free of timing noise. ``hindsight.py`` uses the same recordings for bounds no causal policy beats.

Exact for greedy decoding in float32 (tests/test_replay.py replays ``fixed`` and ``ddd`` against the decoder's own
steps). In bf16 the recorded features come from one forward over the answer rather than the steps' tree forwards,
so a near-tie can fall the other way; the answer itself should be plain greedy (vanilla ``generate``).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch

from dyndepth.drafters.eagle import grow_pool
from dyndepth.head import DraftKV
from dyndepth.policies.base import DepthPolicy
from dyndepth.stats import StepStats
from dyndepth.tree import DraftPool, DraftTree


@dataclass
class Position:
    """The full pool grown at one output position. levels[d] = (tokens [m], log path values [m], parents [m],
    pool indices, -1 = root) of depth d + 1, on the CPU; chain = the answer's tokens after the root."""

    root: int
    levels: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]
    chain: list[int]


@dataclass
class Recording:
    """One answer: a Position for every output token but the last (a step starts at each of them)."""

    positions: list[Position]
    top_k: int
    max_depth: int
    question_id: object = None
    cache: dict = field(default_factory=dict, repr=False)  # hindsight.tables per (max_depth, n_max)

    @property
    def tokens(self) -> int:
        """Tokens the steps commit (the answer's first token comes from the prefill)."""
        return len(self.positions)


class _GrowAll(DepthPolicy):
    name = "grow-all"

    def __init__(self, max_depth: int):
        self.max_depth = max_depth

    def should_stop(self, depth, beam_log_values, pool=None):
        return False


@torch.inference_mode()
def record(decoder, prompt_ids: list[int], answer_ids: list[int], max_depth: int, top_k: int,
           question_id=None) -> Recording:
    """Grow the full pool at every position of ``answer_ids`` (the target's greedy answer to ``prompt_ids``)."""
    target, head = decoder.target, decoder.head
    device = target.device
    prompt = torch.tensor(prompt_ids, device=device)  # [L]
    answer = torch.tensor(answer_ids, device=device)  # [n]
    L, n = prompt.numel(), answer.numel()
    owner = target.claim()
    try:
        _, _, head_feats = target.prefill_features(torch.cat([prompt, answer[:-1]]), head)  # [L + n - 1, F]
    finally:
        target.release(owner)
    cache, grow = DraftKV(), _GrowAll(max_depth)
    positions = []
    for p in range(n - 1):
        if p == 0:  # the prefill's pairs: (F[j], token j + 1), the last one's token is the root
            tokens, feats = torch.cat([prompt[1:], answer[:1]]), head_feats[:L]
        else:  # one new committed pair per position
            tokens, feats = answer[p:p + 1], head_feats[L + p - 1:L + p]
        pool = grow_pool(head, cache, tokens, feats, grow, top_k)
        levels = [tuple(t.cpu() for t in pool.level(d)) for d in range(pool.depth)]
        positions.append(Position(int(answer_ids[p]), levels, list(answer_ids[p + 1:p + 1 + max_depth])))
    return Recording(positions, top_k, max_depth, question_id)


def chain_flags(levels, chain: list[int]) -> torch.Tensor:
    """[P] bool over the pool (level-major order): the node's path spells the chain's first tokens."""
    flags: list[torch.Tensor] = []
    for d, (tokens, _, parents) in enumerate(levels):
        if d >= len(chain):
            flags.append(torch.zeros(tokens.numel(), dtype=torch.bool))
            continue
        parent_ok = torch.ones(tokens.numel(), dtype=torch.bool) if d == 0 else torch.cat(flags)[parents]
        flags.append(parent_ok & (tokens == chain[d]))
    return torch.cat(flags)


def accepted_in(tree: DraftTree, chain: list[int]) -> list[bool]:
    """Per tree node (root first): on the accepted path of greedy verification against ``chain``."""
    on = [True]
    for i in range(1, len(tree)):
        d = tree.depths[i]
        on.append(on[tree.parents[i]] and d <= len(chain) and tree.tokens[i] == chain[d - 1])
    return on


@dataclass
class ReplayResult:
    tokens: int = 0
    seconds: float = 0.0
    steps: int = 0
    depth_sum: int = 0
    size_sum: int = 0
    steps_log: list[StepStats] = field(default_factory=list, repr=False)

    def add(self, committed: int, depth: int, size: int, seconds: float) -> None:
        self.tokens += committed
        self.seconds += seconds
        self.steps += 1
        self.depth_sum += depth
        self.size_sum += size

    def summary(self) -> dict:
        s = max(self.steps, 1)
        return {"tok_s": round(self.tokens / self.seconds, 3) if self.seconds else None,
                "tau": round(self.tokens / s, 3), "mean_depth": round(self.depth_sum / s, 2),
                "mean_n": round(self.size_sum / s, 2), "steps": self.steps, "tokens": self.tokens,
                "seconds": round(self.seconds, 4)}


def step_seconds(price, depth: int, size: int) -> tuple[float, float]:
    """(draft, verify) seconds of one step under the price model (a CostModel, never updated here)."""
    draft = float(price.draft_time(depth)) if depth else 0.0
    return draft, float(price.verify_time(torch.tensor([size]))[0])


def replay(policy: DepthPolicy, recordings: list[Recording], price, n_max: int, keep_steps: bool = False
           ) -> ReplayResult:
    """Run ``policy`` over the recordings (one generation each, in order: a learning policy carries what it
    learned from one answer to the next, as in a bench run). n_max: the decoder's total_tokens."""
    if hasattr(policy, "n_max"):
        policy.n_max = n_max  # what SpeculativeDecoder.prepare would set
    out = ReplayResult()
    for rec in recordings:
        if policy.max_depth > rec.max_depth:
            raise ValueError(f"the policy grows up to {policy.max_depth} levels; the recording has {rec.max_depth}")
        p = 0
        while p < rec.tokens:
            pos = rec.positions[p]
            pool, depth = DraftPool(), 0
            if policy.max_depth > 0:
                pool.add_level(*pos.levels[0])
                beam, depth = pos.levels[0][1], 1
                while depth < policy.max_depth and not policy.should_stop(depth, beam, pool):
                    pool.add_level(*pos.levels[depth])
                    beam = torch.topk(pos.levels[depth][1], rec.top_k).values  # the next beam, as draft.py keeps it
                    depth += 1
                pool.beam_log_mass = torch.logsumexp(beam.float(), dim=-1)
                tree = pool.select(pos.root, policy.tree_size(pool, n_max) - 1)
            else:
                tree = DraftTree.root_only(pos.root)
            on = accepted_in(tree, pos.chain)
            a = max(d for d, ok in zip(tree.depths, on) if ok)  # the chain is ancestor-closed: its deepest node
            committed = min(a + 1, rec.tokens - p)
            draft_s, verify_s = step_seconds(price, depth, len(tree))
            step = StepStats(committed=committed, accepted=a, depth=depth, tree_size=len(tree),
                             draft_time_s=draft_s, verify_time_s=verify_s,
                             beam_log_mass=float(pool.beam_log_mass) if depth else None,
                             predicted_accepted=policy.prediction(), node_values=(tree.values or [0.0])[1:],
                             node_parents=tree.parents[1:], node_depths=tree.depths[1:], node_accepted=on[1:])
            policy.observe(step)
            out.add(committed, depth, len(tree), draft_s + verify_s)
            if keep_steps:
                out.steps_log.append(replace(step, node_values=[], node_parents=[], node_depths=[],
                                             node_accepted=[]))
            p += committed
    return out
