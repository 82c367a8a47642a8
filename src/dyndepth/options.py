"""Command-line options shared by every command that builds a SpeculativeDecoder (generate, demo, bench).

Values are checked by ``dyndepth.validate`` (the same checks as the Python API), before any model loads.
"""

from __future__ import annotations

import argparse
import re


def add_decoder_options(p: argparse.ArgumentParser, default_policy: str = "ddd") -> None:
    g = p.add_argument_group("model and draft tree")
    g.add_argument("--model", default="smollm2-135m-instruct",
                   help="zoo name, local Hugging Face model directory or Hub id (default: %(default)s)")
    g.add_argument("--head", default=None,
                   help="draft head directory (EAGLE format), 'random', or omit for the head shipped with a zoo model")
    g.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16", "float16"],
                   help="float32 is the exactness mode, bfloat16 the speed mode on CPU (default: %(default)s)")
    g.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or mps (default: %(default)s)")
    g.add_argument("--no-fast-path", dest="fast_path", action="store_false",
                   help="keep the eager forward as loaded (default: on a CPU without a native bf16 matmul, a bf16 "
                        "model computes in float32, its matmuls of up to 48 rows reading the bf16 weights; on one "
                        "with it (AVX512-BF16, AMX), its linears run on oneDNN-prepacked bf16 weights, 1.63x on "
                        "Qwen2.5-1.5B plain decoding; docs/FASTPATH.md)")
    g.add_argument("--pack-linears", dest="fast_path", action="store_const", const="pack",
                   help="the fast path plus oneDNN-prepacked float32 weights for multi-row forwards (trees, batches; "
                        "1.5-1.7x on batches of 8 on an AVX2 CPU, docs/BENCHMARKS.md); costs a second copy of the "
                        "decoder's weights")
    g.add_argument("--threads", type=int, default=None, help="torch CPU threads, >= 1 (default: torch's choice)")
    g.add_argument("--policy", default=default_policy, choices=["ddd", "fixed", "auto", "plain"],
                   help="depth policy: ddd (dynamic depth), fixed (EAGLE-2), auto (cost-aware: depth and tree size "
                        "per step from measured costs), plain (no draft) (default: %(default)s)")
    g.add_argument("--drafter", default=None, choices=["head", "suffix", "hybrid", "switch"],
                   help="where draft tokens come from: head (the EAGLE draft head), suffix (matches in the prompt and "
                        "the output so far: no head needed, works for any model), hybrid (both in one tree), switch "
                        "(either/or per step, a baseline) (default: hybrid with a head, suffix for a model that "
                        "ships none)")
    g.add_argument("--draft-top-k", type=int, default=None, dest="tree_top_k",
                   help="beam width: children kept per node and nodes kept per depth, 1..64 (default: 10; "
                        "fixed and ddd keep fewer where a tree holds fewer nodes: the same trees)")
    g.add_argument("--total-tokens", type=int, default=None,
                   help="tokens verified per step, root included, 2..1024 (default: 60 on CUDA; on a CPU 24, or 4 for "
                        "--drafter head unless bf16 runs in AMX tiles; auto: the most it may choose, 48 / 128)")
    g.add_argument("--max-depth", type=int, default=None, help="most draft levels per step (ddd: 11, fixed: 6)")
    g.add_argument("--checks", default=None, help="ddd check depths, comma separated (default: 5,7,9)")
    g.add_argument("--threshold", type=float, default=None, help="ddd stop threshold on log beam mass (default: -0.3)")


