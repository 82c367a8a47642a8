"""Offline throughput at several batch sizes: ``dyndepth bench --batch-size 1,2,4,8,16``.

Every method answers the same first-turn prompts (the questions' first turns, with the chat template) at each
batch size B, and the run reports output tokens per second over the whole set (all new tokens / wall time), as an
offline job over many prompts sees it:

- dyndepth's methods (``plain``, ``ddd``, ``auto``, ...) decode the prompts with ``generate(prompts,
  batch_size=B)``: continuous batching, B rows at a time, a new prompt joining as soon as a row finishes;
- ``vanilla`` is what a user would write with transformers: ``model.generate`` on static batches of B prompts, left
  padded, greedy (a batch runs until its longest answer is done).

Batch sizes run one after another, and at every batch size the methods run in a rotated order, so a drift of a
shared machine's load spreads over all methods. Per method and batch size: tok/s, the ratio to batched plain
decoding (speculation off) and to vanilla at the same B, tau (tokens per row-step) and how many answers equal
the method's own at B = 1 and vanilla's at B = 1 (greedy: bf16 near-ties may flip in a different batch shape).
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from dyndepth.bench.base import GenParams, MethodSkipped
from dyndepth.bench.prompts import chat_ids


@dataclass
class BatchResult:
    method: str
    batch_size: int
    wall_s: float
    new_tokens: int
    steps: int  # row-steps (sum over rows of their steps; vanilla: target forwards x rows)
    outputs: list  # token ids per prompt

    @property
    def tokens_per_s(self) -> float:
        return self.new_tokens / self.wall_s if self.wall_s > 0 else 0.0


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def run_throughput(cfg, batch_sizes: list[int], only: dict[str, list[int]] | None = None) -> dict:
    """cfg: a runner.RunConfig (model, methods, params, questions, ...); only: method -> the batch sizes it is
    limited to (``--only``). Writes throughput.json / .md / .png."""
    only = only or {}
    import torch

    from dyndepth.bench.context import BenchContext
    from dyndepth.bench.machine import machine_info
    from dyndepth.bench.questions import load_questions
    from dyndepth.bench.runner import build_methods, close_methods

    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))
    bench_path, questions = load_questions(cfg.bench, cfg.questions, cfg.select, 1)
    ctx = BenchContext(cfg.model, dtype=cfg.dtype, device=cfg.device, head=cfg.head, seed=cfg.seed,
                       fast_path=cfg.fast_path, vllm_python=cfg.vllm_python, max_batch=max(batch_sizes))
    started = time.perf_counter()
    target = ctx.target()
    methods, skipped = build_methods(ctx, cfg.methods)
    for name in list(methods):
        if not hasattr(methods[name], "generate_batch"):
            skipped[name] = "no batched mode"
            del methods[name]
    if not methods:
        from dyndepth.errors import DyndepthError

        raise DyndepthError("no method left to run: " + "; ".join(f"{k}: {v}" for k, v in skipped.items()))
    prompts = [chat_ids(target.tokenizer, [{"role": "user", "content": q.turns[0]}]) for q in questions]
    params = cfg.params
    warm = GenParams(min(params.max_new_tokens, cfg.warmup_tokens), params.temperature, params.top_p, params.top_k)
    for name, method in methods.items():  # one warm-up batch per method, at its largest batch size
        t0 = time.perf_counter()
        top = max(only.get(name, batch_sizes))
        method.generate_batch(prompts[:top], warm, cfg.seed, top)
        log(f"warm-up {name}: {time.perf_counter() - t0:.1f} s")

    from tqdm import tqdm

    results: list[BatchResult] = []
    names = list(methods)
    cells = [(b, name) for i, b in enumerate(batch_sizes)
             for name in names[i % len(names):] + names[:i % len(names)] if b in only.get(name, batch_sizes)]
    bar = tqdm(total=len(cells), unit="cell", file=sys.stderr, desc="bench", dynamic_ncols=True)
    for b, name in cells:  # a cell decodes every prompt: minutes each for a 1.5B model on a CPU
        bar.set_postfix_str(f"B={b} {name}, {len(prompts)} prompts")
        try:
            r = methods[name].generate_batch(prompts, params, cfg.seed, b)
        except MethodSkipped as exc:
            skipped[f"{name}@{b}"] = str(exc)
            bar.update()
            continue
        results.append(r)
        bar.write(f"B={b:<3} {name:<12} {r.tokens_per_s:8.2f} tok/s  ({r.new_tokens} tokens in {r.wall_s:.1f} s)",
                  file=sys.stderr)
        bar.update()
    bar.close()
    close_methods(methods)
    info = machine_info(cfg.device)
    run = {"model": cfg.model, "model_id": ctx.model_id, "bench": cfg.bench, "bench_file": str(bench_path),
           "questions": len(questions), "question_ids": [q.question_id for q in questions], "dtype": cfg.dtype,
           "device": cfg.device, "threads": cfg.threads, "params": asdict(params), "batch_sizes": batch_sizes, "only": only,
           "forward": target.fast_path,
           "machine": info, "methods": {n: m.settings() for n, m in methods.items()}, "skipped": skipped,
           "wall_s": round(time.perf_counter() - started, 1)}
    return write_throughput(cfg.out, results, run, plots=cfg.plots)


def summarise(results: list[BatchResult]) -> list[dict]:
    """One row per (method, batch size) with the ratios and agreement counts."""
    by = {(r.method, r.batch_size): r for r in results}
    rows = []
    for r in results:
        plain = by.get(("plain", r.batch_size))
        vanilla = by.get(("vanilla", r.batch_size))
        own1, van1 = by.get((r.method, 1)), by.get(("vanilla", 1))
        ddd1 = by.get(("ddd", 1))
        rows.append({
            "method": r.method, "batch_size": r.batch_size, "tokens_per_s": round(r.tokens_per_s, 3),
            "new_tokens": r.new_tokens, "wall_s": round(r.wall_s, 2),
            "tau": round(r.new_tokens / r.steps, 3) if r.steps else None,
            "vs_plain": round(r.tokens_per_s / plain.tokens_per_s, 3) if plain else None,
            "vs_vanilla": round(r.tokens_per_s / vanilla.tokens_per_s, 3) if vanilla else None,
            "vs_ddd_batch1": round(r.tokens_per_s / ddd1.tokens_per_s, 3) if ddd1 else None,
            "same_as_own_batch1": _same(r, own1), "same_as_vanilla_batch1": _same(r, van1),
        })
    return rows


def _same(r: BatchResult, ref: BatchResult | None) -> str | None:
    if ref is None:
        return None
    return f"{sum(a == b for a, b in zip(r.outputs, ref.outputs))}/{len(ref.outputs)}"


def markdown(rows: list[dict], run: dict) -> str:
    m = run["machine"]
    head = (f"Offline throughput: {run['model_id']}, {run['dtype']} ({run.get('forward', 'eager')}), "
            f"{run['threads']} threads, {m.get('cpu', '?')}, "
            f"{run['questions']} prompts ({run['bench']} first turns), {run['params']['max_new_tokens']} new tokens, "
            f"{'greedy' if run['params']['temperature'] == 0 else 'sampled'}; tok/s = all new tokens / wall time.")
    lines = [head, "", "| method | B | tok/s | vs plain | vs vanilla | vs ddd B=1 | tau | = own B=1 | = vanilla B=1 |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in sorted(rows, key=lambda r: (r["batch_size"], r["method"])):
        lines.append(f"| {r['method']} | {r['batch_size']} | {r['tokens_per_s']:.2f} | {_x(r['vs_plain'])} | "
                     f"{_x(r['vs_vanilla'])} | {_x(r['vs_ddd_batch1'])} | {r['tau'] or '–'} | "
                     f"{r['same_as_own_batch1'] or '–'} | {r['same_as_vanilla_batch1'] or '–'} |")
    return "\n".join(lines) + "\n"


def _x(v) -> str:
    return "–" if v is None else f"{v:.2f}x"


def write_throughput(out: Path, results: list[BatchResult], run: dict, plots: bool = True) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    rows = summarise(results)
    text = markdown(rows, run)
    (out / "throughput.json").write_text(json.dumps({"run": run, "rows": rows}, indent=1))
    (out / "throughput.md").write_text(text)
    with (out / "throughput-answers.jsonl").open("w") as f:
        for r in results:
            f.write(json.dumps({"method": r.method, "batch_size": r.batch_size, "outputs": r.outputs}) + "\n")
    if plots:
        plot_throughput(rows, out / "throughput.png", run)
    return {"rows": rows, "run": run, "markdown": text}


def plot_throughput(rows: list[dict], path: Path, run: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for method in sorted({r["method"] for r in rows}):
        pts = sorted((r["batch_size"], r["tokens_per_s"]) for r in rows if r["method"] == method)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=method)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("batch size (prompts decoded together)")
    ax.set_ylabel("output tokens / s")
    ax.set_title(f"{run['model_id']}, {run['dtype']}, {run['threads']} threads", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
