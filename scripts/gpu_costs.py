#!/usr/bin/env python3
"""Cost curves of speculative decoding on a GPU, with randomly initialised models of the zoo's shapes.

Weights cannot travel to a lent GPU machine, and timings do not depend on weight values, so the models are built
from hard-coded copies of the zoo models' config.json shapes. Measured, in bf16 on CUDA by default:

1. target verification time vs tree size N (one forward over N tree tokens after a 300-token prefix, 4D float
   mask, logits for all N, as dyndepth's Target does); N = 1 is the vanilla decode step t_step;
2. draft costs with dyndepth's own DraftHead and tree growth: the root forward, the cost per extra level
   (slope of grow_pool between 1 and 6 levels), for K = 4, 8, 10, with the full and a reduced draft vocabulary;
   plus the rerank + tree tensors;
3. end-to-end steps of dyndepth's loop (random head: tau ~ 1, so a step's time is the cost T of the cost model
   in docs/ALGORITHM.md);
4. a projected speedup table: speedup = tau * t_step / (t_root + (D-1) * t_level + t_verify(N) + t_rerank).

    python scripts/gpu_costs.py                 # on the GPU machine (~1-3 min; budget-guarded under 8 min)
    python scripts/gpu_costs.py --smoke         # tiny shapes on CPU, a few seconds: checks the script itself

Results print as Markdown; with $OUT (or --out) set, gpu_costs.json and gpu_costs.md are written there.
Needs only torch and transformers; dyndepth is imported from this repository's src/.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import statistics
import sys
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "src"))

import torch  # noqa: E402

# config.json values of the zoo models (architecture only: no weights are needed for timing)
MODELS = {
    "smollm2-135m": dict(arch="llama", hidden_size=576, num_hidden_layers=30, num_attention_heads=9,
                         num_key_value_heads=3, head_dim=64, intermediate_size=1536, vocab_size=49152,
                         max_position_embeddings=8192, rms_norm_eps=1e-5, tie_word_embeddings=True,
                         reduced_vocab=16384),
    "qwen2.5-coder-1.5b": dict(arch="qwen2", hidden_size=1536, num_hidden_layers=28, num_attention_heads=12,
                               num_key_value_heads=2, intermediate_size=8960, vocab_size=151936,
                               max_position_embeddings=32768, rms_norm_eps=1e-6, tie_word_embeddings=False,
                               reduced_vocab=32768),
}
SMOKE_MODEL = dict(arch="llama", hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                   intermediate_size=128, vocab_size=512, max_position_embeddings=1024, rms_norm_eps=1e-5,
                   tie_word_embeddings=False, reduced_vocab=128)
TREE_SIZES = (1, 4, 8, 16, 32, 48, 60, 80)
WIDTHS = (4, 8, 10)
TAUS = (1.5, 2.0, 2.5, 3.0, 3.5, 4.0, 4.5, 5.0, 6.0)
# (label, N, levels D, K, reduced vocab?) for the projection; D = 5/7/9/11 are DDD's possible depths
CONFIGS = [("eagle2 N60 D6 K10", 60, 6, 10, False), ("eagle2 N60 D6 K10 reduced-V", 60, 6, 10, True),
           ("N32 D6 K8", 32, 6, 8, False), ("N16 D5 K4", 16, 5, 4, False), ("N16 D5 K4 reduced-V", 16, 5, 4, True),
           ("ddd stop@5 N60 K10", 60, 5, 10, False), ("ddd stop@7 N60 K10", 60, 7, 10, False),
           ("ddd stop@9 N60 K10", 60, 9, 10, False), ("ddd full 11 N60 K10", 60, 11, 10, False)]


class Clock:
    def __init__(self, device, warmup: int, reps: int):
        self.device, self.warmup, self.reps = device, warmup, reps

    def sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def median_ms(self, fn, after=None) -> float:
        """Median wall time of fn() in ms (device-synchronised); after() runs untimed after each call."""
        times = []
        for i in range(self.warmup + self.reps):
            self.sync()
            t0 = time.perf_counter()
            fn()
            self.sync()
            if i >= self.warmup:
                times.append(1000 * (time.perf_counter() - t0))
            if after:
                after()
        return statistics.median(times)


def build_model(spec: dict, dtype, device):
    from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config

    cfg = {k: v for k, v in spec.items() if k not in ("arch", "reduced_vocab")}
    config = (LlamaConfig if spec["arch"] == "llama" else Qwen2Config)(**cfg)
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    return model.eval()


def _cache_kw(base, cache) -> dict:
    """transformers 5.x renamed past_key_values to cache; accept either."""
    params = inspect.signature(base.forward).parameters
    return {"cache": cache} if "cache" in params else {"past_key_values": cache}


def _crop(cache, length: int):
    for layer in cache.layers:
        layer.keys = layer.keys[..., :length, :]
        layer.values = layer.values[..., :length, :]


@torch.inference_mode()
def verify_curve(model, clock, prefix: int, sizes) -> dict:
    from transformers import DynamicCache

    device, dtype = clock.device, model.dtype
    base, head = model.get_decoder(), model.get_output_embeddings()
    cache = DynamicCache()
    ids = torch.randint(10, model.config.vocab_size, (1, prefix), device=device)
    base(input_ids=ids, use_cache=True, **_cache_kw(base, cache))
    out = {}
    for n in sizes:
        neg = torch.finfo(dtype).min
        vis = torch.ones(n, prefix + n, dtype=torch.bool, device=device)
        vis[:, prefix:] = torch.ones(n, n, dtype=torch.bool, device=device).tril()
        mask = torch.zeros(vis.shape, dtype=dtype, device=device).masked_fill_(~vis, neg)[None, None]
        pos = torch.arange(prefix, prefix + n, device=device)[None]
        tok = torch.randint(10, model.config.vocab_size, (1, n), device=device)

        def fwd():
            h = base(input_ids=tok, position_ids=pos, attention_mask=mask, use_cache=True,
                     **_cache_kw(base, cache)).last_hidden_state
            head(h).float()

        out[n] = clock.median_ms(fwd, after=lambda: _crop(cache, prefix))
    return out


@torch.inference_mode()
def draft_costs(model, spec, clock, prefix: int, widths, n_new: int = 3) -> dict:
    from dyndepth.drafters.eagle import grow_pool
    from dyndepth.head import DraftHead, DraftKV, head_config
    from dyndepth.policies import FixedDepth

    device, dtype = clock.device, model.dtype
    torch.manual_seed(1)
    head = DraftHead(head_config(model.config)).to(device=device, dtype=dtype)
    head.bind(model.get_input_embeddings(), model.get_output_embeddings().weight)
    hidden = model.config.hidden_size
    feats = torch.randn(prefix, hidden, device=device, dtype=dtype)
    toks = torch.randint(10, model.config.vocab_size, (prefix,), device=device)
    base_kv = DraftKV()
    grow_pool(head, base_kv, toks, feats, FixedDepth(1), 1)  # committed draft cache of `prefix` pairs
    new_t = torch.randint(10, model.config.vocab_size, (n_new,), device=device)
    new_f = torch.randn(n_new, hidden, device=device, dtype=dtype)

    def fresh_kv():
        kv = DraftKV()
        kv.keys, kv.values, kv.committed = base_kv.keys, base_kv.values, base_kv.committed
        return kv

    results = {}
    for vocab_label, vocab in (("full", None), ("reduced", spec["reduced_vocab"])):
        head.set_draft_vocab(None if vocab is None else torch.arange(vocab, device=device))
        for k in widths:
            t1 = clock.median_ms(lambda: grow_pool(head, fresh_kv(), new_t, new_f, FixedDepth(1), k))
            t6 = clock.median_ms(lambda: grow_pool(head, fresh_kv(), new_t, new_f, FixedDepth(6), k))
            results[f"{vocab_label}/K{k}"] = {"vocab": vocab or model.config.vocab_size, "K": k,
                                              "root_ms": t1, "per_level_ms": (t6 - t1) / 5, "six_levels_ms": t6}
    head.set_draft_vocab(None)
    rerank = {}
    for label, n, d, k in (("N60 D6 K10", 60, 6, 10), ("N16 D5 K4", 16, 5, 4), ("N24 D5 K10", 24, 5, 10)):
        pool = grow_pool(head, fresh_kv(), new_t, new_f, FixedDepth(d), k)

        def select_and_tensors():
            tree = pool.select(1, n - 1)
            tree.visibility(prefix, device)
            tree.position_ids(prefix, device)

        rerank[label] = clock.median_ms(select_and_tensors)
    return {"levels": results, "rerank_ms": rerank}


def engine_steps(model, clock, prefix: int, new_tokens: int) -> dict:
    """Mean step time of dyndepth's real loop (random head: tau ~ 1, so step time = T of the cost model),
    and transformers' greedy generate on the same model for reference."""
    from dyndepth.decoder import SpeculativeDecoder
    from dyndepth.head import DraftHead, head_config
    from dyndepth.target import Target

    target = Target(model)  # picks cache= or past_key_values= for the installed transformers
    torch.manual_seed(2)
    head = DraftHead(head_config(model.config)).to(device=clock.device, dtype=model.dtype)
    prompt = torch.randint(10, model.config.vocab_size, (prefix,)).tolist()
    out = {}
    ids = torch.tensor([prompt], device=clock.device)
    per_token = []
    for _ in range(2):  # a cold run over the full length, then the timed warm one
        clock.sync()
        t0 = time.perf_counter()
        with torch.inference_mode():
            model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                           min_new_tokens=new_tokens, do_sample=False, pad_token_id=0)
        clock.sync()
        per_token.append(1000 * (time.perf_counter() - t0) / new_tokens)
    out["transformers generate (greedy)"] = {"steps": new_tokens, "tau": 1.0, "mean_depth": 0,
                                             "cold_step_ms": per_token[0], "step_ms": per_token[1],
                                             "draft_ms": 0.0, "verify_ms": None}
    for label, kw in (("plain", dict(policy="plain")),
                      ("eagle2 N60 D6 K10", dict(policy="fixed", max_depth=6, top_k=10, total_tokens=60)),
                      ("N16 D5 K4", dict(policy="fixed", max_depth=5, top_k=4, total_tokens=16)),
                      ("ddd N60 K10 (defaults)", dict(policy="ddd", top_k=10, total_tokens=60))):
        dec = SpeculativeDecoder(target, head if kw["policy"] != "plain" else None, **kw)
        dec.stop_ids = set()  # random weights: never stop early
        clock.sync()
        cold = dec.generate(prompt, max_new_tokens=new_tokens).stats  # warm-up over the same lengths
        st = dec.generate(prompt, max_new_tokens=new_tokens).stats
        steps = max(1, st.steps)
        out[label] = {"steps": st.steps, "tau": round(st.mean_accepted_tokens, 3),
                      "cold_step_ms": 1000 * (cold.total_time_s - cold.prefill_time_s) / max(1, cold.steps),
                      "step_ms": 1000 * (st.total_time_s - st.prefill_time_s) / steps,
                      "draft_ms": 1000 * st.draft_time_s / steps, "verify_ms": 1000 * st.verify_time_s / steps,
                      "mean_depth": round(st.mean_depth, 2)}
    return out


