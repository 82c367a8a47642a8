"""The batched engine is lossless row by row: a batch of prompts of different lengths, joining at different steps
(continuous batching, chunked prefill), gives every row exactly what that prompt gives alone; sampled rows keep the
target's law next to other rows; one row stopping, being cancelled, reaching the context end or failing leaves
the others undisturbed."""

import pytest
import torch

import tiny_models
from dyndepth.decoder import SpeculativeDecoder, load_head
from dyndepth.engine import scheduler as scheduler_module
from dyndepth.engine.scheduler import Scheduler
from dyndepth.engine.sequence import Sequence, State
from dyndepth.errors import DyndepthError
from dyndepth.head import DraftHead, head_config
from dyndepth.policies import CostAwarePolicy
from dyndepth.policies.costs import CostModel
from oracle_head import OracleHead
from tiny_models import VOCAB, eagle3_checkpoint, tiny_deep_target, tiny_target

TREE = {
    "plain": dict(),
    "fixed": dict(top_k=3, total_tokens=8, max_depth=4),
    "ddd": dict(top_k=4, total_tokens=12, max_depth=6, checks=(2, 4), threshold=-0.3),
}
MAX_NEW = [24, 30, 9, 30, 17, 26]  # per prompt: rows leave at different steps and others join


@pytest.fixture(autouse=True)
def small_steps(monkeypatch):
    """One thread (tiny models on a shared 2-core machine) and 5-token prefill chunks: long prompts enter in
    several steps while other rows decode."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    monkeypatch.setitem(scheduler_module.DEFAULT_PREFILL_CHUNK, "cpu", 5)
    yield
    torch.set_num_threads(before)


def prompts(n=6, seed=7, lo=3, hi=30):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(1, VOCAB - 1, (int(torch.randint(lo, hi, (1,), generator=g)),), generator=g).tolist()
            for _ in range(n)]


def hf_greedy(target, prompt, n, stop=True):
    eos = sorted(target.stop_token_ids()) if stop else []
    out = target.model.generate(torch.tensor([prompt]), max_new_tokens=n, do_sample=False, eos_token_id=eos or None,
                                pad_token_id=0)
    return out[0, len(prompt):].tolist()


def auto_policy(**kw):
    """auto with a fixed synthetic cost curve (no probe): its trees change from step to step."""
    costs = CostModel([1, 2, 4, 8, 16], [0.010, 0.0101, 0.0104, 0.0111, 0.013], draft_base_s=0.0003,
                      draft_level_s=0.0004)
    return CostAwarePolicy(costs=costs, max_depth=6, **kw)


def decoder(target, policy, head=None, seed=1):
    if policy == "plain":
        return SpeculativeDecoder(target, None, policy="plain")
    if head is None:
        torch.manual_seed(seed)
        head = DraftHead(head_config(target.config)).to(target.dtype)
    if policy == "auto":
        return SpeculativeDecoder(target, head, policy=auto_policy(), top_k=4, total_tokens=12)
    return SpeculativeDecoder(target, head, policy=policy, **TREE[policy])


def check_rows(dec, ps, max_new=MAX_NEW, batch_size=3):
    """Every row of a batched generate equals that prompt's greedy decoding alone; rows joined at different steps."""
    want = [hf_greedy(dec.target, p, n) for p, n in zip(ps, max_new)]
    outs = dec.generate(ps, max_new_tokens=list(max_new), batch_size=batch_size)
    for i, (out, w) in enumerate(zip(outs, want)):
        assert out.error is None
        assert out.token_ids == w, f"row {i}"
    batches = [s.batch_rows for o in outs for s in o.stats.step_stats]
    assert max(batches) == batch_size and min(batches) < batch_size  # full batches, and the tail alone
    return outs


