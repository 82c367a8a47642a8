"""The method registry: name -> (factory, configurable settings with defaults).

A factory is ``factory(ctx, name, settings) -> BenchMethod``; it may raise ``MethodSkipped`` when the method
does not apply to the target (the run goes on and the summary says why). A new depth policy plugs in with::

    register_method(MethodSpec("my-policy", "what it is", tree_factory, {"policy": "my-policy", "top_k": 8}))

Settings are overridden per run with ``--set METHOD.KEY=VALUE`` (e.g. ``--set eagle2-cpu.total_tokens=16``);
only keys present in a method's defaults are accepted, plus, for every tree method, the target engine's
``ENGINE_DEFAULTS`` (``--set ddd.static_cache=true --set ddd.compile=true``) and, for every tree method that drafts,
``DRAFT_DEFAULTS`` (``--set ddd.drafter=hybrid``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from dyndepth.bench.hf_methods import DEFAULT_ASSISTANT, assisted_factory, prompt_lookup_factory, vanilla_factory
from dyndepth.bench.tree_methods import tree_factory
from dyndepth.bench.vllm_method import NGRAM_DEFAULTS, VLLM_DEFAULTS, vllm_factory
from dyndepth.errors import DyndepthError


@dataclass(frozen=True)
class MethodSpec:
    name: str
    description: str
    factory: Callable[..., Any]
    defaults: dict = field(default_factory=dict)


@dataclass(frozen=True)
class MethodPlan:
    """One method to run: the display name (unique in the run), its spec and its resolved settings."""

    name: str
    spec: MethodSpec
    settings: dict


METHODS: dict[str, MethodSpec] = {}
# The target engine of a tree method (see dyndepth.target.Target): any tree method takes these keys
ENGINE_DEFAULTS = {"static_cache": False, "compile": False, "max_len": None}
# Any tree method that drafts takes these too: where its nodes come from (``--set ddd.drafter=hybrid``) and the
# suffix drafter's cache of earlier answers. A method named after a head policy (ddd, auto, eagle2, ...) drafts with
# the head alone, as its name has always meant; the library's default drafter (hybrid) is the ``hybrid`` method.
DRAFT_DEFAULTS = {"drafter": "head", "suffix_cache": 0}


def register_method(spec: MethodSpec) -> MethodSpec:
    METHODS[spec.name] = spec
    return spec


register_method(MethodSpec("vanilla", "transformers generate on the same model object (greedy or sampled): "
                           "what a user has today; the speedup baseline", vanilla_factory))
register_method(MethodSpec("assisted", f"transformers assisted generation with {DEFAULT_ASSISTANT} as the "
                           "assistant model and transformers' default schedule (Qwen targets only)",
                           assisted_factory, {"assistant": DEFAULT_ASSISTANT}))
register_method(MethodSpec("prompt-lookup", "transformers prompt lookup decoding on the same model object: each "
                           "step proposes the tokens that followed the first (leftmost) earlier occurrence of the "
                           "context's last 2 tokens, else of its last token (no draft model, no head)",
                           prompt_lookup_factory, {"prompt_lookup_num_tokens": 10}))
register_method(MethodSpec("vllm", "vLLM's CPU engine, plain decoding, in its own environment (--vllm-python); "
                           "bind = VLLM_CPU_OMP_THREADS_BIND ('auto' = vLLM's default: one core computes); dtype "
                           "None = the run's", vllm_factory, VLLM_DEFAULTS))
register_method(MethodSpec("vllm-ngram", "vLLM's CPU engine with its n-gram speculation (prompt lookup) in its own "
                           "environment (--vllm-python)", vllm_factory, NGRAM_DEFAULTS))
register_method(MethodSpec("plain", "dyndepth's own loop without a draft (policy plain): the same code path "
                           "as the tree methods, one token per step", tree_factory, {"policy": "plain"}))
register_method(MethodSpec("eagle2", "EAGLE-2 fixed-depth tree with the paper's GPU defaults",
                           tree_factory, {"policy": "fixed", "max_depth": 6, "top_k": 10, "total_tokens": 60}))
register_method(MethodSpec("eagle2-cpu", "EAGLE-2 fixed-depth tree sized for a 2-core CPU (a starting point; "
                           "tune with --sweep)", tree_factory,
                           {"policy": "fixed", "max_depth": 5, "top_k": 4, "total_tokens": 12}))
register_method(MethodSpec("ddd", "Dynamic Depth Decoding with its published constants; total_tokens = the "
                           "decoder's default (60 on CUDA; on a CPU 24, or 4 for the head alone unless bf16 runs in AMX tiles)",
                           tree_factory,
                           {"policy": "ddd", "max_depth": 11, "checks": (5, 7, 9), "threshold": -0.3,
                            "top_k": 10, "total_tokens": None}))
register_method(MethodSpec("ddd-cpu", "Dynamic Depth Decoding's rule (checks, threshold, max depth) on eagle2-cpu's "
                           "CPU-sized tree (top_k 4, total_tokens 12)", tree_factory,
                           {"policy": "ddd", "max_depth": 11, "checks": (5, 7, 9), "threshold": -0.3,
                            "top_k": 4, "total_tokens": 12}))
register_method(MethodSpec("auto", "the cost-aware policy: each step the depth and the tree size that maximise "
                           "expected tokens per second, from calibrated acceptance and this machine's measured "
                           "costs; total_tokens = the largest tree it may choose (48 on CPU, 128 on CUDA)",
                           tree_factory, {"policy": "auto", "max_depth": 11, "top_k": 10, "total_tokens": None,
                                          "min_depth": 1, "lookahead": 2, "prior_strength": 8.0, "update_rate": 0.02,
                                          "cost_update_rate": 0.05, "objective": "run"}))

register_method(MethodSpec("suffix", "model-free drafting: suffix matches over the prompt and the answer so far "
                           "(drafters/suffix.py), DDD's check on their calibrated path probabilities, no head (works "
                           "for any model); suffix_cache = earlier answers searched too", tree_factory,
                           {"policy": "ddd", "drafter": "suffix", "max_depth": 11, "checks": (5, 7, 9),
                            "threshold": -0.3, "top_k": 10, "total_tokens": None, "suffix_cache": 0}))
register_method(MethodSpec("hybrid", "ddd's head tree and suffix matches merged into one tree under one node budget, "
                           "reranked on calibrated P(accepted)", tree_factory,
                           {**METHODS["suffix"].defaults, "drafter": "hybrid"}))
register_method(MethodSpec("switch", "the either/or baseline of shipped hybrids: per step the suffix tree when its "
                           "score (expected accepted tokens) is at least 3, else ddd's head tree", tree_factory,
                           {**METHODS["suffix"].defaults, "drafter": "switch"}))

register_method(MethodSpec("static-eager", "ddd's settings on the static-cache engine: preallocated KV buffers, "
                           "trees padded to power-of-two sizes, in-place compaction; not compiled", tree_factory,
                           {**METHODS["ddd"].defaults, "static_cache": True}))
register_method(MethodSpec("static-compiled", "static-eager with the verify forward under torch.compile (CUDA "
                           "graphs on a GPU, mode reduce-overhead; one compile per tree-size bucket, in the warm-up)",
                           tree_factory, {**METHODS["ddd"].defaults, "static_cache": True, "compile": True}))


# -- values --------------------------------------------------------------------------------------------------
def _int_or_none(text: str):
    return None if text.lower() in ("none", "default", "") else int(text)


def _bool(text: str) -> bool:
    if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
        raise ValueError(text)
    return text.lower() in ("true", "1", "yes")


def _checks(text: str) -> tuple[int, ...]:
    text = text.strip()
    if text.lower() in ("", "none"):
        return ()
    return tuple(int(x) for x in text.replace(":", "/").split("/"))


PARSERS: dict[str, Callable[[str], Any]] = {
    "policy": str, "assistant": str, "top_k": int, "max_depth": int, "total_tokens": _int_or_none,
    "threshold": float, "checks": _checks, "min_depth": int, "lookahead": int, "prior_strength": float,
    "update_rate": float, "cost_update_rate": float, "objective": str, "static_cache": _bool, "compile": _bool, "max_len": _int_or_none,
    "prompt_lookup_num_tokens": int, "drafter": str, "suffix_cache": int,
}


def parse_value(key: str, text: str):
    """Parse one setting given as text (checks are written 5/7/9 or 5:7:9)."""
    try:
        return PARSERS.get(key, str)(text)
    except ValueError:
        raise DyndepthError(f"bad value {text!r} for {key}") from None


def format_value(value) -> str:
    if isinstance(value, (tuple, list)):
        return "/".join(str(v) for v in value) or "none"
    return "default" if value is None else f"{value:g}" if isinstance(value, float) else str(value)


# -- planning ------------------------------------------------------------------------------------------------
def parse_methods(text: str) -> list[str]:
    names = [n.strip() for n in str(text).split(",") if n.strip()]
    if not names:
        raise DyndepthError("--methods is empty; choose from: " + ", ".join(METHODS))
    unknown = [n for n in names if n not in METHODS]
    if unknown:
        raise DyndepthError(f"unknown method(s) {', '.join(repr(n) for n in unknown)} in --methods; "
                            f"choose from: {', '.join(METHODS)}")
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise DyndepthError(f"method(s) listed twice in --methods: {', '.join(dup)}")
    return names


def parse_overrides(items: list[str] | None) -> dict[str, dict]:
    """``["ddd.threshold=-0.6", "eagle2-cpu.total_tokens=16"]`` -> {"ddd": {"threshold": -0.6}, ...}."""
    out: dict[str, dict] = {}
    for item in items or []:
        head, sep, value = item.partition("=")
        method, dot, key = head.strip().rpartition(".")
        if not sep or not dot or not method or not key:
            raise DyndepthError(f"--set takes METHOD.KEY=VALUE (e.g. ddd.threshold=-0.6), got {item!r}")
        if method not in METHODS:
            raise DyndepthError(f"--set {item!r}: unknown method {method!r}; choose from: {', '.join(METHODS)}")
        check_key(method, key)
        out.setdefault(method, {})[key] = parse_value(key, value.strip())
    return out


def method_defaults(spec: MethodSpec) -> dict:
    """A method's settings with their defaults: its own, plus the engine's for a tree method."""
    if spec.factory is not tree_factory:
        return dict(spec.defaults)
    drafts = DRAFT_DEFAULTS if spec.defaults.get("policy") != "plain" else {}
    return {**ENGINE_DEFAULTS, **drafts, **spec.defaults}


def check_key(method: str, key: str) -> None:
    allowed = method_defaults(METHODS[method])
    if key not in allowed or key == "policy":
        keys = ", ".join(k for k in allowed if k != "policy") or "none"
        raise DyndepthError(f"method {method!r} has no setting {key!r} (settings: {keys})")


def plan_methods(names: list[str], overrides: dict[str, dict] | None = None) -> list[MethodPlan]:
    overrides = overrides or {}
    stray = sorted(set(overrides) - set(names))
    if stray:
        raise DyndepthError(f"--set names method(s) not in --methods: {', '.join(stray)}")
    return [MethodPlan(n, METHODS[n], {**method_defaults(METHODS[n]), **overrides.get(n, {})}) for n in names]
