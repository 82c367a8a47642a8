"""A faster target forward on CPUs, applied to a loaded Hugging Face model in one call: ``apply_fast_path``.

Three independent pieces, each by module swapping or an in-place cast (no patched modeling code), measured
in docs/FASTPATH.md (scripts/fastpath_ab.py is the paired A/B); only the first is on by default:

- **float32 compute where the CPU has no bfloat16/float16 matmul** (``upcast``). Without AVX512-BF16 or AMX,
  PyTorch's bf16 matmul runs a scalar-ish fallback: a bf16 model's 12- or 24-row tree forward costs 2-4x its
  float32 one, and oneDNN (vLLM's linear path) refuses bf16 there. The weights are upcast once (exact: every
  bf16 value is a float32 value), so the model then computes in float32 and holds twice the memory.
- **fused projections** (``fuse``): q/k/v and gate/up read one concatenated weight in one matmul. The modules
  stay where the modeling code calls them: ``q_proj`` computes all three and keeps the result for ``k_proj``
  and ``v_proj`` (which take their slice when called with the same input tensor, and compute their own rows
  otherwise), so the forward is unchanged and only the number of matmuls drops. The old weights become views
  of the fused one: no extra memory, ``state_dict`` unchanged.
- **prepacked oneDNN matmul for multi-row forwards** (``pack``, float32 only): trees and prefill go through
  ``torch.ops.mkldnn._linear_pointwise`` on a weight reordered once; one-row forwards (plain decoding) keep
  MKL's GEMV on the plain weight, which is faster for one row. Costs a second copy of every packed weight.

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

FUSE_GROUPS = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))


def native_half_matmul(dtype: torch.dtype) -> bool:
    """Whether this CPU has a native matmul for ``dtype`` (bf16: AVX512-BF16 or AMX; fp16: AMX-FP16)."""
    cpu = torch.cpu
    if dtype == torch.bfloat16:
        return bool(cpu._is_avx512_bf16_supported() or cpu._is_amx_tile_supported())
    if dtype == torch.float16:
        return bool(cpu._is_amx_fp16_supported())
    return True


def mkldnn_packing_available() -> bool:
    ops = getattr(torch.ops, "mkldnn", None)
    return bool(torch.backends.mkldnn.is_available() and hasattr(ops, "_reorder_linear_weight")
                and hasattr(ops, "_linear_pointwise"))


class FusedLinear:
    """One matmul for several sibling projections of the same input: weight [sum(sizes), K].

    ``part(x, i)`` -> rows ``i`` of ``x @ weight.T``; the first call with an input computes all parts, the
    siblings' calls with the same tensor take their slice. Not registered as a submodule (the siblings'
    parameters are views of its weight, so the model's parameters and state_dict are unchanged)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, sizes: list[int], pack: bool):
        self.weight, self.bias, self.sizes = weight, bias, sizes
        self.starts = [sum(sizes[:i]) for i in range(len(sizes))]
        self.linear = PackedMatmul(weight, bias) if pack else None
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


class PackedMatmul:
    """x [..., K] -> x @ W.T + b: multi-row inputs on a oneDNN-prepacked float32 copy of W, one row on W."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None):
        self.weight, self.bias = weight, bias
        self.packed = torch.ops.mkldnn._reorder_linear_weight(weight.detach(), None)
        self.calls = 0  # multi-row calls that ran on the packed weight

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.numel() == x.shape[-1]:  # one row: MKL's GEMV reads the plain weight faster
            return F.linear(x, self.weight, self.bias)
        self.calls += 1
        return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")


class PackedLinear(nn.Linear):
    """An ``nn.Linear`` (same parameters) whose multi-row forwards use PackedMatmul."""

    def __init__(self, original: nn.Linear):
        nn.Module.__init__(self)
        self.in_features, self.out_features = original.in_features, original.out_features
        self.weight, self.bias = original.weight, original.bias
        object.__setattr__(self, "matmul", PackedMatmul(self.weight, self.bias))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.matmul(x)


def _plain_linear(module) -> bool:
    return type(module) is nn.Linear


def fuse_projections(decoder: nn.Module, pack: bool = False) -> int:
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
            group = FusedLinear(w, b, [m.out_features for m in mods], pack)
            for i, (name, m) in enumerate(zip(names, mods)):
                setattr(parent, name, FusedPart(group, i, m))
            fused += 1
    return fused


def pack_linears(decoder: nn.Module) -> int:
    """Swap the remaining plain float32 ``nn.Linear`` modules of the decoder for PackedLinears -> count."""
    swaps = [(parent, name, m) for parent in decoder.modules() for name, m in parent.named_children()
             if _plain_linear(m) and m.weight.dtype == torch.float32]
    for parent, name, m in swaps:
        setattr(parent, name, PackedLinear(m))
    return len(swaps)


def apply_fast_path(model: nn.Module, dtype: torch.dtype | None = None, *, upcast: bool | None = None,
                    fuse: bool = False, pack: bool = False) -> str:
    """Make a loaded causal LM's forward faster on this CPU, in place -> the name of what ran.

    dtype: the model's dtype (default: its first parameter's). upcast: compute in float32 (None: exactly when
    ``dtype`` is bf16/fp16 and the CPU has no native matmul for it). fuse: fused q/k/v and gate/up
    projections; pack: oneDNN-prepacked weights for multi-row forwards (float32, costs a weight copy). Both are
    off by default: exact, but neither beat eager by a clear margin on the 2-core AVX2 machine of the study
    (docs/FASTPATH.md); the upcast did (2-4x on a bf16 checkpoint).
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
    if upcast and dtype != torch.float32:
        half = str(dtype).replace("torch.", "")
        why = "" if native_half_matmul(dtype) else f": no native {half} matmul on this CPU"
        model.float()
        steps.append(f"float32 compute ({half} weights upcast{why})")
        dtype = torch.float32
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else model
    can_pack = pack and dtype == torch.float32 and mkldnn_packing_available()
    if fuse and fuse_projections(decoder, pack=can_pack):
        steps.append("fused qkv/gate-up")
    notes = []
    if can_pack and pack_linears(decoder) + sum(isinstance(m, FusedPart) for m in decoder.modules()):
        steps.append("oneDNN-prepacked multi-row linears")
    elif pack and not can_pack:
        notes.append("no packing: " + ("it needs float32" if dtype != torch.float32 else "no oneDNN in this torch"))
    if not steps:
        return f"eager ({'; '.join(notes) or 'nothing applies to this model'})"
    return "cpu: " + " + ".join(steps) + (f" ({'; '.join(notes)})" if notes else "")


def fast_path_calls(model: nn.Module) -> dict[str, int]:
    """How many fused and packed matmuls ran since ``apply_fast_path`` (a spy for tests and bench summaries)."""
    groups = {id(m.fused): m.fused for m in model.modules() if isinstance(m, FusedPart)}
    packed = [m.matmul for m in model.modules() if isinstance(m, PackedLinear)]
    packed += [g.linear for g in groups.values() if g.linear is not None]
    return {"fused": sum(g.calls for g in groups.values()), "packed": sum(p.calls for p in packed)}