def interp(curve: dict, n: int) -> float:
    xs = sorted(curve)
    if n in curve:
        return curve[n]
    lo = max([x for x in xs if x < n], default=xs[0])
    hi = min([x for x in xs if x > n], default=xs[-1])
    if hi == lo:
        return curve[lo]
    return curve[lo] + (curve[hi] - curve[lo]) * (n - lo) / (hi - lo)


def project(verify: dict, draft: dict) -> list[dict]:
    t_step = verify[1]
    rows = []
    for label, n, d, k, reduced in CONFIGS:
        lv = draft["levels"].get(f"{'reduced' if reduced else 'full'}/K{k}")
        if lv is None:
            continue
        rr = draft["rerank_ms"].get("N60 D6 K10" if n >= 48 else "N16 D5 K4", 0.0)
        cycle = lv["root_ms"] + (d - 1) * lv["per_level_ms"] + interp(verify, n) + rr
        row = {"config": label, "N": n, "D": d, "K": k, "vocab": lv["vocab"], "cycle_ms": cycle,
               "break_even_tau": cycle / t_step}
        for tau in TAUS:
            row[f"tau={tau:g}"] = None if tau > d + 1 else tau * t_step / cycle
        rows.append(row)
    return rows


def markdown(res: dict) -> str:
    out = [f"# GPU cost curves ({res['env'].get('gpu') or res['env']['device']}, {res['env']['dtype']}, "
           f"torch {res['env']['torch']}, transformers {res['env']['transformers']})", "",
           f"Random weights with the zoo models' shapes; prefix {res['env']['prefix']} tokens; medians of "
           f"{res['env']['reps']} after {res['env']['warmup']} warm-ups; device-synchronised wall times (ms).", ""]
    for name, m in res["models"].items():
        out.append(f"## {name}")
        if m.get("error"):
            out += ["", f"Failed: `{m['error']}`", ""]
        v = m.get("verify_ms")
        if v:
            out += ["", "Target verification vs tree size N (N = 1 is the vanilla decode step):", "",
                    "| N | " + " | ".join(str(n) for n in v) + " |", "|---|" + "---:|" * len(v),
                    "| ms | " + " | ".join(f"{x:.2f}" for x in v.values()) + " |",
                    "| x step | " + " | ".join(f"{x / v[1]:.2f}" for x in v.values()) + " |", ""]
        d = m.get("draft")
        if d:
            out += ["Draft (dyndepth DraftHead + grow_pool, 3 new pairs):", "",
                    "| vocab | K | root ms | per level ms | 6 levels ms |", "|---|---:|---:|---:|---:|"]
            out += [f"| {x['vocab']} | {x['K']} | {x['root_ms']:.2f} | {x['per_level_ms']:.2f} | "
                    f"{x['six_levels_ms']:.2f} |" for x in d["levels"].values()]
            out += ["", "Rerank + tree tensors: " + ", ".join(f"{k} {ms:.2f} ms" for k, ms in d["rerank_ms"].items()), ""]
        e = m.get("engine")
        if e:
            out += ["End-to-end steps of dyndepth's loop (random head, tau ~ 1); 'cold' = the first run over these "
                    "sequence lengths, the other columns = a second identical run:", "",
                    "| config | steps | cold ms/step | ms/step | draft ms | verify ms | mean depth |",
                    "|---|---:|---:|---:|---:|---:|---:|"]
            out += [f"| {k} | {x['steps']} | {x['cold_step_ms']:.2f} | {x['step_ms']:.2f} | {x['draft_ms']:.2f} | "
                    f"{'–' if x['verify_ms'] is None else format(x['verify_ms'], '.2f')} | {x['mean_depth']} |"
                    for k, x in e.items()]
            out.append("")
        p = m.get("projection")
        if p:
            taus = [f"tau={t:g}" for t in TAUS]
            out += ["Projected speedup = tau x t_step / (t_root + (D-1) t_level + t_verify(N) + t_rerank) "
                    "(docs/ALGORITHM.md cost model; '–' where tau > D + 1):", "",
                    "| config | cycle ms | break-even tau | " + " | ".join(taus) + " |",
                    "|---|---:|---:|" + "---:|" * len(taus)]
            out += [f"| {r['config']} | {r['cycle_ms']:.2f} | {r['break_even_tau']:.2f} | " +
                    " | ".join("–" if r[t] is None else f"{r[t]:.2f}x" for t in taus) + " |" for r in p]
            out.append("")
        for section, err in m.get("section_errors", {}).items():
            out.append(f"- {section} failed: `{err}`")
    out.append(f"\nTotal script time {res['env']['elapsed_s']:.0f} s.")
    return "\n".join(out) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--smoke", action="store_true", help="tiny shapes on CPU: a few seconds, checks the script")
    ap.add_argument("--device", default=None, help="default cuda (cpu with --smoke)")
    ap.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float16", "float32"))
    ap.add_argument("--models", default=",".join(MODELS), help="comma-separated: " + ", ".join(MODELS))
    ap.add_argument("--prefix", type=int, default=300)
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--engine-tokens", type=int, default=64)
    ap.add_argument("--sections", default="verify,draft,engine", help="subset of verify,draft,engine")
    ap.add_argument("--budget-s", type=float, default=420, help="skip remaining sections after this many seconds")
    ap.add_argument("--out", default=os.environ.get("OUT"), help="folder for gpu_costs.json/.md (default $OUT)")
    args = ap.parse_args(argv)

    started = time.perf_counter()
    if args.smoke:
        models = {"smoke-tiny": SMOKE_MODEL}
        device = torch.device(args.device or "cpu")
        args.reps, args.warmup, args.prefix, args.engine_tokens = 2, 1, 32, 8
        torch.set_num_threads(1)  # tiny shapes: one thread is fastest, and robust on a shared machine
        sizes = (1, 4, 8)
    else:
        names = [m.strip() for m in args.models.split(",") if m.strip()]
        unknown = [m for m in names if m not in MODELS]
        if unknown:
            ap.error(f"unknown model(s) {unknown}; choose from {list(MODELS)}")
        models = {m: MODELS[m] for m in names}
        device = torch.device(args.device or "cuda")
        sizes = TREE_SIZES
        if device.type == "cuda" and not torch.cuda.is_available():
            ap.error("CUDA is not available; use --smoke (or --device cpu) to test on a CPU")
    dtype = getattr(torch, args.dtype)
    import transformers

    env = {"device": str(device), "dtype": args.dtype, "torch": torch.__version__,
           "transformers": transformers.__version__, "prefix": args.prefix, "reps": args.reps,
           "warmup": args.warmup, "smoke": args.smoke}
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    clock = Clock(device, args.warmup, args.reps)
    res = {"env": env, "models": {}}
    for name, spec in models.items():
        m = res["models"][name] = {"config": spec, "section_errors": {}}
        print(f"[{time.perf_counter() - started:6.1f} s] {name}: building", file=sys.stderr, flush=True)
        try:
            model = build_model(spec, dtype, device)
        except Exception as exc:  # noqa: BLE001 - report and go on to the next model
            m["error"] = f"{type(exc).__name__}: {exc}"
            continue
        sections = (("verify_ms", lambda: verify_curve(model, clock, args.prefix, sizes)),
                    ("draft", lambda: draft_costs(model, spec, clock, args.prefix, WIDTHS)),
                    ("engine", lambda: engine_steps(model, clock, args.prefix, args.engine_tokens)))
        wanted = {x.strip() for x in args.sections.split(",")}
        for key, fn in sections:
            if key.removesuffix("_ms") not in wanted:
                continue
            if time.perf_counter() - started > args.budget_s:
                m["section_errors"][key] = f"skipped: time budget of {args.budget_s:.0f} s spent"
                continue
            print(f"[{time.perf_counter() - started:6.1f} s] {name}: {key}", file=sys.stderr, flush=True)
            try:
                m[key] = fn()
            except Exception as exc:  # noqa: BLE001 - one failed section must not lose the others
                m["section_errors"][key] = f"{type(exc).__name__}: {exc}"
                traceback.print_exc()
        if m.get("verify_ms") and m.get("draft"):
            m["projection"] = project(m["verify_ms"], m["draft"])
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
    env["elapsed_s"] = time.perf_counter() - started
    text = markdown(res)
    print(text)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "gpu_costs.json").write_text(json.dumps(res, indent=2, default=str) + "\n")
        (out / "gpu_costs.md").write_text(text)
        print(f"wrote {out}/gpu_costs.json and gpu_costs.md", file=sys.stderr)
    failed = any(m.get("error") or any(not e.startswith("skipped") for e in m["section_errors"].values())
                 for m in res["models"].values())
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
