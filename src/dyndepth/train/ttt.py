"""EAGLE-3 training: training-time test (TTT), SafeAILab/EAGLE ``traineagle3`` style.

Items hold feats [n, (1 + k)·H_t]: the target's final features f (the lm_head input) then the k fused layers a.
For pair index t (feature of position t, token x_{t+1}) a chain of ``steps`` unrolled draft steps j = 0..S-1:

    step 0:   out_0[t] = layer(e(x_{t+1}),   fc(a_t))           at position t
    step j:   out_j[t] = layer(e(x_{t+1+j}), out_{j-1}[t])       at position t + j   (pre-norm output fed back)
    loss_j    = CE(p_{t+1+j}, log_softmax(lm_head(norm(out_j[t]))))  over the draft vocabulary

with teacher-forced tokens, ``p_u = softmax(W_d f_u)`` the target distribution restricted to and renormalised over
the draft vocabulary, counted where token t+2+j is an assistant token and the target's argmax lies in the draft
vocabulary; total = sum_j 0.8^j loss_j (each normalised by the step-0 count). Attention across steps: a step-j query
at t sees the step-0 keys 0..t (causal) and, of each later step 1..j, only the key at the same index t (the
"diagonal" of EAGLE-3's Fig. 6). That is exactly what drafting sees: the chain rooted at the committed pair t,
its ancestors at positions t+1.. t+j. The diagonal keys are dot products, so a step costs about one causal
attention, not j of them.
"""

from __future__ import annotations

import math

import torch
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

from dyndepth.head.eagle3 import Eagle3Head
from dyndepth.train.trainer import Item, TrainConfig, collate

DECAY = 0.8


def split(feats: torch.Tensor, h_t: int) -> tuple[torch.Tensor, torch.Tensor]:
    """feats [B, n, (1 + k)·H_t] -> final features [B, n, H_t], fused layers [B, n, k·H_t]."""
    return feats[..., :h_t], feats[..., h_t:]


def _attention(attn, x, cos, sin, past: list):
    """x [B, m, 2H] -> [B, m, H]; ``past`` holds the (k, v) of the earlier steps [B, n_kv, m, d] and gets this one's."""
    b, m, _ = x.shape
    q = attn.q_proj(x).view(b, m, attn.n_heads, attn.d_head).transpose(1, 2)  # [B, n_h, m, d]
    k = attn.k_proj(x).view(b, m, attn.n_kv, attn.d_head).transpose(1, 2)  # [B, n_kv, m, d]
    v = attn.v_proj(x).view(b, m, attn.n_kv, attn.d_head).transpose(1, 2)
    q, k = apply_rotary_pos_emb(q, k, cos, sin)
    past.append((k, v))
    rep = attn.n_heads // attn.n_kv
    keys = [kk.repeat_interleave(rep, 1) for kk, _ in past]  # each [B, n_h, m, d]
    vals = [vv.repeat_interleave(rep, 1) for _, vv in past]
    scale = 1.0 / math.sqrt(attn.d_head)
    causal = torch.ones(m, m, dtype=torch.bool, device=x.device).tril()
    s0 = (q @ keys[0].transpose(-1, -2) * scale).masked_fill(~causal, float("-inf"))  # [B, n_h, m, m]
    diag = [(q * kk).sum(-1, keepdim=True) * scale for kk in keys[1:]]  # each [B, n_h, m, 1]
    probs = torch.softmax(torch.cat([s0, *diag], dim=-1).float(), dim=-1).to(q.dtype)  # [B, n_h, m, m + j]
    out = probs[..., :m] @ vals[0]  # [B, n_h, m, d]
    for i, vv in enumerate(vals[1:]):
        out = out + probs[..., m + i: m + i + 1] * vv
    return attn.o_proj(out.transpose(1, 2).reshape(b, m, attn.n_heads * attn.d_head))


def _step(head: Eagle3Head, tokens, hidden, positions, past: list):
    """One unrolled step: the head's layer with TTT attention. tokens [B, m], hidden [B, m, H] -> out [B, m, H]."""
    layer = head.midlayer
    e = head.embed(tokens).to(hidden.dtype)
    cos, sin = head.rotary(hidden, positions)
    gn = layer.hidden_norm(hidden)
    x = torch.cat([layer.input_layernorm(e), gn], dim=-1)  # [B, m, 2H]
    y = (gn if layer.norm_before_residual else hidden) + _attention(layer.self_attn, x, cos, sin, past)
    return y + layer.mlp(layer.post_attention_layernorm(y))


