"""Model-free acceptance replay of suffix drafting (issue 26), before it enters the generation loop.

    # 1. greedy answers (token ids) of a model: 100 Spec-Bench tuning questions, 20 MT-bench first turns (the
    #    balanced pick), the first 20 HumanEval problems; float32, greedy, 1 torch thread, the chat template
    python scripts/suffix_replay.py answers --model smollm2-135m-instruct \\
        --spec-bench ../shared/data/spec_bench_tune.jsonl --out docs/results/suffix-replay/answers-smollm2.jsonl
    # 2. replay: what a step with suffix drafting alone would accept, position by position
    python scripts/suffix_replay.py replay docs/results/suffix-replay/answers-smollm2.jsonl \\
        --out docs/results/suffix-replay/replay-smollm2.md
    # 3. cost of propose / extend on the same answers (run it under the timing lock)
    flock /tmp/dyndepth-timing.lock python scripts/suffix_replay.py timing \\
        docs/results/suffix-replay/answers-smollm2.jsonl

Replay rule (greedy): the answer is what the target produces, so at the step whose root is answer[i], a node is
accepted iff its path spells answer[i+1], answer[i+2], ...; the step commits the a accepted tokens plus the
bonus (answer[i+a+1]) and the drafter is extended by them. The first answer token comes from the prefill and is
not a step (tau = tokens committed by the steps / steps, as dyndepth.stats counts it). The same loop replays
transformers' prompt lookup (``prompt_lookup_num_tokens=10``, ``max_matching_ngram_size=2``: the first match,
left to right, of the last 2 then the last 1 tokens, its next 10 tokens, cut before a stop token) as a baseline.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

from dyndepth.drafters.suffix import SuffixCache, SuffixDrafter, SuffixOptions


# -- answers -------------------------------------------------------------------------------------------------
def question_rows(spec_bench: Path) -> list[dict]:
    from dyndepth.bench.questions import load_questions, read_questions
    from dyndepth.bench.splits import split_of

    rows = []
    spec = read_questions(spec_bench)
    half = split_of(spec)
    rows += [dict(set="spec_bench", question_id=q.question_id, category=q.category, split=half[q.question_id],
                  turn=q.turns[0]) for q in spec]
    _, mt = load_questions("mt_bench", 20, "balanced", turns=1)
    half = split_of(mt)
    rows += [dict(set="mt_bench", question_id=q.question_id, category="mt_bench", mt_category=q.category,
                  split=half[q.question_id], turn=q.turns[0]) for q in mt]
    _, he = load_questions("humaneval")
    half = split_of(he[:20])
    rows += [dict(set="humaneval", question_id=q.question_id, category="humaneval", split=half[q.question_id],
                  turn=q.turns[0]) for q in he[:20]]
    return rows


def answers(args) -> None:
    import torch

    from dyndepth.bench.base import trim_at_stop
    from dyndepth.bench.prompts import chat_ids
    from dyndepth.target import Target

    torch.set_num_threads(1)
    target = Target.from_pretrained(args.model, dtype="float32")
    stop = target.stop_token_ids()
    tok = target.tokenizer
    pad = tok.pad_token_id if tok.pad_token_id is not None else min(stop)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    rows = question_rows(args.spec_bench)
    t0 = time.perf_counter()
    with open(args.out, "w") as fh:
        for i, row in enumerate(rows):
            ids = chat_ids(tok, [{"role": "user", "content": row.pop("turn")}])
            x = torch.tensor([ids])
            with torch.inference_mode():
                out = target.model.generate(x, attention_mask=torch.ones_like(x), do_sample=False,
                                            max_new_tokens=args.max_new_tokens, eos_token_id=sorted(stop),
                                            pad_token_id=pad)
            answer = trim_at_stop(out[0, len(ids):].tolist(), stop, args.max_new_tokens)
            row.update(model=args.model, stop_ids=sorted(stop), prompt_ids=ids, answer_ids=answer)
            fh.write(json.dumps(row) + "\n")
            fh.flush()
            print(f"{i + 1}/{len(rows)} {row['set']} {row['question_id']}: {len(ids)} prompt, {len(answer)} new "
                  f"({time.perf_counter() - t0:.0f} s)", file=sys.stderr)


def load_answers(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# -- replay --------------------------------------------------------------------------------------------------
def accepted(paths: list[tuple[int, ...]], chain: list[int]) -> int:
    """Greedy verification of a proposal: the deepest node whose path spells the chain's first tokens."""
    best = 0
    for path in paths:
        if len(path) > best and list(path) == chain[:len(path)]:
            best = len(path)
    return best


