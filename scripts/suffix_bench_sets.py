"""The tuning and report question sets of the suffix / hybrid drafting benchmark (issue 26).

    python scripts/suffix_bench_sets.py ../shared/data/spec_bench_tune.jsonl docs/results/suffix-bench/questions

writes OUT/tune.jsonl and OUT/report.jsonl (FastChat question files for ``dyndepth bench --bench``), and the
report half again as report-a.jsonl (Spec-Bench) and report-b.jsonl (the rest), for two shorter runs. Each half
(``dyndepth.bench.splits``: alternate questions within each category) holds:

- Spec-Bench: the tuning file's half, 10 questions in each of translation, summarization, qa, math_reasoning, rag;
- MT-bench first turns: the half's balanced pick, 8 (tune) / 16 (report), category ``mt_bench``;
- HumanEval: the half's first 8 (tune) / 10 (report), category ``humaneval``;
- code edits (OUT/code_edit.jsonl, "Rewrite this function with ..."; the answer copies the prompt's code): 10 / 10;
- quote chats (OUT/quote_chat.jsonl, two turns, the second asks to repeat or quote the first answer): 8 / 8.

Question ids are prefixed by their set (sb-, mt-, he-) so they stay unique.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from dyndepth.bench.questions import Question, load_questions, read_questions, select_questions
from dyndepth.bench.splits import PARTS, split_questions

SIZES = {"tune": {"mt_bench": 8, "humaneval": 8}, "report": {"mt_bench": 16, "humaneval": 10}}


def half(spec_bench: Path, folder: Path, part: str) -> list[Question]:
    out = [Question(f"sb-{q.question_id}", q.category, q.turns)
           for q in split_questions(read_questions(spec_bench), part)]
    _, mt = load_questions("mt_bench")
    mt = select_questions(split_questions(mt, part), SIZES[part]["mt_bench"], "balanced")
    out += [Question(f"mt-{q.question_id}", "mt_bench", q.turns[:1]) for q in mt]
    _, he = load_questions("humaneval")
    out += [Question(f"he-{q.question_id}", "humaneval", q.turns)
            for q in split_questions(he, part)[:SIZES[part]["humaneval"]]]
    for name in ("code_edit", "quote_chat"):
        out += split_questions(read_questions(folder / f"{name}.jsonl"), part)
    return out


def write(path: Path, questions: list[Question]) -> None:
    with open(path, "w") as fh:
        for q in questions:
            fh.write(json.dumps({"question_id": q.question_id, "category": q.category, "turns": list(q.turns)},
                                ensure_ascii=False) + "\n")
    cats: dict[str, int] = {}
    for q in questions:
        cats[q.category] = cats.get(q.category, 0) + 1
    print(f"wrote {path}: {len(questions)} questions, {sum(len(q.turns) for q in questions)} turns "
          f"({', '.join(f'{c} {n}' for c, n in cats.items())})")


def main(spec_bench: Path, folder: Path) -> None:
    for part in PARTS:
        questions = half(spec_bench, folder, part)
        write(folder / f"{part}.jsonl", questions)
    # the report half in two runs for the slower model: Spec-Bench's categories, and the rest
    write(folder / "report-a.jsonl", [q for q in questions if str(q.question_id).startswith("sb-")])
    write(folder / "report-b.jsonl", [q for q in questions if not str(q.question_id).startswith("sb-")])


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python scripts/suffix_bench_sets.py SPEC_BENCH_TUNE.jsonl OUT_DIR")
    main(Path(sys.argv[1]), Path(sys.argv[2]))
