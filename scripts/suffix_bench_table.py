"""Per-category speedups of the suffix / hybrid benchmark runs (issue 26) as one markdown table.

    python scripts/suffix_bench_table.py docs/results/suffix-qwen-report [more run folders ...] [--label RUN=NAME]

Each cell is a method's speedup over the vanilla of its own run (``summary.json``), so methods of two runs share a
table only through their own baselines; a method name that occurs in two runs is suffixed with the run's label
(``--label folder=name``, default the folder's name). The last rows give every method against ``ddd`` and
``switch`` of the same run, the ratios the issue's goals name.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def load(folder: Path) -> dict:
    return json.loads((folder / "summary.json").read_text())["summary"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--label", action="append", default=[], help="FOLDER=NAME: suffix for that run's methods")
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


if __name__ == "__main__":
    main()
