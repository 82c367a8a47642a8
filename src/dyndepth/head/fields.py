"""Checks on a head's config.json fields: each problem is one line naming the file and the field."""

from __future__ import annotations

import numbers
from pathlib import Path

from dyndepth.errors import DyndepthError

ROPE_TYPES = ("default", "linear", "dynamic", "llama3")  # what the heads' LlamaRotaryEmbedding is tested with
_MISSING = object()


class Fields:
    """Typed access to one config dict (``where`` names it in messages, e.g. the config.json path)."""

    def __init__(self, raw: dict, where: Path | str):
        self.raw, self.where = raw, where

    def fail(self, field: str, problem: str) -> DyndepthError:
        return DyndepthError(f"draft head config {self.where}: field {field!r} {problem}")

    def integer(self, key: str, default=_MISSING, lo: int = 1) -> int:
        v = self.raw.get(key, default)
        if v is _MISSING:
            raise self.fail(key, "is missing")
        if isinstance(v, bool) or not isinstance(v, numbers.Integral):
            raise self.fail(key, f"must be an integer, got {v!r}")
        if v < lo:
            raise self.fail(key, f"must be >= {lo}, got {v}")
        return int(v)

    def optional_integer(self, key: str, lo: int = 1) -> int | None:
        return None if self.raw.get(key) is None else self.integer(key, lo=lo)

    def number(self, key: str, default) -> float:
        v = self.raw.get(key, default)
        if v is None:
            v = default
        if isinstance(v, bool) or not isinstance(v, numbers.Real) or not v > 0 or v == float("inf"):
            raise self.fail(key, f"must be a positive number, got {v!r}")
        return float(v)

    def flag(self, key: str, default: bool = False) -> bool:
        v = self.raw.get(key, default)
        if v is None:
            return default
        if not isinstance(v, bool):
            raise self.fail(key, f"must be true or false, got {v!r}")
        return v

    def layer_ids(self, key: str) -> list[int] | None:
        v = self.raw.get(key)
        if v is None:
            return None
        if not isinstance(v, list) or not v or any(isinstance(i, bool) or not isinstance(i, int) or i < 0 for i in v):
            raise self.fail(key, f"must be a non-empty list of non-negative layer indices, got {v!r}")
        return [int(i) for i in v]


def attention_shapes(f: Fields) -> dict:
    """The Llama-layer fields every head has, checked for consistency -> LlamaConfig keyword arguments."""
    from transformers.activations import ACT2FN

    h = f.integer("hidden_size")
    n_h = f.integer("num_attention_heads")
    n_kv = f.integer("num_key_value_heads", default=n_h)
    head_dim = f.optional_integer("head_dim")
    if n_h % n_kv:
        raise f.fail("num_key_value_heads", f"{n_kv} must divide num_attention_heads {n_h}")
    if h % n_h:
        detail = "and no head_dim is given" if head_dim is None else "(the Llama layer needs it even with head_dim)"
        raise f.fail("num_attention_heads", f"{n_h} does not divide hidden_size {h} {detail}")
    act = f.raw.get("hidden_act", "silu")
    if not isinstance(act, str) or act not in ACT2FN:
        raise f.fail("hidden_act", f"must name an activation such as 'silu', got {act!r}")
    layers = f.integer("num_hidden_layers", default=1)
    if layers != 1:
        raise f.fail("num_hidden_layers", f"must be 1 (a one-layer draft head), got {layers}")
    return dict(hidden_size=h, num_attention_heads=n_h, num_key_value_heads=n_kv, head_dim=head_dim or h // n_h,
                intermediate_size=f.integer("intermediate_size"), vocab_size=f.integer("vocab_size"),
                rms_norm_eps=f.number("rms_norm_eps", 1e-6), hidden_act=act, num_hidden_layers=1,
                max_position_embeddings=f.integer("max_position_embeddings", default=2048))


def rope_parameters(f: Fields, default_theta: float = 10000.0) -> dict:
    """rope_theta / rope_parameters / rope_scaling -> transformers' rope_parameters dict (the head's own RoPE)."""
    rp = f.raw.get("rope_parameters")
    if rp is not None and not isinstance(rp, dict):
        raise f.fail("rope_parameters", f"must be an object, got {rp!r}")
    rp = dict(rp or {})
    theta = rp.get("rope_theta", f.raw.get("rope_theta", default_theta))
    Fields({"rope_theta": theta}, f.where).number("rope_theta", default_theta)
    scaling = f.raw.get("rope_scaling")
    if scaling is not None:
        if not isinstance(scaling, dict):
            raise f.fail("rope_scaling", f"must be an object or null, got {scaling!r}")
        rp.update(scaling)
    kind = rp.pop("type", None) or rp.get("rope_type") or "default"
    if kind not in ROPE_TYPES:
        raise f.fail("rope_scaling", f"type {kind!r} is not supported (supported: {', '.join(ROPE_TYPES)})")
    if kind != "default":
        Fields(rp, f.where).number("factor", None)
    rp.update(rope_type=kind, rope_theta=float(theta))
    return rp
