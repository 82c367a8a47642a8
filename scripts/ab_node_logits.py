"""Paired A/B, in one process: verification's lm_head row by row against once per branch walked.

verify.NodeLogits computes a node's target logits together with those of its best-valued descendants (one
lm_head read per branch walked) when it is given the tree, and one row per node when it is not. This script runs
the same decoder both ways on the same questions, alternating which goes first, and prints both rates and
whether the outputs are identical (they must be: the rows are the same numbers, read in a different batch).

    python scripts/ab_node_logits.py qwen2.5-coder-1.5b-instruct ddd 8 docs/results/policy-sets/report-40.jsonl

Arguments: model, policy (ddd | fixed | auto; fixed uses depth 4, K 4, N 10), number of questions (half taken
from the file's first 20 lines, half from lines 21-40: the report set's HumanEval and MT-bench halves), a
question file. bf16, 2 threads, greedy, 128 new tokens; 32-token warm-up of both variants first.
"""
import json
import sys
import time

import torch

import dyndepth.decoder as decoder_module
from dyndepth import SpeculativeDecoder
from dyndepth.verify import NodeLogits


def row_by_row(features, to_logits, tree=None):
    return NodeLogits(features, to_logits)  # no tree: one lm_head read per node asked for


def main() -> None:
    model, policy, n, path = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    torch.set_num_threads(2)
    options = dict(top_k=4, total_tokens=10, max_depth=4) if policy == "fixed" else {}
    dec = SpeculativeDecoder.from_pretrained(model, dtype="bfloat16", policy=policy, **options)
    questions = [json.loads(line) for line in open(path)]
    questions = questions[:n // 2] + questions[20:20 + n - n // 2]
    variants = {"row by row": row_by_row, "per branch": NodeLogits}
    warm = dec.chat_ids("Hello, write a haiku.")
    for variant in variants.values():
        decoder_module.NodeLogits = variant
        dec.generate(warm, max_new_tokens=32, temperature=0)
    totals = {name: [0, 0.0] for name in variants}  # tokens, seconds
    same = 0
    for i, q in enumerate(questions):
        ids = dec.chat_ids(q["turns"][0])
        outputs = {}
        for name in (list(variants) if i % 2 == 0 else list(variants)[::-1]):
            decoder_module.NodeLogits = variants[name]
            start = time.perf_counter()
            out = dec.generate(ids, max_new_tokens=128, temperature=0)
            totals[name][1] += time.perf_counter() - start
            totals[name][0] += len(out.token_ids)
            outputs[name] = out.token_ids
        same += outputs["row by row"] == outputs["per branch"]
        print(q["question_id"], {k: round(t / s, 2) for k, (t, s) in totals.items()}, flush=True)
    decoder_module.NodeLogits = NodeLogits
    before, after = (totals[k][0] / totals[k][1] for k in variants)
    print(f"{model} {policy}: row by row {before:.2f} tok/s, per branch {after:.2f} tok/s, "
          f"ratio {after / before:.3f}, identical outputs {same}/{len(questions)}")


if __name__ == "__main__":
    main()
