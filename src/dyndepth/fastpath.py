"""A faster target forward on CPUs, applied to a loaded Hugging Face model in one call: ``apply_fast_path``.

Four independent pieces, each by module swapping or an in-place cast (no patched modeling code), measured
in docs/FASTPATH.md (scripts/fastpath_ab.py is the paired A/B); the first two are on by default:

- **float32 compute where the CPU has no bfloat16/float16 matmul** (``upcast``). Without AVX512-BF16 or AMX,
  PyTorch's bf16 matmul runs a scalar-ish fallback: a bf16 model's 12- or 24-row tree forward costs 2-4x its
  float32 one, and oneDNN (vLLM's linear path) refuses bf16 there. The weights are upcast once (exact: every
  bf16 value is a float32 value), so the model then computes in float32 and holds twice the memory.
- **fused projections** (``fuse``): q/k/v and gate/up read one concatenated weight in one matmul. The modules
  stay where the modeling code calls them: ``q_proj`` computes all three and keeps the result for ``k_proj``
  and ``v_proj`` (which take their slice when called with the same input tensor, and compute their own rows
  otherwise), so the forward is unchanged and only the number of matmuls drops. The old weights become views
  of the fused one: no extra memory, ``state_dict`` unchanged.
- **few-row matmuls read the half-precision weights** (``half_read``, on with the upcast): a forward of one to
  HALF_READ_ROWS (48) rows (plain decoding, draft trees, small batches) reads the checkpoint's bf16/fp16 weights
  (half the bytes of the float32 copy) through the native kernel ``kernels/half_gemm.c``: each weight block is read
  and converted once (exactly: every half value is a float32 value) and multiplied against every row in float32,
  the same sum in the same order for a row whatever rows share the call. Qwen2.5-1.5B on the AVX2 EPYC against the
  inductor kernel it replaced: plain decoding 1.50x, 24-node-tree ``ddd`` 1.85x, ``hybrid`` 1.89x
  (docs/FASTPATH.md). The half tensors are the checkpoint's own, kept instead of freed (1.5x the float32 model's
  memory). Without AVX2 or a C compiler an inductor kernel reads them for up to INDUCTOR_ROWS (4) rows; where
  inductor cannot compile either, it warns once and reads the float32 weights.
- **prepacked bfloat16 linears where the CPU multiplies bf16 natively** (``pack_half``, on by default there):
  torch's bf16 ``linear`` on a CPU hands the weight to oneDNN in its plain layout and oneDNN re-lays it out at
  every call, so a one- to eight-row matmul costs 1.5-2.7x the same matmul on a weight reordered once (Qwen2.5-1.5B's
  gate/up at one row: 1.67 ms against 0.75 ms on the AVX512-BF16 EPYC, the same bits out). Every bf16 linear
  of the decoder and the lm_head (and a bf16 head's) then runs on a prepacked copy (``torch.ops.mkldnn``, as vLLM's
  CPU backend does), for every row count: Qwen2.5-1.5B's plain decoding 1.63x, a 12-node tree forward 1.92x, outputs
  identical (docs/FASTPATH.md section 6). Costs a second copy of those weights; under torch.compile the plain
  weight is used (inductor packs its own).
- **prepacked oneDNN matmul for multi-row forwards** (``pack``, float32 only): trees and prefill go through
  ``torch.ops.mkldnn._linear_pointwise`` on a weight reordered once; one-row forwards (plain decoding) keep
  MKL's GEMV (the half read takes forwards of up to HALF_READ_ROWS rows first). Costs a second copy of every
  packed weight.

``apply_fast_path`` returns a short name of what ran (e.g. ``"cpu: float32 compute (bfloat16 weights upcast:
no native bfloat16 matmul on this CPU)"``),
or ``"eager (...)"`` with the reason when nothing applies. Apply it before wrapping the model in a Target
(the Target reads the model's dtype) and before binding a draft head.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dyndepth.errors import DyndepthError
from dyndepth.kernels import half_gemm

FUSE_GROUPS = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))


def native_half_matmul(dtype: torch.dtype) -> bool:
    """Whether this CPU has a native matmul for ``dtype`` (bf16: AVX512-BF16 or AMX; fp16: AMX-FP16)."""
    cpu = torch.cpu
    if dtype == torch.bfloat16:
        return bool(cpu._is_avx512_bf16_supported() or cpu._is_amx_tile_supported())
    if dtype == torch.float16:
        return bool(cpu._is_amx_fp16_supported())
    return True


def half_packing(dtype: torch.dtype) -> bool:
    """Whether bf16 linears run on prepacked oneDNN weights here: a bf16 model on a CPU that multiplies bf16
    natively (AVX512-BF16 or AMX), with oneDNN's packing ops in this torch."""
    cpu = torch.cpu
    return bool(dtype == torch.bfloat16 and (cpu._is_avx512_bf16_supported() or cpu._is_amx_tile_supported())
                and mkldnn_packing_available())


