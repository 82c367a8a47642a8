"""Throughput and time to first token of `dyndepth serve` against the number of concurrent clients.

    python scripts/serve_concurrency.py --model smollm2-135m-instruct --clients 1,4,8,16 --minutes 2 \
        --out docs/results/serve-concurrency-smol [--offline docs/results/batch-smol/throughput.json]

For every server configuration and concurrency it runs ``scripts/load_test.py`` (its own server, every answer
checked against the offline one) and keeps the report; then it plots output tok/s and TTFT p50 against the number
of clients (concurrency.png) and writes concurrency.md. The configurations:

    batch-1      --max-batch-size 1 --policy ddd   one request at a time (the server before the batched engine)
    plain        --policy plain                    batched, speculation off
    ddd          --policy ddd                      batched, DDD trees per row
    auto         --policy auto                     batched, one node budget per step, drafts while it pays

The batched ones run with ``--max-batch-size`` (default 16, so every client of the largest level runs at once).

``--offline THROUGHPUT_JSON`` adds transformers' own batched generate (static, left-padded batches of B prompts)
from a ``dyndepth bench --batch-size`` run of the same model, at B = the number of clients, as the baseline a user
would write. Each stage is skipped when its report exists, so an interrupted run resumes.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

CONFIGS = {
    "batch-1": ["--max-batch-size", "1", "--policy", "ddd"],
    "plain": ["--policy", "plain"],
    "ddd": ["--policy", "ddd"],
    "auto": ["--policy", "auto"],
}
LOAD_TEST = Path(__file__).with_name("load_test.py")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--clients", default="1,4,8,16", help="concurrency levels, comma-separated")
    ap.add_argument("--configs", default=",".join(CONFIGS), help=f"of {', '.join(CONFIGS)}")
    ap.add_argument("--minutes", type=float, default=2.0, help="per point")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--dtype", default="float32", help="float32: every answer is checked against the offline one")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-batch-size", type=int, default=16, help="the batched configurations' --max-batch-size")
    ap.add_argument("--offline", type=Path, default=None, help="a throughput.json of dyndepth bench --batch-size")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    levels = [int(c) for c in args.clients.split(",")]
    configs = [c for c in args.configs.split(",") if c]
    unknown = [c for c in configs if c not in CONFIGS]
    if unknown:
        ap.error(f"unknown configuration(s) {', '.join(unknown)}; choose from {', '.join(CONFIGS)}")
    args.out.mkdir(parents=True, exist_ok=True)
    cache = args.out / "offline-answers.json"
    results: dict[str, dict[int, dict]] = {c: {} for c in configs}
    for n in levels:
        for config in configs:
            path = args.out / f"{config}-c{n}.json"
            if not path.is_file():
                cmd = [sys.executable, str(LOAD_TEST), "--model", args.model, "--dtype", args.dtype, "--threads",
                       str(args.threads), "--clients", str(n), "--minutes", str(args.minutes), "--max-tokens",
                       str(args.max_tokens), "--prompts", str(max(16, n)), "--disconnect-share", "0",
                       "--malformed-share", "0", "--answers-cache", str(cache), "--json", str(path),
                       *CONFIGS[config]]
                if config != "batch-1":
                    cmd += ["--max-batch-size", str(args.max_batch_size)]
                print(f"{config} with {n} clients ...", file=sys.stderr, flush=True)
                subprocess.run(cmd, check=False)
            if path.is_file():
                results[config][n] = json.loads(path.read_text())
    offline = _offline(args.offline, levels) if args.offline else {}
    text = table(results, offline, args)
    (args.out / "concurrency.md").write_text(text)
    print(text)
    plot(results, offline, args.out / "concurrency.png", args)
    return 0


def _offline(path: Path, levels: list[int]) -> dict[int, float]:
    doc = json.loads(path.read_text())
    return {r["batch_size"]: r["tokens_per_s"] for r in doc["rows"] if r["method"] == "vanilla"
            and r["batch_size"] in levels}


def _get(report: dict, *keys):
    for k in keys:
        report = (report or {}).get(k)
    return report


def table(results, offline, args) -> str:
    lines = [f"`dyndepth serve` under load: {args.model}, {args.dtype}, {args.threads} threads, {args.max_tokens} "
             f"tokens per request, {args.minutes} min per point, batched configurations with --max-batch-size "
             f"{args.max_batch_size}, every answer checked against the offline one.", "",
             "| configuration | clients | output tok/s | requests/s | TTFT p50 ms | TTFT p99 ms | TPOT p50 ms | ITL p50 ms "
             "| tau | lost or mismatched |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for config, by_n in results.items():
        for n, r in sorted(by_n.items()):
            v = r.get("vllm_names", {})
            lines.append(f"| {config} | {n} | {v.get('output_throughput', 0):.2f} | {v.get('request_throughput', 0):.3f} | "
                         f"{_get(v, 'ttft_ms', 'p50') or '–'} | {_get(v, 'ttft_ms', 'p99') or '–'} | "
                         f"{_get(v, 'tpot_ms', 'p50') or '–'} | {_get(v, 'itl_ms', 'p50') or '–'} | "
                         f"{_get(r, 'server', 'tau') or '–'} | {sum((r.get('errors_by_kind') or {}).values())} |")
    for n, tps in sorted(offline.items()):
        lines.append(f"| transformers generate, static batch (offline) | {n} | {tps:.2f} | – | – | – | – | – | 1 | – |")
    return "\n".join(lines) + "\n"


def plot(results, offline, path: Path, args) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4.2))
    for config, by_n in results.items():
        pts = sorted(by_n.items())
        if not pts:
            continue
        a.plot([n for n, _ in pts], [r["vllm_names"]["output_throughput"] for _, r in pts], marker="o", label=config)
        b.plot([n for n, _ in pts], [(_get(r, "vllm_names", "ttft_ms", "p50") or 0) / 1000 for _, r in pts],
               marker="o", label=config)
    if offline:
        pts = sorted(offline.items())
        a.plot([n for n, _ in pts], [t for _, t in pts], marker="x", linestyle="--", color="gray",
               label="transformers generate (offline, static batch)")
    a.set_xlabel("concurrent clients")
    a.set_ylabel("output tokens / s (server)")
    b.set_xlabel("concurrent clients")
    b.set_ylabel("time to first token, p50 (s)")
    for ax in (a, b):
        ax.set_xscale("log", base=2)
        ax.grid(alpha=0.3)
    a.legend(fontsize=8)
    fig.suptitle(f"{args.model}, {args.dtype}, {args.threads} threads", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
