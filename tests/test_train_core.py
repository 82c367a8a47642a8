"""Trainer pieces on a tiny random Llama target: unrolled evaluation equals real drafting chains, the loss
decreases, feature extraction resumes from finished shards."""

import random
import time

import pytest
import torch

from dyndepth.head import DraftHead, DraftKV, head_config
from dyndepth.train import extract as X
from dyndepth.train.trainer import TrainConfig, evaluate, fit, pair_weights, unroll
from tiny_models import VOCAB, tiny_target


@pytest.fixture(autouse=True)
def one_thread():  # tiny models: on a shared 2-core machine a second thread only adds spin-waiting
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _setup(seed=0):
    target = tiny_target("llama", seed)
    torch.manual_seed(seed + 1)
    head = DraftHead(head_config(target.config)).float()
    head.bind(target.embed, target.lm_head.weight.detach())
    return target, head


def _feats(target, ids):
    with torch.no_grad():
        return target.base(input_ids=ids[None]).last_hidden_state[0]  # [n, H]


def test_unrolled_steps_equal_explicit_draft_chains():
    target, head = _setup()
    ids = torch.randint(1, VOCAB - 1, (14,))
    f = _feats(target, ids)
    with torch.no_grad():
        outs = list(unroll(head, ids[None], f[None], 3))  # 3 x [1, 13, H]
        for r in (0, 4, 9):  # chain roots: true pairs 0..r, then the head's own features
            cache = DraftKV()
            h = head(ids[1:r + 2][None], f[:r + 1][None], torch.arange(r + 1)[None], cache)[0, -1]
            torch.testing.assert_close(h, outs[0][0, r], rtol=1e-4, atol=1e-5)
            for s in (1, 2):  # depth s+1 node: pair (its parent's output, data token) at position r+s
                j = r + s
                see_all = torch.ones(1, 1, 1, cache.length + 1, dtype=torch.bool)
                h = head(ids[j + 1:j + 2][None], h[None, None], torch.tensor([[j]]), cache, see_all)[0, -1]
                torch.testing.assert_close(h, outs[s][0, j], rtol=1e-4, atol=1e-5)


def test_pair_weights_follow_the_predicted_token():
    mask = torch.tensor([[0, 0, 1, 1, 0], [0, 1, 1, 0, 0]], dtype=torch.bool)
    assert pair_weights(mask).int().tolist() == [[1, 1, 0, 0], [1, 0, 0, 0]]


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])  # a GPU machine also checks the GPU path


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("unroll", [1, 2])
def test_fit_lowers_the_loss_and_reports_unrolled_metrics(unroll, device):
    target, head = _setup()
    g = torch.Generator().manual_seed(0)
    period = torch.randint(1, VOCAB - 1, (6,), generator=g)  # periodic text: next features are learnable
    items = []
    for _ in range(24):
        start, n = int(torch.randint(0, 6, (1,), generator=g)), int(torch.randint(12, 40, (1,), generator=g))
        ids = period.repeat(8)[start:start + n]
        mask = torch.ones_like(ids, dtype=torch.bool)
        mask[:3] = False
        items.append((ids, mask, _feats(target, ids).to(torch.bfloat16)))
    cfg = TrainConfig(epochs=4, lr=1e-2, batch_size=4, eval_steps=3, noise=0.0, bf16=False, unroll=unroll)
    lm_w = target.lm_head.weight.detach().to(device)
    head.to(device).bind(target.embed.to(device), lm_w)
    items = [tuple(t.to(device) for t in item) for item in items]
    before = evaluate(head, items[20:], cfg, lm_w)
    hist = fit(head, items[:20], items[20:], cfg, lm_w, progress=False, log=lambda m: None)
    assert hist[-1]["loss"] < 0.7 * before["loss"]
    assert hist[-1]["train_loss"] < hist[0]["train_loss"]
    assert len(hist) == 4 and len(hist[-1]["top1"]) == 3
    assert min(hist[-1]["top1"]) > 0.5 > max(before["top1"])
    assert 2.0 < hist[-1]["chain_tau"] <= 4.0


def test_fit_stops_at_the_deadline_after_a_whole_epoch():
    target, head = _setup()
    ids = torch.randint(1, VOCAB - 1, (20,))
    items = [(ids, torch.ones(20, dtype=torch.bool), _feats(target, ids).to(torch.bfloat16))] * 4
    cfg = TrainConfig(epochs=5, lr=1e-3, batch_size=2, eval_steps=2)
    lm_w = target.lm_head.weight.detach()
    logs = []
    hist = fit(head, items, items[:1], cfg, lm_w, progress=False, log=logs.append, deadline=time.perf_counter())
    assert len(hist) == 1 and "stopping after epoch 1 of 5" in logs[-1]
    assert len(fit(head, items, items[:1], cfg, lm_w, progress=False, log=logs.append, deadline=None)) == 5


def test_extraction_resumes_from_finished_shards(tmp_path, monkeypatch):
    target = tiny_target("llama")
    rng = random.Random(0)
    examples = [([rng.randrange(1, VOCAB) for _ in range(rng.randrange(5, 30))], None) for _ in range(12)]
    examples = [(ids, [1] * len(ids)) for ids, _ in examples]
    paths = X.extract(target, examples, tmp_path, batch_tokens=64, shard_tokens=80, progress=False)
    assert len(paths) > 2
    data = X.load_shards(paths)
    for i, (ids, mask) in enumerate(examples):
        assert data[i][0].tolist() == ids and data[i][1].all()
        torch.testing.assert_close(data[i][2].float(), _feats(target, torch.tensor(ids)), rtol=0.02, atol=0.02)
    paths[1].unlink()
    calls = []
    real = X.run_batch
    monkeypatch.setattr(X, "run_batch", lambda t, ex: calls.append(len(ex)) or real(t, ex))
    assert X.extract(target, examples, tmp_path, batch_tokens=64, shard_tokens=80, progress=False) == paths
    shard1 = X.load_shards([paths[1]])
    assert sum(calls) == len(shard1)  # only the missing shard was recomputed


def test_in_memory_extraction_equals_the_shards(tmp_path):
    target = tiny_target("llama")
    rng = random.Random(1)
    examples = []
    for _ in range(9):
        ids = [rng.randrange(1, VOCAB) for _ in range(rng.randrange(5, 30))]
        examples.append((ids, [rng.randrange(2) for _ in ids]))
    on_disk = X.load_shards(X.extract(target, examples, tmp_path, batch_tokens=64, shard_tokens=80, progress=False))
    in_mem = X.extract_in_memory(target, examples, torch.device("cpu"), batch_tokens=64, progress=False)
    assert sorted(in_mem) == sorted(on_disk) == list(range(len(examples)))
    for i in in_mem:
        for a, b in zip(in_mem[i], on_disk[i]):
            assert a.dtype == b.dtype and torch.equal(a, b)
