"""Benchmark maths on answer records (``records.py``): pure functions, no model needed.

Definitions (Spec-Bench's conventions):

- a question's speed = its tokens over all turns / its wall time over all turns;
- a method's tokens/s = the mean of its question speeds; speedup = that mean / the baseline's mean, over the
  questions both answered (Spec-Bench's ratio of means, not a mean of ratios);
- tau (mean accepted tokens) = tokens committed by steps / steps; methods that cannot report per-step
  lengths (assisted) count every new token and every target forward;
- mean depth = mean draft levels per step; early stop = share of steps below ``max_depth`` (DDD); mean tree
  depth = mean depth of the verified trees; suffix accepted share = accepted draft tokens a suffix match proposed;
- exactness = turns whose token ids equal the reference method's (greedy runs only), k of N.
"""

from __future__ import annotations

from collections import Counter
from statistics import mean


def _choice(rec: dict) -> dict:
    return rec["choices"][0]


def _turns(rec: dict) -> int:
    return len(_choice(rec)["new_tokens"])


def question_speed(rec: dict) -> float:
    c = _choice(rec)
    seconds = sum(c["wall_time"])
    return sum(c["new_tokens"]) / seconds if seconds > 0 else 0.0


def mean_speed(records: list[dict]) -> float | None:
    return mean(question_speed(r) for r in records) if records else None


def speedup(records: list[dict], baseline: list[dict]) -> float | None:
    """Ratio of mean tokens/s over the questions both record lists hold."""
    common = {r["question_id"] for r in records} & {r["question_id"] for r in baseline}
    ours = mean_speed([r for r in records if r["question_id"] in common])
    theirs = mean_speed([r for r in baseline if r["question_id"] in common])
    return ours / theirs if ours is not None and theirs else None


def _flat(records: list[dict], key: str) -> list:
    return [x for r in records for per_turn in _choice(r).get(key, []) for x in per_turn]


def tau(records: list[dict]) -> float | None:
    reports = any(_flat(records, "accept_lengths"))
    tokens = steps = 0
    for r in records:
        c = _choice(r)
        steps += sum(c.get("steps", []))
        tokens += sum(sum(a) for a in c.get("accept_lengths", [])) if reports else sum(c["new_tokens"])
    return tokens / steps if steps else None


def tau_by_turn(records: list[dict]) -> list[float | None]:
    """tau of each turn index separately (MT-bench: first turns, second turns), by the same rule as ``tau``."""
    n = max((_turns(r) for r in records), default=0)
    out = []
    for t in range(n):
        one = [{"choices": [{k: v[t: t + 1] for k, v in _choice(r).items() if isinstance(v, list)}]}
               for r in records if _turns(r) > t]
        out.append(tau(one))
    return out


def time_split(records: list[dict]) -> dict:
    """Seconds and shares of wall time spent in prefill, drafting, verification and everything else."""
    total = {k: 0.0 for k in ("wall", "prefill", "draft", "verify", "other")}
    for r in records:
        c = _choice(r)
        for i, wall in enumerate(c["wall_time"]):
            parts = {k: (c.get(f"{k}_time") or [0.0] * len(c["wall_time"]))[i] for k in ("prefill", "draft", "verify")}
            total["wall"] += wall
            for k, v in parts.items():
                total[k] += v
            total["other"] += max(0.0, wall - sum(parts.values()))
    wall = total["wall"]
    shares = {f"{k}_share": (total[k] / wall if wall > 0 else 0.0) for k in ("prefill", "draft", "verify", "other")}
    return {**{f"{k}_s": round(v, 4) for k, v in total.items()}, **{k: round(v, 4) for k, v in shares.items()}}


def exactness(records: list[dict], reference: list[dict]) -> dict:
    """Turns whose generated ids equal the reference's, over the turns both answered."""
    ref = {r["question_id"]: _choice(r).get("token_ids") for r in reference}
    matches = turns = 0
    for r in records:
        theirs = ref.get(r["question_id"])
        ours = _choice(r).get("token_ids")
        if theirs is None or ours is None:
            continue
        for a, b in zip(ours, theirs):
            turns += 1
            matches += int(list(a) == list(b))
    return {"matches": matches, "turns": turns}


def method_stats(records: list[dict], settings: dict | None = None) -> dict:
    settings = settings or {}
    depths = _flat(records, "depths")
    accepts = _flat(records, "accept_lengths")
    speed = mean_speed(records)
    stats = {
        "questions": len(records),
        "turns": sum(_turns(r) for r in records),
        "new_tokens": sum(sum(_choice(r)["new_tokens"]) for r in records),
        "steps": sum(sum(_choice(r).get("steps", [])) for r in records),
        "tokens_per_s": round(speed, 4) if speed is not None else None,
        "tau": _round(tau(records)),
        "tau_by_turn": [_round(x) for x in tau_by_turn(records)],
        "mean_depth": _round(mean(depths) if depths else None),
        "depth_histogram": dict(sorted(Counter(depths).items())),
        "accept_histogram": dict(sorted(Counter(accepts).items())),
        "time": time_split(records),
    }
    tree_depths, suffix = _flat(records, "tree_depths"), _flat(records, "suffix_accepted")
    if tree_depths:
        stats["mean_tree_depth"] = round(mean(tree_depths), 3)
        stats["max_tree_depth"] = max(tree_depths)
    if suffix:  # accepted draft tokens that a suffix match proposed (alone or merged with a head node)
        drafted = sum(_flat(records, "accepted"))
        stats["suffix_accepted_share"] = round(sum(suffix) / drafted, 4) if drafted else None
    if settings.get("policy") == "ddd" and depths:
        stats["early_stop_rate"] = round(sum(d < settings["max_depth"] for d in depths) / len(depths), 4)
    return stats


def summarize(answers: dict[str, list[dict]], settings: dict[str, dict] | None = None,
              baseline: str = "vanilla", reference: str | None = "vanilla", greedy: bool = True) -> dict:
    """answers: method -> answer records. Returns the summary dict written to summary.json."""
    settings = settings or {}
    base = answers.get(baseline)
    ref = answers.get(reference) if greedy and reference else None
    categories = sorted({r["category"] for recs in answers.values() for r in recs})
    methods = {}
    for name, recs in answers.items():
        st = method_stats(recs, settings.get(name))
        st["speedup"] = _round(speedup(recs, base)) if base else None
        if ref is not None and name != reference:
            st["exactness"] = {**exactness(recs, ref), "reference": reference}
        per_cat = {}
        for cat in categories:
            sub = [r for r in recs if r["category"] == cat]
            base_sub = [r for r in base if r["category"] == cat] if base else []
            if sub:
                speed = mean_speed(sub)
                per_cat[cat] = {"questions": len(sub), "tokens_per_s": _round(speed),
                                "speedup": _round(speedup(sub, base_sub)) if base_sub else None,
                                "tau": _round(tau(sub))}
        st["categories"] = per_cat
        methods[name] = st
    note = None if ref is not None else "sampling" if not greedy else f"no {reference or 'reference'} in this run"
    return {"baseline": baseline if base else None, "exactness_reference": reference if ref else None,
            "exactness_note": note, "categories": categories, "methods": methods}


def _round(x, nd: int = 4):
    return round(x, nd) if x is not None else None
