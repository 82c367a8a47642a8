"""Replay every depth policy on recorded pools (issue 16): the rate surface without timing noise, and its bounds.

    python scripts/policy_replay.py qwen2.5-coder-1.5b-instruct docs/results/policy-qwen15 [--gpu]

DIR is a scripts/policy_comparison.py output. The pools are recorded (dyndepth.bench.replay.record: the shipped
head, bf16, every output position, 11 levels, beam 4 and 10) along the vanilla answers of DIR/sweep-fixed (the
16 tuning questions) and DIR/report (the 40 report questions). Steps are priced by a linear model

    t_verify(N) = v0 + v1 * N,     t_draft(levels) = d0 + d1 * levels

fitted by least squares to the measured per-answer draft and verify seconds of every tree method in DIR's two
tuning sweeps (or, with --gpu, the H200 model of scripts/project_gpu.py). On each set it replays: the plain loop;
every fixed tree (levels 1..11 x N 2..n_max, per beam); a DDD grid and DDD's defaults; ``auto`` (its cost model
is the price model, so it decides with the true costs); and the hindsight bounds of dyndepth.bench.hindsight.
The fixed and DDD settings reported on the report set are the ones that were best on the tuning set. A check
table puts the replayed rate of each benchmarked setting next to its measured decode rate.
Writes DIR/replay[-gpu]/replay.md and replay.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
MAX_DEPTH = 11
BEAMS = (4, 10)
DDD_GRID = [(t, c, n) for t in (-0.3, -0.6, -1.0, -1.5, -2.0) for c in ((2, 4, 6), (3, 5, 7), (5, 7, 9))
            for n in (8, 12, 16, 24)]


def answers_of(folder: Path) -> dict[str, list[dict]]:
    """method name -> the answer records of a bench output folder."""
    out: dict[str, list[dict]] = {}
    for f in sorted((folder / "answers").glob("*.jsonl")):
        for line in f.read_text().splitlines():
            if line.strip():
                r = json.loads(line)
                out.setdefault(r["method"], []).append(r)
    return out


def fit_price(folders: list[Path]):
    """The linear step-cost model fitted to the measured answers of the tree methods in ``folders``."""
    import torch

    from dyndepth.policies.costs import CostModel

    rows_v, y_v, rows_d, y_d = [], [], [], []
    for folder in folders:
        for method, recs in answers_of(folder).items():
            for r in recs:
                c = r["choices"][0]
                if "tree_sizes" not in c:
                    continue
                sizes, depths = sum(c["tree_sizes"], []), sum(c["depths"], [])
                rows_v.append([len(sizes), sum(sizes)])
                y_v.append(sum(c["verify_time"]))
                rows_d.append([sum(1 for d in depths if d), sum(depths)])
                y_d.append(sum(c["draft_time"]))
    (v0, v1), r2_v = _lstsq(torch.tensor(rows_v, dtype=torch.float64), torch.tensor(y_v, dtype=torch.float64))
    (d0, d1), r2_d = _lstsq(torch.tensor(rows_d, dtype=torch.float64), torch.tensor(y_d, dtype=torch.float64))
    sizes = [1, 2, 128]
    meta = {"source": "least squares over the measured answers of " + ", ".join(str(f) for f in folders),
            "answers": len(y_v), "r2_verify": round(r2_v, 4), "r2_draft": round(r2_d, 4),
            "verify_ms": [round(1000 * v0, 3), round(1000 * v1, 3)], "draft_ms": [round(1000 * d0, 3),
                                                                                  round(1000 * d1, 3)]}
    return CostModel(sizes, [v0 + v1 * n for n in sizes], d0, d1, meta=meta)


def _lstsq(x, y):
    import torch

    coef = torch.linalg.lstsq(x, y[:, None]).solution[:, 0]
    resid = y - x @ coef
    return coef.tolist(), float(1 - resid.pow(2).sum() / (y - y.mean()).pow(2).sum())


def record_set(decoder, bench_folder: Path, questions_file: Path, cache: Path):
    """{beam: [Recording]} along the vanilla answers of ``bench_folder`` (kept in ``cache``: the pools are big)."""
    import torch

    from dyndepth.bench.prompts import chat_ids
    from dyndepth.bench.questions import read_questions
    from dyndepth.bench.replay import record

    if cache.is_file():
        return torch.load(cache, weights_only=False)
    answers = {r["question_id"]: r["choices"][0]["token_ids"][0] for r in answers_of(bench_folder)["vanilla"]}
    qs = [q for q in read_questions(questions_file) if q.question_id in answers]
    out = {}
    for beam in BEAMS:
        t0 = time.perf_counter()
        out[beam] = [record(decoder, chat_ids(decoder.tokenizer, [{"role": "user", "content": q.turns[0]}]),
                            answers[q.question_id], MAX_DEPTH, beam, q.question_id) for q in qs]
        print(f"# recorded {len(qs)} answers of {bench_folder.name}, beam {beam}: {time.perf_counter() - t0:.0f} s",
              file=sys.stderr, flush=True)
    cache.parent.mkdir(parents=True, exist_ok=True)
    torch.save(out, cache)
    return out


def evaluate(recs: dict, price, n_max: int, ddd_n: int, chosen: dict | None) -> dict:
    """Every replayed row of one question set. chosen: the tuning set's best fixed and DDD settings."""
    from dyndepth.bench.hindsight import fixed_grid, oracle
    from dyndepth.bench.replay import replay
    from dyndepth.policies import CostAwarePolicy, make_policy
    from dyndepth.policies.costs import CostModel

    rows: dict[str, dict] = {}
    rows["plain loop (no draft)"] = replay(make_policy("plain"), recs[BEAMS[0]], price, 1).summary()
    best_fixed = best_ddd = None
    for beam in BEAMS:
        grid = fixed_grid(recs[beam], price, MAX_DEPTH, n_max)
        for (lv, n), res in grid.items():
            s = res.summary()
            if best_fixed is None or s["tok_s"] > best_fixed[1]["tok_s"]:
                best_fixed = ((lv, beam, n), s)
        for t, c, n in DDD_GRID:
            policy = make_policy("ddd", max_depth=MAX_DEPTH, checks=c, threshold=t)
            s = replay(policy, recs[beam], price, n).summary()
            if best_ddd is None or s["tok_s"] > best_ddd[1]["tok_s"]:
                best_ddd = ((t, c, beam, n), s)
        if chosen:
            lv, b, n = chosen["fixed"]
            if b == beam:
                rows[f"fixed D{lv} K{b} N{n} (best on the tuning set)"] = grid[(lv, n)].summary()
            t, c, b, n = chosen["ddd"]
            if b == beam:
                policy = make_policy("ddd", max_depth=MAX_DEPTH, checks=c, threshold=t)
                rows[f"ddd {'/'.join(map(str, c))} {t} K{b} N{n} (best on the tuning set)"] = \
                    replay(policy, recs[beam], price, n).summary()
    (lv, b, n), s = best_fixed
    rows[f"fixed D{lv} K{b} N{n} (best of the grid on this set)"] = s
    (t, c, b, n), s = best_ddd
    rows[f"ddd {'/'.join(map(str, c))} {t} K{b} N{n} (best of the grid on this set)"] = s
    rows[f"ddd defaults (5/7/9, -0.3, K10, N{ddd_n})"] = replay(make_policy("ddd"), recs[10], price, ddd_n).summary()
    for beam in BEAMS:
        policy = CostAwarePolicy(costs=CostModel.from_dict(price.to_dict()), max_depth=MAX_DEPTH)
        rows[f"auto K{beam} (N <= {n_max}, true costs)"] = replay(policy, recs[beam], price, n_max).summary()
    for beam in BEAMS:
        rows[f"hindsight oracle K{beam}: best (levels, N) per step"] = \
            oracle(recs[beam], price, MAX_DEPTH, n_max).summary()
    for beam in BEAMS:
        rows[f"path oracle K{beam}: the accepted path only"] = \
            oracle(recs[beam], price, MAX_DEPTH, n_max, path_only=True).summary()
    return {"rows": rows, "best_fixed": best_fixed[0], "best_ddd": best_ddd[0]}


