"""Paired A/B of verify.prefetch filling small trees whole (PREFETCH_FLAT = 12) against the best branch only (0):
alternating in one process, same decoders; prints tok/s and lm_head reads per step.

    .venv/bin/python scripts/prefetch_ab.py MODEL BATCH QUESTIONS POLICY:DRAFTER[,...] REPEATS
"""
import json
import sys
import time
from pathlib import Path

import torch
torch.set_num_threads(2)
from dyndepth import SpeculativeDecoder as SD
import dyndepth.verify as verify
model = sys.argv[1]; B = int(sys.argv[2]); N = int(sys.argv[3]); cfgs = sys.argv[4].split(","); reps = int(sys.argv[5])
qs = [json.loads(l) for l in open(str(Path(__file__).resolve().parents[1] / "docs/results/policy-sets/report-40.jsonl"))][:N]
decs = {}
first = None
for c in cfgs:
    pol, drafter = c.split(":")
    if first is None:
        first = decs[c] = SD.from_pretrained(model, dtype="bfloat16", policy=pol, drafter=drafter)
    else:
        decs[c] = SD(first.target, first.head, policy=pol, drafter=drafter)
tok = first.tokenizer
prompts = [tok.encode(tok.apply_chat_template([{"role": "user", "content": q["turns"][0]}], add_generation_prompt=True, tokenize=False), add_special_tokens=False) for q in qs]
calls = [0]
orig = first.target.logits
def spy(f):
    calls[0] += 1; return orig(f)
first.target.logits = spy
for d in decs.values(): d.generate(prompts[:1], max_new_tokens=8, batch_size=1)
res = {}
for rep in range(reps):
    for c in cfgs:
        for flat in ((0, 12) if rep % 2 == 0 else (12, 0)):
            verify.PREFETCH_FLAT = flat
            calls[0] = 0
            t = time.perf_counter(); outs = decs[c].generate(prompts, max_new_tokens=128, batch_size=B); w = time.perf_counter() - t
            k = sum(len(o.token_ids) for o in outs); steps = sum(o.stats.steps for o in outs)
            res.setdefault((c, flat), []).append(k / w)
            print(f"{c} flat {flat} B{B} tok/s {k/w:.2f} steps {steps} lm_head calls {calls[0]} ({calls[0]/max(1,steps):.2f}/step)", flush=True)
for (c, flat), v in sorted(res.items()):
    print(c, flat, round(sum(v)/len(v), 2))
