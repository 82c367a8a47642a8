"""Project what ``auto`` would choose on a GPU, and its rate against DDD and the fixed EAGLE-2 tree (issue 16).

    python scripts/project_gpu.py qwen2.5-coder-1.5b-instruct --questions 10 --out docs/results/gpu-projection-qwen15

The acceptance is real: the shipped head drafts for the real target on this CPU (bf16, greedy) and the target
verifies. The costs are the GPU's: ``auto`` decides with a cost model built from the H200 engine measurements in
docs/BENCHMARKS.md ("GPU engine steps after the hot-path changes"), frozen (no online correction from the CPU's
times: the policy is shown every step at the model's price, so its cost fit stays on the model and its run
rate is a GPU rate), and every method's steps are then priced with that same model:

    t_step(depth, N) = draft_base + depth * draft_level + t_verify(N),   t_verify linear from N = 1 to 60

so the projected speedup is  tokens / sum of t_step  over vanilla ``transformers`` generate's ms per token on
the same GPU. It leaves out what the GPU tables leave out (prefill, first-use compilation of new shapes) and
assumes the H200's verify curve stays as flat past 60 tokens as the H100's did up to 80 (so auto may not
choose more than 80). It is a projection, not a measurement: measure it when a GPU is lent (scripts/gpu/).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# H200, bf16, random heads, 300-token prefix (docs/BENCHMARKS.md): ms per plain step, verify of 60 tokens
# (mean of the eagle2 and ddd rows), draft of 6 levels (eagle2) and of 5 levels (ddd), generate ms per token.
H200 = {
    "qwen": {"plain": 21.26, "verify60": (23.66 + 24.20) / 2, "draft6": 9.88, "draft5": 8.78, "generate": 25.46},
    "smollm2": {"plain": 28.62, "verify60": (24.49 + 24.15) / 2, "draft6": 9.62, "draft5": 8.34, "generate": 25.48},
}
N_MAX = 80


def gpu_costs(shape: str):
    from dyndepth.policies.costs import CostModel

    m = H200[shape]
    level = (m["draft6"] - m["draft5"]) / 1000
    base = m["draft6"] / 1000 - 6 * level
    v1 = min(m["plain"], m["verify60"]) / 1000  # the plain step includes loop overhead; never above verify(60)
    slope = (m["verify60"] / 1000 - v1) / 59
    sizes = [1, 2, 4, 8, 16, 32, 48, 60, N_MAX]
    return CostModel(sizes, [v1 + slope * (n - 1) for n in sizes], base, level,
                     meta={"source": f"H200 engine table, {shape} shape (docs/BENCHMARKS.md)"})


def gpu_priced(costs):
    """An ``auto`` policy that sees every step at the GPU model's price instead of the CPU's measured times:
    its cost fit then stays on the model (measured = predicted) and its run rate is a GPU rate."""
    from dataclasses import replace

    import torch

    from dyndepth.policies import CostAwarePolicy

    class GpuPriced(CostAwarePolicy):
        def observe(self, step):
            draft = costs.draft_time(step.depth) if step.depth else 0.0
            verify = float(costs.verify_time(torch.tensor([step.tree_size]))[0])
            super().observe(replace(step, draft_time_s=draft, verify_time_s=verify))

    return GpuPriced(costs=costs)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model")
    p.add_argument("--questions", type=int, default=10, help="per set: this many HumanEval and MT-bench questions")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()

    import torch

    from dyndepth.bench.questions import read_questions
    from dyndepth.decoder import SpeculativeDecoder
    from dyndepth.policies import make_policy

    torch.set_num_threads(args.threads)
    shape = "qwen" if "qwen" in args.model.lower() else "smollm2"
    costs = gpu_costs(shape)
    qs = read_questions(ROOT / "docs" / "results" / "policy-sets" / "report-40.jsonl")
    qs = [q for q in qs if q.category == "humaneval"][: args.questions] + \
         [q for q in qs if q.category != "humaneval"][: args.questions]
    methods = {  # name -> (policy object, total_tokens, top_k): the GPU settings of each
        "eagle2 (N 60, D 6, K 10)": (make_policy("fixed", max_depth=6), 60, 10),
        "ddd (defaults, N 60, K 10)": (make_policy("ddd"), 60, 10),
        f"auto (H200 costs, N <= {N_MAX}, K 10)": (gpu_priced(costs), N_MAX, 10),
    }
    base = SpeculativeDecoder.from_pretrained(args.model, dtype="bfloat16", policy="plain")
    from dyndepth.decoder import load_head

    head = load_head(None, args.model, base.target)
    args.out.mkdir(parents=True, exist_ok=True)
    rows = {}
    for name, (policy, n, k) in methods.items():
        dec = SpeculativeDecoder(base.target, head, policy=policy, top_k=k, total_tokens=n)
        tokens = steps = 0
        seconds = 0.0
        depths, sizes = [], []
        for i, q in enumerate(qs):
            out = dec.generate(base.chat_ids(q.turns[0]), max_new_tokens=args.max_new_tokens, temperature=0.0)
            for s in out.stats.step_stats:
                seconds += costs.draft_time(s.depth) + float(costs.verify_time(torch.tensor([s.tree_size]))[0])
                depths.append(s.depth)
                sizes.append(s.tree_size)
            tokens += len(out.token_ids) - 1  # the first token comes from the prefill, not from a step
            steps += out.stats.steps
            print(f"{name}: {i + 1}/{len(qs)} tau {out.stats.mean_accepted_tokens:.2f}", file=sys.stderr, flush=True)
        rate = tokens / seconds
        rows[name] = {"tau": round(tokens / steps, 3), "mean_depth": round(sum(depths) / len(depths), 2),
                      "mean_n": round(sum(sizes) / len(sizes), 1), "ms_per_step": round(1000 * seconds / steps, 2),
                      "projected_tok_s": round(rate, 1),
                      "projected_speedup": round(rate * H200[shape]["generate"] / 1000, 2)}
    doc = {"model": args.model, "questions": [q.question_id for q in qs], "max_new_tokens": args.max_new_tokens,
           "dtype": "bfloat16", "cost_model": costs.to_dict(), "vanilla_ms_per_token": H200[shape]["generate"],
           "methods": rows}
    (args.out / "projection.json").write_text(json.dumps(doc, indent=1))
    lines = [f"GPU projection for {args.model} ({len(qs)} questions, {args.max_new_tokens} new tokens, bf16 "
             f"acceptance from this CPU, H200 costs; vanilla generate {H200[shape]['generate']} ms/token)", "",
             "| method | tau | mean depth | mean N | projected ms/step | projected tok/s | projected speedup |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {k} | {r['tau']:.2f} | {r['mean_depth']:.2f} | {r['mean_n']:.1f} | {r['ms_per_step']:.2f} | "
              f"{r['projected_tok_s']:.1f} | {r['projected_speedup']:.2f}x |" for k, r in rows.items()]
    text = "\n".join(lines) + "\n"
    (args.out / "projection.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
