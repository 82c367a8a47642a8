"""Write the tuning and report question sets of the policy comparison (issue 16), as FastChat question files.

    python scripts/question_sets.py OUT_DIR

- ``tune-mtbench16.jsonl``: 16 MT-bench questions, two per category (``--questions 16``'s balanced pick), both
  turns as in the file; sweeps use ``--turns 1`` on it.
- ``report-40.jsonl``: 20 HumanEval problems (the first 20) and 20 MT-bench questions that are not in the tuning
  set (round-robin over categories among the rest), first turns only, so nothing tuned on is reported on.

Both are plain question files, so ``dyndepth bench --bench OUT_DIR/report-40.jsonl`` takes them as they are.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from dyndepth.bench.questions import first_turns, load_questions, select_questions


def write(path: Path, questions) -> None:
    with open(path, "w") as fh:
        for q in questions:
            fh.write(json.dumps({"question_id": q.question_id, "category": q.category, "turns": list(q.turns)}) + "\n")


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    _, mt = load_questions("mt_bench")
    tune = select_questions(mt, 16, "balanced")
    tuned = {q.question_id for q in tune}
    rest = [q for q in mt if q.question_id not in tuned]
    mt_report = first_turns(select_questions(rest, 20, "balanced"), 1)
    _, he = load_questions("humaneval")
    report = [q.__class__(f"humaneval-{q.question_id}", "humaneval", q.turns) for q in he[:20]]
    report += [q.__class__(f"mt_bench-{q.question_id}", q.category, q.turns) for q in mt_report]
    write(out / "tune-mtbench16.jsonl", tune)
    write(out / "report-40.jsonl", report)
    print(f"wrote {out}/tune-mtbench16.jsonl (16 MT-bench questions: {sorted(tuned)}) and {out}/report-40.jsonl "
          f"(20 HumanEval + 20 other MT-bench first turns)")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python scripts/question_sets.py OUT_DIR")
    main(Path(sys.argv[1]))
