"""Paired A/B in one process of ``fastpath.HALF_READ_ROWS`` 1 vs 4 on a bf16 model's default CPU fast path.

    .venv/bin/python scripts/half_read_rows_ab.py [MODEL]      # default qwen2.5-coder-1.5b-instruct

2 HumanEval + 2 MT-bench first turns (docs/results/vllm-bench/questions.jsonl): the suffix drafter at batch 1 (128
tokens, the two settings alternating per question) and plain decoding of the 4 prompts as one batch of 4 rows (64
tokens, twice each); 2 threads, greedy. Prints tok/s per setting and whether the suffix outputs are identical.
"""
import json
import sys
import time

import torch

from dyndepth import fastpath
from dyndepth.decoder import SpeculativeDecoder
from dyndepth.target import Target

torch.set_num_threads(2)

model = sys.argv[1] if len(sys.argv) > 1 else "qwen2.5-coder-1.5b-instruct"
qs = [json.loads(l) for l in open("docs/results/vllm-bench/questions.jsonl")]
qs = [q for q in qs if q["category"] == "humaneval"][:2] + [q for q in qs if q["category"] == "mt_bench"][:2]
target = Target.from_pretrained(model, dtype="bfloat16")
print(target.fast_path, flush=True)
suffix = SpeculativeDecoder(target, None, policy="ddd", drafter="suffix")
plain = SpeculativeDecoder(target, None, policy="plain")
ids = [suffix.chat_ids(q["turns"][0]) for q in qs]
res = {rows: {"suffix_s": 0.0, "suffix_tok": 0, "b4_s": 0.0, "b4_tok": 0, "out": []} for rows in (1, 4)}
for rows in (1, 4):  # warm-up: compiles
    fastpath.HALF_READ_ROWS = rows
    suffix.generate(ids[0], max_new_tokens=16, temperature=0.0)
    plain.generate(ids[:4], max_new_tokens=8, temperature=0.0, batch_size=4)
for i, p in enumerate(ids):
    for rows in ((1, 4) if i % 2 == 0 else (4, 1)):
        fastpath.HALF_READ_ROWS = rows
        t = time.perf_counter()
        o = suffix.generate(p, max_new_tokens=128, temperature=0.0)
        dt = time.perf_counter() - t
        res[rows]["suffix_s"] += dt
        res[rows]["suffix_tok"] += len(o.token_ids)
        res[rows]["out"].append(o.token_ids)
        print(i, rows, "suffix", round(len(o.token_ids) / dt, 2), flush=True)
for rows in (1, 4, 4, 1):
    fastpath.HALF_READ_ROWS = rows
    t = time.perf_counter()
    outs = plain.generate(ids, max_new_tokens=64, temperature=0.0, batch_size=4)
    dt = time.perf_counter() - t
    res[rows]["b4_s"] += dt
    res[rows]["b4_tok"] += sum(len(o.token_ids) for o in outs)
    print(rows, "plain b4", round(sum(len(o.token_ids) for o in outs) / dt, 2), flush=True)
for rows in (1, 4):
    r = res[rows]
    print(f"HALF_READ_ROWS={rows}: suffix b1 {r['suffix_tok']/r['suffix_s']:.2f} tok/s, plain b4 {r['b4_tok']/r['b4_s']:.2f} tok/s")
print("suffix outputs identical", sum(a == b for a, b in zip(res[1]["out"], res[4]["out"])), "/", len(ids))
