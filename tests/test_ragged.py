"""dyndepth.ragged's attention against a float64 reference: one row or several, one query or a tree's, every dtype
the engine runs (a reduced-precision single query takes its own float32 route on a CPU)."""

import pytest
import torch

from dyndepth.ragged import RowSpan, additive, attend


def reference(q, k, v, visible, scale):
    """q [1, h, t, d], k/v [1, n_kv, S, d], visible [t, S] bool or None -> [1, h, t, d] in float64."""
    g = q.shape[1] // k.shape[1]
    k, v = k.double().repeat_interleave(g, 1), v.double().repeat_interleave(g, 1)
    s = q.double() @ k.transpose(-1, -2) * scale  # [1, h, t, S]
    if visible is not None:
        s = s.masked_fill(~visible, float("-inf"))
    return torch.softmax(s, -1) @ v


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_rows_attend_only_to_their_own_keys(dtype):
    torch.manual_seed(0)
    h, n_kv, d = 6, 2, 16
    sizes, lengths = [1, 3, 1, 4], [7, 12, 30, 5]  # new tokens per row, committed keys per row
    spans, start = [], 0
    for t in sizes:
        spans.append(RowSpan(start, start + t))
        start += t
    q = torch.randn(1, h, start, d).to(dtype)  # [1, h, T, d]
    kv = [(torch.randn(1, n_kv, L + t, d).to(dtype), torch.randn(1, n_kv, L + t, d).to(dtype))
          for L, t in zip(lengths, sizes)]
    visible = []
    for L, t in zip(lengths, sizes):  # a chain for multi-token rows; a lone query sees everything (no mask)
        vis = torch.ones(t, L + t, dtype=torch.bool)
        vis[:, L:] = torch.ones(t, t, dtype=torch.bool).tril()
        visible.append(None if t == 1 else vis)
    masks = [None if vis is None else additive(vis, dtype) for vis in visible]
    scale = d ** -0.5
    out = attend(q, spans, kv.__getitem__, masks.__getitem__, scale, gqa=True)  # [1, h, T, d]
    assert out.dtype == dtype and out.shape == q.shape
    tol = {torch.float32: 1e-5, torch.bfloat16: 1.6e-2, torch.float16: 2e-3}[dtype]  # the output's own rounding
    for span, (k, v), vis in zip(spans, kv, visible):
        want = reference(q[:, :, span.start:span.stop], k, v, vis, scale)
        got = out[:, :, span.start:span.stop].double()
        assert torch.allclose(got, want, atol=tol, rtol=tol), (dtype, span, (got - want).abs().max())
