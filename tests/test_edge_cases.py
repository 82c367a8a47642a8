"""Stopping, caps and context limits."""

import pytest
import torch

from dyndepth.decoder import SpeculativeDecoder
from dyndepth.errors import DyndepthError
from oracle_head import OracleHead
from tiny_models import VOCAB, tiny_target


def hf_greedy(target, prompt, n):
    out = target.model.generate(torch.tensor([prompt]), max_new_tokens=n, do_sample=False, eos_token_id=None,
                                pad_token_id=0)
    return out[0, len(prompt):].tolist()


@pytest.fixture(scope="module")
def target():
    return tiny_target("llama")


def oracle_decoder(target, prompt, **kw):
    kw = {"top_k": 3, "total_tokens": 10, "max_depth": 6, **kw}
    return SpeculativeDecoder(target, OracleHead(target, prompt[0]), policy="fixed", **kw)


def test_stop_token_inside_an_accepted_chunk_ends_generation_there(target):
    prompt = list(range(20, 32))
    greedy = hf_greedy(target, prompt, 40)
    k = next(i for i in range(5, 40) if greedy[i] not in greedy[:i])  # a first occurrence after a few tokens
    dec = oracle_decoder(target, prompt)
    dec.stop_ids = {greedy[k]}
    out = dec.generate(prompt, max_new_tokens=40)
    assert out.token_ids == greedy[:k + 1]  # the stop token is kept, what follows it is dropped
    assert out.stats.stop_reason == "stop_token"
    last = out.stats.step_stats[-1]
    assert last.accepted + 1 > last.committed  # the chunk really was cut inside
    # accepted counts only committed draft tokens (tau and the spec-decode counters must not count cut ones)
    assert last.accepted == last.committed and all(s.accepted <= s.committed for s in out.stats.step_stats)
    assert out.stats.new_tokens == k + 1 == 1 + sum(out.stats.accept_lengths)


def test_max_new_tokens_is_a_hard_cap(target):
    prompt = list(range(40, 50))
    greedy = hf_greedy(target, prompt, 30)
    for n in (1, 2, 5, 13):
        dec = oracle_decoder(target, prompt)
        dec.stop_ids = set()
        out = dec.generate(prompt, max_new_tokens=n)
        assert out.token_ids == greedy[:n]
        assert out.stats.stop_reason == "max_new_tokens"
        assert all(s.accepted <= s.committed for s in out.stats.step_stats)  # the cap cuts accepted counts too
    assert out.stats.steps > 0 and max(out.stats.accept_lengths) > 1
    dec = oracle_decoder(target, prompt)
    one = dec.generate(prompt, max_new_tokens=1)
    assert one.token_ids == greedy[:1] and one.stats.steps == 0


def test_prompt_at_the_context_limit(target):
    ctx = target.max_context
    dec = oracle_decoder(target, [1])
    dec.stop_ids = set()
    n_tree = dec.total_tokens
    g = torch.Generator().manual_seed(0)
    prompt = torch.randint(1, VOCAB - 1, (ctx - n_tree,), generator=g).tolist()
    dec.head = OracleHead(target, prompt[0])
    dec.head.bind(target.embed, target.lm_head.weight)
    out = dec.generate(prompt, max_new_tokens=50)  # near the end the trees shrink: every position is used
    assert out.token_ids == hf_greedy(target, prompt, len(out.token_ids))
    assert out.stats.stop_reason == "context"
    assert len(out.token_ids) == ctx - len(prompt) + 1  # as plain decoding: the KV cache ends full
    assert min(s.tree_size for s in out.stats.step_stats) < n_tree  # the last trees were cut to what fits
    plain = SpeculativeDecoder(target, None, policy="plain")
    plain.stop_ids = set()
    assert plain.generate(prompt, max_new_tokens=50).token_ids == out.token_ids
    dec.head = OracleHead(target, prompt[0])
    dec.head.bind(target.embed, target.lm_head.weight)
    assert len(dec.generate((prompt * 2)[:ctx - 1], max_new_tokens=50).token_ids) == 2  # one free position: 2 tokens
    with pytest.raises(DyndepthError, match="too long"):
        dec.generate(prompt[:1] * ctx, max_new_tokens=5)


@pytest.mark.parametrize("bad,match", [
    (dict(max_new_tokens=0), "max_new_tokens"),
    (dict(temperature=-1.0), "temperature"),
    (dict(top_p=0.0), "top_p"),
])
def test_bad_arguments_are_clear_errors(target, bad, match):
    dec = oracle_decoder(target, [1, 2])
    with pytest.raises(DyndepthError, match=match):
        dec.generate([1, 2], **{"max_new_tokens": 4, **bad})


def test_bad_prompts_are_clear_errors(target):
    dec = oracle_decoder(target, [1, 2])
    for prompt, match in [([], "empty"), ([VOCAB + 3], "token ids"), ("text", "token ids")]:
        with pytest.raises(DyndepthError, match=match):
            dec.generate(prompt, max_new_tokens=4)