def matrix_tiles() -> bool:
    """Whether this CPU multiplies half-precision matrices in tiles (AMX): there a tree's verify cost hardly grows
    with its tokens, where AVX512-BF16's vector instructions pay for every row (docs/BENCHMARKS.md)."""
    return bool(torch.cpu._is_amx_tile_supported())


def mkldnn_packing_available() -> bool:
    ops = getattr(torch.ops, "mkldnn", None)
    return bool(torch.backends.mkldnn.is_available() and hasattr(ops, "_reorder_linear_weight")
                and hasattr(ops, "_linear_pointwise"))


class FusedLinear:
    """One matmul for several sibling projections of the same input: weight [sum(sizes), K].

    ``part(x, i)`` -> rows ``i`` of ``x @ weight.T``; the first call with an input computes all parts, the
    siblings' calls with the same tensor take their slice. Not registered as a submodule (the siblings'
    parameters are views of its weight, so the model's parameters and state_dict are unchanged)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, sizes: list[int], pack: bool,
                 half: torch.Tensor | None = None):
        self.weight, self.bias, self.sizes = weight, bias, sizes
        self.starts = [sum(sizes[:i]) for i in range(len(sizes))]
        self.linear = PackedMatmul(weight, bias, pack, half) if pack or half is not None else None
        self._x: torch.Tensor | None = None
        self._y: torch.Tensor | None = None
        self._taken: set[int] = set()
        self.calls = 0  # fused matmuls run (what the tests' spy reads)

    def part(self, x: torch.Tensor, i: int) -> torch.Tensor:
        if self._x is not x or i in self._taken:  # a new input (or a part asked twice): compute all parts
            self._x, self._taken = x, set()
            self._y = self.linear(x) if self.linear is not None else F.linear(x, self.weight, self.bias)
            self.calls += 1
        y = self._y[..., self.starts[i]:self.starts[i] + self.sizes[i]]  # [..., sizes[i]]
        self._taken.add(i)
        if len(self._taken) == len(self.sizes):  # every sibling served: drop the references
            self._x = self._y = None
        return y


class FusedPart(nn.Linear):
    """A projection served by a FusedLinear: an ``nn.Linear`` whose weight is a view of the fused weight."""

    def __init__(self, fused: FusedLinear, index: int, original: nn.Linear):
        nn.Module.__init__(self)
        self.in_features, self.out_features = original.in_features, original.out_features
        a, b = fused.starts[index], fused.starts[index] + fused.sizes[index]
        self.weight = nn.Parameter(fused.weight[a:b], requires_grad=False)  # a view: no copy
        self.bias = None if fused.bias is None else nn.Parameter(fused.bias[a:b], requires_grad=False)
        self.index = index
        object.__setattr__(self, "fused", fused)  # not a submodule

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fused.part(x, self.index)


def _half_gemv_eager(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """x [M, K] float32, w [N, K] bf16/fp16 -> x @ w.T [M, N] in float32 math (what inductor compiles: a pass over
    w per row, converted in registers, never materialised as float32)."""
    return (x[:, None, :] * w[None].float()).sum(-1)


_half_gemv = {"fn": None, "failed": False}
# Forwards of at most this many rows read the half weights. The native kernel (kernels/half_gemm.c) reads each weight
# block once for all rows: on the AVX2 EPYC it beats MKL's float32 GEMM at every row count measured, 1 to 48 (Qwen's
# gate/up at 8 rows: 1.9 vs 6.9 ms, at 48: 9.0 vs 13.7 ms; docs/results/half-kernel-ab/linears.log); prefill's
# hundreds of rows keep MKL.
HALF_READ_ROWS = 48
# Without the native kernel (no AVX2, or no C compiler for it) inductor's kernel reads the weight once per row, which
# still beats MKL at 2-4 rows (gate/up at 4 rows: 4.3 vs 8.5 ms); from about 8 rows MKL's reuse wins.
INDUCTOR_ROWS = 4


def half_read_rows() -> int:
    """The most rows a matmul reads the half weights for: HALF_READ_ROWS with the native kernel, else
    INDUCTOR_ROWS."""
    return HALF_READ_ROWS if half_gemm.available() else INDUCTOR_ROWS


def half_gemv(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor | None:
    """x [M, K] float32, w [N, K] half -> x @ w.T [M, N]: the native kernel, else the compiled inductor kernel, or
    None where neither runs here (warned once; the caller reads the float32 weights)."""
    if half_gemm.available():
        return half_gemm.half_gemm(x, w)
    if _half_gemv["failed"] or x.shape[0] > INDUCTOR_ROWS:
        return None
    if _half_gemv["fn"] is None:  # dynamic: one kernel for every weight shape (no recompile per layer shape)
        _half_gemv["fn"] = torch.compile(_half_gemv_eager, dynamic=True)
    try:
        return _half_gemv["fn"](x, w)
    except Exception as exc:  # noqa: BLE001 - inductor's failures (no compiler, unsupported CPU) all mean "not here"
        import warnings

        _half_gemv["failed"] = True
        warnings.warn(f"dyndepth fast path: half-weight matmuls off ({type(exc).__name__}: "
                      f"{str(exc).strip().splitlines()[0][:160] if str(exc).strip() else ''}); float32 weights "
                      f"are read instead", RuntimeWarning, stacklevel=2)
        return None


class PackedMatmul:
    """x [..., K] -> x @ W.T + b by row count. Up to half_read_rows() rows: bound by memory, so it reads ``half``
    (the checkpoint's bf16/fp16 weight, float32 math) when kept, else MKL's GEMV/GEMM on W. More rows: a
    oneDNN-prepacked float32 copy of W when ``pack``, else MKL's GEMM on W (one row always skips the packed copy)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, pack: bool = True,
                 half: torch.Tensor | None = None):
        self.weight, self.bias, self.half = weight, bias, half
        self.packed = torch.ops.mkldnn._reorder_linear_weight(weight.detach(), None) if pack else None
        self.every_row = weight.dtype != torch.float32  # a packed bf16 weight beats the plain one at one row too
        self.calls = 0  # multi-row calls that ran on the packed weight
        self.half_calls = 0  # calls that read the half weight

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.numel() // max(1, x.shape[-1])
        if self.half is not None and 0 < rows <= half_read_rows():
            y = half_gemv(x.reshape(rows, -1), self.half)  # [rows, N]
            if y is not None:
                self.half_calls += 1
                y = y.reshape(*x.shape[:-1], y.shape[-1])
                return y if self.bias is None else y + self.bias
        if self.packed is None or (rows == 1 and not self.every_row):  # float32, one row: MKL's GEMV on the plain
            return F.linear(x, self.weight, self.bias)                  # weight beats the packed copy
        if torch.compiler.is_compiling():  # inductor cannot lower an opaque packed weight; it packs its own
            return F.linear(x, self.weight, self.bias)
        self.calls += 1
        return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")


