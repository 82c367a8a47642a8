"""Where and why do bf16 greedy outputs of a `dyndepth bench` run leave vanilla's?

For every first turn where a method's token ids differ from vanilla's, take the first differing position k and
run the target once on the shared prefix (prompt + vanilla's first k tokens), in bfloat16 and in float32, and
print the logit gap between vanilla's token and the method's token there. Gaps of about one bf16 step (0.125
at logits of 16-32) and float32 gaps of either sign mean a near-tie that rounding decided, not a wrong token.

    python scripts/bf16_divergence.py docs/results/smol-mtbench40 smollm2-135m-instruct ddd,eagle2-cpu
"""

import argparse
import json
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from dyndepth.bench.questions import load_questions
from dyndepth.models import resolve


def first_turn_prompt(tok, question: str) -> list[int]:
    ids = tok.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True,
                                  tokenize=True, return_dict=False)
    return list(ids["input_ids"] if isinstance(ids, dict) else ids)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", type=Path, help="a dyndepth bench --out folder (greedy, with vanilla)")
    ap.add_argument("model", help="the run's target (zoo name or model directory)")
    ap.add_argument("methods", help="comma-separated methods to compare with vanilla")
    ap.add_argument("--bench", default="mt_bench")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    path = resolve(args.model) if not Path(args.model).is_dir() else Path(args.model)
    tok = AutoTokenizer.from_pretrained(path)
    models = {dt: AutoModelForCausalLM.from_pretrained(path, dtype=dt).eval() for dt in (torch.bfloat16, torch.float32)}
    questions = {q.question_id: q for q in load_questions(args.bench)[1]}

    def answers(method):
        lines = (args.run / "answers" / f"{method}.jsonl").read_text().splitlines()
        return {r["question_id"]: r["choices"][0]["token_ids"][0] for r in map(json.loads, lines)}

    vanilla = answers("vanilla")
    for method in args.methods.split(","):
        firsts, gap16, gap32 = [], [], []
        ours = answers(method)
        for qid, b in ours.items():
            a = vanilla[qid]
            k = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), None)
            if k is None:  # identical, or one is a prefix of the other (a stop token)
                continue
            ids = torch.tensor([first_turn_prompt(tok, questions[qid].turns[0]) + a[:k]])
            with torch.no_grad():
                l16, l32 = (models[dt](ids).logits[0, -1].float() for dt in (torch.bfloat16, torch.float32))
            firsts.append(k)
            gap16.append(abs(float(l16[a[k]] - l16[b[k]])))
            gap32.append(float(l32[a[k]] - l32[b[k]]))  # > 0: float32 agrees with vanilla's token
        print(f"{method}: first turns differing from vanilla {len(firsts)}/{len(ours)}; "
              f"first difference at token {sorted(firsts)}")
        if firsts:
            print(f"  |bf16 gap| median {sorted(gap16)[len(gap16) // 2]:.3f}, max {max(gap16):.3f}; float32 gap "
                  f"(vanilla's token - {method}'s): {min(gap32):+.3f} .. {max(gap32):+.3f}, "
                  f"{sum(g < 0 for g in gap32)} of {len(gap32)} prefer {method}'s token")


if __name__ == "__main__":
    main()
