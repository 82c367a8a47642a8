"""``dyndepth calibrate``: measure the cost curves the ``auto`` policy decides with, print them and plot them.

    dyndepth calibrate --model qwen2.5-coder-1.5b-instruct --threads 2 --plot costs.png

It loads the target and head as ``generate`` would, runs the cost probe (curves.py: verification forwards per tree
size up to ``--total-tokens``, and the head's root and level forwards, repeated and interleaved), stores the
result in the cache that ``policy="auto"`` reads (so the next auto run starts without probing; a suspect
measurement is not stored), prints the curve with the cost of each extra verified token, and writes a PNG.
``--json`` prints the measurement as one JSON object instead.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from dyndepth import validate
from dyndepth.errors import DyndepthError


def register(sub) -> None:
    p = sub.add_parser("calibrate", help="measure this machine's verify and draft cost curves (used by --policy auto)",
                       description="Measure t_verify(N) and t_draft(levels) for a model and head on this machine, "
                                   "cache them for --policy auto, print the curve and write a plot.")
    p.add_argument("--model", default="smollm2-135m-instruct",
                   help="zoo name, local Hugging Face model directory or Hub id (default: %(default)s)")
    p.add_argument("--head", default=None,
                   help="draft head directory, 'random', or omit for the head shipped with a zoo model")
    p.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16", "float16"],
                   help="the dtype auto will decode with; the cache is per dtype (default: %(default)s)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or mps (default: %(default)s)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--draft-top-k", type=int, default=None, dest="tree_top_k",
                   help="beam width the draft levels are timed with (default: 10, as auto)")
    p.add_argument("--total-tokens", type=int, default=None,
                   help="the largest tree measured (default: auto's bound, 48 on CPU, 128 on CUDA)")
    p.add_argument("--repeats", type=int, default=5,
                   help="timed rounds over all sizes after a warm-up; each size keeps its fastest (default 5)")
    p.add_argument("--plot", type=Path, default=Path("dyndepth-costs.png"),
                   help="the PNG to write (default: %(default)s)")
    p.add_argument("--no-plot", dest="plot", action="store_const", const=None, help="do not write a plot")
    p.add_argument("--no-cache", action="store_true", help="measure without storing the result for --policy auto")
    p.add_argument("--json", action="store_true", help="print the measurement as one JSON object")
    p.set_defaults(func=run)


def _check(args) -> None:
    validate.tree_options("auto", args.tree_top_k, args.total_tokens)
    validate.device(args.device)
    validate.threads(args.threads)
    if not 1 <= args.repeats <= 100:
        raise DyndepthError(f"--repeats must be in 1..100, got {args.repeats}")
    if args.plot is not None and args.plot.suffix.lower() != ".png":
        raise DyndepthError(f"--plot {args.plot}: the plot is a PNG file (name it .png)")
    if args.plot is not None and args.plot.parent != Path("") and not args.plot.parent.is_dir():
        raise DyndepthError(f"--plot {args.plot}: folder {args.plot.parent} does not exist")


def run(args) -> int:
    _check(args)
    import torch

    from dyndepth.calibrate.curves import probe
    from dyndepth.decoder import SpeculativeDecoder
    from dyndepth.policies.costs import cache_path, cost_key, store

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    kw = {k: v for k, v in (("top_k", args.tree_top_k), ("total_tokens", args.total_tokens)) if v is not None}
    # the fixed policy builds the decoder without probing; the key and sizes are auto's (same top_k, total_tokens)
    from dyndepth.decoder import AUTO_TOTAL_TOKENS

    device_kind = "cuda" if str(args.device).startswith("cuda") else "cpu"
    kw.setdefault("total_tokens", AUTO_TOTAL_TOKENS[device_kind])
    decoder = SpeculativeDecoder.from_pretrained(args.model, head=args.head, dtype=args.dtype, device=args.device,
                                                 policy="fixed", **kw)
    print(f"probing {args.model} ({args.dtype}, {args.device}, {torch.get_num_threads()} threads): "
          f"verify N = 1..{decoder.total_tokens}, draft levels at beam width {decoder.top_k} ...", file=sys.stderr)
    model = probe(decoder, repeats=args.repeats)
    key = cost_key(decoder)
    model.meta["key"] = key
    where = None
    suspect = model.meta.get("suspect")
    if not args.no_cache and not suspect:
        where = store(model, key)
    plot = write_plot(args.plot, model, f"{args.model} ({args.dtype}, {args.device}, "
                                         f"{torch.get_num_threads()} threads)") if args.plot else None
    if args.json:
        print(json.dumps({**model.to_dict(), "cache": str(where) if where else None,
                          "plot": str(plot) if plot else None}, indent=1))
        return 0
    print(format_curve(model))
    if where:
        print(f"cached for --policy auto: {where}")
    elif suspect and not args.no_cache:
        print(f"not cached: the timings stayed suspect ({suspect}); run it again on a quieter machine")
    elif not args.no_cache:
        print(f"(could not write the cache {cache_path(key)})")
    if plot:
        print(f"wrote {plot}")
    return 0


def format_curve(model) -> str:
    """The measured curve as a table: N, verify ms, ms per token, ms added per extra token since the last size."""
    lines = ["tree size N | verify ms | ms per token | ms per extra token", "---:|---:|---:|---:"]
    prev = None
    for n, t in zip(model.sizes, model.verify_s):
        extra = "–" if prev is None else f"{1000 * (t - prev[1]) / (n - prev[0]):.2f}"
        lines.append(f"{n} | {1000 * t:.1f} | {1000 * t / n:.2f} | {extra}")
        prev = (n, t)
    lines.append("")
    lines.append(f"draft: {1000 * model.draft_base_s:.1f} ms per step (root forward, rerank) + "
                 f"{1000 * model.draft_level_s:.1f} ms per level")
    one = model.verify_s[0] + model.draft_base_s + model.draft_level_s
    lines.append(f"a step with one level and N = 1 costs {1000 * one:.1f} ms, "
                 f"{one / model.verify_s[0]:.2f}x a plain decoding step")
    if model.batch:
        per_row = [t // r for r, (ts, _) in list(model.batch.items())[:1] for t in ts]
        lines += ["", "batch steps (ms per forward; in brackets per row) | " + " | ".join(
            f"{n} token{'s' if n > 1 else ''} per row" for n in per_row), "---:|" + "---:|" * len(per_row)]
        for rows, (tokens, seconds) in model.batch.items():
            lines.append(f"{rows} rows | " + " | ".join(f"{1000 * t:.1f} ({1000 * t / rows:.1f})" for t in seconds))
        lines.append(f"(1 row: {1000 * model.verify_s[0]:.1f} ms for 1 token; a batch of plain decoding rows costs "
                     f"{1000 * list(model.batch.values())[-1][1][0] / list(model.batch)[-1]:.1f} ms per row at "
                     f"{list(model.batch)[-1]} rows)")
    return "\n".join(lines)


def write_plot(path: Path, model, title: str) -> Path:
    from dyndepth.bench.plots import _pyplot

    plt = _pyplot()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    ms = [1000 * t for t in model.verify_s]
    ax1.plot(model.sizes, ms, marker="o", label="verify, 1 row")
    for rows, (tokens, seconds) in model.batch.items():
        ax1.plot(tokens, [1000 * t for t in seconds], marker=".", linestyle="--", label=f"verify, {rows} rows")
    if model.batch:
        ax1.set_xscale("log", base=2)
        ax1.legend(fontsize=7)
    ax1.set_xlabel("tokens verified per forward (all rows, roots included)")
    ax1.set_ylabel("ms per verification forward")
    ax1.set_title("t_verify(N)")
    ax1.grid(alpha=0.3)
    levels = list(range(0, 12))
    ax2.plot(levels, [1000 * (model.draft_base_s + d * model.draft_level_s) for d in levels], marker="o",
             color="tab:orange")
    ax2.set_xlabel("draft levels per step")
    ax2.set_ylabel("ms of drafting per step")
    ax2.set_title("t_draft(levels)")
    ax2.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
