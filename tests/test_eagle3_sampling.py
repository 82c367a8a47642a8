"""Sampling stays exact with an EAGLE-3 head: the statistical test of test_sampling.py, with a random EAGLE-3
head (own lm_head over a reduced draft vocabulary, fused target layers) on a 4-layer toy target."""

import pytest
import torch
from scipy.stats import chisquare
from transformers import AutoModelForCausalLM, LlamaConfig

from dyndepth.decoder import SpeculativeDecoder, load_head
from dyndepth.sampling import SamplingParams
from dyndepth.target import Target
from test_sampling import PROMPT, V, exact_joint
from tiny_models import eagle3_checkpoint


@pytest.fixture(scope="module")
def toy_target():
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=V, hidden_size=16, intermediate_size=32, num_hidden_layers=4, num_attention_heads=2,
                      num_key_value_heads=1, max_position_embeddings=64, eos_token_id=None, bos_token_id=None)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    with torch.no_grad():
        model.get_output_embeddings().weight.mul_(40.0)
    model.generation_config.eos_token_id = None
    return Target(model.eval())


def test_joint_distribution_with_an_eagle3_head(toy_target, tmp_path):
    params = SamplingParams(temperature=1.3, top_p=0.8)  # temperature and nucleus processing both in play
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        path, _ = eagle3_checkpoint(toy_target, tmp_path, draft_vocab=[0, 2, 3, 5, 6], seed=4, scale=0.3)
        head = load_head(path, "toy", toy_target)
        assert head.feature_layers(4) == (2, 2, 1)
        dec = SpeculativeDecoder(toy_target, head, policy="fixed", top_k=2, total_tokens=6, max_depth=3)
        n = 3000  # in batches of 64 rows, every other row another prompt (as tests/test_sampling.py)
        counts, accepted_any = {}, 0
        rows = [[3, 3, 7, 0, 6] if i % 4 == 3 else PROMPT for i in range(n + n // 3)]  # every 4th another prompt
        outs = dec.generate(rows, max_new_tokens=3, temperature=params.temperature, top_p=params.top_p,
                            top_k=params.top_k, seed=list(range(len(rows))), batch_size=64)
        for out in [o for o, r in zip(outs, rows) if r == PROMPT]:
            counts[tuple(out.token_ids)] = counts.get(tuple(out.token_ids), 0) + 1
            accepted_any += out.stats.accept_lengths[0] > 1
    finally:
        torch.set_num_threads(before)
    joint = exact_joint(toy_target, params)
    assert set(counts) <= set(joint)
    obs, exp, po, pe = [], [], 0, 0.0
    for c in sorted(joint, key=joint.get, reverse=True):
        e = joint[c] * n
        if e >= 5:
            obs.append(counts.get(c, 0))
            exp.append(e)
        else:
            po += counts.get(c, 0)
            pe += e
    if pe > 0:
        obs.append(po)
        exp.append(pe)
    exp = [e * n / sum(exp) for e in exp]
    assert chisquare(obs, exp).pvalue > 1e-3
    assert accepted_any > n * 0.05  # drafts are sometimes accepted: acceptance and residual paths both run
