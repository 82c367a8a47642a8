"""One linear at a time: MKL's float32 GEMM, inductor's half read and the native ``half_gemm`` kernel, by row count.

    .venv/bin/python scripts/half_gemm_bench.py [--threads 2]

Random bf16 weights of Qwen2.5-1.5B's shapes (gate/up 8960 x 1536, down 1536 x 8960, q/o 1536 x 1536); prints the
best of 3 x 20 calls in ms per (shape, rows) and checks that each row's native result equals the one-row call's.
"""
import argparse
import time

import torch

from dyndepth import fastpath
from dyndepth.kernels import half_gemm

ap = argparse.ArgumentParser()
ap.add_argument("--threads", type=int, default=2)
args = ap.parse_args()
torch.set_num_threads(args.threads)
assert half_gemm.available(), half_gemm.why_not()
inductor = torch.compile(fastpath._half_gemv_eager, dynamic=True)


def best_ms(fn, reps=20):
    fn()
    fn()
    best = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        for _ in range(reps):
            fn()
        best = min(best, (time.perf_counter() - t) / reps * 1000)
    return best


for n, k in ((8960, 1536), (1536, 8960), (1536, 1536)):
    w = (torch.randn(n, k) * 0.02).bfloat16()  # [N, K]
    w32 = w.float()
    for m in (1, 2, 4, 8, 16, 24, 32, 48):
        x = torch.randn(m, k)  # [M, K]
        r = {"mkl_fp32": best_ms(lambda: x @ w32.T), "inductor": best_ms(lambda: inductor(x, w)),
             "native": best_ms(lambda: half_gemm.half_gemm(x, w))}
        y = half_gemm.half_gemm(x, w)
        alone = all(torch.equal(half_gemm.half_gemm(x[i:i + 1], w), y[i:i + 1]) for i in range(m))
        print(f"{n} x {k}, {m:2d} rows: " + ", ".join(f"{key} {v:.2f} ms" for key, v in r.items())
              + f" | rows computed alone identical: {alone}", flush=True)
