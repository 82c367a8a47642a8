"""Benchmark questions: FastChat question files (one JSON object per line).

Each line holds ``question_id``, ``category`` and ``turns`` (a list of user messages); extra keys such as
``reference`` are ignored. ``--bench`` takes a shipped set's name or a path to such a file.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from dyndepth.errors import DyndepthError

DATA_DIR = Path(__file__).resolve().parent.parent / "data"

# name -> file name; shipped sets live in DATA_DIR, Alpaca (CC BY-NC 4.0, not shipped) in $DYNDEPTH_DATA
BENCHMARKS = {
    "mt_bench": "mt_bench_question.jsonl",
    "humaneval": "humaneval_question.jsonl",
    "alpaca": "alpaca_question.jsonl",
}
NOT_SHIPPED = {"alpaca": "EAGLE's Alpaca questions derive from Stanford Alpaca (CC BY-NC 4.0) and do not ship with "
                         "dyndepth"}


@dataclass(frozen=True)
class Question:
    question_id: int | str
    category: str
    turns: tuple[str, ...]


def resolve_bench(spec: str) -> Path:
    """A shipped set's name (mt_bench, humaneval, alpaca) or a path to a FastChat question file."""
    if spec in BENCHMARKS:
        name = BENCHMARKS[spec]
        if spec in NOT_SHIPPED:
            folder = os.environ.get("DYNDEPTH_DATA")
            path = Path(folder).expanduser() / name if folder else None
            if path is None or not path.is_file():
                raise DyndepthError(f"{NOT_SHIPPED[spec]}; set DYNDEPTH_DATA to a folder holding {name} "
                                    f"or pass the file itself: --bench path/to/{name}")
            return path
        return DATA_DIR / name
    path = Path(spec).expanduser()
    if path.is_file():
        return path
    raise DyndepthError(f"unknown benchmark {spec!r}: use one of {', '.join(BENCHMARKS)} "
                        f"or the path of a FastChat question file (.jsonl)")


def read_questions(path: Path) -> list[Question]:
    questions: list[Question] = []
    seen: set = set()
    try:
        lines = path.read_bytes().decode("utf-8").split("\n")
    except UnicodeDecodeError as exc:
        raise DyndepthError(f"{path}: not UTF-8 text (byte {exc.start}); a question file is JSON lines") from None
    except OSError as exc:
        raise DyndepthError(f"{path}: cannot be read ({exc.strerror})") from None
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            row = json.loads(line)
        except ValueError as exc:
            raise DyndepthError(f"{where}: not valid JSON ({exc.msg})") from None
        turns = row.get("turns") if isinstance(row, dict) else None
        if "question_id" not in (row if isinstance(row, dict) else {}):
            raise DyndepthError(f"{where}: a FastChat question needs a 'question_id'")
        if not isinstance(turns, list) or not turns or not all(isinstance(t, str) and t for t in turns):
            raise DyndepthError(f"{where}: 'turns' must be a non-empty list of non-empty strings")
        qid = row["question_id"]
        if isinstance(qid, bool) or not isinstance(qid, (int, str)):
            raise DyndepthError(f"{where}: 'question_id' must be an integer or a string, got {qid!r}")
        if qid in seen:
            raise DyndepthError(f"{where}: question_id {qid!r} appears twice")
        seen.add(qid)
        questions.append(Question(qid, str(row.get("category") or ""), tuple(turns)))
    if not questions:
        raise DyndepthError(f"{path}: no questions")
    return questions


def select_questions(questions: list[Question], n: int | None, how: str = "balanced") -> list[Question]:
    """The first ``n`` questions (``first``), or ``n`` taken round-robin over categories in file order
    (``balanced``: every category is represented as early as possible). Returned in file order."""
    if n is None or n >= len(questions):
        return list(questions)
    if n < 1:
        raise DyndepthError(f"--questions must be >= 1, got {n}")
    if how == "first":
        return list(questions[:n])
    if how != "balanced":
        raise DyndepthError(f"unknown question selection {how!r}; choose first or balanced")
    by_cat: dict[str, list[int]] = {}
    for i, q in enumerate(questions):
        by_cat.setdefault(q.category, []).append(i)
    picked: list[int] = []
    rank = 0
    while len(picked) < n:
        for idx in by_cat.values():
            if rank < len(idx) and len(picked) < n:
                picked.append(idx[rank])
        rank += 1
    return [questions[i] for i in sorted(picked)]


def first_turns(questions: list[Question], turns: int | None) -> list[Question]:
    """Each question cut to its first ``turns`` turns (None = all), e.g. 1 for MT-bench first turns only."""
    if turns is None:
        return list(questions)
    if turns < 1:
        raise DyndepthError(f"--turns must be >= 1, got {turns}")
    return [Question(q.question_id, q.category, q.turns[:turns]) for q in questions]


def load_questions(spec: str, n: int | None = None, how: str = "balanced",
                   turns: int | None = None) -> tuple[Path, list[Question]]:
    path = resolve_bench(spec)
    return path, first_turns(select_questions(read_questions(path), n, how), turns)
