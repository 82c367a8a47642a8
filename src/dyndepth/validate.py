"""Checks on what users pass in, shared by the Python API, the CLI, ``dyndepth bench`` and the server.

Every check raises ``OptionError`` (a ``DyndepthError``) with one line naming the option and the value. The
option is named by its Python keyword; the command line rewrites it to its flag (``CLI_FLAGS``), so the same
check reads ``total_tokens must be >= 2 ... got 0`` in Python and ``--total-tokens must be >= 2 ... got 0`` in a
shell. Checks that need no model run before a model is loaded.
"""

from __future__ import annotations

import json
import math
import numbers
import os
from pathlib import Path

from dyndepth.errors import DyndepthError

# Bounds with a reason each (documented in docs/API.md).
DRAFT_TOP_K_MAX = 64  # beam width: every level drafts top_k^2 candidates; EAGLE-2 uses 8-10
TOTAL_TOKENS_MAX = 1024  # tokens verified per step; EAGLE-2 uses 60 on GPUs, 12-24 pay off on CPUs
MAX_DEPTH_MAX = 64  # draft levels per step; DDD's default is 11
SUFFIX_CACHE_MAX = 65536  # earlier outputs the suffix drafter searches: ~16M tokens at 256 each, ~2 GB of index
TEMPERATURE_MIN = 1e-4  # below this (but above 0) logits / T overflows float32; use 0 for greedy
TEMPERATURE_MAX = 100.0  # above this the processed distribution is uniform to float32 precision
STOP_STRINGS_MAX = 16
SEED_MAX = 2**63 - 1

# What each call takes, for the error that names a keyword given to the wrong one.
TREE_OPTIONS = ("policy", "top_k", "total_tokens", "max_depth", "checks", "threshold", "drafter", "suffix_cache")
ENGINE_OPTIONS = ("dtype", "device", "static_cache", "max_len", "compile")  # from_pretrained only
GENERATION_OPTIONS = ("max_new_tokens", "temperature", "top_p", "seed", "stop", "stop_token_ids", "min_new_tokens",
                      "ignore_eos")  # top_k is both: the decoder's is the draft beam width

CLI_FLAGS = {
    "max_new_tokens": "--max-new-tokens", "min_new_tokens": "--min-new-tokens", "temperature": "--temperature",
    "top_p": "--top-p", "top_k": "--top-k", "seed": "--seed", "stop": "--stop", "stop_token_ids": "--stop-token-id",
    "draft top_k": "--draft-top-k", "total_tokens": "--total-tokens", "max_depth": "--max-depth",
    "checks": "--checks", "threshold": "--threshold", "device": "--device", "threads": "--threads",
    "dtype": "--dtype", "policy": "--policy", "prompt": "--prompt", "head": "--head", "drafter": "--drafter",
    "suffix_cache": "--suffix-cache",
}


class OptionError(DyndepthError):
    """A bad option value: ``option`` (its Python name), the offending ``value`` and what is required."""

    def __init__(self, option: str, value, requirement: str):
        self.option, self.value, self.requirement = option, value, requirement
        super().__init__(self.render(option))

    def render(self, name: str) -> str:
        return f"{name} {self.requirement}, got {_show(self.value)}"

    def for_cli(self) -> str:
        return self.render(CLI_FLAGS.get(self.option, self.option))


def _show(value) -> str:
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, (list, tuple)) and len(value) > 8:
        return repr(list(value[:8]))[:-1] + ", ...]"
    return repr(value)


def is_int(value) -> bool:
    """A true integer: Python int or NumPy/torch integer scalar, never a bool or a float (3.0 is not a token)."""
    if isinstance(value, bool):
        return False
    if isinstance(value, numbers.Integral):
        return True
    dtype = getattr(value, "dtype", None)
    shape = getattr(value, "shape", None)
    if dtype is not None and shape is not None and tuple(shape) == ():
        name = str(dtype)
        return "int" in name and "bool" not in name  # numpy int64 / torch.int64 0-d
    return False


def integer(option: str, value, lo: int | None = None, hi: int | None = None) -> int:
    if not is_int(value):
        raise OptionError(option, value, "must be an integer")
    v = int(value)
    if lo is not None and hi is not None and not lo <= v <= hi:
        raise OptionError(option, v, f"must be in {lo}..{hi}")
    if lo is not None and v < lo:
        raise OptionError(option, v, f"must be >= {lo}")
    if hi is not None and v > hi:
        raise OptionError(option, v, f"must be <= {hi}")
    return v


