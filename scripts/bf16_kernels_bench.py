"""Two PyTorch CPU kernels in bf16 against what dyndepth runs instead (docs/FASTPATH.md section 6):

    python scripts/bf16_kernels_bench.py [--threads 2]

- linear: ``F.linear`` on a plain bf16 weight (oneDNN re-lays it out at every call) against
  ``torch.ops.mkldnn._linear_pointwise`` on a weight reordered once (what ``fastpath`` runs where the CPU multiplies
  bf16 natively), for Qwen2.5-1.5B's and SmolLM2's shapes at 1-24 rows, with the largest output difference;
- attention: one bf16 query through ``scaled_dot_product_attention`` against the float32 route of ``ragged.sdpa``.

Median of 5 runs of ``--calls`` calls each, microseconds per call. Meaningful only on a CPU with AVX512-BF16 or AMX
(elsewhere oneDNN may refuse bf16, and the fast path upcasts to float32 instead).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from dyndepth.ragged import sdpa

LINEARS = {"Qwen gate/up": (8960, 1536), "Qwen down": (1536, 8960), "Qwen lm_head": (151936, 1536),
           "SmolLM2 lm_head": (49152, 576)}


def timed(fn, calls: int) -> float:
    fn()
    runs = []
    for _ in range(5):
        t = time.perf_counter()
        for _ in range(calls):
            fn()
        runs.append((time.perf_counter() - t) / calls * 1e6)
    return statistics.median(runs)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--calls", type=int, default=20)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {args.threads} threads, avx512_bf16 {torch.cpu._is_avx512_bf16_supported()}, "
          f"amx {torch.cpu._is_amx_tile_supported()}")
    print("| weight (N x K) | rows | F.linear bf16 us | prepacked bf16 us | ratio | max diff |")
    print("|---|---:|---:|---:|---:|---:|")
    with torch.inference_mode():
        for name, (n, k) in LINEARS.items():
            w = torch.randn(n, k).to(torch.bfloat16) * 0.05
            packed = torch.ops.mkldnn._reorder_linear_weight(w, None)
            for rows in ((1, 8) if "lm_head" in name else (1, 4, 8, 24)):
                x = torch.randn(rows, k).to(torch.bfloat16)
                plain = timed(lambda: F.linear(x, w), args.calls)
                fast = timed(lambda: torch.ops.mkldnn._linear_pointwise(x, packed, None, "none", [], ""), args.calls)
                diff = (F.linear(x, w).float() - torch.ops.mkldnn._linear_pointwise(
                    x, packed, None, "none", [], "").float()).abs().max().item()
                print(f"| {name} {n} x {k} | {rows} | {plain:,.0f} | {fast:,.0f} | {plain / fast:.2f}x | {diff:g} |")
        print("\n| attention, one bf16 query (12 heads, 2 KV heads, d 128) | keys | SDPA bf16 us | ragged.sdpa us |")
        print("|---|---:|---:|---:|")
        for keys in (250, 1000):
            q = torch.randn(1, 12, 1, 128).to(torch.bfloat16)
            kv = [torch.randn(1, 2, keys, 128).to(torch.bfloat16) for _ in range(2)]
            plain = timed(lambda: F.scaled_dot_product_attention(q, *kv, enable_gqa=True), args.calls * 10)
            fast = timed(lambda: sdpa(q, *kv, None, None, True), args.calls * 10)
            print(f"| Qwen2.5-1.5B's shape | {keys} | {plain:,.0f} | {fast:,.0f} |")


if __name__ == "__main__":
    main()
