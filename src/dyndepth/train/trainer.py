"""Head training (EAGLE-1 objective) and held-out metrics.

For every pair (f_j, x_{j+1}) the head predicts f_{j+1}:

    h    = head(x_{j+1}, f_j + U(-noise, noise))                   # [B, n-1, H]
    loss = SmoothL1(h, f_{j+1}) + p_weight * CE(softmax(W f_{j+1}), log_softmax(W h))

over pairs whose predicted token x_{j+2} is an assistant token. ``W`` is the target's lm_head restricted to the
draft vocabulary (the rows the head drafts from). The target's embedding and lm_head are frozen.

Held-out metrics feed the head its own predicted features, like drafting does: at unroll step s the pair at
position j holds the step s-1 output of position j-1 and attends to true-feature pairs up to j-s+1 plus its
own chain. ``top1[s]`` = agreement of the head's argmax with the target's argmax at step s; ``chain_tau`` =
1 + sum_s P(steps 1..s all agree), the mean accepted length of a one-token-wide draft of depth ``len(top1)``.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tqdm import tqdm

from dyndepth.head import DraftHead, DraftKV

Item = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # ids [n] long, mask [n] bool, feats [n, H] bf16


@dataclass
class TrainConfig:
    epochs: int = 3
    lr: float = 5e-4
    batch_size: int = 8  # conversations per optimisation step
    warmup: float = 0.05  # fraction of steps with a linear warm-up
    min_lr: float = 0.02  # cosine decay ends at lr * min_lr
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.95)
    noise: float = 0.1  # U(-noise, noise) added to input features
    p_weight: float = 0.1
    grad_clip: float = 0.5
    eval_steps: int = 4  # unroll depth of the held-out metrics
    unroll: int = 1  # training unroll depth: 1 = EAGLE-1; k > 1 also trains on the head's own features
    bf16: bool = True  # on CUDA, autocast the head's matmuls to bf16 (fp32 master weights); fp32 on CPUs
    seed: int = 0


def collate(items: list[Item], device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """-> ids [B, n], mask [B, n] (False on padding), feats [B, n, H] float32 (right-padded), on ``device``."""
    n = max(len(i[0]) for i in items)
    ids = torch.zeros(len(items), n, dtype=torch.long, device=device)
    mask = torch.zeros(len(items), n, dtype=torch.bool, device=device)
    feats = torch.zeros(len(items), n, items[0][2].shape[-1], device=device)
    for b, (x, m, f) in enumerate(items):
        ids[b, : len(x)], mask[b, : len(x)], feats[b, : len(x)] = x, m, f.float()
    return ids, mask, feats


def pair_weights(mask: torch.Tensor) -> torch.Tensor:
    """mask [B, n] -> [B, n-1] bool: pair j counts when token j+2 (what h_j's logits predict) is trained."""
    w = torch.zeros(mask.shape[0], mask.shape[1] - 1, dtype=torch.bool, device=mask.device)
    w[:, :-1] = mask[:, 2:]
    return w


def batches(items: list[Item], batch_size: int, rng: random.Random) -> list[list[Item]]:
    """Shuffled batches of similar lengths (sorted inside windows of 32 batches) to limit padding."""
    order = list(range(len(items)))
    rng.shuffle(order)
    window = 32 * batch_size
    out = []
    for s in range(0, len(order), window):
        chunk = sorted(order[s: s + window], key=lambda i: len(items[i][0]))
        out += [[items[i] for i in chunk[k: k + batch_size]] for k in range(0, len(chunk), batch_size)]
    rng.shuffle(out)
    return out


def soft_ce(head: DraftHead, h: torch.Tensor, target_feats: torch.Tensor, chunk: int = 2048) -> torch.Tensor:
    """Sum over rows of CE(softmax(W f), log_softmax(W h)), W = the draft lm_head; h, target_feats [M, H]."""
    total = h.new_zeros(())
    for s in range(0, h.shape[0], chunk):
        with torch.no_grad():
            p = torch.softmax(head.logits(target_feats[s: s + chunk]), dim=-1)  # [m, V_d]
        total = total - (p * torch.log_softmax(head.logits(h[s: s + chunk]), dim=-1)).sum()
    return total


def train_step(head: DraftHead, opt, items: list[Item], cfg: TrainConfig, lr: float) -> dict:
    dev = head.fc.weight.device  # items may live on the CPU or already on the head's device
    ids, mask, feats = collate(items, dev)
    w = pair_weights(mask)  # [B, n-1]
    m = int(w.sum())
    if m == 0:
        return {"loss": 0.0, "tokens": 0}
    noisy = feats.clone()
    if cfg.noise:
        noisy[:, :-1] += (torch.rand_like(noisy[:, :-1]) * 2 - 1) * cfg.noise
    n = ids.shape[1] - 1
    vloss = ploss = 0.0
    outs, grads = [], []
    # Step 1 is the EAGLE-1 objective; with cfg.unroll > 1 the head is also trained on its own predicted
    # features (steps 2..unroll, as drafting sees them), each step's loss averaged with equal weight.
    for s, h in enumerate(unroll(head, ids, noisy, cfg.unroll, cfg.bf16)):
        valid = w & (torch.arange(n, device=dev)[None] >= s)  # [B, n]: the chain's root exists
        ms = int(valid.sum())
        if ms == 0:
            break
        hs, ts = h[valid], feats[:, 1:][valid]  # [M, H]
        vloss = vloss + F.smooth_l1_loss(hs, ts) / cfg.unroll
        # The CE over the draft vocabulary is memory-heavy ([M, V_d]): take its gradient chunk by chunk on a
        # detached copy of hs, then push it through the head together with the SmoothL1 terms.
        hd = hs.detach().requires_grad_()
        pl = soft_ce(head, hd, ts) / ms / cfg.unroll
        (cfg.p_weight * pl).backward()
        ploss += float(pl.detach())
        outs.append(hs)
        grads.append(hd.grad)
    torch.autograd.backward([vloss, *outs], [None, *grads])
    for g in opt.param_groups:
        g["lr"] = lr
    gnorm = torch.nn.utils.clip_grad_norm_(head.parameters(), cfg.grad_clip)
    opt.step()
    opt.zero_grad(set_to_none=True)
    vloss = float(vloss.detach())
    return {"loss": vloss + cfg.p_weight * ploss, "vloss": vloss, "ploss": ploss,
            "gnorm": float(gnorm), "tokens": int(mask.sum())}


def lr_at(step: int, total: int, cfg: TrainConfig) -> float:
    warm = max(1, int(cfg.warmup * total))
    if step < warm:
        return cfg.lr * (step + 1) / warm
    t = (step - warm) / max(1, total - warm)
    return cfg.lr * (cfg.min_lr + (1 - cfg.min_lr) * 0.5 * (1 + math.cos(math.pi * t)))


def unroll_masks(n: int, steps: int, device: torch.device | str = "cpu") -> list[torch.Tensor]:
    """Boolean masks [1, 1, n, s*n] (True = visible) for unroll steps s = 1..steps (see the module docstring)."""
    q = torch.arange(n, device=device)[:, None]
    k = torch.arange(n, device=device)[None, :]
    out = []
    for s in range(1, steps + 1):
        vis = [k <= q - s + 1] + [k == q - s + t for t in range(2, s + 1)]  # step-1 keys, then chain keys
        vis = torch.cat(vis, dim=1)  # [n, s*n]
        out.append(vis[None, None])
    return out


def unroll(head: DraftHead, ids: torch.Tensor, feats: torch.Tensor, steps: int, bf16: bool = False):
    """Yield the head's outputs [B, n-1, H] for unroll steps 1..steps (ids [B, n], feats [B, n, H]).

    Step s output at position j = the prediction of f_{j+1} by a chain rooted at the true pair j-s+1 that fed
    the head its own predicted features for the pairs after the root."""
    n = ids.shape[1] - 1
    bf16 = bf16 and ids.device.type == "cuda"  # CPUs without bf16 matmul units run bf16 autocast ~5x slower
    pos = torch.arange(n, device=ids.device)[None].expand(ids.shape[0], -1)  # [B, n]
    cache, x = DraftKV(), feats[:, :-1]
    for am in unroll_masks(n, steps, ids.device):
        with torch.autocast(ids.device.type, dtype=torch.bfloat16, enabled=bf16):
            h = head(ids[:, 1:], x, pos, cache, am).float()  # [B, n, H]
        yield h
        x = torch.cat([torch.zeros_like(h[:, :1]), h[:, :-1]], dim=1)  # step-s output of j-1 feeds pair j


@torch.no_grad()
def evaluate(head: DraftHead, items: list[Item], cfg: TrainConfig, full_lm_weight: torch.Tensor,
             batch_size: int = 4) -> dict:
    """Held-out loss and unrolled top-1 agreement with the target's argmax (over the full vocabulary)."""
    k = cfg.eval_steps
    dev = head.fc.weight.device
    hits, count, chain = torch.zeros(k), torch.zeros(k), torch.zeros(k)
    n_roots, vl, pl = 0, 0.0, 0.0
    for b in range(0, len(items), batch_size):
        ids, mask, feats = collate(items[b: b + batch_size], dev)
        n = ids.shape[1] - 1
        w = pair_weights(mask)  # [B, n]
        target_tok = torch.stack([_argmax(f[1:], lambda x: x @ full_lm_weight.T) for f in feats])  # [B, n]
        ok_chain = torch.ones_like(w)  # [B, n] over chain roots r: steps 1..s all agreed
        for s, h in enumerate(unroll(head, ids, feats, k, cfg.bf16)):
            if s == 0:
                hs, ts = h[w], feats[:, 1:][w]
                vl += float(F.smooth_l1_loss(hs, ts, reduction="sum")) / hs.shape[-1]
                pl += float(soft_ce(head, hs, ts))
            draft_tok = head.to_target_ids(torch.stack([_argmax(x, head.logits) for x in h]))
            valid = w & (torch.arange(n, device=dev)[None] >= s)  # step s+1 at position j: its root j-s exists
            ok = (draft_tok == target_tok) & valid  # [B, n]
            hits[s] += int(ok.sum())
            count[s] += int(valid.sum())
            ok_r = torch.zeros_like(ok)
            ok_r[:, : n - s] = ok[:, s:]  # realign: root r's step s+1 sits at position r+s
            ok_chain &= ok_r
            chain[s] += int((ok_chain & w).sum())
        n_roots += int(w.sum())
    top1 = (hits / count.clamp(min=1)).tolist()
    m = max(1, n_roots)
    return {"vloss": vl / m, "ploss": pl / m, "loss": (vl + cfg.p_weight * pl) / m,
            "top1": [round(v, 4) for v in top1], "chain_tau": round(1 + float(chain.sum()) / m, 4), "pairs": n_roots}


def _argmax(h: torch.Tensor, logits_fn, chunk: int = 2048) -> torch.Tensor:
    """h [n, H] -> argmax of logits_fn(h) [n, V] along V, [n] (chunked over n)."""
    return torch.cat([logits_fn(h[s: s + chunk]).argmax(-1) for s in range(0, h.shape[0], chunk)])


def fit(head: DraftHead, train: list[Item], heldout: list[Item], cfg: TrainConfig, full_lm_weight: torch.Tensor,
        on_epoch=None, progress: bool = True, log=print, deadline: float | None = None, step_fn=None,
        eval_fn=None) -> list[dict]:
    """Train; after every epoch evaluate and call on_epoch(epoch, metrics). Returns the per-epoch metrics.

    step_fn(head, opt, items, cfg, lr) / eval_fn(head, items, cfg, full_lm_weight): the objective (default: the
    EAGLE-1 ``train_step`` / ``evaluate``; EAGLE-3 passes ``dyndepth.train.ttt``'s).

    deadline: a time.perf_counter() value; training stops after an epoch when another epoch as long as the
    last one would end after it (the learning-rate schedule still spans cfg.epochs)."""
    torch.manual_seed(cfg.seed)
    rng = random.Random(cfg.seed)
    opt = torch.optim.AdamW(head.parameters(), lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    steps_per_epoch = math.ceil(len(train) / cfg.batch_size)
    total = steps_per_epoch * cfg.epochs
    history, step = [], 0
    for epoch in range(1, cfg.epochs + 1):
        t0 = time.perf_counter()
        head.train()
        bar = tqdm(batches(train, cfg.batch_size, rng), desc=f"train epoch {epoch}/{cfg.epochs}",
                   disable=not progress, dynamic_ncols=True)
        loss_sum, n_tok = 0.0, 0
        for items in bar:
            out = (step_fn or train_step)(head, opt, items, cfg, lr_at(step, total, cfg))
            step += 1
            n_tok += out["tokens"]
            loss_sum += out["loss"] * out["tokens"]
            bar.set_postfix(loss=f"{out['loss']:.3f}")
        run_loss = loss_sum / max(1, n_tok)  # the epoch's mean training loss
        head.eval()
        metrics = (eval_fn or evaluate)(head, heldout, cfg, full_lm_weight)
        metrics.update(epoch=epoch, train_loss=round(run_loss, 4), train_tokens=n_tok,
                       epoch_time_s=round(time.perf_counter() - t0, 1))
        history.append(metrics)
        log(f"epoch {epoch}: held-out top1 {metrics['top1']} chain_tau {metrics['chain_tau']} "
            f"loss {metrics['loss']:.4f} (train {run_loss:.4f}, {metrics['epoch_time_s']:.0f} s)")
        if on_epoch:
            on_epoch(epoch, metrics)
        took = time.perf_counter() - t0
        if deadline is not None and epoch < cfg.epochs and time.perf_counter() + took > deadline:
            log(f"time budget: stopping after epoch {epoch} of {cfg.epochs} (another would end after the budget)")
            break
    return history