def unroll(head: Eagle3Head, ids: torch.Tensor, fused: torch.Tensor, steps: int, bf16: bool = False):
    """Yield out_j [B, m, H] for j = 0..steps-1 (ids [B, n], fused [B, n, k·H_t]; m = n - 1 chains)."""
    b, n = ids.shape
    m = n - 1
    past: list = []
    bf16 = bf16 and ids.device.type == "cuda"  # CPUs without bf16 matmul units run bf16 autocast ~5x slower
    base = torch.arange(m, device=ids.device)[None].expand(b, -1)  # [B, m]
    with torch.autocast(ids.device.type, dtype=torch.bfloat16, enabled=bf16):
        hidden = head.project(fused[:, :m])  # [B, m, H]
    for j in range(steps):
        tok = torch.zeros(b, m, dtype=torch.long, device=ids.device)
        if 1 + j < n:
            tok[:, : n - 1 - j] = ids[:, 1 + j:]  # x_{t+1+j}
        with torch.autocast(ids.device.type, dtype=torch.bfloat16, enabled=bf16):
            out = _step(head, tok, hidden, base + j, past).float()
        yield out
        hidden = out


def _targets(head: Eagle3Head, final: torch.Tensor, mask: torch.Tensor, lm_w: torch.Tensor, chunk: int = 4096):
    """final [B, n, H_t], mask [B, n] -> (target argmax over the full vocabulary [B, n], its draft id or -1
    [B, n]), computed only where the predicted token u+1 is trained (the full-vocabulary matmul dominates)."""
    b, n = mask.shape
    need = torch.zeros_like(mask)
    need[:, :-1] = mask[:, 1:]
    rows = final[need]  # [M, H_t]
    top = torch.zeros(b, n, dtype=torch.long, device=final.device)
    if rows.shape[0]:
        top[need] = torch.cat([(rows[s: s + chunk] @ lm_w.T).argmax(-1) for s in range(0, rows.shape[0], chunk)])
    to_draft = torch.full((lm_w.shape[0],), -1, dtype=torch.long, device=final.device)
    vd = head.draft_vocab_size
    ids = head.to_target_ids(torch.arange(vd, device=final.device))
    to_draft[ids] = torch.arange(vd, device=final.device)
    return top, torch.where(need, to_draft[top], -1)


def _valid(mask: torch.Tensor, j: int) -> torch.Tensor:
    """mask [B, n] -> [B, m] bool: chain t's step j predicts token t+2+j, which exists and is trained."""
    b, n = mask.shape
    w = torch.zeros(b, n - 1, dtype=torch.bool, device=mask.device)
    if 2 + j < n:
        w[:, : n - 2 - j] = mask[:, 2 + j:]
    return w


def _soft_ce(head: Eagle3Head, h: torch.Tensor, f: torch.Tensor, w_d: torch.Tensor, chunk: int = 2048):
    """Sum over rows of CE(softmax(W_d f), log_softmax(lm_head(norm(h)))); h [M, H], f [M, H_t]."""
    total = h.new_zeros(())
    for s in range(0, h.shape[0], chunk):
        with torch.no_grad():
            p = torch.softmax(f[s: s + chunk] @ w_d.T, dim=-1)  # [c, V_d]
        total = total - (p * torch.log_softmax(head.logits(h[s: s + chunk]).float(), dim=-1)).sum()
    return total


def _draft_lm(head: Eagle3Head, lm_w: torch.Tensor) -> torch.Tensor:
    ids = head.to_target_ids(torch.arange(head.draft_vocab_size, device=lm_w.device))
    return lm_w[ids]  # [V_d, H_t]