class PackedLinear(nn.Linear):
    """An ``nn.Linear`` (same parameters) whose forwards go through PackedMatmul (packed and/or half-read)."""

    def __init__(self, original: nn.Linear, pack: bool = True, half: torch.Tensor | None = None):
        nn.Module.__init__(self)
        self.in_features, self.out_features = original.in_features, original.out_features
        self.weight, self.bias = original.weight, original.bias
        object.__setattr__(self, "matmul", PackedMatmul(self.weight, self.bias, pack, half))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.matmul(x)


def _plain_linear(module) -> bool:
    return type(module) is nn.Linear


def fuse_projections(decoder: nn.Module, pack: bool = False, half: dict | None = None) -> int:
    """Swap each decoder layer's q/k/v and gate/up ``nn.Linear`` siblings for FusedParts -> groups fused."""
    fused = 0
    for parent in decoder.modules():
        for names in FUSE_GROUPS:
            mods = [getattr(parent, n, None) for n in names]
            if not all(_plain_linear(m) for m in mods):
                continue
            if len({m.in_features for m in mods}) != 1 or len({m.bias is None for m in mods}) != 1:
                continue
            w = torch.cat([m.weight.detach() for m in mods])  # [sum N, K]
            b = None if mods[0].bias is None else torch.cat([m.bias.detach() for m in mods])  # [sum N]
            h = torch.cat([half[id(m)] for m in mods]) if half and all(id(m) in half for m in mods) else None
            group = FusedLinear(w, b, [m.out_features for m in mods], pack, h)  # h: [sum N, K] half weights
            for i, (name, m) in enumerate(zip(names, mods)):
                setattr(parent, name, FusedPart(group, i, m))
            fused += 1
    return fused


