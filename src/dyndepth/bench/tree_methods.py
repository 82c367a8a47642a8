"""dyndepth's own generation loop as benchmark methods: plain decoding, fixed-depth trees, DDD, auto, and the
model-free and hybrid drafters (setting ``drafter``; ``suffix`` needs no head).

Every tree method wraps one ``SpeculativeDecoder`` built on the run's shared target and shared draft head, so
a run holds the model weights once however many tree methods it compares. A method with engine settings
(``static_cache``, ``compile``, ``max_len``) gets its own ``Target`` on the same model object.
"""

from __future__ import annotations

from dyndepth.bench.base import BenchMethod, GenParams, now
from dyndepth.bench.records import TurnResult
from dyndepth.errors import DyndepthError
from dyndepth.policies import AUTO_OPTIONS

TREE_KEYS = ("policy", "top_k", "total_tokens", "max_depth", "checks", "threshold", "drafter", "suffix_cache",
             *AUTO_OPTIONS)


def tree_kwargs(settings: dict) -> dict:
    """The SpeculativeDecoder keywords of a tree method's settings (knobs the policy does not use dropped)."""
    policy = settings["policy"]
    kwargs = {k: settings.get(k) for k in TREE_KEYS if k != "policy"}
    if policy != "ddd":  # checks/threshold only mean something to DDD
        kwargs.pop("checks"), kwargs.pop("threshold")
    if not kwargs.get("suffix_cache"):  # 0: no cache, whatever the drafter
        kwargs.pop("suffix_cache")
    if policy != "auto":
        for key in AUTO_OPTIONS:
            kwargs.pop(key)
    if policy == "plain":
        kwargs = {}
    return {k: v for k, v in kwargs.items() if v is not None}


def engine_kwargs(settings: dict) -> dict:
    """The Target engine keywords of a tree method's settings (absent keys: the default engine)."""
    return {"static_cache": bool(settings.get("static_cache", False)), "compile": bool(settings.get("compile", False)),
            "max_len": settings.get("max_len")}


def check_settings(name: str, settings: dict) -> None:
    """Every check SpeculativeDecoder makes without a model, run at planning time (before any model loads)."""
    from dyndepth.target.static import check_options
    from dyndepth.validate import OptionError, tree_options

    try:
        tree_options(settings["policy"], **tree_kwargs(settings))
    except OptionError as exc:
        raise DyndepthError(f"method {name!r}: setting {exc.render(exc.option)}") from None
    try:
        check_options(**engine_kwargs(settings))
    except DyndepthError as exc:
        raise DyndepthError(f"method {name!r}: {exc}") from None


class TreeMethod(BenchMethod):
    family = "tree"

    def __init__(self, name: str, ctx, settings: dict):
        from dyndepth.decoder import SpeculativeDecoder

        self.name = name
        target = ctx.target(**engine_kwargs(settings))
        policy = settings["policy"]
        kwargs = tree_kwargs(settings)
        head = ctx.draft_head() if policy != "plain" and kwargs.get("drafter") != "suffix" else None
        self.decoder = SpeculativeDecoder(target, head, policy=policy, **kwargs)
        self.device = target.device

    def settings(self) -> dict:
        d = self.decoder.describe()
        target = self.decoder.target
        engine = {"static_cache": True, "max_len": target.max_len, "compile": target.compiled} \
            if target.static_cache else {}
        if d.get("policy") == "plain":
            return {"policy": "plain", "dtype": d["dtype"], "device": d["device"], **engine}
        return {**d, **engine}

    def generate(self, ids: list[int], params: GenParams, seed: int) -> TurnResult:
        t0 = now(self.device)
        out = self.decoder.generate(ids, max_new_tokens=params.max_new_tokens, temperature=params.temperature,
                                    top_p=params.top_p, top_k=params.top_k, seed=seed)
        wall = now(self.device) - t0
        st = out.stats
        drafts = self.decoder.policy.max_depth > 0
        return TurnResult(token_ids=list(out.token_ids), wall_time=wall, steps=st.steps,
                          accept_lengths=st.accept_lengths, depths=st.depths if self.decoder.head else [],
                          tree_depths=[s.tree_depth for s in st.step_stats] if drafts else [],
                          suffix_accepted=[s.accepted_suffix for s in st.step_stats]
                          if self.decoder.drafting.uses_suffix else [],
                          prefill_time=st.prefill_time_s, draft_time=st.draft_time_s,
                          verify_time=st.verify_time_s, text=out.text or "",
                          **(_decisions(st) if drafts else {}))

    def generate_batch(self, prompts: list[list[int]], params: GenParams, seed: int, batch_size: int):
        """Every prompt through the engine, ``batch_size`` rows at a time (continuous batching)."""
        from dyndepth.bench.throughput import BatchResult

        t0 = now(self.device)
        outs = self.decoder.generate(prompts, max_new_tokens=params.max_new_tokens, temperature=params.temperature,
                                     top_p=params.top_p, top_k=params.top_k,
                                     seed=[seed + i for i in range(len(prompts))], batch_size=batch_size)
        wall = now(self.device) - t0
        return BatchResult(self.name, batch_size, wall, sum(len(o.token_ids) for o in outs),
                           sum(o.stats.steps + 1 for o in outs), [list(o.token_ids) for o in outs])

    def report(self) -> dict | None:
        """The auto policy's calibration and cost model after the run (None for the other policies)."""
        policy = self.decoder.policy
        return policy.report() if hasattr(policy, "report") else None


def _decisions(stats) -> dict:
    steps = stats.step_stats
    return {"tree_sizes": [s.tree_size for s in steps], "accepted": [s.accepted for s in steps],
            "predicted_accepted": [s.predicted_accepted for s in steps],
            "beam_log_mass": [s.beam_log_mass for s in steps]}


def tree_factory(ctx, name: str, settings: dict) -> TreeMethod:
    return TreeMethod(name, ctx, settings)
