"""Grid sweeps: run one tree method over a grid of settings in the same run as the baseline, and tabulate.

    dyndepth bench ... --methods vanilla --sweep threshold=-0.3,-0.6 max_depth=7,11 top_k=4,10 total_tokens=16,24

expands the sweep method (``--sweep-method``, default ``ddd``) into one method per grid point, named like
``ddd(threshold=-0.6,max_depth=7,top_k=4,total_tokens=16)``, runs them next to ``--methods``, and writes
``sweep.md`` and ``sweep.csv`` sorted by speedup, so the best setting for a machine is found by measurement.
For DDD, check depths at or beyond a grid point's ``max_depth`` are dropped (unless ``checks`` is swept or set).
"""

from __future__ import annotations

import csv
import itertools
from pathlib import Path

from dyndepth.bench.methods import METHODS, MethodPlan, check_key, format_value, parse_value
from dyndepth.errors import DyndepthError


def parse_grid(items: list[str]) -> dict[str, list]:
    """``["threshold=-0.3,-0.6", "checks=5/7/9,3/5"]`` -> {"threshold": [-0.3, -0.6], "checks": [(5, 7, 9), (3, 5)]}."""
    grid: dict[str, list] = {}
    for item in items:
        key, sep, values = item.partition("=")
        key = key.strip()
        if not sep or not key or not values.strip():
            raise DyndepthError(f"--sweep takes KEY=V1,V2,... (e.g. threshold=-0.3,-0.6), got {item!r}")
        if key in grid:
            raise DyndepthError(f"--sweep names {key!r} twice")
        grid[key] = [parse_value(key, v.strip()) for v in values.split(",") if v.strip()]
    if not grid:
        raise DyndepthError("--sweep needs at least one KEY=V1,V2,...")
    return grid


def expand(method: str, grid: dict[str, list], fixed: dict | None = None) -> list[MethodPlan]:
    """One plan per grid point of ``method``; ``fixed`` holds its --set overrides."""
    if method not in METHODS:
        raise DyndepthError(f"unknown --sweep-method {method!r}; choose from: {', '.join(METHODS)}")
    spec = METHODS[method]
    if spec.defaults.get("policy") in (None, "plain"):
        raise DyndepthError(f"--sweep-method must be a draft-tree method, not {method!r}")
    for key in grid:
        check_key(method, key)
    fixed = fixed or {}
    plans = []
    keys = list(grid)
    for values in itertools.product(*(grid[k] for k in keys)):
        point = dict(zip(keys, values))
        settings = {**spec.defaults, **fixed, **point}
        if settings.get("policy") == "ddd" and "checks" not in point and "checks" not in fixed:
            settings["checks"] = tuple(c for c in settings["checks"] if c < settings["max_depth"])
        name = f"{method}(" + ",".join(f"{k}={format_value(v)}" for k, v in point.items()) + ")"
        plans.append(MethodPlan(name, spec, settings))
    return plans


COLUMNS = ("tokens_per_s", "speedup", "tau", "mean_depth", "early_stop_rate", "exact")


def sweep_rows(summary: dict, run: dict, keys: list[str]) -> list[dict]:
    rows = []
    for name, st in summary["methods"].items():
        settings = run["methods"].get(name, {})
        ex = st.get("exactness")
        row = {"method": name, **{k: format_value(settings[k]) if k in settings else "" for k in keys}}
        row.update(tokens_per_s=st["tokens_per_s"], speedup=st["speedup"], tau=st["tau"],
                   mean_depth=st["mean_depth"], early_stop_rate=st.get("early_stop_rate"),
                   exact=f"{ex['matches']}/{ex['turns']}" if ex else "")
        rows.append(row)
    rows.sort(key=lambda r: -(r["speedup"] if r["speedup"] is not None else float("-inf")))
    return rows


def write_sweep(out: Path, summary: dict, run: dict, keys: list[str]) -> tuple[Path, Path, str]:
    rows = sweep_rows(summary, run, keys)
    header = ["method", *keys, *COLUMNS]
    csv_path = out / "sweep.csv"
    with open(csv_path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=header)
        writer.writeheader()
        writer.writerows({k: ("" if r.get(k) is None else r.get(k)) for k in header} for r in rows)

    def cell(v):
        return "–" if v is None or v == "" else f"{v:.2f}" if isinstance(v, float) else str(v)

    lines = [f"# Sweep: {run['model_id']} on {run['bench']} ({run['questions']} questions, "
             f"{run['params']['max_new_tokens']} new tokens, {run['dtype']}, {run['machine'].get('cpu')}, "
             f"{run['machine'].get('torch_threads')} threads)", "",
             "Sorted by speedup vs the baseline (ratio of mean tokens/s over questions).", "",
             "| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
    lines += ["| " + " | ".join(cell(r.get(k)) for k in header) + " |" for r in rows]
    text = "\n".join(lines) + "\n"
    md_path = out / "sweep.md"
    md_path.write_text(text)
    return md_path, csv_path, text
