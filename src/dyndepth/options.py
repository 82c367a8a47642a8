"""Command-line options shared by every command that builds a SpeculativeDecoder (generate, demo, bench)."""

from __future__ import annotations

import argparse


def add_decoder_options(p: argparse.ArgumentParser, default_policy: str = "ddd") -> None:
    g = p.add_argument_group("model and draft tree")
    g.add_argument("--model", default="smollm2-135m-instruct",
                   help="zoo name, local Hugging Face model directory or Hub id (default: %(default)s)")
    g.add_argument("--head", default=None,
                   help="draft head directory (EAGLE format), 'random', or omit for the head shipped with a zoo model")
    g.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16", "float16"],
                   help="float32 is the exactness mode, bfloat16 the speed mode on CPU (default: %(default)s)")
    g.add_argument("--device", default="cpu", help="cpu or cuda (default: %(default)s)")
    g.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    g.add_argument("--policy", default=default_policy, choices=["ddd", "fixed", "plain"],
                   help="depth policy: ddd (dynamic depth), fixed (EAGLE-2), plain (no draft) (default: %(default)s)")
    g.add_argument("--draft-top-k", type=int, default=None, dest="tree_top_k",
                   help="beam width: children kept per node and nodes kept per depth (default: 10)")
    g.add_argument("--total-tokens", type=int, default=None,
                   help="tokens verified per step, root included (default: 24 on CPU, 60 on CUDA)")
    g.add_argument("--max-depth", type=int, default=None, help="most draft levels per step (ddd: 11, fixed: 6)")
    g.add_argument("--checks", default=None, help="ddd check depths, comma separated (default: 5,7,9)")
    g.add_argument("--threshold", type=float, default=None, help="ddd stop threshold on log beam mass (default: -0.3)")


def add_sampling_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("sampling")
    g.add_argument("--max-new-tokens", type=int, default=256)
    g.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    g.add_argument("--top-p", type=float, default=1.0)
    g.add_argument("--top-k", type=int, default=0, help="sampling top-k (0 = off)")
    g.add_argument("--seed", type=int, default=None, help="makes a sampled generation reproducible")


def decoder_kwargs(args) -> dict:
    from dyndepth.errors import DyndepthError

    kw = {}
    if args.tree_top_k is not None:
        kw["top_k"] = args.tree_top_k
    if args.total_tokens is not None:
        kw["total_tokens"] = args.total_tokens
    if args.max_depth is not None:
        kw["max_depth"] = args.max_depth
    if args.checks is not None:
        try:
            kw["checks"] = tuple(int(c) for c in args.checks.split(",") if c.strip())
        except ValueError:
            raise DyndepthError(f"--checks must be comma-separated integers, got {args.checks!r}") from None
    if args.threshold is not None:
        kw["threshold"] = args.threshold
    return kw


def build_decoder(args, policy: str | None = None):
    import torch

    from dyndepth.decoder import SpeculativeDecoder

    if args.threads:
        torch.set_num_threads(args.threads)
    return SpeculativeDecoder.from_pretrained(args.model, head=args.head, dtype=args.dtype, device=args.device,
                                              policy=policy or args.policy, **decoder_kwargs(args))
