"""Paired, alternating, in-process A/B of target forward paths: plain greedy decoding and tree forwards.

    python scripts/fastpath_ab.py smollm2-135m-instruct eager:float32 fast:float32 --n 4 --threads 2

Each variant is ``KIND:DTYPE`` with KIND one of
  eager        Target as today;
  upcast       float32 compute of a bf16/fp16 checkpoint, nothing else (apply_fast_path(upcast=True,
               half_read=False));
  fuse         fused q/k/v and gate/up projections only (no upcast);
  fast         apply_fast_path's defaults (float32 compute where the CPU has no native bf16 matmul, one-row
               linears reading the half weights);
  fastfuse     fast plus fused projections;
  fastpack     fast plus fused projections and oneDNN-prepacked multi-row linears;
  compile      the static-cache engine under torch.compile (``TORCHINDUCTOR_FREEZING=1`` and
               ``TORCHINDUCTOR_CPP_WRAPPER=1`` in the environment select inductor's freezing / cpp wrapper).
The first variant is the baseline. Questions: ``--n`` first turns each of MT-bench and HumanEval (chat
template), 128 new tokens, greedy, batch 1; the variants run one after the other on each question, in an order
that alternates between questions. Then ``--tree-steps`` forwards of 12- and 24-node trees (3-ary, as
scripts/profile_target.py), alternating variants step by step. Prints per variant: tok/s, ms per token, ratio
to the baseline, outputs identical to the baseline's, tree ms per forward, warm-up seconds; and the load.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from profile_target import step  # noqa: E402  (a tree forward committing its root)

from dyndepth.decoder import SpeculativeDecoder  # noqa: E402
from dyndepth.fastpath import apply_fast_path, fast_path_calls  # noqa: E402
from dyndepth.target import Target  # noqa: E402

KINDS = ("eager", "upcast", "fuse", "fast", "fastfuse", "fastpack", "compile")


def build(model: str, spec: str) -> tuple[Target, str]:
    kind, dtype = spec.split(":")
    if kind not in KINDS:
        raise SystemExit(f"unknown variant kind {kind!r}; choose from {KINDS}")
    target = Target.from_pretrained(model, dtype=dtype, fast_path=kind == "compile")  # compile: on the default path
    if kind == "eager":
        return target, "eager"
    if kind == "compile":
        return target.variant(static_cache=True, compile=True), "static cache + torch.compile" + (
            " (freezing)" if os.environ.get("TORCHINDUCTOR_FREEZING") == "1" else "")
    options = {"upcast": dict(upcast=True, half_read=False), "fuse": dict(upcast=False, fuse=True), "fast": {},
               "fastfuse": dict(fuse=True), "fastpack": dict(fuse=True, pack=True)}[kind]
    name = apply_fast_path(target.model, target.dtype, **options)
    return Target(target.model, target.tokenizer), name


def questions(n: int) -> list[str]:
    out = []
    for name in ("mt_bench_question.jsonl", "humaneval_question.jsonl"):
        rows = [json.loads(line) for line in open(f"/work/shared/data/{name}")]
        out += [r["turns"][0] for r in rows[:n]]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("variants", nargs="+")
    ap.add_argument("--n", type=int, default=4, help="questions from each of MT-bench and HumanEval")
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tree-steps", type=int, default=10)
    ap.add_argument("--json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    names = args.variants
    decs, labels, warm = {}, {}, {}
    for spec in names:
        target, label = build(args.model, spec)
        decs[spec], labels[spec] = SpeculativeDecoder(target, None, policy="plain"), label
    prompt = decs[names[0]].chat_ids("Hello, write a haiku.")
    for spec in names:  # warm-up (compiles: every tree bucket too)
        start = time.perf_counter()
        decs[spec].generate(prompt, max_new_tokens=16, temperature=0)
        t = decs[spec].target
        for n in (12, 24):
            t.reset()
            t.prefill(torch.tensor(prompt))
            step(t, n)
        warm[spec] = time.perf_counter() - start
    load0 = os.getloadavg()
    totals = {s: [0, 0.0] for s in names}
    same = {s: 0 for s in names}
    outputs = {}
    for i, q in enumerate(questions(args.n)):
        ids = decs[names[0]].chat_ids(q)
        order = names if i % 2 == 0 else names[::-1]
        outs = {}
        for spec in order:
            start = time.perf_counter()
            out = decs[spec].generate(ids, max_new_tokens=args.max_new_tokens, temperature=0)
            totals[spec][1] += time.perf_counter() - start
            totals[spec][0] += len(out.token_ids)
            outs[spec] = out.token_ids
        for spec in names:
            same[spec] += outs[spec] == outs[names[0]]
        outputs[i] = outs
        print(i, {s: round(t / sec, 2) for s, (t, sec) in totals.items()}, flush=True)
    tree = {s: {12: [], 24: []} for s in names}
    for n in (12, 24):
        ids = torch.tensor(decs[names[0]].chat_ids(questions(1)[0]))
        for spec in names:
            decs[spec].target.reset()
            decs[spec].target.prefill(ids)
        for k in range(args.tree_steps):
            for spec in (names if k % 2 == 0 else names[::-1]):
                tree[spec][n].append(step(decs[spec].target, n) * 1e3)
    base = totals[names[0]][0] / totals[names[0]][1]
    rows = []
    for spec in names:
        tok, sec = totals[spec]
        rate = tok / sec
        t12, t24 = (statistics.median(tree[spec][n]) for n in (12, 24))
        b12, b24 = (statistics.median(tree[names[0]][n]) for n in (12, 24))
        rows.append({"variant": spec, "path": labels[spec], "tok_per_s": round(rate, 3),
                     "ms_per_token": round(1e3 / rate, 2), "ratio_vs_baseline": round(rate / base, 3),
                     "identical_to_baseline": f"{same[spec]}/{len(outputs)}", "tree12_ms": round(t12, 1),
                     "tree12_ratio": round(b12 / t12, 3), "tree24_ms": round(t24, 1),
                     "tree24_ratio": round(b24 / t24, 3), "warmup_s": round(warm[spec], 1),
                     "spy": fast_path_calls(decs[spec].target.model)})
    head = {"model": args.model, "threads": args.threads, "cpu": platform.processor() or platform.machine(),
            "torch": torch.__version__, "capability": torch.backends.cpu.get_cpu_capability(),
            "max_new_tokens": args.max_new_tokens, "questions": len(outputs), "load_before": load0,
            "load_after": os.getloadavg()}
    print(json.dumps(head))
    for r in rows:
        print(json.dumps(r))
    if args.json:
        Path(args.json).write_text(json.dumps({**head, "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
