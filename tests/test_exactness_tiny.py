"""Greedy speculative output equals transformers' greedy generate, on tiny random models of each family."""

import pytest
import torch

from tiny_models import VOCAB, tiny_decoder


def hf_greedy(target, prompt, n):
    out = target.model.generate(torch.tensor([prompt]), max_new_tokens=n, do_sample=False,
                                eos_token_id=sorted(target.stop_token_ids()) or None, pad_token_id=0)
    return out[0, len(prompt):].tolist()


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gemma3"])
@pytest.mark.parametrize("policy,kwargs", [
    ("ddd", dict(top_k=4, total_tokens=12, max_depth=6, checks=(2, 4), threshold=-0.3)),
    ("fixed", dict(top_k=3, total_tokens=8, max_depth=4)),
    ("plain", dict()),
])
def test_greedy_matches_transformers(arch, policy, kwargs):
    dec = tiny_decoder(arch, policy=policy, **kwargs)
    g = torch.Generator().manual_seed(7)
    for _ in range(3):
        prompt = torch.randint(1, VOCAB - 1, (int(torch.randint(3, 20, (1,), generator=g)),), generator=g).tolist()
        expected = hf_greedy(dec.target, prompt, 40)
        out = dec.generate(prompt, max_new_tokens=40)
        assert out.token_ids == expected
        assert out.stats.new_tokens == len(expected)


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gemma3"])
@pytest.mark.parametrize("noise", [0.0, 0.7])
def test_greedy_matches_with_accepting_oracle_draft(arch, noise):
    """With drafts the target mostly agrees with, whole paths are accepted and committed in one step."""
    from oracle_head import OracleHead
    from dyndepth.decoder import SpeculativeDecoder
    from tiny_models import tiny_target

    target = tiny_target(arch)
    g = torch.Generator().manual_seed(3)
    total_steps = total_tokens = 0
    lengths = []
    for _ in range(2):
        prompt = torch.randint(1, VOCAB - 1, (12,), generator=g).tolist()
        head = OracleHead(target, prompt[0], noise=noise)
        dec = SpeculativeDecoder(target, head, policy="ddd", top_k=3, total_tokens=10, max_depth=7, checks=(3, 5))
        expected = hf_greedy(target, prompt, 48)
        out = dec.generate(prompt, max_new_tokens=48)
        assert out.token_ids == expected
        total_steps += out.stats.steps
        total_tokens += sum(out.stats.accept_lengths)
        lengths += out.stats.accept_lengths[:-1]  # the last step may be cut by max_new_tokens
    tau = total_tokens / total_steps
    if noise == 0.0:
        assert tau > 4.0  # deep paths accepted: exercises multi-token commit and KV compaction
    else:
        assert tau > 1.1
        assert len(set(lengths)) >= 2  # some paths rejected part-way


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gemma3"])
def test_features_are_the_lm_head_input(arch):
    """The target's features (final-normed last hidden states) give exactly the model's own logits."""
    from tiny_models import tiny_target

    target = tiny_target(arch)
    ids = torch.tensor([[5, 9, 200, 17, 3]])
    _, feats = target.prefill(ids[0])
    with torch.no_grad():
        expected = target.model(ids).logits[0]
    assert torch.allclose(target.logits(feats), expected.float(), atol=1e-5)


def test_head_grows_no_deeper_than_its_tree_can_hold():
    """A tree of N tokens is connected, so no node deeper than N - 1 can be verified: the head stops there
    (fixed depth 6 grows 2 levels for N = 3) and the output is still the target's greedy output."""
    prompt = list(range(5, 17))
    for n, deepest in ((3, 2), (12, 6)):
        dec = tiny_decoder("llama", policy="fixed", top_k=3, total_tokens=n, max_depth=6)
        out = dec.generate(prompt, max_new_tokens=24)
        assert out.token_ids == hf_greedy(dec.target, prompt, 24)
        depths = {s.depth for s in out.stats.step_stats}
        assert max(depths) == deepest and max(s.tree_size for s in out.stats.step_stats) <= n


