"""``dyndepth demo`` (what ``make run`` shows): the same chat prompt decoded plainly and with DDD, side by side."""

from __future__ import annotations

import collections
import platform

import torch

from dyndepth.options import add_decoder_options

DEFAULT_PROMPT = "Write a short story about a robot who learns to paint. Keep it under 150 words."


def register(sub) -> None:
    p = sub.add_parser("demo", help="plain decoding vs DDD on one chat prompt: same text, how much faster",
                       description="Plain decoding vs DDD on one chat prompt. Demo defaults (measured best on a "
                       "2-core CPU in float32): --dtype float32 --draft-top-k 4 --total-tokens 8 --checks 2,3,4 "
                       "--max-depth 6 --threads 2.")
    add_decoder_options(p)
    p.add_argument("--prompt", default=DEFAULT_PROMPT, help="the user message of the chat prompt")
    p.add_argument("--max-new-tokens", type=int, default=160,
                   help="tokens each of the two generations decodes (default: %(default)s)")
    # float32: the exactness mode, so the two texts are identical token for token (bf16 tree batching can flip
    # near-ties). A small tree with early DDD checks: on a CPU a float32 verification of 8 tokens already costs
    # ~1.5x a one-token step, and a draft level ~10% of one, so the head must earn each level. Measured on SmolLM2
    # with the previous head (2 threads, 4 prompts x 128 tokens): checks 2/3/4 1.11x, checks 5/7/9 0.93x; with the
    # GPU-trained head on the demo prompt: N 8 checks 2/3/4 1.18-1.20x, N 12 checks 3/4/5 1.12x, N 16 K 6 0.98x.
    p.set_defaults(func=run, threads=2, dtype="float32", total_tokens=8, tree_top_k=4, checks="2,3,4", max_depth=6)


def run(args) -> int:
    from dyndepth import validate
    from dyndepth.decoder import SpeculativeDecoder, load_head
    from dyndepth.drafters.stage import resolve_drafter
    from dyndepth.errors import DyndepthError
    from dyndepth.head_weights import shipped_head
    from dyndepth.options import apply_threads, decoder_kwargs
    from dyndepth.target import Target

    policy = args.policy
    if policy == "plain":
        raise validate.OptionError("policy", policy, "must draft: the demo compares plain decoding with it (use ddd, "
                                                     "fixed or auto)")
    validate.tree_options(policy, **decoder_kwargs(args))
    validate.drafter_head(args.drafter, args.head)
    validate.integer("max_new_tokens", args.max_new_tokens, lo=1)
    validate.device(args.device)
    apply_threads(args)
    target = Target.from_pretrained(args.model, dtype=args.dtype, device=args.device)
    validate.max_new_tokens_fit(args.max_new_tokens, target.max_context)
    head_arg = args.head
    drafter = resolve_drafter(args.drafter, head_arg is not None or shipped_head(args.model) is not None)
    head = None if drafter == "suffix" else load_head(head_arg, args.model, target)  # suffix: no head
    if drafter == "suffix" and args.drafter is None:
        print(f"note: no trained head ships for {args.model}; drafting from suffix matches alone (--drafter suffix)")
    plain = SpeculativeDecoder(target, None, policy="plain")
    ddd = SpeculativeDecoder(target, head, policy=policy, **{**decoder_kwargs(args), "drafter": drafter})
    ids = ddd.chat_ids(args.prompt)
    for dec in (plain, ddd):  # warm-up: first calls pay one-off allocation costs
        dec.generate(ids, max_new_tokens=8, temperature=0.0)

    print(f"model {args.model} | {args.dtype} | {args.device} | {torch.get_num_threads()} threads | "
          f"{platform.processor() or platform.machine()}")
    print(f"head {'none' if head is None else head_arg or 'shipped'} | {ddd.describe()}")
    print(f"prompt: {args.prompt}\n")
    a = plain.generate(ids, max_new_tokens=args.max_new_tokens, temperature=0.0)
    b = ddd.generate(ids, max_new_tokens=args.max_new_tokens, temperature=0.0)
    print("--- plain decoding " + "-" * 50)
    print(a.text)
    print(f"--- {ddd.policy.name} " + "-" * 60)
    print(b.text)
    print("-" * 70)
    same = a.token_ids == b.token_ids
    print(f"identical tokens: {'YES' if same else 'NO'} ({len(a.token_ids)} vs {len(b.token_ids)} tokens)")
    if not same:
        first = next((i for i, (x, y) in enumerate(zip(a.token_ids, b.token_ids)) if x != y),
                     min(len(a.token_ids), len(b.token_ids)))
        print(f"  first difference at token {first}" + (" (bf16 near-tie: run with --dtype float32 for the "
                                                         "exactness mode)" if args.dtype != "float32" else ""))
    print(f"plain: {a.stats.tokens_per_s:6.2f} tok/s")
    print(f"{ddd.policy.name:5s}: {b.stats.tokens_per_s:6.2f} tok/s  -> speedup {b.stats.tokens_per_s / a.stats.tokens_per_s:.2f}x")
    print(f"tau (mean accepted tokens per step): {b.stats.mean_accepted_tokens:.2f} over {b.stats.steps} steps")
    hist = collections.Counter(b.stats.depths)
    print("depths drafted: " + ", ".join(f"{d}: {hist[d]}" for d in sorted(hist)))
    s = b.stats
    print(f"time split: draft {s.draft_time_s:.2f}s, verify {s.verify_time_s:.2f}s, prefill {s.prefill_time_s:.2f}s, "
          f"other {s.other_time_s:.2f}s")
    if not same and args.dtype == "float32":
        raise DyndepthError("outputs differ in float32: this is a bug, please report it")
    return 0
