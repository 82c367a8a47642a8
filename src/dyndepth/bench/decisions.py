"""What the tree policies decided, step by step, and how well ``auto`` predicted acceptance.

From the answer records' per-step decision data (tree_sizes, depths, accepted, predicted_accepted, beam_log_mass)
and the auto policy's end-of-run report (calibration map, reliability, cost curves) this writes:

- ``plots/decisions.png``: chosen depth and chosen tree size N against the deepest beam's log mass, per method;
- ``plots/reliability.png``: predicted vs observed acceptance per draft-value bucket (auto; the diagonal is perfect
  calibration);
- a markdown section with the reliability table and the mean predicted vs actual accepted tokens per step.
"""

from __future__ import annotations

from pathlib import Path


def decision_series(answers: dict[str, list[dict]]) -> dict[str, dict[str, list]]:
    """method -> flat per-step lists (over every turn of every answer) of the decision fields it recorded."""
    out: dict[str, dict[str, list]] = {}
    for method, records in answers.items():
        series: dict[str, list] = {"depth": [], "tree_size": [], "accepted": [], "predicted": [], "mass": []}
        for rec in records:
            c = rec["choices"][0]
            if "tree_sizes" not in c:
                break
            for t in range(len(c["tree_sizes"])):
                series["depth"] += c["depths"][t]
                series["tree_size"] += c["tree_sizes"][t]
                series["accepted"] += c["accepted"][t]
                series["predicted"] += c["predicted_accepted"][t]
                series["mass"] += c["beam_log_mass"][t]
        if series["tree_size"]:
            out[method] = series
    return out


def prediction_summary(series: dict[str, list]) -> dict | None:
    pairs = [(p, a) for p, a in zip(series["predicted"], series["accepted"]) if p is not None]
    if not pairs:
        return None
    n = len(pairs)
    return {"steps": n, "mean_predicted": round(sum(p for p, _ in pairs) / n, 3),
            "mean_accepted": round(sum(a for _, a in pairs) / n, 3),
            "mean_tree_size": round(sum(series["tree_size"]) / len(series["tree_size"]), 2)}


def markdown_section(answers: dict[str, list[dict]], reports: dict[str, dict]) -> list[str]:
    series = decision_series(answers)
    lines: list[str] = []
    rows = [(m, prediction_summary(s)) for m, s in series.items()]
    rows = [(m, r) for m, r in rows if r]
    if rows:
        lines += ["", "## Tree decisions (auto)", "",
                  "| method | steps | mean N | mean predicted accepted | mean actual accepted |", "|---|---:|---:|---:|---:|"]
        lines += [f"| {m} | {r['steps']} | {r['mean_tree_size']} | {r['mean_predicted']} | {r['mean_accepted']} |"
                  for m, r in rows]
    for method, rep in reports.items():
        rel = rep.get("reliability") or []
        if not rel:
            continue
        lines += ["", f"Calibration of `{method}` (verified nodes by draft path value; predicted = the map's "
                      f"P(accepted) when the node was chosen, observed = share accepted):", "",
                  "| draft value | nodes | predicted | observed |", "|---|---:|---:|---:|"]
        lines += [f"| {r['draft_p_from']:.3g}-{r['draft_p_to']:.3g} | {r['nodes']} | {r['predicted']:.3f} | "
                  f"{r['observed']:.3f} |" for r in rel]
        if rep.get("verify_scale") is not None:
            fit = ""
            if rep.get("verify_slope_scale") is not None:
                fit = (f" (its base x{rep['verify_base_scale']}, its per-token cost "
                       f"x{rep['verify_slope_scale']})")
            if rep.get("draft_ms"):
                fit += f"; draft {rep['draft_ms'][0]} ms + {rep['draft_ms'][1]} ms per level"
            rate = f"; run rate {rep['run_rate']} tokens/s" if rep.get("run_rate") else ""
            lines += ["", f"Cost model of `{method}` at the end: measured/probed verify time x{rep['verify_scale']}"
                          f"{fit}, draft time x{rep['draft_scale']} at 3 levels{rate}."]
    return lines


def write_plots(folder: Path, answers: dict[str, list[dict]], reports: dict[str, dict]) -> list[Path]:
    from dyndepth.bench.plots import _pyplot

    made: list[Path] = []
    series = {m: s for m, s in decision_series(answers).items() if any(v is not None for v in s["mass"])}
    if series:
        plt = _pyplot()
        fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
        for m, s in series.items():
            pts = [(x, d, n) for x, d, n in zip(s["mass"], s["depth"], s["tree_size"]) if x is not None]
            axes[0].scatter([p[0] for p in pts], [p[1] for p in pts], s=8, alpha=0.4, label=m)
            axes[1].scatter([p[0] for p in pts], [p[2] for p in pts], s=8, alpha=0.4, label=m)
        axes[0].set_ylabel("drafted depth")
        axes[1].set_ylabel("tokens verified N (root included)")
        for ax in axes:
            ax.set_xlabel("log beam mass at the depth reached (DDD's H)")
            ax.legend(fontsize=8)
        fig.suptitle("What each policy chose, step by step")
        fig.tight_layout()
        path = folder / "decisions.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        made.append(path)
    rel = {m: r["reliability"] for m, r in reports.items() if r.get("reliability")}
    if rel:
        plt = _pyplot()
        fig, ax = plt.subplots(figsize=(5.2, 5))
        ax.plot([0, 1], [0, 1], color="black", linewidth=0.8, linestyle="--", label="perfect calibration")
        for m, rows in rel.items():
            ax.plot([r["predicted"] for r in rows], [r["observed"] for r in rows], marker="o", label=m)
            raw = [(r["draft_p_from"] + r["draft_p_to"]) / 2 for r in rows]
            ax.plot(raw, [r["observed"] for r in rows], marker="x", linestyle=":", label=f"{m}: raw draft value")
        ax.set_xlabel("predicted P(accepted)")
        ax.set_ylabel("observed share accepted")
        ax.set_title("Reliability of the acceptance map")
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = folder / "reliability.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        made.append(path)
    return made