def check_rows(runs: list[tuple[Path, dict]], price) -> list[dict]:
    """Measured decode rate (tokens after the first / draft + verify seconds) next to the replayed one, for every
    fixed and DDD setting benchmarked in the (bench folder, its recordings) pairs."""
    from dyndepth.bench.replay import replay
    from dyndepth.policies import make_policy

    out = []
    for folder, recs in runs:
        settings = json.loads((folder / "summary.json").read_text())["run"]["methods"]
        for method, answers in answers_of(folder).items():
            cfg = settings.get(method, {})
            if cfg.get("policy") not in ("fixed", "ddd") or cfg.get("top_k") not in recs:
                continue
            kw = {"max_depth": cfg["max_depth"]}
            if cfg["policy"] == "ddd":
                kw.update(checks=tuple(cfg["checks"]), threshold=cfg["threshold"])
            tokens = sum(r["choices"][0]["new_tokens"][0] - 1 for r in answers)
            seconds = sum(r["choices"][0]["draft_time"][0] + r["choices"][0]["verify_time"][0] for r in answers)
            res = replay(make_policy(cfg["policy"], **kw), recs[cfg["top_k"]], price, cfg["total_tokens"]).summary()
            out.append({"method": f"{folder.name}: {method}", "measured_tok_s": round(tokens / seconds, 3),
                        "replayed_tok_s": res["tok_s"],
                        "measured_tau": round(tokens / sum(r["choices"][0]["steps"][0] for r in answers), 3),
                        "replayed_tau": res["tau"]})
    return out


