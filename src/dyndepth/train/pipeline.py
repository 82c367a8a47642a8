"""The train-head pipeline: data -> (self-distillation) -> features -> draft vocabulary -> training -> head.

    examples  = render(conversations) or self_distill(prompts)      # (ids, assistant mask), held-out split first
    shards    = extract(target, examples)                            # cached by content fingerprint, resumable
    head      = DraftHead(head_config(target, intermediate_size), draft_vocab = frequent assistant tokens)
                or, with --arch eagle3, Eagle3Head (own lm_head over that draft vocabulary; features = the final
                features + the head's three target layers, captured in the same extraction forward)
    fit(head) -> after each epoch: held-out metrics; the best head so far is saved to --out at once
                (EAGLE-1/2: trainer.py's objective; EAGLE-3: ttt.py's training-time test)
"""

from __future__ import annotations

import json
import os
import platform
import random
import re
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from dyndepth.errors import DyndepthError
from dyndepth.head import DraftHead, Eagle3Head, default_layers, eagle3_config, head_config, load_head_dir
from dyndepth.train import data as D
from dyndepth.train.extract import (extract, extract_in_memory, fingerprint, load_shards, pending_tokens,
                                    plan_batches, run_batch, write_manifest)
from dyndepth.train.trainer import TrainConfig, fit, train_step
from dyndepth.train.vocab import coverage, frequent_tokens, special_ids, token_counts


@dataclass
class Options:
    model: str  # zoo name or HF directory (or pass a Target to run())
    data: str  # "sharegpt" or a .json/.jsonl file
    tokens: int  # training tokens (prompt + reply) to extract
    out: Path
    conversations: int | str | None = None  # N = the data's first N conversations, "A:B" = A..B-1 (before the shuffle)
    max_len: int = 1024
    draft_vocab: int = 8192  # 0 = the full target vocabulary
    intermediate_size: int | None = None  # None = the target's MLP width
    self_distill: bool = False
    distill_max_new: int = 384
    distill_batch: int = 32
    init: Path | None = None  # start from this trained head instead of a random one
    holdout: float = 0.05  # share of the token budget held out for metrics (extra to `tokens`)
    holdout_max: int = 20000
    cache_dir: Path | None = None  # feature shards; default $DYNDEPTH_HOME/train
    features: str = "disk"  # "disk": resumable shards in cache_dir; "memory": kept on the training device only
    extract_batch_tokens: int | None = None  # padded tokens per extraction forward; None = 4096 (CPU), 65536 (GPU)
    dtype: str = "bfloat16"  # target dtype for distillation and extraction
    threads: int = 2
    device: str = "cpu"  # "cpu", "cuda", "cuda:N" or "auto" (cuda when available): extraction and training
    time_budget_min: float | None = None  # cap the epochs so the whole run fits (from the measured estimate)
    progress: bool = True
    train: TrainConfig = field(default_factory=TrainConfig)
    arch: str = "eagle"  # "eagle" (EAGLE-1/2 head) or "eagle3"


def _log(msg: str) -> None:
    print(msg, flush=True)


def conversation_range(spec: int | str | None) -> slice:
    """--conversations: None = all, N = the first N, "A:B" = conversations A..B-1, "A:" = from A on (0-based)."""
    if spec is None:
        return slice(None)
    text = str(spec).strip()
    m = re.fullmatch(r"(\d*)\s*:\s*(\d*)", text) if ":" in text else re.fullmatch(r"(\d+)", text)
    bad = DyndepthError(f"--conversations expects N (the first N) or A:B (conversations A to B-1; 'A:' = from A "
                        f"on), with B > A and N >= 1, got {spec!r}")
    if not m:
        raise bad
    if ":" not in text:
        start, stop = 0, int(m.group(1))
    else:
        start, stop = int(m.group(1) or 0), (int(m.group(2)) if m.group(2) else None)
    if (stop is not None and stop <= start) or stop == 0:
        raise bad
    return slice(start, stop)


def training_conversations(opts: Options) -> list:
    """The conversations of ``opts.data`` in training order: those ``opts.conversations`` selects (all if None),
    shuffled with the seed. The order depends only on that selection, so a longer file gives the same run."""
    convs = D.load_conversations(opts.data)
    part = conversation_range(opts.conversations)
    if part != slice(None):
        if part.start >= len(convs):
            raise DyndepthError(f"--conversations {opts.conversations}: {opts.data!r} has only {len(convs)} "
                                f"conversations")
        convs = convs[part]
    random.Random(opts.train.seed).shuffle(convs)
    return convs


