"""Paired A/B in one process: the native half-weight kernel (kernels/half_gemm.c, forwards of up to 32 rows) against
inductor's few-row kernel (up to 4 rows, the fast path before it), on a bf16 model's default CPU fast path.

    .venv/bin/python scripts/half_kernel_ab.py [MODEL] [--methods plain,ddd,hybrid] [--n 2] [--tokens 128]

``--n`` HumanEval + ``--n`` MT-bench first turns (docs/results/vllm-bench/questions.jsonl), batch 1, greedy, 2
threads. Each method decodes each question under both kernels, the order alternating per question. Prints tok/s per
(method, kernel), the ratio, whether the outputs are identical, and 1/12/24-row tree forward times.
"""
import argparse
import json
import time

import torch

from dyndepth.decoder import SpeculativeDecoder
from dyndepth.kernels import half_gemm

ap = argparse.ArgumentParser()
ap.add_argument("model", nargs="?", default="qwen2.5-coder-1.5b-instruct")
ap.add_argument("--methods", default="plain,ddd,hybrid")
ap.add_argument("--n", type=int, default=2)
ap.add_argument("--tokens", type=int, default=128)
args = ap.parse_args()
torch.set_num_threads(2)
native_available = half_gemm.available


def use(kernel: str) -> None:
    half_gemm.available = native_available if kernel == "native" else (lambda: False)


qs = [json.loads(line) for line in open("docs/results/vllm-bench/questions.jsonl")]
qs = [q for q in qs if q["category"] == "humaneval"][:args.n] + [q for q in qs if q["category"] == "mt_bench"][:args.n]
base = SpeculativeDecoder.from_pretrained(args.model, dtype="bfloat16", policy="ddd", drafter="head")
decoders = {}
for m in args.methods.split(","):
    kw = {"policy": "plain"} if m == "plain" else {"policy": "ddd", "drafter": "head" if m == "ddd" else m}
    decoders[m] = SpeculativeDecoder(base.target, base.head, **kw)
first = next(iter(decoders.values()))
print(first.target.fast_path, "| native kernel:", native_available() or half_gemm.why_not(), flush=True)
ids = [first.chat_ids(q["turns"][0]) for q in qs]
kernels = ("native", "inductor")
for k in kernels:  # warm-up: inductor compiles, the kernel builds
    use(k)
    for d in decoders.values():
        d.generate(ids[0], max_new_tokens=16, temperature=0.0)
res = {(m, k): {"s": 0.0, "tok": 0, "out": []} for m in decoders for k in kernels}
for i, p in enumerate(ids):
    for k in (kernels if i % 2 == 0 else kernels[::-1]):
        use(k)
        for m, d in decoders.items():
            t = time.perf_counter()
            o = d.generate(p, max_new_tokens=args.tokens, temperature=0.0)
            dt = time.perf_counter() - t
            r = res[(m, k)]
            r["s"] += dt
            r["tok"] += len(o.token_ids)
            r["out"].append(o.token_ids)
            print(i, k, m, f"{len(o.token_ids)} tokens in {dt:.2f} s: {len(o.token_ids) / dt:.2f} tok/s", flush=True)
target = first.target
ctx = torch.randint(100, 1000, (1, 200))
with torch.inference_mode():
    cache = target.model(ctx, use_cache=True).past_key_values  # a 200-token context
    for rows in (1, 4, 8, 12, 24):  # a forward of `rows` new tokens after it, per kernel
        x = torch.randint(100, 1000, (1, rows))
        for k in kernels:
            use(k)
            times = []
            for _ in range(4):
                t = time.perf_counter()
                target.model(x, past_key_values=cache, use_cache=True)
                times.append(time.perf_counter() - t)
                cache.crop(-rows)  # back to the 200-token context
            print(f"forward of {rows} rows after 200: {k} {1000 * min(times[1:]):.1f} ms", flush=True)
use("native")
print("model", args.model, "| bf16 checkpoint, float32 compute | 2 threads | greedy | batch 1 |", args.tokens, "tokens")
for m in decoders:
    a, b = res[(m, "native")], res[(m, "inductor")]
    ra, rb = a["tok"] / a["s"], b["tok"] / b["s"]
    same = sum(x == y for x, y in zip(a["out"], b["out"]))
    print(f"{m}: native {ra:.2f} tok/s, inductor {rb:.2f} tok/s, native/inductor {ra / rb:.2f}x, "
          f"identical {same}/{len(ids)}")
