"""Runs a benchmark: build the methods on one shared target, warm up, answer every question with every
method, write answers, summary and plots.

Methods are interleaved per question (and their order rotates from one question to the next), so slow drifts
of a shared machine's load spread over all methods instead of favouring whichever ran first.
"""

from __future__ import annotations

import re
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from dyndepth.bench.base import GenParams, MethodSkipped
from dyndepth.bench.context import BenchContext
from dyndepth.bench.methods import MethodPlan
from dyndepth.bench.prompts import answer_text, chat_ids
from dyndepth.bench.questions import Question, load_questions
from dyndepth.bench.records import answer_record, append_jsonl


@dataclass
class RunConfig:
    model: str
    bench: str
    methods: list[MethodPlan]
    out: Path
    head: str | None = None
    params: GenParams = field(default_factory=GenParams)
    questions: int | None = None
    select: str = "balanced"
    turns: int | None = None  # answer only each question's first N turns (None = all)
    dtype: str = "bfloat16"
    device: str = "cpu"
    threads: int | None = 2
    warmup: int = 1
    warmup_tokens: int = 32
    seed: int = 0
    plots: bool = True
    fast_path: bool | str = True  # dyndepth.fastpath on the shared model (vanilla included); "pack" also packs
    vllm_python: str | None = None  # vLLM's own interpreter for the vllm methods


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def slug(name: str) -> str:
    """A file-name-safe form of a method's display name."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "method"


def build_methods(ctx: BenchContext, plans: list[MethodPlan]) -> tuple[dict, dict]:
    """-> ({name: BenchMethod}, {name: reason skipped})."""
    built, skipped = {}, {}
    for plan in plans:
        try:
            built[plan.name] = plan.spec.factory(ctx, plan.name, dict(plan.settings))
        except MethodSkipped as exc:
            skipped[plan.name] = str(exc)
            log(f"skipping {plan.name}: {exc}")
    return built, skipped


def close_methods(methods: dict) -> None:
    """Ends what a method runs outside this process (the vLLM workers)."""
    for method in methods.values():
        if hasattr(method, "close"):
            method.close()


def answer_question(method, tokenizer, question: Question, params: GenParams, seed: int):
    """All turns of one question; each later turn carries the method's own earlier answers."""
    messages: list[dict] = []
    results = []
    for t, turn in enumerate(question.turns):
        messages.append({"role": "user", "content": turn})
        result = method.generate(chat_ids(tokenizer, messages), params, seed + t)
        result.text = answer_text(tokenizer, result.token_ids)
        messages.append({"role": "assistant", "content": result.text})
        results.append(result)
    return results


def run_benchmark(cfg: RunConfig) -> dict:
    import torch
    from tqdm import tqdm

    from dyndepth.bench.machine import machine_info
    from dyndepth.bench.report import write_reports

    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))
    bench_path, questions = load_questions(cfg.bench, cfg.questions, cfg.select, cfg.turns)
    ctx = BenchContext(cfg.model, dtype=cfg.dtype, device=cfg.device, head=cfg.head, seed=cfg.seed,
                       fast_path=cfg.fast_path, vllm_python=cfg.vllm_python)
    started = time.perf_counter()
    target = ctx.target()
    log(f"loaded {cfg.model} ({cfg.dtype}, {cfg.device}) in {time.perf_counter() - started:.1f} s")
    methods, skipped = build_methods(ctx, cfg.methods)
    if not methods:
        from dyndepth.errors import DyndepthError

        raise DyndepthError("no method left to run: " + "; ".join(f"{k}: {v}" for k, v in skipped.items()))
    tok = target.tokenizer
    info = machine_info(cfg.device)

    answers_dir = cfg.out / "answers"
    answers_dir.mkdir(parents=True, exist_ok=True)
    files = {name: answers_dir / f"{slug(name)}.jsonl" for name in methods}
    for path in files.values():
        path.write_text("")

    warm = GenParams(min(cfg.params.max_new_tokens, cfg.warmup_tokens), cfg.params.temperature,
                     cfg.params.top_p, cfg.params.top_k)
    warm_q = Question(questions[0].question_id, questions[0].category, questions[0].turns[:1])
    for name, method in methods.items():
        for _ in range(cfg.warmup):
            t0 = time.perf_counter()
            answer_question(method, tok, warm_q, warm, cfg.seed)
            log(f"warm-up {name}: {time.perf_counter() - t0:.1f} s")

    names = list(methods)
    answers: dict[str, list[dict]] = {n: [] for n in names}
    total = sum(len(q.turns) for q in questions) * len(names)
    bar = tqdm(total=total, unit="turn", file=sys.stderr, desc="bench", dynamic_ncols=True)
    for qi, q in enumerate(questions):
        order = names[qi % len(names):] + names[:qi % len(names)]
        for name in order:
            bar.set_postfix_str(f"q{q.question_id} {name}")
            turns = answer_question(methods[name], tok, q, cfg.params, cfg.seed + 1000 * qi)
            rec = answer_record(q, ctx.model_id, name, turns)
            answers[name].append(rec)
            append_jsonl(files[name], rec)
            bar.update(len(turns))
    bar.close()
    close_methods(methods)
    try:
        import os

        info["load_avg_end"] = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        pass

    run = {
        "model": cfg.model, "model_id": ctx.model_id, "head": ctx.head_label() if any(
            m.family == "tree" and m.settings().get("policy") != "plain" for m in methods.values()) else "not used",
        "bench": cfg.bench, "bench_file": str(bench_path), "questions": len(questions),
        "question_ids": [q.question_id for q in questions], "select": cfg.select,
        "turns": sum(len(q.turns) for q in questions), "max_turns": cfg.turns, "dtype": cfg.dtype, "device": cfg.device,
        "params": asdict(cfg.params), "warmup": cfg.warmup, "warmup_tokens": warm.max_new_tokens, "seed": cfg.seed,
        "wall_s": round(time.perf_counter() - started, 1), "machine": info, "forward": target.fast_path,
        "methods": {n: m.settings() for n, m in methods.items()},
        "method_descriptions": {p.name: p.spec.description for p in cfg.methods},
        "skipped": skipped, "answers": {n: str(p) for n, p in files.items()},
        "policy_reports": {n: r for n, m in methods.items() if (r := getattr(m, "report", lambda: None)())},
    }
    return write_reports(cfg.out, answers, run, plots=cfg.plots)
