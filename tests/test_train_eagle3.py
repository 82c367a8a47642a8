"""EAGLE-3 training: the training-time-test unroll is exactly what drafting computes, and `dyndepth train-head
--arch eagle3` trains, saves (official layout), reloads and decodes losslessly."""

import json
from pathlib import Path

import pytest
import torch

from dyndepth.head import DraftKV, Eagle3Head, eagle3_config
from dyndepth.train import ttt
from dyndepth.train.trainer import TrainConfig
from tiny_models import VOCAB, tiny_deep_target

DATA = Path(__file__).parent / "data" / "chat40.json"


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def head_and_target():
    target = tiny_deep_target("llama", 7)
    torch.manual_seed(0)
    head = Eagle3Head(eagle3_config(target.config, draft_vocab_size=128))
    head.set_draft_vocab(torch.arange(0, VOCAB, 4))
    with torch.no_grad():
        for p in head.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return head.bind(target.embed, target.lm_head.weight), target


def test_ttt_unroll_equals_drafting_chains(head_and_target):
    """Step j at index t = a draft chain rooted at committed pair t, fed its own pre-norm outputs, with
    teacher-forced tokens: committed keys 0..t plus its own ancestors (EAGLE-3's diagonal attention)."""
    head, _ = head_and_target
    n, steps = 12, 4
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, VOCAB, (1, n), generator=g)
    fused = torch.randn(1, n, 3 * 64, generator=g)
    with torch.no_grad():
        outs = list(ttt.unroll(head, ids, fused, steps))
        cache = DraftKV()
        m = n - 1
        out0 = head(ids[:, 1:], head.project(fused[:, :m]), torch.arange(m)[None], cache)
        assert torch.allclose(outs[0], out0, atol=1e-5)
        for t in (0, 3, 6):
            chain = DraftKV()
            chain.keys, chain.values = cache.keys[..., : t + 1, :], cache.values[..., : t + 1, :]
            h = out0[:, t: t + 1]
            for j in range(1, steps):
                if t + 1 + j >= n:
                    break
                vis = torch.zeros(1, 1, 1, chain.length + 1)
                h = head(ids[:, t + 1 + j: t + 2 + j], h, torch.tensor([[t + j]]), chain, vis)
                assert torch.allclose(outs[j][:, t], h[:, 0], atol=1e-4), (t, j)


def test_ttt_step_lowers_the_loss_and_weights_later_steps(head_and_target):
    head, target = head_and_target
    g = torch.Generator().manual_seed(2)
    items = []
    for _ in range(4):
        ids = torch.randint(0, VOCAB, (20,), generator=g)
        with torch.no_grad():
            out = target.model.model(ids[None], output_hidden_states=True)
        hs = out.hidden_states
        feats = torch.cat([out.last_hidden_state, hs[2], hs[3], hs[4]], -1)[0].to(torch.bfloat16)
        items.append((ids, torch.ones(20, dtype=torch.bool), feats))
    lm_w = target.lm_head.weight.detach()
    cfg = TrainConfig(unroll=3, eval_steps=3, bf16=False)
    before = ttt.evaluate(head, items, cfg, lm_w)
    opt = torch.optim.AdamW(head.parameters(), lr=3e-3)
    for _ in range(15):
        ttt.train_step(head, opt, items, cfg, 3e-3, lm_w)
    after = ttt.evaluate(head, items, cfg, lm_w)
    assert after["loss"] < before["loss"] * 0.9
    assert len(after["top1"]) == 3 and after["chain_tau"] >= 1.0


@pytest.mark.slow
def test_train_head_eagle3_smoke_run(smollm2_path, tmp_path, capsys):
    from dyndepth.cli import main
    from dyndepth.decoder import SpeculativeDecoder
    from dyndepth.head import load_head_dir
    from dyndepth.target import Target

    out = tmp_path / "head"
    args = ["train-head", "--arch", "eagle3", "--model", str(smollm2_path), "--data", str(DATA), "--tokens", "1.5k",
            "--out", str(out), "--max-len", "96", "--epochs", "2", "--lr", "3e-3", "--batch-size", "4",
            "--draft-vocab", "600", "--intermediate-size", "256", "--unroll", "3", "--eval-steps", "2",
            "--holdout", "0.15", "--cache-dir", str(tmp_path / "cache"), "--threads", "1", "--no-progress",
            "--features", "memory", "--dtype", "float32"]
    assert main(args) == 0
    log = capsys.readouterr().out
    assert "time estimate" in log and "saved head" in log
    rec = json.loads((out / "training.json").read_text())
    hist = rec["history"]
    assert len(hist) == 2 and hist[-1]["train_loss"] < hist[0]["train_loss"] and hist[-1]["loss"] < hist[0]["loss"]
    assert rec["options"]["arch"] == "eagle3" and rec["draft_vocab"]["draft_vocab_size"] == 600
    assert not list((tmp_path / "cache").rglob("*.safetensors"))  # --features memory: no shards
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["architectures"] == ["LlamaForCausalLMEagle3"] and cfg["draft_vocab_size"] == 600
    head = load_head_dir(out)
    assert isinstance(head, Eagle3Head) and head.feature_layers(30) == (2, 15, 27)
    assert "EAGLE-3" in (out / "README.md").read_text()
    target = Target.from_pretrained(str(smollm2_path), dtype="float32")
    dec = SpeculativeDecoder(target, head.float(), policy="fixed", top_k=4, total_tokens=8, max_depth=3)
    plain = SpeculativeDecoder(target, None, policy="plain")
    ids = dec.chat_ids("What is the capital of France?")
    got = dec.generate(ids, max_new_tokens=16)
    assert got.token_ids == plain.generate(ids, max_new_tokens=16).token_ids
