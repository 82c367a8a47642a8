"""``dyndepth generate``: decode one prompt and print the text and the statistics."""

from __future__ import annotations

import json
import sys

from dyndepth.options import add_decoder_options, add_sampling_options, build_decoder


def register(sub) -> None:
    p = sub.add_parser("generate", help="generate text for one prompt with speculative decoding")
    add_decoder_options(p)
    add_sampling_options(p)
    p.add_argument("--prompt", required=True, help="the prompt text")
    p.add_argument("--chat", action="store_true", help="wrap the prompt in the model's chat template")
    p.add_argument("--json", action="store_true", help="print token ids and statistics as JSON")
    p.set_defaults(func=run)


def run(args) -> int:
    dec = build_decoder(args)
    ids = dec.chat_ids(args.prompt) if args.chat else dec.tokenizer(args.prompt)["input_ids"]
    sampling = dict(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p,
                    top_k=args.top_k, seed=args.seed)
    if args.json:
        out = dec.generate(ids, **sampling)
        print(json.dumps({"token_ids": out.token_ids, "text": out.text, "settings": dec.describe(),
                          "stats": out.stats.to_dict()}))
        return 0
    tokens: list[int] = []
    printed = ""
    for chunk in dec.stream(ids, **sampling):  # print as it is committed
        tokens.extend(chunk)
        text = dec.tokenizer.decode(tokens, skip_special_tokens=True)
        sys.stdout.write(text[len(printed):])
        sys.stdout.flush()
        printed = text
    s = dec.last_stats
    print()
    print(f"\n[{dec.policy.name}] {s.new_tokens} tokens in {s.total_time_s:.2f}s = {s.tokens_per_s:.1f} tok/s | "
          f"steps {s.steps} | tau {s.mean_accepted_tokens:.2f} | mean depth {s.mean_depth:.1f} | "
          f"draft {s.draft_time_s:.2f}s verify {s.verify_time_s:.2f}s prefill {s.prefill_time_s:.2f}s",
          file=sys.stderr)
    return 0
