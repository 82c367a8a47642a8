"""Feature extraction: run the target once over every training conversation and store what training needs.

Per conversation: token ids [n] (int32), loss mask [n] (uint8, 1 = assistant token) and the target's features
[n, H] (bf16; final-normed last hidden states = lm_head inputs). For an EAGLE-3 head (``target.capture(layers)``
set) the features are [n, (1 + k)·H]: the final features, then the k captured layers, all bf16.
Conversations are sorted by length and run in
batches of at most ``batch_tokens`` padded tokens; consecutive batches are grouped into shards
``shard-NNNNN.safetensors`` (flat tensors + offsets). A shard is written atomically, so an interrupted run resumes
by skipping the shards that exist.

``extract_in_memory`` is the same computation without the disk: the features stay where training runs (the
GPU's memory, for example). It is for data larger than the machine's free disk, and saves the writes; an
interrupted run starts over.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from dyndepth.errors import DyndepthError

Example = tuple[list[int], list[int]]  # (token ids, loss mask)


def fingerprint(examples: list[Example], extra: str) -> str:
    h = hashlib.sha256(extra.encode())
    for ids, mask in examples:
        h.update(torch.tensor(ids, dtype=torch.int32).numpy().tobytes())
        h.update(bytes(mask))
    return h.hexdigest()[:16]


def plan_batches(lengths: list[int], batch_tokens: int) -> list[list[int]]:
    """Example indices, sorted by length, grouped so that batch size x longest <= batch_tokens."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    batches, cur = [], []
    for i in order:
        if cur and (len(cur) + 1) * lengths[i] > batch_tokens:
            batches.append(cur)
            cur = []
        cur.append(i)
    if cur:
        batches.append(cur)
    return batches


def plan_shards(batches: list[list[int]], lengths: list[int], shard_tokens: int) -> list[list[list[int]]]:
    shards, cur, size = [], [], 0
    for b in batches:
        cur.append(b)
        size += sum(lengths[i] for i in b)
        if size >= shard_tokens:
            shards.append(cur)
            cur, size = [], 0
    if cur:
        shards.append(cur)
    return shards


@torch.inference_mode()
def run_batch(target, examples: list[Example], keep_on: torch.device | None = None) -> list[torch.Tensor]:
    """Right-padded batch forward -> features [n_i, H] (bf16) per example, on the CPU or on ``keep_on``."""
    n = max(len(ids) for ids, _ in examples)
    ids = torch.zeros(len(examples), n, dtype=torch.long)  # [B, n]
    att = torch.zeros(len(examples), n, dtype=torch.long)
    for b, (x, _) in enumerate(examples):
        ids[b, : len(x)] = torch.tensor(x)
        att[b, : len(x)] = 1
    out = target.base(input_ids=ids.to(target.device), attention_mask=att.to(target.device), use_cache=False)
    feats = out.last_hidden_state  # [B, n, H]
    if target.captured_layers is not None:  # EAGLE-3: the final features, then the head's k target layers
        feats = torch.cat([feats, target.captured_batch()], dim=-1)  # [B, n, (1 + k)·H]
    feats = feats.to(torch.bfloat16).to(keep_on or "cpu")
    return [feats[b, : len(x)].clone() for b, (x, _) in enumerate(examples)]  # clone: free the padded batch