def replay_suffix(rows: list[dict], options: SuffixOptions, cache_size: int = 0,
                  observations: list | None = None) -> list[dict]:
    """Per answer: steps, committed tokens, nodes proposed, steps with a proposal, accepted counts. With
    ``observations``, appends (q, parent count, match length, depth, hit) for every node whose parent is on the
    chain (q = count / parent count: the node's conditional estimate; hit: the node is on the chain too)."""
    cache = SuffixCache(cache_size) if cache_size else None
    out = []
    for row in rows:
        answer = row["answer_ids"]
        drafter = SuffixDrafter(row["prompt_ids"] + answer[:1], cache=cache, options=options)
        i, steps, nodes, proposing, acc = 0, 0, 0, 0, []
        while i < len(answer) - 1:
            proposal = drafter.propose()
            paths = proposal.paths()
            a = accepted(paths, answer[i + 1:])
            if observations is not None:
                chain = answer[i + 1:]
                for k, path in enumerate(paths):
                    par = proposal.parents[k]
                    if list(path[:-1]) == chain[:len(path) - 1] and len(path) <= len(chain):
                        parent_count = proposal.counts[par] if par >= 0 else proposal.occurrences
                        observations.append((proposal.counts[k] / parent_count, parent_count, proposal.match_len,
                                             proposal.depths[k], path[-1] == chain[len(path) - 1]))
            commit = answer[i + 1:i + a + 2]  # accepted + bonus, cut at the answer's end
            drafter.extend(commit)
            i += len(commit)
            steps += 1
            nodes += len(proposal)
            proposing += len(proposal) > 0
            acc.append(a)
        drafter.finish()
        out.append(dict(row=row, steps=steps, tokens=len(answer) - 1, nodes=nodes, proposing=proposing,
                        accepted=acc))
    return out


def pld_candidates(seq: list[int], num_tokens: int, max_ngram: int, stop: set[int]) -> list[int]:
    """transformers' PromptLookupCandidateGenerator.get_candidates on a context (batch 1, no logits processor)."""
    n = len(seq)
    for size in range(min(max_ngram, n - 1), 0, -1):
        gram = seq[n - size:]
        for idx in range(0, n - size + 1):
            if seq[idx:idx + size] == gram:
                start, end = idx + size, min(idx + size + num_tokens, n)
                if start < end:
                    chosen = seq[start:end]
                    for k, t in enumerate(chosen):
                        if t in stop:  # transformers cuts *before* the stop token, and looks no further
                            return chosen[:k]
                    return chosen
    return []


def replay_pld(rows: list[dict], stop: set[int], num_tokens: int = 10, max_ngram: int = 2) -> list[dict]:
    out = []
    for row in rows:
        answer = row["answer_ids"]
        seq = row["prompt_ids"] + answer[:1]
        i, steps, nodes, proposing, acc = 0, 0, 0, 0, []
        while i < len(answer) - 1:
            cand = pld_candidates(seq, num_tokens, max_ngram, stop)
            a = 0
            while a < len(cand) and i + 1 + a < len(answer) and cand[a] == answer[i + 1 + a]:
                a += 1
            commit = answer[i + 1:i + a + 2]
            seq = seq + commit
            i += len(commit)
            steps += 1
            nodes += len(cand)
            proposing += bool(cand)
            acc.append(a)
        out.append(dict(row=row, steps=steps, tokens=len(answer) - 1, nodes=nodes, proposing=proposing,
                        accepted=acc))
    return out


def _label(lo: int, hi: int) -> str:
    return f"{lo}" if hi == lo else f"{lo}+" if hi >= 10**9 else f"{lo}-{hi}"


def _rate(sel: list[tuple]) -> str:
    return f"{sum(o[4] for o in sel) / len(sel):.2f} (n={len(sel)})" if sel else "-"


