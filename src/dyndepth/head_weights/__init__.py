"""Trained draft-head weights shipped with dyndepth, one folder per zoo model name (EAGLE format, bf16
safetensors, with the training record). The code that reads them is ``dyndepth.head``."""

from __future__ import annotations

from pathlib import Path

HEADS_DIR = Path(__file__).parent


def shipped_head(model_name: str) -> Path | None:
    """The head shipped for a zoo model name; None for anything else (a path, a Hub id, an unknown name)."""
    if model_name not in shipped_heads():
        return None
    path = HEADS_DIR / model_name
    return path if (path / "config.json").is_file() else None


def shipped_heads() -> list[str]:
    return sorted(p.name for p in HEADS_DIR.iterdir() if (p / "config.json").is_file())
