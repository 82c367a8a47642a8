"""summary.json and summary.md: the numbers, with the machine and every method setting next to them."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from dyndepth.bench.machine import describe_machine
from dyndepth.bench.methods import format_value
from dyndepth.bench.summary import summarize

SETTING_ORDER = ("policy", "max_depth", "checks", "threshold", "top_k", "total_tokens", "assistant",
                 "num_assistant_tokens", "num_assistant_tokens_schedule", "assistant_confidence_threshold",
                 "confidence_threshold_adaptation", "backend", "attn_implementation", "dtype", "device")


def _num(x, fmt: str = "{:.2f}", none: str = "–") -> str:
    return none if x is None else fmt.format(x)


def _pct(x) -> str:
    return f"{100 * x:.0f}%"


def settings_text(settings: dict) -> str:
    keys = [k for k in SETTING_ORDER if k in settings] + sorted(k for k in settings if k not in SETTING_ORDER)
    return ", ".join(f"{k}={format_value(settings[k])}" for k in keys)


def main_table(summary: dict) -> list[str]:
    ref = summary.get("exactness_reference")
    base = summary.get("baseline") or "baseline"
    lines = [f"| method | tok/s | speedup vs {base} | tau | tau by turn | mean depth | early stop | draft | verify | "
             f"prefill | other | exact vs {ref or 'reference'} |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, st in summary["methods"].items():
        t = st["time"]
        ex = st.get("exactness")
        exact = (f"{ex['matches']}/{ex['turns']}" if ex else "reference" if name == ref
                 else f"n/a ({summary.get('exactness_note') or 'no reference'})" if ref is None else "–")
        lines.append(f"| {name} | {_num(st['tokens_per_s'])} | {_num(st['speedup'], '{:.2f}x')} | "
                     f"{_num(st['tau'])} | {' / '.join(_num(x) for x in st.get('tau_by_turn', [])) or '–'} | "
                     f"{_num(st['mean_depth'])} | {_num(st.get('early_stop_rate'), '{:.0%}')} | "
                     f"{_pct(t['draft_share'])} | {_pct(t['verify_share'])} | {_pct(t['prefill_share'])} | "
                     f"{_pct(t['other_share'])} | {exact} |")
    return lines


def category_table(summary: dict) -> list[str]:
    names = list(summary["methods"])
    lines = ["| category | questions | " + " | ".join(names) + " |", "|---|---:|" + "---:|" * len(names)]
    for cat in summary["categories"]:
        cells, n = [], 0
        for name in names:
            c = summary["methods"][name]["categories"].get(cat)
            n = max(n, c["questions"]) if c else n
            cells.append("–" if not c else f"{_num(c['tokens_per_s'])}" +
                         (f" ({c['speedup']:.2f}x)" if c.get("speedup") is not None else ""))
        lines.append(f"| {cat or '(none)'} | {n} | " + " | ".join(cells) + " |")
    return lines


def render_markdown(summary: dict, run: dict) -> str:
    p = run["params"]
    sampling = "greedy" if p["temperature"] == 0 else f"top_p {p['top_p']}, top_k {p['top_k']}"
    out = [f"# dyndepth bench: {run['model_id']} on {run['bench']}", "",
           f"- Machine: {describe_machine(run['machine'])}",
           f"- Model: {run['model']} · dtype {run['dtype']} · device {run['device']} · head: {run['head']}",
           f"- Forward (every method, vanilla included): {run.get('forward', 'eager')}",
           f"- Questions: {run['questions']} ({run['turns']} turns"
           + (f", first {run['max_turns']} per question" if run.get("max_turns") else "")
           + f", {run['select']} selection) from "
           f"`{Path(run['bench_file']).name}` · max_new_tokens {p['max_new_tokens']} · temperature "
           f"{p['temperature']:g} ({sampling}) · warm-up {run['warmup']} x {run['warmup_tokens']} tokens per method "
           f"· seed {run['seed']} · run took {run['wall_s']:.0f} s",
           "- Counting: tokens = generated ids after stop-token trimming (stop token included), the same rule for "
           "every method; wall time per turn includes the prefill; tok/s = mean over questions; speedup = ratio "
           "of those means; tau = tokens committed per verification step; times are shares of wall time.",
           "", *main_table(summary), "", "## Per category: tokens/s (speedup)", "", *category_table(summary),
           "", "## Method settings", "", "| method | settings |", "|---|---|"]
    for name, settings in run["methods"].items():
        out.append(f"| {name} | {settings_text(settings)} |")
    out += run.get("decisions_markdown") or []
    if run.get("skipped"):
        out += ["", "## Skipped", ""] + [f"- {k}: {v}" for k, v in run["skipped"].items()]
    if run.get("plots"):
        out += ["", "## Plots", ""] + [f"![{Path(p).stem}]({p})" for p in run["plots"]]
    out += ["", "Answers (FastChat / Spec-Bench format): " +
            ", ".join(f"`{Path(p).parent.name}/{Path(p).name}`" for p in run["answers"].values()), ""]
    return "\n".join(out)


def write_reports(out: Path, answers: dict[str, list[dict]], run: dict, plots: bool = True) -> dict:
    from dyndepth.bench.decisions import decision_series, markdown_section, prediction_summary

    summary = summarize(answers, run["methods"], greedy=run["params"]["temperature"] == 0)
    for name, series in decision_series(answers).items():
        pred = prediction_summary(series)
        if pred and name in summary["methods"]:
            summary["methods"][name]["predictions"] = pred
    run["decisions_markdown"] = markdown_section(answers, run.get("policy_reports") or {})
    if plots:
        try:
            from dyndepth.bench.plots import write_plots

            from dyndepth.bench import decisions

            made = write_plots(out / "plots", summary, run["methods"])
            made += decisions.write_plots(out / "plots", answers, run.get("policy_reports") or {})
            run["plots"] = [str(p.relative_to(out)) for p in made]
        except ImportError as exc:
            print(f"plots skipped: {exc} (pip install matplotlib, or the 'bench' extra)", file=sys.stderr)
    doc = {"run": run, "summary": summary}
    (out / "summary.json").write_text(json.dumps(doc, indent=2, default=str) + "\n")
    markdown = render_markdown(summary, run)
    (out / "summary.md").write_text(markdown)
    doc["markdown"] = markdown
    return doc