def calibration_table(obs: list[tuple]) -> str:
    """Observed P(node on the chain | parent on the chain) against the suffix estimate q, by the parent's count,
    then by match length and by depth. obs: (q, parent count, match length, depth, hit)."""
    q_edges = [(0.9, 1.01), (0.6, 0.9), (0.4, 0.6), (0.2, 0.4), (0.0, 0.2)]
    count_edges = [(1, 1), (2, 3), (4, 9), (10, 10**9)]
    lines = ["| q = count / parent count | " + " | ".join(f"parent count {_label(*e)}" for e in count_edges)
             + " | all |", "|" + "---|" * (2 + len(count_edges))]
    for qlo, qhi in q_edges:
        cells = [_rate([o for o in obs if qlo <= o[0] < qhi and clo <= o[1] <= chi])
                 for clo, chi in count_edges + [(0, 10**9)]]
        lines.append(f"| [{qlo:.1f}, {min(qhi, 1.0):.1f}{']' if qhi > 1 else ')'} | " + " | ".join(cells) + " |")
    out = "\n".join(lines)
    for name, col, edges in (("match length", 2, [(1, 1), (2, 3), (4, 7), (8, 15), (16, 10**9)]),
                             ("depth", 3, [(1, 1), (2, 2), (3, 4), (5, 8), (9, 10**9)])):
        parts = []
        for lo, hi in edges:
            sel = [o for o in obs if lo <= o[col] <= hi]
            if sel:
                parts.append(f"{_label(lo, hi)}: {_rate(sel)[:-1]}, mean q {sum(o[0] for o in sel) / len(sel):.2f})")
        out += f"\n\nBy {name}: " + "; ".join(parts) + "."
    return out


def table(results: list[dict], key=lambda r: r["row"]["category"]) -> dict[str, dict]:
    groups: dict[str, list[dict]] = {}
    for r in results:
        groups.setdefault(key(r), []).append(r)
    groups["all"] = results
    out = {}
    for name, rs in groups.items():
        steps = sum(r["steps"] for r in rs)
        out[name] = dict(answers=len(rs), steps=steps, tau=sum(r["tokens"] for r in rs) / steps if steps else 0.0,
                         nodes=sum(r["nodes"] for r in rs) / steps if steps else 0.0,
                         proposing=sum(r["proposing"] for r in rs) / steps if steps else 0.0)
    return out


CATEGORY_ORDER = ["translation", "summarization", "qa", "math_reasoning", "rag", "mt_bench", "humaneval", "all"]