def add_sampling_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("sampling (unset options take the model's generation_config.json; greedy if it has none)")
    g.add_argument("--max-new-tokens", type=int, default=256,
                   help="most tokens to generate, 1..the model's context length (default: %(default)s)")
    g.add_argument("--min-new-tokens", type=int, default=0, help="stop tokens are suppressed until this many (default 0)")
    g.add_argument("--temperature", type=float, default=None, help="0 = greedy")
    g.add_argument("--top-p", type=float, default=None,
                   help="nucleus sampling: sample among the most likely tokens whose probabilities add up to this, "
                        "in (0, 1]; 1 = off")
    g.add_argument("--top-k", type=int, default=None, help="sampling top-k (0 = off)")
    g.add_argument("--seed", type=int, default=None, help="makes a sampled generation reproducible")
    g.add_argument("--stop", action="append", default=None, metavar="TEXT",
                   help="stop when the text contains TEXT (not included in the output; repeatable); \\n, \\t "
                        "and \\\\ in TEXT mean a newline, a tab and a backslash, so --stop '\\n\\n' stops at a "
                        "blank line")
    g.add_argument("--stop-token-id", dest="stop_token_ids", type=int, action="append", default=[], metavar="ID",
                   help="an extra token id that ends the generation (kept in the output; repeatable)")
    g.add_argument("--ignore-eos", action="store_true", help="do not stop at the model's end-of-sequence tokens")


_ESCAPES = {"n": "\n", "t": "\t", "\\": "\\"}


def unescape(text: str) -> str:
    """A command-line stop string as the user meant it: a shell passes "\\n" as a backslash and an n, so \\n, \\t
    and \\\\ are turned into a newline, a tab and one backslash; any other backslash is kept as it is."""
    return re.sub(r"\\([nt\\])", lambda m: _ESCAPES[m.group(1)], text)


def sampling_kwargs(args) -> dict:
    stop = None if args.stop is None else [unescape(s) for s in args.stop]
    return dict(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p,
                top_k=args.top_k, seed=args.seed, stop=stop, stop_token_ids=tuple(args.stop_token_ids),
                min_new_tokens=args.min_new_tokens, ignore_eos=args.ignore_eos)


def settings_json(settings: dict) -> dict:
    """A decoder's ``describe()`` for JSON outputs (``generate --json``, the server's /v1/models): the draft beam
    width is ``draft_top_k`` there, so it is not mistaken for the sampling ``top_k`` printed next to it."""
    return {("draft_top_k" if k == "top_k" else k): v for k, v in settings.items()}


def check_sampling(args) -> None:
    """The model-free sampling checks, before the model loads."""
    from dyndepth.request import GenerationRequest

    GenerationRequest(**sampling_kwargs(args)).check()


def decoder_kwargs(args) -> dict:
    """The tree and policy keywords the user set (checked by SpeculativeDecoder, which names the flag)."""
    kw = {}
    if args.tree_top_k is not None:
        kw["top_k"] = args.tree_top_k
    if args.total_tokens is not None:
        kw["total_tokens"] = args.total_tokens
    if args.max_depth is not None:
        kw["max_depth"] = args.max_depth
    if args.checks is not None:
        kw["checks"] = args.checks  # a comma-separated string; validate.checks_list parses it
    if args.threshold is not None:
        kw["threshold"] = args.threshold
    if args.drafter is not None:
        kw["drafter"] = args.drafter
    if getattr(args, "suffix_cache", None) is not None:  # dyndepth serve
        kw["suffix_cache"] = args.suffix_cache
    return kw


def apply_threads(args) -> None:
    import torch

    from dyndepth import validate

    n = validate.threads(args.threads)
    if n is not None:
        torch.set_num_threads(n)


def check_decoder_options(args, policy: str | None = None) -> None:
    """The model-free checks of the decoder options (before anything loads or binds)."""
    from dyndepth import validate

    policy = policy or args.policy
    validate.tree_options(policy, **decoder_kwargs(args))
    if policy == "plain" and args.head is not None:
        raise validate.OptionError("head", args.head, "does not apply to the 'plain' policy (it drafts nothing)")
    validate.drafter_head(args.drafter, args.head)
    validate.device(args.device)
    validate.threads(args.threads)


def build_decoder(args, policy: str | None = None):
    from dyndepth.decoder import SpeculativeDecoder

    policy = policy or args.policy
    check_decoder_options(args, policy)
    apply_threads(args)
    return SpeculativeDecoder.from_pretrained(args.model, head=args.head, dtype=args.dtype, device=args.device,
                                              policy=policy, fast_path=getattr(args, "fast_path", True),
                                              **decoder_kwargs(args))