# -- greedy: every row equals its prompt alone (float32) ---------------------------------------------------------
@pytest.mark.parametrize("arch", ["llama", "qwen2", "gemma3"])
@pytest.mark.parametrize("policy", ["plain", "fixed", "ddd", "auto"])
def test_every_row_equals_greedy_decoding_alone(arch, policy):
    check_rows(decoder(tiny_target(arch), policy), prompts())


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_accepted_paths_commit_per_row(arch):
    """A draft the target mostly agrees with: rows accept multi-token paths of different lengths in the same step,
    each compacted into its own KV cache."""
    target = tiny_target(arch)
    ps = prompts(5, seed=3, lo=8, hi=20)
    head = OracleHead(target, [p[0] for p in ps], noise=0.5)
    dec = SpeculativeDecoder(target, head, policy="ddd", top_k=3, total_tokens=10, max_depth=7, checks=(3, 5))
    outs = check_rows(dec, ps, max_new=[40, 33, 40, 25, 40], batch_size=5)
    per_step = {}
    for o in outs:
        for k, s in enumerate(o.stats.step_stats):
            per_step.setdefault(k, set()).add(s.committed)
    assert any(len(c) > 1 for c in per_step.values())  # rows committed different lengths in one step
    assert max(s.committed for o in outs for s in o.stats.step_stats) >= 4


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_eagle3_rows_equal_greedy_alone(tmp_path, arch):
    target = tiny_deep_target(arch, 7)
    path, _ = eagle3_checkpoint(target, tmp_path, seed=3)
    dec = decoder(target, "ddd", head=load_head(path, "tiny", target))
    outs = check_rows(dec, prompts(seed=11))
    assert max(d for o in outs for d in o.stats.depths) >= 2


@pytest.mark.parametrize("policy", ["plain", "ddd"])
@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_static_engine_rows_equal_greedy_alone(monkeypatch, arch, policy):
    """The static engine: rows in regions of one buffer (grown when a fourth row needs one), dense masks."""
    monkeypatch.setattr(tiny_models, "ENGINE", {"static_cache": True, "max_len": 96})
    target = tiny_target(arch)
    check_rows(decoder(target, policy), prompts(), batch_size=4)
    assert target.cache.regions >= 4


# -- sampling: the target's law, row by row ---------------------------------------------------------------------
def test_a_seed_gives_the_same_text_alone_or_batched():
    target = tiny_target("llama")
    for policy in ("fixed", "ddd"):
        dec = decoder(target, policy)
        ps = prompts(6, seed=5)
        seeds = [11, 12, 13, 14, 15, 16]
        alone = [dec.generate(p, max_new_tokens=20, temperature=1.0, seed=s).token_ids for p, s in zip(ps, seeds)]
        batched = dec.generate(ps, max_new_tokens=20, temperature=1.0, seed=seeds, batch_size=4)
        assert [o.token_ids for o in batched] == alone


def test_stream_text_over_a_batch_tags_each_row(tiny_chat_model):
    dec = SpeculativeDecoder.from_pretrained(str(tiny_chat_model), head="random", policy="ddd", top_k=3,
                                             total_tokens=8, max_depth=4, checks=(2,), threshold=-0.3)
    ps = [dec.chat_ids(q) for q in ("Hi!", "What is two plus two?", "Name a colour.")]
    outs = dec.generate(ps, max_new_tokens=12, batch_size=2)
    texts, tokens = ["", "", ""], [[], [], []]
    for chunk in dec.stream_text(ps, max_new_tokens=12, batch_size=2):
        texts[chunk.row] += chunk.text
        tokens[chunk.row] += chunk.token_ids
    assert tokens == [o.token_ids for o in outs] and texts == [o.text for o in outs]
    with pytest.raises(DyndepthError, match="stream_text"):
        dec.stream(ps)


# -- rows leave alone --------------------------------------------------------------------------------------------
def test_rows_that_stop_early_leave_the_others_undisturbed():
    target = tiny_target("qwen2")
    dec = decoder(target, "ddd")
    ps = prompts(4, seed=9)
    full = [hf_greedy(target, p, 30, stop=False) for p in ps]
    stop_id = full[1][3]  # row 1 stops at its 4th token; the others at their own first occurrence, if any
    dec.stop_ids = set()
    outs = dec.generate(ps, max_new_tokens=[2, 30, 30, 30], stop_token_ids=[stop_id], batch_size=4)
    for i, (o, f) in enumerate(zip(outs, full)):
        n = 2 if i == 0 else (f.index(stop_id) + 1 if stop_id in f else 30)
        assert o.token_ids == f[:n], f"row {i}"
    assert outs[0].stats.stop_reason == "max_new_tokens" and outs[1].stats.stop_reason == "stop_token"


def test_a_row_at_the_context_end_stops_alone():
    target = tiny_target("llama")
    dec = decoder(target, "ddd")
    dec.stop_ids = set()
    ctx = target.max_context
    ps = prompts(3, seed=2)
    ps[1] = (ps[1] * 200)[:ctx - 6]  # 7 tokens fit
    want = [hf_greedy(target, p, 30, stop=False) for p in ps]
    outs = dec.generate(ps, max_new_tokens=30, batch_size=3)
    assert outs[1].stats.stop_reason == "context" and len(outs[1].token_ids) == 7
    assert [o.token_ids for o in outs] == [want[0], want[1][:7], want[2]]


