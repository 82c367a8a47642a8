"""Tuning / report halves of a question set: tune on one half, report on the other, never both.

The split is fixed by position, not by a seed: within each category, in file order, questions 0, 2, 4, ... are
``tune`` and 1, 3, 5, ... are ``report``. Spec-Bench's tuning file (20 per category) splits 10/10 per category,
MT-bench (10 per category) 5/5, HumanEval (one category) alternately. Alternating rather than cutting in the
middle keeps any ordering in the file (by source, length or difficulty) on both sides.

    python scripts/spec_bench_split.py ../shared/data/spec_bench_tune.jsonl OUT_DIR   # writes both halves
"""

from __future__ import annotations

from dyndepth.bench.questions import Question
from dyndepth.errors import DyndepthError

PARTS = ("tune", "report")


def split_of(questions: list[Question]) -> dict:
    """question_id -> "tune" or "report"."""
    seen: dict[str, int] = {}
    out = {}
    for q in questions:
        rank = seen.get(q.category, 0)
        seen[q.category] = rank + 1
        out[q.question_id] = PARTS[rank % 2]
    return out


def split_questions(questions: list[Question], part: str) -> list[Question]:
    """The ``part`` ("tune" or "report") half of ``questions``, in file order."""
    if part not in PARTS:
        raise DyndepthError(f"unknown split {part!r}; choose tune or report")
    parts = split_of(questions)
    return [q for q in questions if parts[q.question_id] == part]
