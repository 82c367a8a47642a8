"""Tune / report halves (dyndepth.bench.splits): balanced per category, disjoint, complete, fixed."""

from __future__ import annotations

from collections import Counter

import pytest

from dyndepth.bench.questions import Question, load_questions
from dyndepth.bench.splits import split_of, split_questions
from dyndepth.errors import DyndepthError


def test_halves_alternate_within_each_category():
    qs = [Question(i, cat, ("q",)) for i, cat in enumerate("aabbbaab")]
    assert [q.question_id for q in split_questions(qs, "tune")] == [0, 2, 4, 5]  # a: 0 5, b: 2 4
    assert [q.question_id for q in split_questions(qs, "report")] == [1, 3, 6, 7]


def test_mt_bench_splits_five_five_per_category():
    _, mt = load_questions("mt_bench")
    tune, report = split_questions(mt, "tune"), split_questions(mt, "report")
    assert Counter(q.category for q in tune) == Counter(q.category for q in report)
    assert set(Counter(q.category for q in tune).values()) == {5}
    ids = [q.question_id for q in tune + report]
    assert len(ids) == len(set(ids)) == len(mt)
    assert split_of(mt) == split_of(list(mt))  # fixed by position, no randomness
    with pytest.raises(DyndepthError, match="tune or report"):
        split_questions(mt, "test")
