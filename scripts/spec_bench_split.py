"""Write the tuning and report halves of a question file (dyndepth.bench.splits), as FastChat question files.

    python scripts/spec_bench_split.py ../shared/data/spec_bench_tune.jsonl OUT_DIR [PREFIX]

writes OUT_DIR/PREFIX-tune.jsonl and OUT_DIR/PREFIX-report.jsonl (PREFIX: default the input's name; for
spec_bench_tune.jsonl, 10 + 10 questions per Spec-Bench category), which
``dyndepth bench --bench FILE`` takes as they are.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from dyndepth.bench.questions import read_questions
from dyndepth.bench.splits import PARTS, split_questions


def main(src: Path, out: Path, prefix: str | None = None) -> None:
    questions = read_questions(src)
    out.mkdir(parents=True, exist_ok=True)
    for part in PARTS:
        half = split_questions(questions, part)
        path = out / f"{prefix or src.stem}-{part}.jsonl"
        with open(path, "w") as fh:
            for q in half:
                fh.write(json.dumps({"question_id": q.question_id, "category": q.category, "turns": list(q.turns)},
                                    ensure_ascii=False) + "\n")
        cats: dict[str, int] = {}
        for q in half:
            cats[q.category] = cats.get(q.category, 0) + 1
        print(f"wrote {path}: {len(half)} questions ({', '.join(f'{c} {n}' for c, n in cats.items())})")


if __name__ == "__main__":
    if len(sys.argv) not in (3, 4):
        sys.exit("usage: python scripts/spec_bench_split.py QUESTIONS.jsonl OUT_DIR [PREFIX]")
    main(Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3] if len(sys.argv) == 4 else None)