def test_a_cancelled_row_leaves_and_frees_its_cache():
    target = tiny_target("llama")
    dec = decoder(target, "ddd")
    dec.stop_ids = set()
    ps = prompts(3, seed=4)
    seqs = [dec.sequence(p, dict(max_new_tokens=25), want_text=False, row=i) for i, p in enumerate(ps)]
    sched = Scheduler(dec, max_batch_size=3)
    for s in seqs:
        sched.add(s)
    got = [[], [], []]
    steps = 0
    while sched.has_work:
        for e in sched.step():
            got[e.seq.row] += e.chunk.token_ids if e.chunk else []
        steps += 1
        if steps == 3:
            sched.cancel(seqs[1])
            kv = seqs[1].kv
    assert seqs[1].state is State.DONE and seqs[1].kv is None and kv.keys[0] is None  # released
    assert 0 < len(got[1]) < 25
    for i in (0, 2):
        assert got[i] == hf_greedy(target, ps[i], 25, stop=False)


def test_a_row_that_fails_in_its_step_ends_alone(monkeypatch):
    target = tiny_target("gemma3")
    dec = decoder(target, "fixed")
    dec.stop_ids = set()
    ps = prompts(4, seed=6)
    real = Sequence.emit

    def emit(self, tokens):
        if self.prompt.tolist() == ps[2] and self.emitted >= 5:
            raise RuntimeError("boom in row 2")
        return real(self, tokens)

    monkeypatch.setattr(Sequence, "emit", emit)
    outs = dec.generate(ps, max_new_tokens=20, batch_size=4)
    assert outs[2].error == "boom in row 2" and 5 <= len(outs[2].token_ids) < 20
    for i in (0, 1, 3):
        assert outs[i].error is None and outs[i].token_ids == hf_greedy(target, ps[i], 20, stop=False)
    with pytest.raises(RuntimeError, match="boom"):  # one prompt alone: the error is raised
        dec.generate(ps[2], max_new_tokens=20)


def test_the_step_log_has_a_line_per_decoding_step_that_adds_up(tmp_path):
    """--step-log: one JSON line per step with decode rows; its committed tokens add up to what the rows emitted
    after their first token, its prompt tokens to the prompts that entered while others decoded, and a step
    drafts exactly when it verified more than its roots and prompt chunks."""
    import json

    from dyndepth.engine.steplog import StepLog

    dec = decoder(tiny_target("llama"), "ddd")
    dec.stop_ids = set()
    ps = prompts(4, seed=5, lo=8, hi=20)
    log = StepLog(tmp_path / "steps.jsonl")
    sched = Scheduler(dec, max_batch_size=2, step_log=log)
    seqs = [dec.sequence(p, dict(max_new_tokens=n), want_text=False, row=i) for i, (p, n) in
            enumerate(zip(ps, [6, 30, 30, 30]))]
    for s in seqs:
        sched.add(s)
    emitted = 0
    while sched.has_work:
        emitted += sum(len(e.chunk.token_ids) for e in sched.step() if e.chunk is not None)
    log.close()
    lines = [json.loads(line) for line in (tmp_path / "steps.jsonl").read_text().splitlines()]
    assert sum(r["rows"] for r in lines) == sum(len(s.stats.step_stats) for s in seqs)  # a row-step each
    assert sum(r["committed"] for r in lines) == emitted - len(ps)  # each prefill's first token is not a step's
    assert 0 < sum(r["prefill_tokens"] for r in lines) <= sum(len(p) for p in ps[2:])  # rows 2, 3 joined mid-run
    assert all(r["prefill_tokens"] <= 5 for r in lines)  # the prefill chunk while others decode (small_steps)
    assert all(1 <= r["rows"] <= 2 and r["tokens"] >= r["rows"] + r["prefill_tokens"] for r in lines)
    assert all((r["drafted_rows"] > 0) == (r["tokens"] > r["rows"] + r["prefill_tokens"]) for r in lines)
    assert any(r["drafted_rows"] for r in lines) and all(r["draft_s"] >= 0 and r["verify_s"] > 0 for r in lines)
    assert [r["t"] for r in lines] == sorted(r["t"] for r in lines)
