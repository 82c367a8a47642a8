"""vLLM's engine as a benchmark worker: run by *vLLM's* Python (``dyndepth bench --vllm-python PATH``), never
imported by dyndepth, so it imports nothing of dyndepth and ``vllm`` is never a dependency.

Protocol: one JSON object per line. The worker builds ``vllm.LLM`` from its command line, answers one warm-up
request, then writes ``{"ready": true, ...}``. Each request line holds ``prompts`` (token id lists),
``batch_size``, ``max_tokens``, ``temperature``, ``top_p``, ``top_k`` and ``seed``; the answer line holds the new
ids per prompt and the seconds from submitting the first prompt to the last one finishing, measured here so the
pipe costs nothing. At most ``batch_size`` requests run at once; a new one joins as soon as one finishes
(continuous batching, as dyndepth's own ``generate(prompts, batch_size=B)``). Everything vLLM prints goes to
stderr: the protocol owns stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--max-model-len", type=int, default=2048)
    ap.add_argument("--max-num-seqs", type=int, default=16)
    ap.add_argument("--max-num-batched-tokens", type=int, default=512)
    ap.add_argument("--ngram", type=int, default=0, help="n-gram speculation with this many draft tokens (0: off)")
    ap.add_argument("--lookup-min", type=int, default=2)
    ap.add_argument("--lookup-max", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    out = os.fdopen(os.dup(1), "w", buffering=1)  # the protocol's stdout
    os.dup2(2, 1)  # vLLM's prints and logs go to stderr
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")  # GiB: the benchmark's own model shares the memory

    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    spec = None
    if args.ngram:
        spec = {"method": "ngram", "num_speculative_tokens": args.ngram, "prompt_lookup_min": args.lookup_min,
                "prompt_lookup_max": args.lookup_max}
    began = time.perf_counter()
    llm = LLM(model=args.model, dtype=args.dtype, max_model_len=args.max_model_len, speculative_config=spec,
              max_num_seqs=args.max_num_seqs, max_num_batched_tokens=args.max_num_batched_tokens, seed=args.seed)
    startup = time.perf_counter() - began
    engine = llm.llm_engine

    def run(req: dict) -> dict:
        if req["temperature"] > 0:
            params = [SamplingParams(temperature=req["temperature"], top_p=req["top_p"], top_k=req["top_k"] or -1,
                                     max_tokens=req["max_tokens"], seed=req["seed"] + i)
                      for i in range(len(req["prompts"]))]
        else:
            params = [SamplingParams(temperature=0.0, max_tokens=req["max_tokens"])] * len(req["prompts"])
        pending = list(enumerate(req["prompts"]))[::-1]
        running, done, index = 0, {}, {}
        t0 = time.perf_counter()
        while pending or running:
            while pending and running < req["batch_size"]:
                i, ids = pending.pop()
                index[str(i)] = i
                index[engine.add_request(str(i), TokensPrompt(prompt_token_ids=ids), params[i]) or str(i)] = i
                running += 1
            for o in engine.step():
                if o.finished:
                    done[index[o.request_id]] = list(o.outputs[0].token_ids)
                    running -= 1
        seconds = time.perf_counter() - t0
        return {"ids": [done[i] for i in range(len(req["prompts"]))], "seconds": seconds}

    warm = run({"prompts": [[1, 2, 3, 4]], "batch_size": 1, "max_tokens": 8, "temperature": 0.0, "top_p": 1.0,
                "top_k": 0, "seed": 0})
    import vllm

    out.write(json.dumps({"ready": True, "version": vllm.__version__, "startup_s": round(startup, 1),
                          "warmup_s": round(warm["seconds"], 2),
                          "bind": os.environ.get("VLLM_CPU_OMP_THREADS_BIND", "auto")}) + "\n")
    for line in sys.stdin:
        if line.strip():
            out.write(json.dumps(run(json.loads(line))) + "\n")


if __name__ == "__main__":
    main()
