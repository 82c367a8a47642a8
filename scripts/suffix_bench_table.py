"""Per-category speedups of the suffix / hybrid benchmark runs (issue 26) as one markdown table.

    python scripts/suffix_bench_table.py docs/results/suffix-qwen-report [more run folders ...] [--label RUN=NAME]

Each cell is a method's speedup over the vanilla of its own run (``summary.json``), so methods of two runs share a
table only through their own baselines; a method name that occurs in two runs is suffixed with the run's label
(``--label folder=name``, default the folder's name). The last rows give every method against ``ddd`` and
``switch`` of the same run, the ratios the issue's goals name.

``--same A,B`` adds, per run, the comparison over the turns where methods A and B gave token-for-token identical
answers: in bf16 a near-tie flip can change an answer, and a shorter answer spreads the same prefill over fewer
tokens, so per-question tok/s of different answers compares different work. It prints A/B of the mean per-turn
tok/s and of decode-only tok/s (prefill excluded) over those turns.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from dyndepth.bench.runner import slug


def load(folder: Path) -> dict:
    return json.loads((folder / "summary.json").read_text())["summary"]


def turns(folder: Path, method: str) -> dict:
    """(question_id, turn) -> (token ids, new tokens, wall s, prefill s) from a run's answers file."""
    out = {}
    for line in (folder / "answers" / f"{slug(method)}.jsonl").read_text().splitlines():
        row = json.loads(line)
        c = row["choices"][0]
        for t in range(len(c["new_tokens"])):
            out[(row["question_id"], t)] = (c["token_ids"][t], c["new_tokens"][t], c["wall_time"][t],
                                            c["prefill_time"][t])
    return out


def same_answers(folder: Path, a: str, b: str) -> str:
    ta, tb = turns(folder, a), turns(folder, b)
    keys = [k for k in ta if k in tb and ta[k][0] == tb[k][0]]
    if not keys:
        return f"{folder.name}: {a} and {b} gave no identical answers"
    mean = sum(ta[k][1] / ta[k][2] for k in keys) / sum(tb[k][1] / tb[k][2] for k in keys)
    decode_a = sum(ta[k][1] for k in keys) / sum(ta[k][2] - ta[k][3] for k in keys)
    decode_b = sum(tb[k][1] for k in keys) / sum(tb[k][2] - tb[k][3] for k in keys)
    return (f"{folder.name}: {len(keys)} of {len(ta)} turns identical; {a} / {b}: {mean:.3f}x mean tok/s, "
            f"{decode_a / decode_b:.3f}x decode-only tok/s ({decode_a:.2f} vs {decode_b:.2f})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--label", action="append", default=[], help="FOLDER=NAME: suffix for that run's methods")
    ap.add_argument("--same", metavar="A,B", help="also compare methods A and B over their identical answers")
    args = ap.parse_args()
    labels = dict(item.split("=", 1) for item in args.label)
    columns, categories = [], []  # columns: (header, run summary, method)
    seen = {}
    for folder in args.runs:
        summary = load(folder)
        for c in summary["categories"]:
            if c not in categories:
                categories.append(c)
        for method in summary["methods"]:
            seen.setdefault(method, []).append(folder)
    for folder in args.runs:
        summary = load(folder)
        for method in summary["methods"]:
            if method == "vanilla" and columns:
                continue
            header = method if len(seen[method]) == 1 or method == "vanilla" else f"{method} ({labels.get(str(folder), folder.name)})"
            columns.append((header, summary, method))

    def cell(summary, method, category=None) -> str:
        m = summary["methods"][method]
        v = m if category is None else m["categories"].get(category)
        return "–" if v is None else f"{v['speedup']:.2f}x"

    lines = ["| category | " + " | ".join(h for h, _, _ in columns) + " |", "|---|" + "---:|" * len(columns)]
    for c in categories:
        lines.append(f"| {c} | " + " | ".join(cell(s, m, c) for _, s, m in columns) + " |")
    lines.append("| **all** | " + " | ".join(f"**{cell(s, m)}**" for _, s, m in columns) + " |")
    for ref in ("ddd", "switch"):
        row = []
        for _, s, m in columns:
            if ref in s["methods"] and m != "vanilla":
                row.append(f"{s['methods'][m]['speedup'] / s['methods'][ref]['speedup']:.2f}x")
            else:
                row.append("–")
        lines.append(f"| all, vs {ref} of the same run | " + " | ".join(row) + " |")
    print("\n".join(lines))
    if args.same:
        a, _, b = args.same.partition(",")
        for folder in args.runs:
            print("\n" + same_answers(folder, a.strip(), b.strip()))


if __name__ == "__main__":
    main()
