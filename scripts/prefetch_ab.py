"""Paired A/B of verify.prefetch filling small trees whole (PREFETCH_FLAT = 12) against the best branch only (0):
alternating in one process over the same decoders; prints tok/s and lm_head reads per step.

    .venv/bin/python scripts/prefetch_ab.py MODEL BATCH QUESTIONS POLICY:DRAFTER[,...] REPEATS
"""
import json
import sys
import time
from pathlib import Path

import torch

import dyndepth.verify as verify
from dyndepth import SpeculativeDecoder

QUESTIONS = Path(__file__).resolve().parents[1] / "docs/results/policy-sets/report-40.jsonl"


def main(model: str, batch: int, n: int, configs: list[str], repeats: int) -> None:
    torch.set_num_threads(2)
    questions = [json.loads(line) for line in QUESTIONS.open()][:n]
    decoders, first = {}, None
    for c in configs:
        policy, drafter = c.split(":")
        if first is None:
            first = decoders[c] = SpeculativeDecoder.from_pretrained(model, dtype="bfloat16", policy=policy,
                                                                     drafter=drafter)
        else:
            decoders[c] = SpeculativeDecoder(first.target, first.head, policy=policy, drafter=drafter)
    tok = first.tokenizer
    prompts = [tok.encode(tok.apply_chat_template([{"role": "user", "content": q["turns"][0]}],
                                                  add_generation_prompt=True, tokenize=False), add_special_tokens=False)
               for q in questions]
    calls, logits = [0], first.target.logits

    def counted(features):
        calls[0] += 1
        return logits(features)

    first.target.logits = counted
    for d in decoders.values():
        d.generate(prompts[:1], max_new_tokens=8, batch_size=1)  # warm-up
    results = {}
    for rep in range(repeats):
        for c in configs:
            for flat in ((0, 12) if rep % 2 == 0 else (12, 0)):
                verify.PREFETCH_FLAT, calls[0] = flat, 0
                t = time.perf_counter()
                outs = decoders[c].generate(prompts, max_new_tokens=128, batch_size=batch)
                wall = time.perf_counter() - t
                tokens, steps = sum(len(o.token_ids) for o in outs), sum(o.stats.steps for o in outs)
                results.setdefault((c, flat), []).append(tokens / wall)
                print(f"{c} flat {flat} B{batch} tok/s {tokens / wall:.2f} steps {steps} lm_head calls {calls[0]} "
                      f"({calls[0] / max(1, steps):.2f}/step)", flush=True)
    for (c, flat), v in sorted(results.items()):
        print(c, flat, round(sum(v) / len(v), 2))


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4].split(","), int(sys.argv[5]))