def run(opts: Options, target=None, log=_log) -> dict:
    """Train a head; returns the training record (also written as training.json beside the weights)."""
    _check(opts)
    torch.set_num_threads(opts.threads)
    dev = resolve_device(opts.device)
    if opts.extract_batch_tokens is None:
        opts.extract_batch_tokens = 4096 if dev.type == "cpu" else 65536
    wall0 = time.perf_counter()
    timings = {}
    convs = training_conversations(opts)  # before loading the model: bad data fails fast
    if target is None:
        from dyndepth.target import Target

        target = Target.from_pretrained(opts.model, dtype=opts.dtype, device=dev)
    dev = target.device
    tok = target.tokenizer
    layers = _capture_layers(opts, target)  # EAGLE-3: the target layers extraction keeps (None for EAGLE-1/2)
    n_hold = min(opts.holdout_max, max(1, int(opts.tokens * opts.holdout)))

    t0 = time.perf_counter()
    if opts.self_distill:
        held, train = _self_distilled(target, convs, n_hold, opts, log)
        timings["self_distill_s"] = round(time.perf_counter() - t0, 1)
    else:
        held, train = _render_split(tok, convs, n_hold, opts.tokens, opts.max_len)
    if not train or not held:
        raise DyndepthError(f"not enough usable conversations in {opts.data!r} for a held-out split and training")
    n_train_tok = sum(len(i) for i, _ in train)
    if n_train_tok < opts.tokens:
        log(f"note: the data ran out at {n_train_tok} of the {opts.tokens} tokens asked for")
    log(f"data: {len(train)} training conversations ({n_train_tok} tokens, "
        f"{sum(sum(m) for _, m in train)} assistant), {len(held)} held out ({sum(len(i) for i, _ in held)} tokens)")

    # Features (cached by content; resumable). Estimate the time first from a measured warm-up.
    examples = held + train
    fp = fingerprint(examples, f"{opts.model}|{opts.dtype}|{getattr(target.config, '_name_or_path', '')}"
                               + ("" if layers is None else f"|eagle3 layers {list(layers)}"))
    cache = (opts.cache_dir or _default_cache()) / fp
    per_epoch_s = _estimate(target, examples, len(held), cache, opts, log)
    t0 = time.perf_counter()
    if opts.features == "memory":  # straight to the training device; nothing written, nothing to resume
        feats = extract_in_memory(target, examples, dev, batch_tokens=opts.extract_batch_tokens,
                                  progress=opts.progress)
    else:
        paths = extract(target, examples, cache, batch_tokens=opts.extract_batch_tokens, progress=opts.progress)
        write_manifest(cache, {"model": opts.model, "dtype": opts.dtype, "examples": len(examples),
                               "heldout": len(held), "tokens": sum(len(i) for i, _ in examples)})
        feats = load_shards(paths)
        if dev.type != "cpu":  # the whole feature set on the accelerator: no host copies per step
            feats = {i: tuple(t.to(dev) for t in item) for i, item in feats.items()}
    timings["extract_s"] = round(time.perf_counter() - t0, 1)
    held_items = [feats[i] for i in range(len(held))]
    train_items = [feats[i] for i in range(len(held), len(examples))]

    if opts.train.epochs == 0:
        log(f"features ready in {cache} (epochs 0: extraction only)")
        return {"cache": str(cache), "timings": timings}

    # The head, bound to fp32 copies of the frozen target embedding and lm_head.
    embed = torch.nn.Embedding.from_pretrained(target.embed.weight.detach().float(), freeze=True)
    lm_w = target.lm_head.weight.detach().float()  # [V, H]
    torch.manual_seed(opts.train.seed)
    subset = None
    if opts.init:  # continue from a trained head: its shapes and draft vocabulary are kept
        head = load_head_dir(opts.init, dtype=torch.float32).to(dev)
        if head.arch != opts.arch:
            raise DyndepthError(f"--init {opts.init} holds an {head.arch} head; pass --arch {head.arch}")
        log(f"initialised from {opts.init} (its MLP width and draft vocabulary are kept)")
    else:
        if opts.draft_vocab and opts.draft_vocab < lm_w.shape[0]:  # the most frequent assistant tokens
            counts = token_counts(train, lm_w.shape[0])
            subset = frequent_tokens(counts, opts.draft_vocab, special_ids(tok, target.stop_token_ids()))
        head = _new_head(opts, target, subset).float().to(dev)
    head.bind(embed, lm_w)
    if isinstance(head, Eagle3Head) and not opts.init:
        from dyndepth.train.ttt import init_from_target

        init_from_target(head, lm_w, None)
    vocab_info = {}
    if head.draft_vocab is not None:
        vocab_info = {"draft_vocab_size": head.draft_vocab_size,
                      "heldout_coverage": round(_target_coverage(head.draft_vocab, held_items, lm_w), 4)}
        if subset is not None:
            log(f"draft vocabulary: {subset.numel()} tokens; they cover {vocab_info['heldout_coverage']:.1%} of "
                f"the target's held-out argmax tokens")

    record = {"model": opts.model, "data": opts.data, "options": _jsonable(opts), "train_config": asdict(opts.train),
              "data_stats": {"train_conversations": len(train), "train_tokens": n_train_tok,
                             "train_assistant_tokens": sum(sum(m) for _, m in train),
                             "heldout_conversations": len(held), "heldout_tokens": sum(len(i) for i, _ in held)},
              "draft_vocab": vocab_info, "heldout_id": fingerprint(held, opts.model), "machine": _machine(opts),
              "history": []}
    best = {"score": _existing_score(opts.out, record["heldout_id"])}

    def on_epoch(epoch, metrics):
        record["history"].append(metrics)
        if metrics["chain_tau"] > best["score"]:
            best["score"] = metrics["chain_tau"]
            record["best_epoch"] = epoch
            record["heldout_metrics"] = metrics
            timings["wall_s"] = round(time.perf_counter() - wall0, 1)
            record["timings"] = dict(timings)
            save_head(head, opts.out, record)
            log(f"saved head (held-out chain_tau {metrics['chain_tau']}) to {opts.out}")

    cfg = opts.train
    if opts.time_budget_min is not None:
        left = opts.time_budget_min * 60 - (time.perf_counter() - wall0)
        fits = max(1, min(cfg.epochs, int(left // per_epoch_s)))
        if fits < cfg.epochs:
            log(f"--time-budget {opts.time_budget_min:g} min: {left / 60:.1f} min left, about "
                f"{per_epoch_s / 60:.1f} min per epoch: training {fits} of {cfg.epochs} epochs")
            cfg = replace(cfg, epochs=fits)
            record["train_config"] = asdict(cfg)
    t0 = time.perf_counter()
    deadline = None if opts.time_budget_min is None else wall0 + opts.time_budget_min * 60
    fit(head, train_items, held_items, cfg, lm_w, on_epoch=on_epoch, progress=opts.progress, log=log,
        deadline=deadline, **_objective(head, lm_w))
    timings["train_s"] = round(time.perf_counter() - t0, 1)
    timings["wall_s"] = round(time.perf_counter() - wall0, 1)
    record["timings"] = timings
    if "best_epoch" not in record:
        log(f"no epoch beat the head already in {opts.out} on the same held-out set; left it unchanged")
    else:
        _update_record(opts.out, record)
    return record


def _self_distilled(target, convs, n_hold: int, opts: Options, log):
    """Held-out and training examples from the target's own replies; cached as JSON (generation is slow)."""
    from dyndepth.train.distill import self_distill

    key = fingerprint([], f"{opts.model}|{opts.data}|{opts.dtype}|{opts.train.seed}|{opts.tokens}|{n_hold}|"
                          f"{opts.distill_max_new}|{opts.max_len}")
    path = (opts.cache_dir or _default_cache()) / f"distill-{key}.json"
    if path.is_file():
        log(f"reusing self-distilled replies from {path}")
        saved = json.loads(path.read_text())
        return [tuple(e) for e in saved["held"]], [tuple(e) for e in saved["train"]]
    n_conv_hold = max(1, len(convs) // 20)  # held-out prompts come from their own conversations
    kw = dict(max_new_tokens=opts.distill_max_new, batch_size=opts.distill_batch, progress=opts.progress, log=log)
    held = self_distill(target, convs[:n_conv_hold], n_hold, **kw)
    train = self_distill(target, convs[n_conv_hold:], opts.tokens, **kw)
    train = [(i[: opts.max_len], m[: opts.max_len]) for i, m in train]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"held": held, "train": train}))
    return held, train


def _render_split(tok, convs, n_hold: int, n_train: int, max_len: int):
    held, train, n = [], [], 0
    for c in convs:
        ex = D.render(tok, c, max_len)
        if ex is None:
            continue
        if sum(len(i) for i, _ in held) < n_hold:
            held.append(ex)
            continue
        train.append(ex)
        n += len(ex[0])
        if n >= n_train:
            break
    return held, train


def _estimate(target, examples, n_held: int, cache: Path, opts: Options, log) -> float:
    """Print a time estimate from one measured extraction batch and two training steps; returns the
    estimated seconds per epoch (training + held-out metrics)."""
    todo = (sum(len(i) for i, _ in examples) if opts.features == "memory"
            else pending_tokens(examples, cache, opts.extract_batch_tokens))
    left = "resuming: finished feature shards are reused" if todo < sum(len(i) for i, _ in examples) else ""
    lengths = [len(i) for i, _ in examples]
    plan = plan_batches(lengths, opts.extract_batch_tokens)
    mid = plan[len(plan) // 2]
    dev = target.device
    if dev.type != "cpu":  # the first accelerator call pays one-time set-up costs
        run_batch(target, [examples[i] for i in mid])
    t0 = time.perf_counter()
    run_batch(target, [examples[i] for i in mid])
    ex_rate = sum(lengths[i] for i in mid) / (time.perf_counter() - t0)
    # two steps of a throwaway head on random features shaped like the median batch
    h = target.config.hidden_size
    vocab = target.lm_head.weight.shape[0]
    vd = opts.draft_vocab if opts.draft_vocab and opts.draft_vocab < vocab else None
    probe = _new_head(opts, target, None if vd is None else torch.arange(vd)).float().to(dev)
    lm_w = target.lm_head.weight.detach().float()
    probe.bind(torch.nn.Embedding.from_pretrained(target.embed.weight.detach().float()), lm_w)
    width = h * (1 + len(target.captured_layers or ()))  # EAGLE-3: final features + the captured layers
    step = _objective(probe, lm_w).get("step_fn", train_step)
    n = sorted(lengths)[len(lengths) // 2]
    items = [(torch.randint(0, vd or vocab, (n,), device=dev),
              torch.ones(n, dtype=torch.bool, device=dev), torch.randn(n, width, device=dev).to(torch.bfloat16))
             for _ in range(opts.train.batch_size)]
    opt = torch.optim.AdamW(probe.parameters(), lr=1e-5)
    step(probe, opt, items, opts.train, 1e-5)
    _sync(dev)
    t0 = time.perf_counter()
    for _ in range(2):
        step(probe, opt, items, opts.train, 1e-5)
    _sync(dev)
    tr_rate = 2 * n * len(items) / (time.perf_counter() - t0)
    total, held_tok = sum(lengths), sum(lengths[:n_held])
    t_ex = todo / ex_rate
    t_tr = opts.train.epochs * (total - held_tok) / tr_rate
    t_ev = opts.train.epochs * opts.train.eval_steps * held_tok / tr_rate  # an unroll step ~ a train step
    where = f"{opts.threads} threads" if dev.type == "cpu" else _device_name(dev)
    log(f"time estimate (measured warm-up, {where}): extraction {t_ex / 60:.1f} min "
        f"({todo} of {total} tokens left, at {ex_rate:.0f} tok/s), training {t_tr / 60:.1f} min ({opts.train.epochs} epochs at "
        f"{tr_rate:.0f} tok/s); total about {(t_ex + t_tr + t_ev) / 60:.0f} min. {left}".rstrip())
    return ((total - held_tok) + opts.train.eval_steps * held_tok) / tr_rate


def _capture_layers(opts: Options, target):
    """EAGLE-3: set the target to capture the head's layers (the --init head's, else (2, L//2, L-3))."""
    if opts.arch != "eagle3":
        target.capture(None)
        return None
    if opts.init:
        layers = load_head_dir(opts.init).feature_layers(target.num_layers)
    else:
        layers = default_layers(target.num_layers)
        if min(layers) < 0 or max(layers) >= target.num_layers:
            raise DyndepthError(f"--arch eagle3: the default target layers {list(layers)} (2, L//2, L-3) need a "
                                f"target with at least 3 decoder layers; this one has {target.num_layers}")
    target.capture(layers)
    return tuple(layers)


def _new_head(opts: Options, target, subset: torch.Tensor | None):
    """A fresh head of ``opts.arch`` for the target, drafting from ``subset`` (target ids; None = all)."""
    if opts.arch == "eagle3":
        vd = None if subset is None else int(subset.numel())
        head = Eagle3Head(eagle3_config(target.config, intermediate_size=opts.intermediate_size, draft_vocab_size=vd))
    else:
        head = DraftHead(head_config(target.config, intermediate_size=opts.intermediate_size))
    if subset is not None:
        head.set_draft_vocab(subset)
    return head


def _objective(head, lm_w: torch.Tensor) -> dict:
    """fit()'s step_fn / eval_fn for the head's kind (EAGLE-1/2: trainer.py's defaults)."""
    if not isinstance(head, Eagle3Head):
        return {}
    from dyndepth.train import ttt

    return {"step_fn": lambda hd, opt, items, cfg, lr: ttt.train_step(hd, opt, items, cfg, lr, lm_w),
            "eval_fn": ttt.evaluate}


def resolve_device(name: str) -> torch.device:
    """'auto' -> cuda when available, else cpu; a named accelerator must exist (a clear error otherwise)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise DyndepthError(f"--device expects cpu, cuda, cuda:N or auto, got {name!r}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise DyndepthError(f"--device {name}: this torch build sees no CUDA GPU; use --device cpu")
    if dev.type not in ("cpu", "cuda"):
        raise DyndepthError(f"--device expects cpu, cuda, cuda:N or auto, got {name!r}")
    return dev


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def _device_name(dev: torch.device) -> str:
    return torch.cuda.get_device_name(dev) if dev.type == "cuda" else "CPU"


def _check(opts: Options) -> None:
    if opts.tokens < 1:
        raise DyndepthError(f"--tokens must be a positive number of tokens, got {opts.tokens}")
    conversation_range(opts.conversations)
    if opts.max_len < 8:
        raise DyndepthError(f"--max-len must be at least 8, got {opts.max_len}")
    if opts.draft_vocab < 0:
        raise DyndepthError(f"--draft-vocab must be >= 0 (0 = full vocabulary), got {opts.draft_vocab}")
    if opts.intermediate_size is not None and opts.intermediate_size < 1:
        raise DyndepthError(f"--intermediate-size must be positive, got {opts.intermediate_size}")
    t = opts.train
    if t.epochs < 0 or t.batch_size < 1 or not t.lr > 0 or t.eval_steps < 1 or t.unroll < 1:
        raise DyndepthError("--epochs must be >= 0, --batch-size >= 1, --lr > 0, --eval-steps and --unroll >= 1")
    if not 0 < opts.holdout < 1:
        raise DyndepthError(f"--holdout must lie between 0 and 1, got {opts.holdout}")
    if opts.init is not None and not (Path(opts.init) / "config.json").is_file():
        raise DyndepthError(f"--init {opts.init} is not a draft head directory (no config.json)")
    if opts.time_budget_min is not None and not opts.time_budget_min > 0:
        raise DyndepthError(f"--time-budget must be a positive number of minutes, got {opts.time_budget_min}")
    if opts.features not in ("disk", "memory"):
        raise DyndepthError(f"--features expects disk or memory, got {opts.features!r}")
    if opts.features == "memory" and opts.train.epochs == 0:
        raise DyndepthError("--epochs 0 keeps nothing with --features memory; use --features disk")
    if opts.extract_batch_tokens is not None and opts.extract_batch_tokens < 1:
        raise DyndepthError(f"--extract-batch-tokens must be positive, got {opts.extract_batch_tokens}")
    if opts.arch not in ("eagle", "eagle3"):
        raise DyndepthError(f"--arch expects eagle or eagle3, got {opts.arch!r}")
    if opts.out.exists() and not opts.out.is_dir():
        raise DyndepthError(f"--out {opts.out} exists and is not a directory")


def _default_cache() -> Path:
    from dyndepth.models import cache_dir

    return cache_dir() / "train"


def _target_coverage(subset: torch.Tensor, items, lm_w: torch.Tensor) -> float:
    """Share of the target's argmax tokens at trained held-out positions that lie in the draft vocabulary."""
    toks = []
    for ids, mask, f in items:
        sel = mask[1:].to(lm_w.device)  # feature j predicts token j+1
        toks.append((f[:-1, : lm_w.shape[1]].to(lm_w.device)[sel].float() @ lm_w.T).argmax(-1).cpu())
    return coverage(subset.cpu(), torch.cat(toks))


def _jsonable(opts: Options) -> dict:
    d = asdict(opts)
    d.pop("train")
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in d.items()}


def _machine(opts: Options) -> dict:
    dev = resolve_device(opts.device)
    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "torch_threads": opts.threads, "torch": torch.__version__,
            "device": _device_name(dev)}


def _existing_score(out: Path, heldout_id: str) -> float:
    """chain_tau of a head already in `out` measured on the same held-out set (else -inf)."""
    try:
        rec = json.loads((out / "training.json").read_text())
    except (OSError, ValueError):
        return float("-inf")
    if rec.get("heldout_id") != heldout_id:
        return float("-inf")
    return float(rec.get("heldout_metrics", {}).get("chain_tau", float("-inf")))


def save_head(head: DraftHead, out: Path, record: dict) -> None:
    """Write config.json + model.safetensors (bf16) + training.json, each file replaced atomically."""
    tmp = out / ".saving"
    head.save_pretrained(tmp)
    (tmp / "training.json").write_text(json.dumps(record, indent=2) + "\n")
    (tmp / "README.md").write_text(readme(record))
    for name in ("model.safetensors", "config.json", "training.json", "README.md"):
        os.replace(tmp / name, out / name)
    tmp.rmdir()


def _update_record(out: Path, record: dict) -> None:
    (out / "training.json").write_text(json.dumps(record, indent=2) + "\n")
    (out / "README.md").write_text(readme(record))


def readme(rec: dict) -> str:
    """A short model card from the training record."""
    o, d, m = rec["options"], rec["data_stats"], rec.get("heldout_metrics", {})
    t, mach = rec.get("timings", {}), rec["machine"]
    vocab = rec["draft_vocab"].get("draft_vocab_size", "full")
    lines = [
        f"# EAGLE draft head for {rec['model']}", "",
        ("One-layer EAGLE-3 head (official EAGLE-3 checkpoint layout, `midlayer.*`, bf16 safetensors), trained "
         "with training-time test by `dyndepth train-head --arch eagle3`"
         if o.get("arch") == "eagle3" else
         "One-layer EAGLE-1/2 head (official EAGLE checkpoint layout, bf16 safetensors), trained with "
         "`dyndepth train-head`") + "; the full record is in `training.json`.", "",
        f"- data: {rec['data']}{' (self-distilled replies)' if o['self_distill'] else ''}; "
        f"{d['train_conversations']} conversations, {d['train_tokens']} tokens ({d['train_assistant_tokens']} "
        f"assistant tokens), max length {o['max_len']}",
        f"- held out: {d['heldout_conversations']} conversations, {d['heldout_tokens']} tokens",
        f"- draft vocabulary: {vocab} tokens"
        + (f" (covers {rec['draft_vocab']['heldout_coverage']:.1%} of the target's held-out argmax tokens)"
           if vocab != "full" else ""),
        f"- MLP width: {o['intermediate_size'] or 'as the target'}; epochs: {rec['train_config']['epochs']} "
        f"(best: {rec.get('best_epoch')}), lr {rec['train_config']['lr']}, batch {rec['train_config']['batch_size']}",
        f"- wall time: {t.get('wall_s', 0) / 60:.1f} min (extraction {t.get('extract_s', 0) / 60:.1f} min, "
        f"training {t.get('train_s', 0) / 60:.1f} min) on "
        + (f"{mach['cpu_count']} CPU cores ({mach['processor']}), {mach['torch_threads']} torch threads"
           if mach.get("device", "CPU") == "CPU" else f"one {mach['device']} GPU"),
        f"- held-out top-1 agreement with the target, unroll steps 1..{len(m.get('top1', []))}: "
        f"{m.get('top1')}; chain tau estimate {m.get('chain_tau')}", ""]
    return "\n".join(lines)
