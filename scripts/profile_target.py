"""Where the target's per-token time goes: plain decoding (1 token) and 12- and 24-node tree forwards.

    python scripts/profile_target.py smollm2-135m-instruct --dtype float32 --threads 2 [--fast-path]

Runs dyndepth's Target directly (prefill one MT-bench prompt, then forwards of 1, 12 and 24 new tokens, each
committing only its first token so the context grows as in decoding) and prints, per shape:

- wall ms per forward (median over ``--steps``; ``--fast-path`` applies dyndepth.fastpath first);
- torch.profiler self-CPU time by category: linears (mm/addmm/mkldnn/mkl), attention (SDPA and its math ops),
  KV cache (cat / index_copy), elementwise (norms, rotary, activations, casts), other aten ops; and what is
  left of the wall time (the profiled forward's wall minus all aten self time: Python and dispatch overhead);
- the "overhead floor": the same architecture and layer count with tiny widths (hidden 64), whose forward is
  almost all Python and dispatch.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch
from transformers import AutoModelForCausalLM

from dyndepth.target import Target

CATEGORIES = {
    "linear": ("aten::mm", "aten::addmm", "mkldnn::", "mkl::", "aten::linear", "aten::matmul"),
    "attention": ("aten::_scaled_dot_product", "aten::scaled_dot_product", "aten::bmm", "aten::baddbmm",
                  "aten::_softmax", "aten::softmax"),
    "kv_cache": ("aten::cat", "aten::index_copy", "aten::index_select"),
    "elementwise": ("aten::mul", "aten::add", "aten::pow", "aten::mean", "aten::rsqrt", "aten::silu", "aten::neg",
                    "aten::to", "aten::_to_copy", "aten::copy_", "aten::sub", "aten::div", "aten::cos",
                    "aten::sin", "aten::expand", "aten::clone", "aten::contiguous"),
}


def category(name: str) -> str:
    for cat, prefixes in CATEGORIES.items():
        if any(name.startswith(p) for p in prefixes):
            return cat
    return "other"


def prompt_ids(target: Target) -> torch.Tensor:
    text = json.loads(open("/work/shared/data/mt_bench_question.jsonl").readline())["turns"][0]
    ids = target.tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                               tokenize=True)
    ids = ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "input_ids") else ids
    return torch.tensor(list(ids))


def tree_inputs(target: Target, n: int):
    """n new tokens after the L committed ones: node 0 is the root, node i's parent is (i - 1) // 3 (a 3-ary
    tree, the shape of a top-k draft) -> tokens [n], positions [n], visible [n, L + n]."""
    L = target.length
    parents = [-1] + [(i - 1) // 3 for i in range(1, n)]
    depth = [0] * n
    vis = torch.zeros(n, L + n, dtype=torch.bool)
    vis[:, :L] = True
    for i in range(n):
        j = i
        while j >= 0:
            vis[i, L + j] = True
            j = parents[j]
        depth[i] = 0 if i == 0 else depth[parents[i]] + 1
    tokens = torch.randint(100, 500, (n,))
    positions = L + torch.tensor(depth)
    return tokens, positions, vis


def step(target: Target, n: int) -> float:
    tokens, positions, visible = tree_inputs(target, n)
    start = time.perf_counter()
    feats = target.forward(tokens, positions, visible)
    target.logits(feats[:1])
    seconds = time.perf_counter() - start
    target.commit_path(torch.tensor([0]))
    return seconds


def measure(target: Target, ids: torch.Tensor, n: int, steps: int, profile: bool):
    target.reset()
    target.prefill(ids)
    for _ in range(3):
        step(target, n)
    walls = [step(target, n) for _ in range(steps)]
    cats = None
    if profile:
        from torch.profiler import ProfilerActivity, profile as prof

        with prof(activities=[ProfilerActivity.CPU]) as p:
            start = time.perf_counter()
            for _ in range(steps):
                step(target, n)
            prof_wall = (time.perf_counter() - start) / steps
        cats = {}
        for evt in p.key_averages():
            cats[category(evt.key)] = cats.get(category(evt.key), 0.0) + evt.self_cpu_time_total / 1e3 / steps
        cats = {k: round(v, 3) for k, v in sorted(cats.items())}
        cats["python_dispatch (wall - aten self)"] = round(prof_wall * 1e3 - sum(cats.values()), 3)
        cats["profiled_wall"] = round(prof_wall * 1e3, 3)
    return statistics.median(walls) * 1e3, min(walls) * 1e3, cats


def tiny_twin(config, dtype) -> Target:
    """The same architecture and layer count, tiny widths: a forward of it is almost all overhead."""
    cfg = config.__class__(**{**config.to_dict(), "hidden_size": 64, "intermediate_size": 128,
                              "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16,
                              "vocab_size": 512, "tie_word_embeddings": False})
    model = AutoModelForCausalLM.from_config(cfg, dtype=dtype).eval()
    return Target(model)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--sizes", default="1,12,24")
    ap.add_argument("--fast-path", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    target = Target.from_pretrained(args.model, dtype=args.dtype)
    ran = "eager"
    if args.fast_path:
        from dyndepth.fastpath import apply_fast_path

        ran = apply_fast_path(target.model, target.dtype)
        target = Target(target.model, target.tokenizer)
    ids = prompt_ids(target)
    twin = tiny_twin(target.config, target.dtype)
    print(f"model {args.model} dtype {args.dtype} threads {args.threads} path {ran} prompt {ids.numel()} tokens "
          f"cpu {os.uname().machine} load {os.getloadavg()}")
    for n in (int(s) for s in args.sizes.split(",")):
        med, best, cats = measure(target, ids, n, args.steps, profile=True)
        tmed, tbest, _ = measure(twin, torch.randint(0, 500, (ids.numel(),)), n, args.steps, profile=False)
        print(json.dumps({"n": n, "wall_ms_median": round(med, 2), "wall_ms_min": round(best, 2),
                          "overhead_floor_ms_median": round(tmed, 2), "profile_ms": cats}))
    print(f"load {os.getloadavg()}")


if __name__ == "__main__":
    main()