def number(option: str, value, lo: float | None = None, hi: float | None = None, lo_open: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise OptionError(option, value, "must be a number")
    v = float(value)
    if not math.isfinite(v):
        raise OptionError(option, v, "must be a finite number")
    if lo is not None and (v <= lo if lo_open else v < lo):
        raise OptionError(option, v, f"must be {'>' if lo_open else '>='} {lo}")
    if hi is not None and v > hi:
        raise OptionError(option, v, f"must be <= {hi}")
    return v


# -- sampling --------------------------------------------------------------------------------------------
def temperature(value) -> float:
    v = number("temperature", value, lo=0.0)
    if v != 0.0 and not TEMPERATURE_MIN <= v <= TEMPERATURE_MAX:
        raise OptionError("temperature", v, f"must be 0 (greedy) or in [{TEMPERATURE_MIN}, {TEMPERATURE_MAX}]")
    return v


def top_p(value) -> float:
    v = number("top_p", value)
    if not 0.0 < v <= 1.0:
        raise OptionError("top_p", v, "must be in (0, 1]")
    return v


def stop_strings(value) -> tuple[str, ...]:
    if value is None:
        return ()
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)) or not all(isinstance(s, str) for s in items):
        raise OptionError("stop", value, "must be a string or a list of strings")
    if len(items) > STOP_STRINGS_MAX:
        raise OptionError("stop", f"{len(items)} strings", f"takes at most {STOP_STRINGS_MAX} strings")
    if any(s == "" for s in items):
        raise OptionError("stop", list(items), "must not contain an empty string")
    for s in items:
        utf8_text("stop", s)
    return tuple(items)


def token_ids(option: str, value, vocab: int) -> list[int]:
    """A flat list of token ids in 0..vocab-1 (ints only: floats and bools are refused, not truncated)."""
    items = list(value)
    for x in items:
        if not is_int(x):
            raise OptionError(option, x, "must hold integer token ids (not floats, bools or strings)")
        if not 0 <= int(x) < vocab:
            raise OptionError(option, int(x), f"must hold token ids in 0..{vocab - 1}")
    return [int(x) for x in items]


