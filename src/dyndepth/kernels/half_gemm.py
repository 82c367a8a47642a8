"""The half-weight matmul kernel (half_gemm.c), built once per machine with the system C compiler and called
through ctypes: no torch headers, no build-time dependency, about a second to compile.

    half_gemm(x, w) -> x @ w.T     x [M, K] float32, w [N, K] bfloat16/float16, result [M, N] float32

The shared object is cached under ``$DYNDEPTH_HOME/kernels/`` (default ~/.cache/dyndepth), named by a hash of the
source and the flags, so an edited kernel is rebuilt and a second process reuses the first one's build.
``available()`` is False (and says why in ``why_not()``) on a CPU without AVX2/FMA, without a C compiler, or where
the build fails; the caller then reads the float32 weights.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch

SOURCE = Path(__file__).with_name("half_gemm.c")
FLAGS = ["-O3", "-mavx2", "-mfma", "-mf16c", "-ffp-contract=off", "-fopenmp", "-shared", "-fPIC"]
_state: dict = {"fn": None, "why": None}


def _cache_dir() -> Path:
    return Path(os.environ.get("DYNDEPTH_HOME") or "~/.cache/dyndepth").expanduser() / "kernels"


def _build() -> ctypes.CDLL:
    """Compile (or reuse) the shared object -> the loaded library. Raises RuntimeError with the reason."""
    if torch.backends.cpu.get_cpu_capability() not in ("AVX2", "AVX512"):
        raise RuntimeError(f"the CPU has no AVX2 ({torch.backends.cpu.get_cpu_capability()})")
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        raise RuntimeError("no C compiler (cc/gcc) on PATH")
    text = SOURCE.read_bytes()
    key = hashlib.sha256(text + " ".join(FLAGS).encode()).hexdigest()[:16]
    out = _cache_dir() / f"half_gemm-{key}.so"
    if not out.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=out.parent) as tmp:  # build aside, then rename: concurrent builds race safely
            part = Path(tmp) / out.name
            done = subprocess.run([cc, *FLAGS, str(SOURCE), "-o", str(part)], capture_output=True, text=True)
            if done.returncode != 0:
                raise RuntimeError(f"{Path(cc).name} failed: {(done.stderr.strip().splitlines() or [''])[0][:160]}")
            os.replace(part, out)
    lib = ctypes.CDLL(str(out))
    lib.half_gemm.argtypes = [ctypes.c_void_p] * 3 + [ctypes.c_long] * 3 + [ctypes.c_int] * 2
    lib.half_gemm.restype = None
    return lib


def available() -> bool:
    """Whether the kernel runs here (built on the first call)."""
    if _state["fn"] is None and _state["why"] is None:
        try:
            _state["fn"] = _build().half_gemm
        except (RuntimeError, OSError) as exc:
            _state["why"] = str(exc) or type(exc).__name__
    return _state["fn"] is not None


def why_not() -> str | None:
    return None if available() else _state["why"]


def half_gemm(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """x [M, K] float32, w [N, K] bf16/fp16 -> x @ w.T [M, N] float32 (call ``available()`` first)."""
    if x.dtype != torch.float32 or w.dtype not in (torch.bfloat16, torch.float16) or x.shape[-1] != w.shape[-1]:
        raise ValueError(f"half_gemm: x float32 [M, K] and w bf16/fp16 [N, K], got {x.dtype} {tuple(x.shape)}, "
                         f"{w.dtype} {tuple(w.shape)}")
    x, w = x.contiguous(), w.contiguous()
    (m, k), n = x.shape, w.shape[0]
    y = torch.empty(m, n, dtype=torch.float32)  # [M, N]
    _state["fn"](x.data_ptr(), w.data_ptr(), y.data_ptr(), m, n, k, int(w.dtype == torch.float16),
                 torch.get_num_threads())
    return y