def train_step(head: Eagle3Head, opt, items: list[Item], cfg: TrainConfig, lr: float, lm_w: torch.Tensor) -> dict:
    dev = head.fc.weight.device
    ids, mask, feats = collate(items, dev)
    final, fused = split(feats, head.target_hidden_size)
    _, tgt_draft = _targets(head, final, mask, lm_w)
    w_d = _draft_lm(head, lm_w)
    n0 = int((_valid(mask, 0) & (tgt_draft[:, 1:] >= 0)).sum())
    if n0 == 0:
        return {"loss": 0.0, "tokens": 0}
    outs, grads, total = [], [], 0.0
    for j, out in enumerate(unroll(head, ids, fused, cfg.unroll, cfg.bf16)):
        u = torch.arange(1 + j, 1 + j + out.shape[1], device=dev).clamp(max=ids.shape[1] - 1)  # [m]: f index
        valid = _valid(mask, j) & (tgt_draft[:, u] >= 0)  # [B, m]
        if not valid.any():
            break
        hs, fs = out[valid], final[:, u][valid]  # [M, H], [M, H_t]
        hd = hs.detach().requires_grad_()
        loss = _soft_ce(head, hd, fs, w_d) * (DECAY ** j) / n0
        loss.backward()  # lm_head and norm grads now; the layer's through hs below
        total += float(loss.detach())
        outs.append(hs)
        grads.append(hd.grad)
    torch.autograd.backward(outs, grads)
    for g in opt.param_groups:
        g["lr"] = lr
    gnorm = torch.nn.utils.clip_grad_norm_(head.parameters(), cfg.grad_clip)
    opt.step()
    opt.zero_grad(set_to_none=True)
    return {"loss": total, "ploss": total, "gnorm": float(gnorm), "tokens": int(mask.sum())}


@torch.no_grad()
def evaluate(head: Eagle3Head, items: list[Item], cfg: TrainConfig, lm_w: torch.Tensor, batch_size: int = 4) -> dict:
    """Held-out TTT loss and, per unroll step, top-1 agreement with the target's argmax (full vocabulary);
    chain_tau = 1 + sum_j P(steps 0..j all agree), the mean accepted length of a one-token-wide draft."""
    k = cfg.eval_steps
    dev = head.fc.weight.device
    w_d = _draft_lm(head, lm_w)
    hits, count, chain = torch.zeros(k), torch.zeros(k), torch.zeros(k)
    roots, loss = 0, 0.0
    for b in range(0, len(items), batch_size):
        ids, mask, feats = collate(items[b: b + batch_size], dev)
        final, fused = split(feats, head.target_hidden_size)
        tgt, tgt_draft = _targets(head, final, mask, lm_w)
        w0 = _valid(mask, 0)
        ok_chain = torch.ones_like(w0)
        for j, out in enumerate(unroll(head, ids, fused, k, cfg.bf16)):
            u = torch.arange(1 + j, 1 + j + out.shape[1], device=dev).clamp(max=ids.shape[1] - 1)
            valid = _valid(mask, j)
            lv = valid & (tgt_draft[:, u] >= 0)
            if lv.any():
                loss += float(_soft_ce(head, out[lv], final[:, u][lv], w_d)) * DECAY ** j
            draft = head.to_target_ids(head.logits(out).argmax(-1))  # [B, m]
            ok = (draft == tgt[:, u]) & valid
            hits[j] += int(ok.sum())
            count[j] += int(valid.sum())
            ok_chain &= ok
            chain[j] += int((ok_chain & w0).sum())
        roots += int(w0.sum())
    r = max(1, roots)
    top1 = (hits / count.clamp(min=1)).tolist()
    return {"loss": loss / r, "ploss": loss / r, "top1": [round(v, 4) for v in top1],
            "chain_tau": round(1 + float(chain.sum()) / r, 4), "pairs": roots}


def init_from_target(head: Eagle3Head, lm_w: torch.Tensor, final_norm: torch.Tensor | None) -> None:
    """Start the head's own lm_head (and norm) from the target's rows of the draft vocabulary, when H == H_t: at
    step 0 the head's logits then read its output like the target reads its last hidden state (dyndepth's
    choice; the reference initialises lm_head at random)."""
    if head.config.hidden_size != lm_w.shape[1]:
        return
    with torch.no_grad():
        head.lm_head.weight.copy_(_draft_lm(head, lm_w.to(head.lm_head.weight.device)))
        if final_norm is not None:
            head.norm.weight.copy_(final_norm.to(head.norm.weight))
