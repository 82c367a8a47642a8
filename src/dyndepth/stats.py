"""Statistics of one generation: per step and in total."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import ClassVar


@dataclass
class StepStats:
    committed: int  # tokens emitted this step: a + 1, less what followed a stop token or max_new_tokens
    accepted: int  # accepted draft nodes that were emitted: min(a, committed) (a stop cuts them like the bonus)
    depth: int  # levels the head drafted (0 = no draft)
    tree_size: int  # tokens verified, root included (N)
    draft_time_s: float
    verify_time_s: float
    beam_log_mass: float | None = None  # logsumexp of the deepest beam's path log-values (DDD's H at that depth)
    predicted_accepted: float | None = None  # the policy's E[accepted] for this tree (auto), else None
    batch_rows: int = 1  # rows (sequences) in this step's target forward
    batch_tokens: int = 0  # tokens in this step's target forward, all rows (draft_time_s / verify_time_s are its)
    tree_depth: int = 0  # depth of the verified tree's deepest node (a suffix match may run deeper than the head)
    context_tokens: int = 0  # the longest row's cached tokens before the step: what its attention spans
    accepted_suffix: int = 0  # accepted nodes a suffix match proposed (alone or merged with a head node)
    # The verified tree's draft nodes (root excluded), for policies that learn from them: path log-values,
    # parents (tree indices, 0 = the root), depths, whether each was accepted (on the accepted path), and each
    # node's source bits (dyndepth.tree.HEAD / SUFFIX; empty: every node is the head's). Not written by to_dict.
    node_values: list[float] = field(default_factory=list, repr=False)
    node_parents: list[int] = field(default_factory=list, repr=False)
    node_depths: list[int] = field(default_factory=list, repr=False)
    node_accepted: list[bool] = field(default_factory=list, repr=False)
    node_sources: list[int] = field(default_factory=list, repr=False)

    NODE_FIELDS: ClassVar[tuple[str, ...]] = ("node_values", "node_parents", "node_depths", "node_accepted",
                                              "node_sources")

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k not in self.NODE_FIELDS}


@dataclass
class GenerationStats:
    prompt_tokens: int = 0
    new_tokens: int = 0
    prefill_time_s: float = 0.0
    total_time_s: float = 0.0
    stop_reason: str = ""  # "stop_token", "stop_string", "max_new_tokens" or "context" ("" if cancelled)
    step_stats: list[StepStats] = field(default_factory=list)

    @property
    def steps(self) -> int:
        return len(self.step_stats)

    @property
    def accept_lengths(self) -> list[int]:
        """Tokens committed per step (a + 1); the first token, produced by the prefill, is not a step."""
        return [s.committed for s in self.step_stats]

    @property
    def depths(self) -> list[int]:
        return [s.depth for s in self.step_stats]

    @property
    def draft_time_s(self) -> float:
        return sum(s.draft_time_s for s in self.step_stats)

    @property
    def verify_time_s(self) -> float:
        return sum(s.verify_time_s for s in self.step_stats)

    @property
    def other_time_s(self) -> float:
        return max(0.0, self.total_time_s - self.prefill_time_s - self.draft_time_s - self.verify_time_s)

    @property
    def mean_accepted_tokens(self) -> float:
        """tau: mean tokens committed per step (1.0 for plain decoding)."""
        return sum(self.accept_lengths) / self.steps if self.steps else 0.0

    @property
    def mean_depth(self) -> float:
        return sum(self.depths) / self.steps if self.steps else 0.0

    @property
    def tokens_per_s(self) -> float:
        return self.new_tokens / self.total_time_s if self.total_time_s > 0 else 0.0

    def summary(self) -> dict:
        return {
            "prompt_tokens": self.prompt_tokens, "new_tokens": self.new_tokens, "steps": self.steps,
            "mean_accepted_tokens": round(self.mean_accepted_tokens, 4), "mean_depth": round(self.mean_depth, 3),
            "tokens_per_s": round(self.tokens_per_s, 3), "total_time_s": round(self.total_time_s, 4),
            "prefill_time_s": round(self.prefill_time_s, 4), "draft_time_s": round(self.draft_time_s, 4),
            "verify_time_s": round(self.verify_time_s, 4), "other_time_s": round(self.other_time_s, 4),
            "stop_reason": self.stop_reason,
        }

    def to_dict(self) -> dict:
        d = self.summary()
        d["accept_lengths"] = self.accept_lengths
        d["depths"] = self.depths
        d["steps_detail"] = [s.to_dict() for s in self.step_stats]
        return d
