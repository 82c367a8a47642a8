"""Moving a model to a machine without network, in parts that each fit one device call (docs/TRAINING.md).

A *bundle* is one tar stream of files (for a zoo model: every file of its installed PyPI distributions, the
``.dist-info`` metadata included, so ``importlib.metadata`` finds them there; for the dry run: a model
directory). ``pack`` writes the stream as numbered parts of at most ``part_bytes`` plus a ``manifest.json``
(sha256 of every part and of the whole stream). On the machine ``stage_part`` stores one part per call; once
every part is there, ``assemble`` checks the stream's sha256 and unpacks it. Every step is idempotent: a part
already stored and verified is skipped, an unpacked bundle is not unpacked again.

Only the standard library is used (no torch import): staging calls stay cheap.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import tarfile
from pathlib import Path

MANIFEST = "manifest.json"
UNPACKED = ".unpacked"  # marker written last by assemble


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def dist_files(dists: list[str]) -> list[tuple[Path, str]]:
    """(file, name inside the bundle) for every file of installed distributions, relative to site-packages;
    files outside it (console scripts in bin/) are left out."""
    import importlib.metadata as md

    out = []
    for dist in dists:
        d = md.distribution(dist)
        root = Path(d.locate_file("")).resolve()
        for f in d.files or []:
            path = Path(d.locate_file(f)).resolve()
            if path.is_file() and path.is_relative_to(root) and "__pycache__" not in path.parts:
                out.append((path, str(path.relative_to(root))))
    return out


def dir_files(folder: Path, prefix: str) -> list[tuple[Path, str]]:
    return [(p, f"{prefix}/{p.relative_to(folder)}") for p in sorted(folder.rglob("*")) if p.is_file()]


def pack(name: str, files: list[tuple[Path, str]], out_dir: Path, part_bytes: int) -> dict:
    """Write ``out_dir/partNN`` + ``manifest.json`` for one bundle; returns the manifest."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for path, arcname in sorted(files, key=lambda x: x[1]):
            tar.add(str(path), arcname=arcname, recursive=False)
    stream = buf.getvalue()
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    parts = []
    for i, start in enumerate(range(0, len(stream), part_bytes), 1):
        chunk = stream[start:start + part_bytes]
        (out_dir / part_name(i)).write_bytes(chunk)
        parts.append({"name": part_name(i), "bytes": len(chunk), "sha256": sha256(chunk)})
    manifest = {"bundle": name, "bytes": len(stream), "sha256": sha256(stream), "files": len(files),
                "parts": parts}
    (out_dir / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


def part_name(i: int) -> str:
    return f"part{i:02d}"


def stored_parts(manifest: dict, store: Path) -> list[str]:
    """The parts already stored (and intact) in ``store``."""
    ok = []
    for p in manifest["parts"]:
        f = store / p["name"]
        if f.is_file() and f.stat().st_size == p["bytes"] and sha256(f.read_bytes()) == p["sha256"]:
            ok.append(p["name"])
    return ok


def stage_part(manifest: dict, source: Path, store: Path) -> bool:
    """Copy one carried part into ``store`` after checking it; False when it was there already."""
    store.mkdir(parents=True, exist_ok=True)
    if source.name in stored_parts(manifest, store):
        return False
    entry = next((p for p in manifest["parts"] if p["name"] == source.name), None)
    if entry is None:
        raise SystemExit(f"{source.name} is not a part of bundle {manifest['bundle']}")
    data = source.read_bytes()
    if sha256(data) != entry["sha256"]:
        raise SystemExit(f"{source} is damaged (sha256 differs from the manifest): pack it again")
    (store / source.name).write_bytes(data)
    return True


def assemble(manifest: dict, store: Path, dest: Path) -> bool:
    """Join, verify and unpack the bundle into ``dest`` once every part is stored -> whether it is unpacked."""
    if (dest / UNPACKED).is_file():
        return True
    if len(stored_parts(manifest, store)) != len(manifest["parts"]):
        return False
    stream = b"".join((store / p["name"]).read_bytes() for p in manifest["parts"])
    if sha256(stream) != manifest["sha256"]:
        raise SystemExit(f"bundle {manifest['bundle']}: the joined parts do not match the manifest's sha256")
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(stream), mode="r") as tar:
        tar.extractall(dest, filter="data")
    (dest / UNPACKED).write_text(manifest["sha256"] + "\n")
    return True