def table(title: str, rows: dict, ref_fixed: str, ref_ddd: str) -> list[str]:
    f, d = rows[ref_fixed]["tok_s"], rows[ref_ddd]["tok_s"]
    lines = [f"### {title}", "", "| policy | replayed tok/s | vs best fixed | vs ddd defaults | tau | mean depth | "
             "mean N |", "|---|---:|---:|---:|---:|---:|---:|"]
    for name, r in rows.items():
        lines.append(f"| {name} | {r['tok_s']:.2f} | {r['tok_s'] / f:.2f}x | {r['tok_s'] / d:.2f}x | {r['tau']:.2f} | "
                     f"{r['mean_depth']:.2f} | {r['mean_n']:.1f} |")
    return lines + [""]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model")
    p.add_argument("folder", type=Path, help="a scripts/policy_comparison.py output folder")
    p.add_argument("--gpu", action="store_true", help="price steps with the H200 model of scripts/project_gpu.py")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--cache", type=Path, default=None, help="where the recorded pools are kept (default: "
                   "$DYNDEPTH_HOME/replay/MODEL)")
    args = p.parse_args()

    import torch

    from dyndepth.decoder import SpeculativeDecoder
    from dyndepth.models import cache_dir

    torch.set_num_threads(args.threads)
    sets = ROOT / "docs" / "results" / "policy-sets"
    tune_dirs = [args.folder / "sweep-fixed", args.folder / "sweep-ddd"]
    if args.gpu:
        from project_gpu import N_MAX, gpu_costs

        price = gpu_costs("qwen" if "qwen" in args.model.lower() else "smollm2")
        n_max, ddd_n = N_MAX, 60
    else:
        price, n_max, ddd_n = fit_price(tune_dirs), 48, 24
    cache = args.cache or cache_dir() / "replay" / args.model
    dec = SpeculativeDecoder.from_pretrained(args.model, dtype="bfloat16", policy="fixed")  # the shipped head
    tune = record_set(dec, tune_dirs[0], sets / "tune-mtbench16.jsonl", cache / "tune.pt")
    report = record_set(dec, args.folder / "report", sets / "report-40.jsonl", cache / "report.pt")
    t0 = time.perf_counter()
    on_tune = evaluate(tune, price, n_max, ddd_n, None)
    on_report = evaluate(report, price, n_max, ddd_n, {"fixed": on_tune["best_fixed"], "ddd": on_tune["best_ddd"]})
    recorded = [(tune_dirs[0], tune), (tune_dirs[1], tune), (args.folder / "report", report)]
    checks = [] if args.gpu else check_rows(recorded, price)
    print(f"# replayed in {time.perf_counter() - t0:.0f} s", file=sys.stderr)

    def ref(rows, kind):
        return next(k for k in rows if k.startswith(kind) and "tuning set" in k) if kind == "fixed" else \
            next(k for k in rows if k.startswith("ddd defaults"))

    tune_fixed = next(k for k in on_tune["rows"] if k.startswith("fixed"))
    lines = [f"# Policy replay: {args.model}, {'H200 price model' if args.gpu else 'CPU price model'}", "",
             f"Pools recorded with the shipped head (bf16, {args.threads} threads) along the vanilla answers; "
             f"price model: {json.dumps(price.meta)}.", ""]
    lines += table("Tuning set (16 MT-bench questions)", on_tune["rows"], tune_fixed, ref(on_tune["rows"], "ddd"))
    lines += table("Report set (40 questions; fixed and DDD settings chosen on the tuning set)", on_report["rows"],
                   ref(on_report["rows"], "fixed"), ref(on_report["rows"], "ddd"))
    if checks:
        lines += ["### Check: replayed vs measured (the benchmarked fixed and DDD settings)", "",
                  "| method | measured decode tok/s | replayed tok/s | ratio | measured tau | replayed tau |",
                  "|---|---:|---:|---:|---:|---:|"]
        lines += [f"| {c['method']} | {c['measured_tok_s']:.2f} | {c['replayed_tok_s']:.2f} | "
                  f"{c['replayed_tok_s'] / c['measured_tok_s']:.3f} | {c['measured_tau']:.2f} | "
                  f"{c['replayed_tau']:.2f} |" for c in checks]
    out = args.folder / ("replay-gpu" if args.gpu else "replay")
    out.mkdir(parents=True, exist_ok=True)
    (out / "replay.md").write_text("\n".join(lines) + "\n")
    (out / "replay.json").write_text(json.dumps({"model": args.model, "price": price.to_dict(), "tune": on_tune,
                                                 "report": on_report, "checks": checks}, indent=1, default=str))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
