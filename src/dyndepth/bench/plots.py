"""PNG plots of a benchmark run (matplotlib, Agg backend: no display needed).

- ``speedup.png``: speedup over the baseline by method, overall and per category;
- ``depths.png``: histogram of the draft levels grown per step, for every method with a depth policy
  (DDD's early stops show as mass below ``max_depth``);
- ``accept_lengths.png``: histogram of tokens committed per step (a + 1), for the draft methods.
"""

from __future__ import annotations

from pathlib import Path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_speedup(path: Path, summary: dict) -> Path | None:
    methods = [m for m, st in summary["methods"].items() if st.get("speedup") is not None]
    if not methods:
        return None
    plt = _pyplot()
    groups = ["all"] + list(summary["categories"])
    width = 0.8 / len(methods)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(groups) * max(1, len(methods)) * 0.45 + 2), 4.2))
    for i, m in enumerate(methods):
        st = summary["methods"][m]
        values = [st["speedup"]] + [(st["categories"].get(c) or {}).get("speedup") or 0.0 for c in summary["categories"]]
        xs = [g + (i - (len(methods) - 1) / 2) * width for g in range(len(groups))]
        ax.bar(xs, values, width, label=m)
    ax.axhline(1.0, color="black", linewidth=0.8, linestyle="--")
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels([g or "(none)" for g in groups], rotation=30, ha="right")
    ax.set_ylabel(f"speedup vs {summary.get('baseline')} (ratio of mean tok/s)")
    ax.set_title("Speedup by method and category")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _histograms(path: Path, summary: dict, key: str, title: str, xlabel: str, x_max: int = 0) -> Path | None:
    # draft methods only (those that report depths); vanilla and plain commit one token per step by design
    series = {m: st[key] for m, st in summary["methods"].items() if st.get("depth_histogram") and st.get(key)}
    if not series:
        return None
    plt = _pyplot()
    values = sorted({int(v) for h in series.values() for v in h})
    xs = list(range(1, max(max(values), x_max) + 1))  # from 1, so early stops show against the maximum
    width = 0.8 / len(series)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.5 * len(xs) + 3), 4.0))
    for i, (m, hist) in enumerate(series.items()):
        counts = {int(k): v for k, v in hist.items()}
        total = sum(counts.values())
        ax.bar([x + (i - (len(series) - 1) / 2) * width for x in xs], [counts.get(x, 0) / total for x in xs],
               width, label=f"{m} ({total} steps)")
    ax.set_xticks(xs)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("share of steps")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_plots(folder: Path, summary: dict, settings: dict | None = None) -> list[Path]:
    """settings: method -> its settings (the depth axis then reaches every plotted method's max_depth)."""
    folder.mkdir(parents=True, exist_ok=True)
    max_depth = max([int(s.get("max_depth") or 0) for s in (settings or {}).values() if isinstance(s, dict)] or [0])
    made = [
        plot_speedup(folder / "speedup.png", summary),
        _histograms(folder / "depths.png", summary, "depth_histogram", "Draft levels grown per step",
                    "drafted depth (draft forward passes)", x_max=max_depth),
        _histograms(folder / "accept_lengths.png", summary, "accept_histogram", "Tokens committed per step",
                    "accepted tokens per step (a + 1)", x_max=max_depth + 1 if max_depth else 0),
    ]
    return [p for p in made if p is not None]
