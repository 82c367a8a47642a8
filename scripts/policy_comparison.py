"""The policy comparison of issue 16: tune the fixed tree and DDD on one question set, report on another.

    python scripts/policy_comparison.py smollm2-135m-instruct docs/results/policy-smol [--quick]

Stages (each skipped when its summary.json exists, so a stopped run resumes where it was):

1. ``sweep-fixed``: vanilla and ``auto`` next to a grid over the fixed EAGLE-2 tree (max_depth, top_k,
   total_tokens) on the 16 tuning questions (first turns, 128 new tokens).
2. ``sweep-ddd``: vanilla and ``auto`` with top_k 4 next to a grid over DDD (threshold, checks, total_tokens).
3. ``report``: the 40 report questions (20 HumanEval, 20 other MT-bench first turns, 128 new tokens): vanilla,
   ``ddd`` (published defaults), the best fixed tree and the best DDD setting of the sweeps, ``auto`` with the
   top_k that was faster in the sweeps, and for Qwen targets ``assisted``.

Every stage is one ``dyndepth bench`` command (printed before it runs), bf16, 2 threads, greedy.
"""

from __future__ import annotations

import csv
import json
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SETS = ROOT / "docs" / "results" / "policy-sets"
GRIDS = {  # the sweep grids per model: Qwen runs ~6x slower, so its grids are smaller
    "default": {"fixed": ["max_depth=4,6", "top_k=4,8", "total_tokens=8,12,20"],
                "ddd": ["threshold=-0.3,-1.0", "checks=3/5/7,5/7/9", "total_tokens=12,24"]},
    "qwen": {"fixed": ["max_depth=4,6", "total_tokens=10,16"],
             "ddd": ["threshold=-0.3,-1.0", "total_tokens=12,24"]},
}
COMMON = ["--max-new-tokens", "128", "--dtype", "bfloat16", "--threads", "2", "--temperature", "0"]


def bench(args: list[str], out: Path) -> None:
    if (out / "summary.json").is_file():
        print(f"# {out} done, skipped", flush=True)
        return
    cmd = [sys.executable, "-m", "dyndepth.cli", "bench", *args, *COMMON, "--out", str(out)]
    print("$ " + shlex.join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def best_row(path: Path, exclude=("vanilla",)) -> dict:
    rows = [r for r in csv.DictReader(open(path)) if r["method"] not in exclude and r["speedup"]]
    rows = [r for r in rows if not r["method"].startswith("auto")]
    return max(rows, key=lambda r: float(r["speedup"]))


def auto_speed(out: Path) -> float:
    st = json.loads((out / "summary.json").read_text())["summary"]["methods"]["auto"]
    return float(st["speedup"])


def main(model: str, out: Path, quick: bool = False) -> None:
    grid = GRIDS["qwen" if "qwen" in model.lower() else "default"]
    tune = ["--model", model, "--bench", str(SETS / "tune-mtbench16.jsonl"), "--turns", "1"]
    if quick:  # a plumbing check on few questions and tokens
        tune += ["--questions", "2"]
    bench([*tune, "--methods", "vanilla,auto", "--sweep-method", "eagle2-cpu", "--sweep", *grid["fixed"]],
          out / "sweep-fixed")
    bench([*tune, "--methods", "vanilla,auto", "--set", "auto.top_k=4", "--set", "ddd.top_k=4",
           "--sweep-method", "ddd", "--sweep", *grid["ddd"]], out / "sweep-ddd")
    fixed = best_row(out / "sweep-fixed" / "sweep.csv")
    ddd = best_row(out / "sweep-ddd" / "sweep.csv")
    auto_k = 10 if auto_speed(out / "sweep-fixed") >= auto_speed(out / "sweep-ddd") else 4
    print(f"# best fixed: {fixed['method']} {fixed['speedup']}x; best ddd: {ddd['method']} {ddd['speedup']}x; "
          f"auto top_k {auto_k}", flush=True)
    sets = []
    for key in ("max_depth", "top_k", "total_tokens"):
        if fixed.get(key):
            sets += ["--set", f"eagle2-cpu.{key}={fixed[key]}"]
    sets += ["--set", "ddd-cpu.top_k=4"]
    for key in ("threshold", "checks", "total_tokens"):
        if ddd.get(key):
            sets += ["--set", f"ddd-cpu.{key}={ddd[key]}"]
    sets += ["--set", f"auto.top_k={auto_k}"]
    methods = "vanilla,ddd,eagle2-cpu,ddd-cpu,auto" + (",assisted" if "qwen" in model.lower() else "")
    report = ["--model", model, "--bench", str(SETS / "report-40.jsonl"), "--turns", "1"]
    if quick:
        report += ["--questions", "2"]
    bench([*report, "--methods", methods, *sets], out / "report")


if __name__ == "__main__":
    argv = [a for a in sys.argv[1:] if a != "--quick"]
    if len(argv) != 2:
        sys.exit("usage: python scripts/policy_comparison.py MODEL OUT_DIR [--quick]")
    main(argv[0], Path(argv[1]), quick="--quick" in sys.argv)
