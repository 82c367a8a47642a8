"""``dyndepth train-head``: train an EAGLE draft head for a target model (see docs/TRAINING.md)."""

from __future__ import annotations

import argparse
import re
import sys
import types
from pathlib import Path

from dyndepth.errors import DyndepthError


def parse_count(text: str) -> int:
    """'300000', '300k', '1.5M' -> int."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kKmM]?)\s*", str(text))
    if not m:
        raise DyndepthError(f"--tokens expects a number like 300000, 300k or 1.5M, got {text!r}")
    scale = {"": 1, "k": 1_000, "m": 1_000_000}[m.group(2).lower()]
    return int(float(m.group(1)) * scale)


def _one_line_error(self, message):  # argparse's error() prints the whole usage; keep it to one line
    print(f"error: {self.prog}: {message} (see --help)", file=sys.stderr)
    sys.exit(2)


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "train-head", help="train an EAGLE draft head for a target model",
        description="Extract the target's features over chat data, train a one-layer EAGLE head on them and save "
                    "it (EAGLE format, bf16 safetensors, training.json) to --out. The best epoch by held-out "
                    "metrics is saved as soon as it is reached. A time estimate is printed before the long part.")
    p.error = types.MethodType(_one_line_error, p)
    p.add_argument("--model", required=True, help="zoo name or Hugging Face model directory")
    p.add_argument("--data", default="sharegpt", help="'sharegpt' (packaged ShareGPT V3) or a ShareGPT-format "
                                                      ".json / .jsonl file (default: sharegpt)")
    p.add_argument("--conversations", default=None, metavar="N|A:B",
                   help="use only the first N conversations of --data, or conversations A to B-1 ('A:' = from "
                        "A on), counted in file order before shuffling (default: all)")
    p.add_argument("--tokens", required=True, help="training tokens to extract, e.g. 300k (prompt + reply)")
    p.add_argument("--out", required=True, type=Path, help="output directory for the head")
    p.add_argument("--epochs", type=int, default=3, help="training epochs (0 = extract features only)")
    p.add_argument("--lr", type=float, default=5e-4, help="peak learning rate (AdamW, warm-up + cosine)")
    p.add_argument("--batch-size", type=int, default=8, help="conversations per optimisation step")
    p.add_argument("--max-len", type=int, default=1024, help="truncate conversations to this many tokens")
    p.add_argument("--draft-vocab", type=int, default=8192,
                   help="draft vocabulary size: the most frequent assistant tokens (0 = full vocabulary)")
    p.add_argument("--intermediate-size", type=int, default=None, help="head MLP width (default: the target's)")
    p.add_argument("--self-distill", action="store_true",
                   help="replace replies by the target's own greedy replies to the first user turn (slow)")
    p.add_argument("--distill-max-new", type=int, default=384, help="longest self-distilled reply (tokens)")
    p.add_argument("--init", type=Path, default=None,
                   help="continue from a trained head directory (keeps its MLP width and draft vocabulary)")
    p.add_argument("--noise", type=float, default=0.1, help="uniform noise on input features (default 0.1)")
    p.add_argument("--arch", choices=("eagle", "eagle3"), default="eagle",
                   help="eagle: an EAGLE-1/2 head (default); eagle3: an EAGLE-3 head (three fused target layers, "
                        "own lm_head, training-time test)")
    p.add_argument("--unroll", type=int, default=None,
                   help="unrolled steps: eagle trains on its own predicted features for this many steps (default "
                        "1 = plain EAGLE-1); eagle3's training-time test steps (default 7)")
    p.add_argument("--eval-steps", type=int, default=4, help="unroll depth of the held-out top-1 metrics")
    p.add_argument("--holdout", type=float, default=0.05, help="held-out share of --tokens (at most 20k tokens)")
    p.add_argument("--cache-dir", type=Path, default=None,
                   help="feature shards (default $DYNDEPTH_HOME/train); reruns with the same data resume")
    p.add_argument("--features", choices=("disk", "memory"), default="disk",
                   help="disk: resumable feature shards in --cache-dir (default); memory: keep the features on "
                        "the training device only (for data larger than the free disk; no resume)")
    p.add_argument("--dtype", default="bfloat16", help="target dtype for extraction (default bfloat16)")
    p.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    p.add_argument("--device", default="auto",
                   help="where extraction and training run: cpu, cuda, cuda:N or auto (default: cuda if available)")
    p.add_argument("--extract-batch-tokens", type=int, default=None,
                   help="padded tokens per extraction forward (default 4096 on CPU, 65536 on a GPU)")
    p.add_argument("--time-budget", type=float, default=None, metavar="MIN",
                   help="train fewer epochs if needed so that the whole run ends within MIN minutes "
                        "(from the measured time estimate; at least one epoch)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_train_head)


def cmd_train_head(args: argparse.Namespace) -> int:
    from dyndepth.target import parse_dtype
    from dyndepth.train.pipeline import Options, run
    from dyndepth.train.trainer import TrainConfig

    parse_dtype(args.dtype)
    if args.threads < 1:
        raise DyndepthError(f"--threads must be >= 1, got {args.threads}")
    cfg = TrainConfig(epochs=args.epochs, lr=args.lr, batch_size=args.batch_size, noise=args.noise,
                      eval_steps=args.eval_steps,
                      unroll=args.unroll if args.unroll is not None else (7 if args.arch == "eagle3" else 1),
                      seed=args.seed)
    opts = Options(model=args.model, data=args.data, conversations=args.conversations,
                   tokens=parse_count(args.tokens), out=args.out, max_len=args.max_len,
                   draft_vocab=args.draft_vocab, intermediate_size=args.intermediate_size,
                   self_distill=args.self_distill, distill_max_new=args.distill_max_new, init=args.init,
                   holdout=args.holdout, cache_dir=args.cache_dir, features=args.features, dtype=args.dtype, threads=args.threads,
                   device=args.device, extract_batch_tokens=args.extract_batch_tokens,
                   time_budget_min=args.time_budget, progress=not args.no_progress, train=cfg, arch=args.arch)
    run(opts)
    return 0
