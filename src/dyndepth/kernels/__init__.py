"""Native CPU kernels the fast path (fastpath.py) calls where no library has one: ``half_gemm``, a float32 matmul
that reads bf16/fp16 weights (built on first use with the system C compiler)."""