def extract(target, examples: list[Example], out_dir: Path, batch_tokens: int = 4096,
            shard_tokens: int = 65536, progress: bool = True, on_rate=None) -> list[Path]:
    """Write (or resume) the shards for ``examples`` into out_dir; returns the shard paths in order.

    on_rate(tokens_per_s, remaining_tokens): called after each newly computed batch (for estimates)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    lengths, shards, paths, todo = _plan(examples, out_dir, batch_tokens, shard_tokens)
    total = sum(lengths[i] for k in todo for b in shards[k] for i in b)
    done_tokens, t0 = 0, time.perf_counter()
    bar = tqdm(total=total, unit="tok", unit_scale=True, desc="extract features", disable=not progress,
               dynamic_ncols=True)
    for k in todo:
        parts: dict[int, torch.Tensor] = {}
        for batch in shards[k]:
            for i, f in zip(batch, run_batch(target, [examples[i] for i in batch])):
                parts[i] = f
            n_tok = sum(lengths[i] for i in batch)
            done_tokens += n_tok
            bar.update(n_tok)
            if on_rate:
                on_rate(done_tokens / (time.perf_counter() - t0), total - done_tokens)
        index = [i for b in shards[k] for i in b]
        _write_shard(paths[k], index, [examples[i] for i in index], [parts[i] for i in index])
    bar.close()
    return paths


def extract_in_memory(target, examples: list[Example], device: torch.device, batch_tokens: int = 4096,
                      progress: bool = True) -> dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """-> {example number: (ids [n] long, mask [n] bool, feats [n, H] bf16)}, all on ``device`` (as load_shards)."""
    lengths = [len(ids) for ids, _ in examples]
    out = {}
    bar = tqdm(total=sum(lengths), unit="tok", unit_scale=True, desc="extract features (in memory)",
               disable=not progress, dynamic_ncols=True)
    for batch in plan_batches(lengths, batch_tokens):
        for i, f in zip(batch, run_batch(target, [examples[i] for i in batch], keep_on=device)):
            ids, mask = examples[i]
            out[i] = (torch.tensor(ids, dtype=torch.long, device=device),
                      torch.tensor(mask, dtype=torch.bool, device=device), f)
        bar.update(sum(lengths[i] for i in batch))
    bar.close()
    return out


def _plan(examples, out_dir: Path, batch_tokens: int, shard_tokens: int):
    lengths = [len(ids) for ids, _ in examples]
    shards = plan_shards(plan_batches(lengths, batch_tokens), lengths, shard_tokens)
    paths = [out_dir / f"shard-{k:05d}.safetensors" for k in range(len(shards))]
    todo = [k for k, p in enumerate(paths) if not p.is_file()]
    return lengths, shards, paths, todo


def pending_tokens(examples: list[Example], out_dir: Path, batch_tokens: int = 4096, shard_tokens: int = 65536) -> int:
    """Tokens still to extract (those of the shards not yet written)."""
    lengths, shards, _, todo = _plan(examples, out_dir, batch_tokens, shard_tokens)
    return sum(lengths[i] for k in todo for b in shards[k] for i in b)


def _write_shard(path: Path, index: list[int], examples: list[Example], feats: list[torch.Tensor]) -> None:
    offsets = torch.tensor([0] + [len(ids) for ids, _ in examples]).cumsum(0)  # [m + 1]
    tensors = {
        "index": torch.tensor(index, dtype=torch.int64),  # [m] example numbers
        "offsets": offsets,
        "ids": torch.tensor([t for ids, _ in examples for t in ids], dtype=torch.int32),  # [T]
        "mask": torch.tensor([t for _, m in examples for t in m], dtype=torch.uint8),  # [T]
        "feats": torch.cat(feats).contiguous(),  # [T, H] bf16
    }
    tmp = path.with_suffix(".tmp")
    save_file(tensors, str(tmp))
    os.replace(tmp, path)


def load_shards(paths: list[Path]) -> dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """-> {example number: (ids [n] long, mask [n] bool, feats [n, H] bf16)}."""
    out = {}
    for p in paths:
        try:
            t = load_file(str(p))
        except Exception as exc:  # noqa: BLE001 - a damaged shard: tell the user which one to delete
            raise DyndepthError(f"cannot read feature shard {p} ({exc}); delete it and rerun to recompute") from None
        off = t["offsets"].tolist()
        for k, i in enumerate(t["index"].tolist()):
            a, b = off[k], off[k + 1]
            out[i] = (t["ids"][a:b].long(), t["mask"][a:b].bool(), t["feats"][a:b])
    return out


def write_manifest(out_dir: Path, info: dict) -> None:
    (out_dir / "manifest.json").write_text(json.dumps(info, indent=2) + "\n")
