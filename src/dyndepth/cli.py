"""The ``dyndepth`` command line.

Each subcommand lives next to the code it drives; this file only wires them into argparse and turns
``DyndepthError`` into a one-line message with exit code 2 (never a traceback for a user mistake).
"""

from __future__ import annotations

import argparse
import os
import sys

from dyndepth.errors import DyndepthError


def build_parser() -> argparse.ArgumentParser:
    from dyndepth.models import commands as model_commands

    parser = argparse.ArgumentParser(
        prog="dyndepth",
        description="Lossless speculative decoding with EAGLE-2 draft trees and Dynamic Depth Decoding (DDD).",
    )
    from dyndepth import __version__

    parser.add_argument("--version", action="version", version=f"dyndepth {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    model_commands.register(sub)
    for module in _optional_command_modules():
        module.register(sub)
    return parser


def _optional_command_modules():
    """Subcommand modules of the later pipeline stages; each exposes ``register(subparsers)``."""
    import importlib

    names = ["dyndepth.generate_cli", "dyndepth.demo", "dyndepth.train.cli", "dyndepth.bench.cli",
             "dyndepth.calibrate.cli", "dyndepth.serve.cli"]
    modules = []
    for name in names:
        try:
            modules.append(importlib.import_module(name))
        except ModuleNotFoundError as exc:  # a stage that does not exist yet
            if exc.name is None or not name.startswith(exc.name):
                raise
    return modules


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code = int(args.func(args) or 0)
        sys.stdout.flush()  # here, so that a reader that left (| head) is noticed inside this try
        return code
    except BrokenPipeError:
        # the reader of stdout closed it (e.g. `dyndepth generate ... | head -c 100`): stop quietly, as a
        # command killed by SIGPIPE does; stdout goes to /dev/null so the interpreter's final flush is quiet too
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # 128 + SIGPIPE, what a shell reports for such a command
    except DyndepthError as exc:
        from dyndepth.validate import OptionError

        message = exc.for_cli() if isinstance(exc, OptionError) else str(exc)
        print(f"error: {message}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