def utf8_text(option: str, text: str) -> str:
    """``text`` if UTF-8 can carry it. A lone surrogate (``"\\ud800"`` is valid JSON; an undecodable byte read with
    ``surrogateescape`` is one too) is refused in one line; the value is shown escaped, so the message itself
    always encodes."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise OptionError(option, text[:40], f"is not valid UTF-8 text (lone surrogate U+{ord(text[exc.start]):04X} "
                                             f"at character {exc.start})") from None
    return text


CHAT_ROLES = ("system", "developer", "user", "assistant")  # "developer": OpenAI's newer name for "system"


def chat_messages(messages, option: str = "messages") -> list[dict]:
    """The one rule for chat input, shared by ``chat_ids``, ``dyndepth generate --messages`` and the server.

    A string is one user turn; otherwise a non-empty list of ``{"role", "content"}`` dicts with a role in
    CHAT_ROLES and string content (UTF-8), whose last turn is not the assistant's (the model answers the
    conversation). Returns the turns as a chat template takes them: role and content only, "developer" as
    "system"."""
    if isinstance(messages, str):
        messages = [{"role": "user", "content": messages}]
    if not isinstance(messages, (list, tuple)) or not messages:
        raise OptionError(option, messages, "must be a string or a non-empty list of {role, content} turns")
    turns = []
    for i, m in enumerate(messages):
        if not (isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)):
            raise OptionError(option, m, f"item {i} must be an object with string 'role' and 'content'")
        if m["role"] not in CHAT_ROLES:
            raise OptionError(option, m["role"], f"item {i} has an unknown role (use {', '.join(CHAT_ROLES)})")
        utf8_text(f"{option} item {i} content", m["content"])
        turns.append({"role": "system" if m["role"] == "developer" else m["role"], "content": m["content"]})
    if turns[-1]["role"] == "assistant":
        raise OptionError(option, "assistant", "must not end with the assistant's turn: the last turn is what the "
                                               "model answers")
    return turns


def max_new_tokens_fit(value: int, context: int, option: str = "max_new_tokens") -> int:
    """A token budget no generation of this model can use up is refused (OpenAI answers such a request 400): the
    context holds the prompt and the answer, so a budget above it would only end at the context or a timeout."""
    if value > context:
        raise OptionError(option, value, f"must be at most the model's maximum context length of {context} tokens")
    return value


# -- tree and policy ---------------------------------------------------------------------------------------
def checks_list(value) -> tuple[int, ...]:
    """DDD check depths from a sequence or a comma-separated string; at least one."""
    if isinstance(value, str) and not value.strip():
        raise OptionError("checks", value, "must name at least one check depth, e.g. 5,7,9")
    if isinstance(value, str):
        parts = [p.strip() for p in value.split(",")]
        try:
            value = [int(p) for p in parts]
        except ValueError:
            raise OptionError("checks", value, "must be comma-separated integers like 5,7,9") from None
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        value = [value]
    if not isinstance(value, (list, tuple)) or not value:
        raise OptionError("checks", value, "must name at least one check depth, e.g. 5,7,9")
    return tuple(sorted({integer("checks", c, lo=1) for c in value}))


# -- machine ------------------------------------------------------------------------------------------------
def device(value) -> str:
    """A device this torch can use: cpu, cuda[:i] (with a CUDA build and a visible GPU) or mps."""
    import torch

    if not isinstance(value, str):
        value = str(value)
    try:
        dev = torch.device(value)
    except (RuntimeError, ValueError):
        raise OptionError("device", value, "must be cpu, cuda, cuda:N or mps") from None
    if dev.type == "cpu":
        return value
    if dev.type == "cuda":
        if torch.version.cuda is None:
            raise OptionError("device", value, f"needs a CUDA build of torch (this one is {torch.__version__}, "
                                               f"CPU only); use cpu")
        n = torch.cuda.device_count()
        if n == 0:
            raise OptionError("device", value, "needs a visible CUDA GPU, and none is; use cpu")
        if dev.index is not None and dev.index >= n:
            raise OptionError("device", value, f"names a GPU that does not exist ({n} visible: cuda:0..cuda:{n - 1})")
        return value
    if dev.type == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise OptionError("device", value, "needs Apple's MPS backend, which this machine lacks; use cpu")
        return value
    raise OptionError("device", value, "is not supported; use cpu, cuda[:N] or mps")


def threads(value) -> int | None:
    if value is None:
        return None
    return integer("threads", value, lo=1, hi=os.cpu_count() or 1)


# -- files ----------------------------------------------------------------------------------------------------
def output_dir(option: str, path) -> Path:
    """A folder that exists or can be created: no file in the way, the nearest existing folder writable."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OptionError(option, str(path), "must be a folder, and a file of that name exists")
    probe = path
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise OptionError(option, str(path), f"cannot be created: {probe} is a file, not a folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise OptionError(option, str(path), f"cannot be written: no permission in {probe}")
    return path


def json_object_file(path: Path, what: str) -> dict:
    """Read a JSON file that must hold an object, e.g. a config.json; one line on any problem."""
    try:
        raw = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DyndepthError(f"{what} {path} cannot be read: {exc.__class__.__name__}") from None
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise DyndepthError(f"{what} {path} is not valid JSON ({exc}); the file may be truncated") from None
    if not isinstance(data, dict):
        raise DyndepthError(f"{what} {path} must hold a JSON object, not {type(data).__name__}")
    return data


def finite_json(obj):
    """The same structure with NaN and infinities replaced by None, so ``json.dumps(allow_nan=False)`` works."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_json(v) for v in obj]
    return obj


def tree_options(policy, top_k=None, total_tokens=None, max_depth=None, checks=None, threshold=None, drafter=None,
                 suffix_cache=None, **policy_options) -> dict:
    """Check the draft tree, drafter and depth-policy knobs against the policy they are for, before any model loads.

    Returns the knobs that were set, normalised (checks as a sorted tuple). Knobs that do not apply to the
    policy (or drafter) are refused, not ignored. With ``max_depth`` but no ``checks``, DDD keeps its default check
    depths that lie below ``max_depth``."""
    from dyndepth.policies import AUTO_OPTIONS, POLICIES, DynamicDepth

    if not isinstance(policy, str) or policy not in POLICIES:
        raise OptionError("policy", policy, f"must be one of: {', '.join(POLICIES)}")
    unknown = sorted(set(policy_options) - set(AUTO_OPTIONS))
    if unknown:
        name = unknown[0]
        if name in GENERATION_OPTIONS:
            raise OptionError(name, policy_options[name], "is a generation option: pass it to generate(), stream() "
                                                          "or stream_text(), not to the decoder")
        raise OptionError(name, policy_options[name], f"is not a decoder option (tree: {', '.join(TREE_OPTIONS)}; "
                                                      f"engine: {', '.join(ENGINE_OPTIONS)}; auto policy: "
                                                      f"{', '.join(AUTO_OPTIONS)})")
    given = {"draft top_k": top_k, "total_tokens": total_tokens, "max_depth": max_depth, "checks": checks,
             "threshold": threshold, "drafter": drafter, "suffix_cache": suffix_cache, **policy_options}
    if policy == "plain":
        for name, value in given.items():
            if value is not None:
                raise OptionError(name, value, "does not apply to the 'plain' policy (it drafts nothing)")
        return {}
    out: dict = drafter_options(drafter, suffix_cache)
    if top_k is not None:
        out["top_k"] = integer("draft top_k", top_k, lo=1, hi=DRAFT_TOP_K_MAX)
    if total_tokens is not None:
        n = integer("total_tokens", total_tokens, lo=1, hi=TOTAL_TOKENS_MAX)
        if n < 2:
            raise OptionError("total_tokens", n, f"must be >= 2 with the {policy!r} policy (it counts the root, so "
                                                 f"1 verifies nothing drafted; use the 'plain' policy for that)")
        out["total_tokens"] = n
    if max_depth is not None:
        out["max_depth"] = integer("max_depth", max_depth, lo=1, hi=MAX_DEPTH_MAX)
    if policy != "auto":
        for name in AUTO_OPTIONS:
            if given.get(name) is not None:
                raise OptionError(name, given[name], f"applies to the 'auto' policy only, not {policy!r}")
    else:
        out.update(auto_options(**policy_options))
    if policy != "ddd":
        for name in ("checks", "threshold"):
            if given[name] is not None:
                raise OptionError(name, given[name], f"applies to the 'ddd' policy only, not {policy!r}")
        return out
    if threshold is not None:
        out["threshold"] = number("threshold", threshold)
    depth = out.get("max_depth", DynamicDepth.max_depth)
    if checks is not None:
        c = checks_list(checks)
        if c[-1] >= depth:
            raise OptionError("checks", ",".join(map(str, c)),
                              f"must lie below max_depth {depth} (a check at the last level stops nothing)")
        out["checks"] = c
    elif max_depth is not None:
        default = DynamicDepth.checks
        c = tuple(x for x in default if x < depth)
        if not c:
            raise OptionError("max_depth", depth, f"leaves none of DDD's default check depths "
                                                  f"({','.join(map(str, default))}) below it; pass checks below "
                                                  f"it too (e.g. checks 2,3) or use the 'fixed' policy")
        out["checks"] = c
    return out


def drafter_options(drafter=None, suffix_cache=None) -> dict:
    """The drafter (head, suffix, hybrid, switch) and the size of its cache of earlier outputs; unset ones are left
    out. A cache needs a drafter that matches suffixes."""
    from dyndepth.drafters.stage import DEFAULT_DRAFTER, DRAFTERS

    out: dict = {}
    if drafter is not None:
        if drafter not in DRAFTERS:
            raise OptionError("drafter", drafter, f"must be one of: {', '.join(DRAFTERS)}")
        out["drafter"] = drafter
    if suffix_cache is not None:
        n = integer("suffix_cache", suffix_cache, lo=0, hi=SUFFIX_CACHE_MAX)
        kind = drafter or DEFAULT_DRAFTER
        if n and kind == "head":
            raise OptionError("suffix_cache", n, "applies to the suffix, hybrid and switch drafters, not the "
                                                 "'head' drafter")
        out["suffix_cache"] = n
    return out


def drafter_head(drafter, head) -> None:
    """A head given to a drafter that uses none is refused, not ignored."""
    if drafter == "suffix" and head is not None:
        raise OptionError("head", head if isinstance(head, str) else "a draft head",
                          "does not apply to the 'suffix' drafter (it drafts without a head)")


def auto_options(min_depth=None, lookahead=None, prior_strength=None, update_rate=None, cost_update_rate=None,
                 objective=None) -> dict:
    """The auto policy's knobs (docs/ALGORITHM.md), each checked; unset ones are left out."""
    from dyndepth.policies.auto import OBJECTIVES

    out = {}
    if objective is not None:
        if objective not in OBJECTIVES:
            raise OptionError("objective", objective, f"must be one of: {', '.join(OBJECTIVES)}")
        out["objective"] = objective
    if min_depth is not None:
        out["min_depth"] = integer("min_depth", min_depth, lo=1, hi=MAX_DEPTH_MAX)
    if lookahead is not None:
        out["lookahead"] = integer("lookahead", lookahead, lo=1, hi=MAX_DEPTH_MAX)
    if prior_strength is not None:
        out["prior_strength"] = number("prior_strength", prior_strength, lo=0.0, lo_open=True)
    for name, value in (("update_rate", update_rate), ("cost_update_rate", cost_update_rate)):
        if value is not None:
            v = number(name, value, lo=0.0, lo_open=True)
            if v >= 1:
                raise OptionError(name, v, "must be in (0, 1)")
            out[name] = v
    return out