def test_default_tree_size_follows_the_machine_and_the_drafter(monkeypatch):
    """The head's trees default to 24 tokens where bf16 matmuls run in AMX tiles, 4 on other CPUs (float32 matmuls,
    or AVX512-BF16 vectors: verify cost grows fast with N there); a drafter with suffix matches keeps 24 on any CPU
    (their nodes are accepted far more)."""
    from types import SimpleNamespace

    import dyndepth.decoder as decoder
    from dyndepth.decoder import DEFAULT_TOTAL_TOKENS, SUFFIX_TOTAL_TOKENS, SpeculativeDecoder, machine_class

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    for tiles in (True, False):
        monkeypatch.setattr(decoder, "matrix_tiles", lambda tiles=tiles: tiles)
        assert machine_class(SimpleNamespace(device=cpu, dtype=torch.float32)) == "cpu"
        assert machine_class(SimpleNamespace(device=cpu, dtype=torch.bfloat16)) == ("cpu-amx" if tiles else "cpu")
    assert machine_class(SimpleNamespace(device=cuda, dtype=torch.float32)) == "cuda"
    assert DEFAULT_TOTAL_TOKENS["cpu"] < DEFAULT_TOTAL_TOKENS["cpu-amx"] < DEFAULT_TOTAL_TOKENS["cuda"]
    monkeypatch.undo()
    head_only = tiny_decoder("llama", policy="ddd", drafter="head")
    assert head_only.total_tokens == DEFAULT_TOTAL_TOKENS["cpu"]
    hybrid = SpeculativeDecoder(head_only.target, head_only.head, policy="ddd", drafter="hybrid")
    assert hybrid.total_tokens == SUFFIX_TOTAL_TOKENS["cpu"]
    assert hybrid.head_tokens == DEFAULT_TOTAL_TOKENS["cpu"]
    assert SpeculativeDecoder(head_only.target, head_only.head, policy="ddd", drafter="head",
                              total_tokens=9).total_tokens == 9


@pytest.mark.parametrize("policy,kwargs,narrowed", [
    ("fixed", dict(total_tokens=4, max_depth=6), 3),
    ("ddd", dict(total_tokens=4), 3),  # checks at 5, 7, 9: never reached by a 3-level tree, so the beam is not read
    ("ddd", dict(total_tokens=8, checks=(2, 4), max_depth=6), 8),  # its check reads the beam: kept at top_k
])
def test_beam_narrowed_to_the_tree_drafts_the_same_trees(monkeypatch, policy, kwargs, narrowed):
    """Where no tree can hold top_k drafted nodes and the policy does not read the beam, each level keeps only as
    many nodes as a tree can (drafters/stage.py beam_width): every step's tree is the one the full beam gives, on
    a batch of rows, and the output is the target's greedy output."""
    import dyndepth.drafters.stage as stage

    prompts = [list(range(5, 17)), list(range(40, 47)), [9, 300, 12, 77, 5, 6, 201, 18, 4]]
    widths = []
    real = stage.grow_pools

    def spy(head, inputs, pol, top_k, **kw):
        widths.append(top_k)
        return real(head, inputs, pol, top_k, **kw)

    monkeypatch.setattr(stage, "grow_pools", spy)
    trees = {}
    for mode in ("narrow", "full"):
        if mode == "full":
            monkeypatch.setattr(stage, "beam_width", lambda top_k, levels, pol: top_k)
        dec = tiny_decoder("llama", policy=policy, drafter="head", top_k=8, **kwargs)
        widths.clear()
        outs = dec.generate(prompts, max_new_tokens=24, batch_size=3)
        assert set(widths) == {narrowed if mode == "narrow" else 8}
        for prompt, out in zip(prompts, outs):
            assert out.token_ids == hf_greedy(dec.target, prompt, 24)
        trees[mode] = [[(s.node_parents, s.node_depths, s.node_accepted) for s in o.stats.step_stats] for o in outs]
        values = [[s.node_values for s in o.stats.step_stats] for o in outs]
        trees[mode + " values"] = values
    assert trees["narrow"] == trees["full"]
    for a, b in zip(trees["narrow values"], trees["full values"]):
        for va, vb in zip(a, b):
            assert torch.allclose(torch.tensor(va), torch.tensor(vb), atol=1e-4)