def markdown(columns: dict[str, dict[str, dict]]) -> str:
    names = list(columns)
    cats = [c for c in CATEGORY_ORDER if c in columns[names[0]]] + \
        [c for c in columns[names[0]] if c not in CATEGORY_ORDER]
    head = "| category | answers | " + " | ".join(f"{n}: tau / nodes / any" for n in names) + " |"
    lines = [head, "|" + "---|" * (2 + len(names))]
    for c in cats:
        first = columns[names[0]][c]
        cells = [f"{columns[n][c]['tau']:.3f} / {columns[n][c]['nodes']:.1f} / {columns[n][c]['proposing']:.0%}"
                 for n in names]
        lines.append(f"| {c} | {first['answers']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


CONFIGS = {  # name -> (options, global cache size); "suffix" = SuffixOptions' defaults
    "suffix": (dict(), 0),
    "suffix+cache": (dict(), 64),
    "suffix-a1": (dict(spec_factor=1.0), 0),
    "suffix-a4": (dict(spec_factor=4.0), 0),
    "suffix-8": (dict(max_nodes=8), 0),
    "suffix-32": (dict(max_nodes=32), 0),
    "suffix-m2": (dict(min_match=2), 0),
    "suffix-p3": (dict(min_prob=0.3), 0),
}


def replay(args) -> None:
    rows = load_answers(args.answers)
    if args.split:
        rows = [r for r in rows if r["split"] == args.split]
    stop = set(rows[0]["stop_ids"])
    columns, details = {}, {}
    obs: list = []
    for name in args.configs:
        knobs, cache = CONFIGS[name]
        results = replay_suffix(rows, SuffixOptions(**knobs), cache, obs if name == args.configs[0] else None)
        columns[name] = table(results)
        details[name] = dict(options=_options_dict(SuffixOptions(**knobs)), cache=cache)
    columns["prompt-lookup"] = table(replay_pld(rows, stop))
    details["prompt-lookup"] = dict(prompt_lookup_num_tokens=10, max_matching_ngram_size=2)
    text = (f"Suffix-drafting replay of {args.answers.name} ({len(rows)} answers"
            + (f", {args.split} half" if args.split else "") + "). Each cell: tau (greedy, suffix nodes alone) / "
            "mean nodes proposed per step / share of steps with any proposal.\n\n" + markdown(columns) + "\n\n"
            "Configurations:\n" + "\n".join(f"- {k}: {json.dumps(v)}" for k, v in details.items()) + "\n\n"
            f"Calibration of {args.configs[0]}'s nodes: observed P(node on the chain | parent on the chain) "
            "(n = such nodes), against the node's frequency estimate q and its parent's count (the number of "
            "occurrences behind q).\n\n" + calibration_table(obs) + "\n")
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
        args.out.with_suffix(".json").write_text(json.dumps({"configs": details, "tables": columns}, indent=1))


def _options_dict(o: SuffixOptions) -> dict:
    return {k: getattr(o, k) for k in o.__dataclass_fields__}


# -- timing --------------------------------------------------------------------------------------------------
def timing(args) -> None:
    """Wall time of propose and extend calls, replaying every answer with the default options: as asked, with the
    64-output cache, and with each context prefixed by the last 4,000 tokens of the earlier rows (a long chat).
    Each propose is timed once as the replay calls it, and as the fastest of 3 identical calls (on a shared
    machine a call that loses the CPU for a scheduler tick shows up as ~4 ms in the first column only)."""
    rows = load_answers(args.answers)
    print(f"uptime: {os.popen('uptime').read().strip()}")
    print(f"python {sys.version.split()[0]}, defaults {_options_dict(SuffixOptions())}")
    for name, cache_size, prefix in (("suffix", 0, 0), ("suffix+cache", 64, 0), ("suffix, 4k-token prefix", 0, 4000)):
        cache = SuffixCache(cache_size) if cache_size else None
        propose_t, best_t, extend_t, build_t, ctx_len = [], [], [], [], []
        history: list[int] = []
        for row in rows:
            answer = row["answer_ids"]
            context = history[-prefix:] + row["prompt_ids"] + answer[:1] if prefix else row["prompt_ids"] + answer[:1]
            history += row["prompt_ids"] + answer
            t0 = time.perf_counter()
            drafter = SuffixDrafter(context, cache=cache)
            build_t.append((time.perf_counter() - t0, len(context)))
            i = 0
            while i < len(answer) - 1:
                t0 = time.perf_counter()
                proposal = drafter.propose()
                t1 = time.perf_counter()
                again = []  # propose is read-only: the same call twice more, to tell its cost from preemption
                for _ in range(2):
                    t4 = time.perf_counter()
                    drafter.propose()
                    again.append(time.perf_counter() - t4)
                best_t.append(min(t1 - t0, *again))
                a = accepted(proposal.paths(), answer[i + 1:])
                commit = answer[i + 1:i + a + 2]
                t2 = time.perf_counter()
                drafter.extend(commit)
                t3 = time.perf_counter()
                propose_t.append(t1 - t0)
                extend_t.append((t3 - t2) / len(commit))
                ctx_len.append(len(drafter))
                i += len(commit)
            drafter.finish()
        us = 1e6
        pct = statistics.quantiles(propose_t, n=100)
        print(f"{name}: {len(propose_t)} propose calls, context {min(ctx_len)}-{max(ctx_len)} tokens "
              f"(median {statistics.median(ctx_len):.0f})")
        print(f"  propose: mean {statistics.mean(propose_t) * us:.1f} us, "
              f"median {statistics.median(propose_t) * us:.1f}, p90 {pct[89] * us:.1f}, p99 {pct[98] * us:.1f}, max {max(propose_t) * us:.1f} us")
        pct = statistics.quantiles(best_t, n=100)
        print(f"  propose, min of 3 calls: mean {statistics.mean(best_t) * us:.1f} us, "
              f"median {statistics.median(best_t) * us:.1f}, p90 {pct[89] * us:.1f}, p99 {pct[98] * us:.1f}, "
              f"max {max(best_t) * us:.1f} us")
        print(f"  extend: mean {statistics.mean(extend_t) * us:.2f} us per token")
        print(f"  construction: mean {statistics.mean(t / n for t, n in build_t) * us:.2f} us per context token, "
              f"max {max(t for t, _ in build_t) * 1e3:.2f} ms ({max(n for _, n in build_t)} tokens max)")
        if cache is not None:
            print(f"  cache at the end: {len(cache)} outputs, {cache.tokens} tokens")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("answers", help="greedy answers of a model, as token ids")
    a.add_argument("--model", default="smollm2-135m-instruct")
    a.add_argument("--spec-bench", type=Path, default=Path("../shared/data/spec_bench_tune.jsonl"))
    a.add_argument("--max-new-tokens", type=int, default=128)
    a.add_argument("--out", type=Path, required=True)
    r = sub.add_parser("replay", help="tau of suffix drafting alone, per category")
    r.add_argument("answers", type=Path)
    r.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    r.add_argument("--split", choices=("tune", "report"), default=None, help="only one half (bench/splits.py)")
    r.add_argument("--out", type=Path, default=None)
    t = sub.add_parser("timing", help="cost of propose / extend (run under the timing lock)")
    t.add_argument("answers", type=Path)
    args = p.parse_args(argv)
    {"answers": answers, "replay": replay, "timing": timing}[args.cmd](args)


if __name__ == "__main__":
    main()
