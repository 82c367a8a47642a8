"""Offline model zoo: real LLMs from pinned PyPI packages, prepared once as safetensors in a cache directory.

    >>> from dyndepth.models import resolve
    >>> path = resolve("smollm2-135m-instruct")   # first call: verify + dequantize (~20 s); later: instant
    >>> AutoModelForCausalLM.from_pretrained(path)

The cache is ``$DYNDEPTH_HOME`` (default ``~/.cache/dyndepth``): ``gguf/`` holds joined chunk files while they
are converted, ``models/<name>/`` the prepared model, whose marker file ``zoo.json`` is written last.
"""

from __future__ import annotations

import importlib.metadata as md
import json
import os
import re
import shutil
import sys
import time
from pathlib import Path
from typing import NamedTuple

from dyndepth.models import assemble, convert
from dyndepth.models.registry import DEFAULT_MODEL, ZOO, Part, ZooEntry, ZooError

__all__ = ["ZOO", "DEFAULT_MODEL", "ZooEntry", "Part", "ZooError", "ModelRow", "cache_dir", "model_dir",
           "is_prepared", "resolve", "list_models", "locate_model"]

MARKER = "zoo.json"
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def cache_dir() -> Path:
    return Path(os.environ.get("DYNDEPTH_HOME") or "~/.cache/dyndepth").expanduser()


def _entry(name: str) -> ZooEntry:
    try:
        return ZOO[name]
    except KeyError:
        raise ZooError(f"unknown model {name!r}; zoo models: {', '.join(ZOO)}") from None


def model_dir(name: str) -> Path:
    return cache_dir() / "models" / _entry(name).name


def _read_marker(path: Path) -> dict | None:
    try:
        return json.loads((path / MARKER).read_text())
    except (OSError, ValueError):
        return None


def is_prepared(name: str) -> bool:
    entry = _entry(name)
    marker = _read_marker(model_dir(name))
    return bool(marker) and marker.get("sha256") == entry.sha256 and marker.get("dtype") == entry.dtype


def _dyndepth_version() -> str:
    try:
        return md.version("dyndepth")
    except md.PackageNotFoundError:
        import dyndepth

        return getattr(dyndepth, "__version__", "unknown")


def resolve(name: str) -> Path:
    """Directory of the prepared zoo model ``name`` (safetensors + tokenizer); prepares it on first use."""
    entry = _entry(name)
    final = model_dir(name)
    if is_prepared(name):
        return final
    began = time.perf_counter()
    gguf = assemble.verified_gguf(entry, cache_dir() / "gguf")
    print(f"{entry.name}: GGUF verified in {time.perf_counter() - began:.1f} s", file=sys.stderr)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        start = time.perf_counter()
        convert.convert_gguf(gguf, tmp, entry.dtype)
        marker = {"name": entry.name, "sha256": entry.sha256, "dtype": entry.dtype, "family": entry.family,
                  "dyndepth_version": _dyndepth_version(), "convert_seconds": round(time.perf_counter() - start, 1)}
        (tmp / MARKER).write_text(json.dumps(marker, indent=2) + "\n")  # last: marks the directory complete
        if final.exists():  # stale or half-written (no valid marker): replace it
            shutil.rmtree(final)
        try:
            os.rename(tmp, final)
        except OSError:
            if not is_prepared(name):  # another process did not win the race either
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if gguf.is_relative_to(cache_dir()):  # joined chunks are no longer needed; shipped files stay
        gguf.unlink(missing_ok=True)
    print(f"{entry.name}: prepared in {time.perf_counter() - began:.1f} s -> {final}", file=sys.stderr)
    return final


class ModelRow(NamedTuple):
    name: str
    size: str  # parameter count, e.g. "135M"
    prepared: bool
    path: Path
    dtype: str
    description: str


def list_models() -> list[ModelRow]:
    return [ModelRow(e.name, e.params_label, is_prepared(e.name), model_dir(e.name), e.dtype, e.description)
            for e in ZOO.values()]


def locate_model(model: str) -> str | Path:
    """A model directory for ``model``: a zoo name, a local Hugging Face model directory, or a Hub id."""
    if model in ZOO:
        return resolve(model)
    path = Path(model).expanduser()
    if path.exists():
        if path.is_dir() and (path / "config.json").is_file():
            return path
        raise ZooError(f"{model!r} is not a Hugging Face model directory (no config.json); "
                       f"use a zoo name ({', '.join(ZOO)}) or a model directory")
    if _HUB_ID.fullmatch(model):
        try:
            from huggingface_hub import snapshot_download

            return Path(snapshot_download(model, ignore_patterns=["*.gguf", "*.onnx", "*.h5", "*.msgpack",
                                                                  "onnx/*", "original/*"]))
        except Exception as exc:  # offline, unknown repo, gated repo, ...: all one-line user errors
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            raise ZooError(f"could not download {model!r} from the Hugging Face Hub (offline?): {reason}; "
                           f"use a zoo name ({', '.join(ZOO)}) or a local directory") from None
    raise ZooError(f"unknown model {model!r}: not a zoo name ({', '.join(ZOO)}), "
                   f"an existing model directory, or a Hub id like org/name")