def pack_linears(module: nn.Module, pack: bool = True, half: dict | None = None,
                 dtype: torch.dtype = torch.float32) -> int:
    """Swap the module's remaining plain ``nn.Linear``s of ``dtype`` for PackedLinears (prepacked when ``pack``;
    reading ``half[id(linear)]`` for few rows when given) -> count."""
    swaps = [(parent, name, m) for parent in module.modules() for name, m in parent.named_children()
             if _plain_linear(m) and m.weight.dtype == dtype and (pack or id(m) in (half or {}))]
    for parent, name, m in swaps:
        setattr(parent, name, PackedLinear(m, pack, (half or {}).get(id(m))))
    return len(swaps)


def apply_fast_path(model: nn.Module, dtype: torch.dtype | None = None, *, upcast: bool | None = None,
                    fuse: bool = False, pack: bool = False, half_read: bool | None = None,
                    pack_half: bool | None = None) -> str:
    """Make a loaded causal LM's forward faster on this CPU, in place -> the name of what ran.

    dtype: the model's dtype (default: its first parameter's). upcast: compute in float32 (None: exactly when
    ``dtype`` is bf16/fp16 and the CPU has no native matmul for it). fuse: fused q/k/v and gate/up
    projections; pack: oneDNN-prepacked weights for multi-row forwards (float32, costs a weight copy). Both are
    off by default: exact, but neither beat eager by a clear margin on the 2-core AVX2 machine of the study
    (docs/FASTPATH.md); the upcast did (2-4x on a bf16 checkpoint). half_read: few-row matmuls of the decoder and
    lm_head read the checkpoint's half weights (None: exactly when upcasting; 1.56x on Qwen2.5-1.5B's plain
    decoding there). pack_half: a bf16 model's linears (decoder and lm_head) on prepacked oneDNN weights (None:
    exactly where ``half_packing``; a second copy of them).
    Where nothing applies the model is left as it is and the name says why."""
    params = list(model.parameters())
    if not params:
        return "eager (model has no parameters)"
    if any(p.device.type != "cpu" for p in params):
        return "eager (not a CPU model)"
    if any(isinstance(m, (FusedPart, PackedLinear)) for m in model.modules()):
        raise DyndepthError("apply_fast_path was already applied to this model")
    dtype = dtype or params[0].dtype
    steps = []
    if upcast is None:
        upcast = dtype in (torch.bfloat16, torch.float16) and not native_half_matmul(dtype)
    halves: dict = {}  # id(linear) -> its checkpoint weight, kept for few-row reads
    if upcast and dtype != torch.float32:
        name = str(dtype).replace("torch.", "")
        why = "" if native_half_matmul(dtype) else f": no native {name} matmul on this CPU"
        if half_read is None or half_read:  # before the cast: the half tensors themselves, no copy
            halves = {id(m): m.weight.detach() for m in model.modules() if _plain_linear(m)}
        model.float()
        steps.append(f"float32 compute ({name} weights upcast{why})")
        dtype = torch.float32
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else model
    can_pack = pack and dtype == torch.float32 and mkldnn_packing_available()
    if fuse and fuse_projections(decoder, pack=can_pack, half=halves):
        steps.append("fused qkv/gate-up")
    notes = []
    half_pack = (half_packing(dtype) if pack_half is None else pack_half) and dtype == torch.bfloat16
    if can_pack and pack_linears(decoder, half=halves) + sum(isinstance(m, FusedPart) for m in decoder.modules()):
        steps.append("oneDNN-prepacked multi-row linears")
    elif pack and not can_pack and not half_pack:
        notes.append("no packing: " + ("it needs float32" if dtype != torch.float32 else "no oneDNN in this torch"))
    if half_pack:
        packed = pack_linears(decoder, dtype=dtype)
        head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
        if _plain_linear(head) and head.weight.dtype == dtype and hasattr(model, "set_output_embeddings"):
            model.set_output_embeddings(PackedLinear(head))  # the embedding keeps a tied weight: a copy, not a move
            packed += 1
        if packed:
            steps.append("prepacked bfloat16 linears (oneDNN)")
    if halves:
        pack_linears(decoder, pack=False, half=halves)  # what packing left plain
        head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
        if _plain_linear(head) and id(head) in halves and hasattr(model, "set_output_embeddings"):
            model.set_output_embeddings(PackedLinear(head, False, halves[id(head)]))
        kernel = "native kernel" if half_gemm.available() else "inductor kernel"
        steps.append(f"linears of up to {half_read_rows()} rows read the half weights ({kernel})")
    if not steps:
        return f"eager ({'; '.join(notes) or 'nothing applies to this model'})"
    return "cpu: " + " + ".join(steps) + (f" ({'; '.join(notes)})" if notes else "")


def packed_matmul(module: nn.Module | None) -> "PackedMatmul | None":
    """The prepacked bf16 matmul a fast-path linear runs on (every row count), or None."""
    matmul = getattr(module, "matmul", None) if isinstance(module, PackedLinear) else None
    return matmul if matmul is not None and matmul.packed is not None and matmul.every_row else None


def half_weight(module: nn.Module | None) -> torch.Tensor | None:
    """The half checkpoint weight a fast-path linear reads for few rows, or None (not a half-reading linear)."""
    matmul = getattr(module, "matmul", None) if isinstance(module, PackedLinear) else None
    return None if matmul is None else matmul.half


def fast_path_calls(model: nn.Module) -> dict[str, int]:
    """How many fused and packed matmuls ran since ``apply_fast_path`` (a spy for tests and bench summaries)."""
    groups = {id(m.fused): m.fused for m in model.modules() if isinstance(m, FusedPart)}
    packed = [m.matmul for m in model.modules() if isinstance(m, PackedLinear)]
    packed += [g.linear for g in groups.values() if g.linear is not None]
    return {"fused": sum(g.calls for g in groups.values()), "packed": sum(p.calls for p in packed),
            "half_read": sum(p.half_calls for p in packed)}
