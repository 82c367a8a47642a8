"""The static-cache engine (``Target(..., static_cache=True)``) is lossless, and so is its compiled forward.

The existing exactness and sampling checks run unchanged on static targets (tiny_models.ENGINE switches every
tiny target built there); a spy on ``Target._forward_static`` proves the static path ran. Direct checks cover
what those cannot see: padding never changes a real node's output, in-place compaction leaves the cache the
dynamic engine would hold, the static draft cache grows the same pools, and the one-line refusals.
"""

import pytest
import torch

import test_eagle3
import test_exactness_tiny
import test_sampling
import tiny_models
from dyndepth.decoder import SpeculativeDecoder
from dyndepth.drafters.eagle import grow_pool
from dyndepth.errors import DyndepthError
from dyndepth.head import DraftHead, DraftKV, StaticDraftKV, head_config
from dyndepth.policies import make_policy
from dyndepth.sampling import SamplingParams
from dyndepth.target.static import padded_size
from dyndepth.target import RowInput, Target
from tiny_models import VOCAB, tiny_config, tiny_decoder, tiny_target


@pytest.fixture(autouse=True)
def one_thread():  # tiny models on a shared 2-core machine
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def static_forwards(monkeypatch):
    """Every tiny target is static (max_len 256); yields the (tokens, bucket) of every static forward."""
    monkeypatch.setattr(tiny_models, "ENGINE", {"static_cache": True, "max_len": 256})
    calls = []
    real = Target._forward_static

    def spy(self, rows, bucket, run):
        calls.append((sum(r.size for r in rows), bucket))
        return real(self, rows, bucket, run)

    monkeypatch.setattr(Target, "_forward_static", spy)
    yield calls


# -- the existing checks, on the static engine ------------------------------------------------------------------
@pytest.mark.parametrize("arch", ["llama", "qwen2", "gemma3"])
@pytest.mark.parametrize("policy,kwargs", [
    ("ddd", dict(top_k=4, total_tokens=12, max_depth=6, checks=(2, 4), threshold=-0.3)),
    ("fixed", dict(top_k=3, total_tokens=8, max_depth=4)),
    ("plain", dict()),
])
def test_greedy_matches_transformers(static_forwards, arch, policy, kwargs):
    test_exactness_tiny.test_greedy_matches_transformers(arch, policy, kwargs)
    assert static_forwards and all(b in (n, padded_size(n)) for n, b in static_forwards)  # prefill: b = n
    if policy == "ddd":
        assert (12, 16) in static_forwards  # 12-node trees ran padded to 16 rows


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gemma3"])
@pytest.mark.parametrize("noise", [0.0, 0.7])
def test_greedy_matches_with_accepting_oracle_draft(static_forwards, arch, noise):
    """Deep accepted paths: multi-token commits through the in-place compaction."""
    test_exactness_tiny.test_greedy_matches_with_accepting_oracle_draft(arch, noise)
    assert static_forwards


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_eagle3_greedy_matches_transformers(static_forwards, tmp_path, arch):
    """EAGLE-3 heads read captured target layers: the pad rows are dropped from those too."""
    targets = {arch: tiny_models.tiny_deep_target(arch, test_eagle3.LAYERS)}
    test_eagle3.test_greedy_equals_transformers(targets, tmp_path, arch, "official", None, "ddd",
                                                dict(top_k=4, total_tokens=12, max_depth=6, checks=(2, 4),
                                                     threshold=-0.3))
    assert (12, 16) in static_forwards


@pytest.fixture(scope="module")
def static_toy_target(toy_target):
    return toy_target.variant(static_cache=True, max_len=32)


toy_target = test_sampling.toy_target  # the module-scoped fixture of tests/test_sampling.py


@pytest.mark.parametrize("params", [SamplingParams(temperature=1.0), SamplingParams(temperature=1.3, top_p=0.8)],
                         ids=["T1", "T1.3-top_p0.8"])
def test_joint_distribution_of_first_tokens_matches_target(static_toy_target, params):
    test_sampling.test_joint_distribution_of_first_tokens_matches_target(static_toy_target, params)
    assert static_toy_target.cache is not None and static_toy_target.cache.written


def test_joint_distribution_matches_target_with_the_auto_policy(static_toy_target, steady_clock):
    """auto changes the tree size from step to step: several buckets, still the target's distribution."""
    test_sampling.test_joint_distribution_matches_target_with_the_auto_policy(
        static_toy_target, SamplingParams(temperature=0.7, top_p=0.9), steady_clock)


# -- what the reused checks cannot see ---------------------------------------------------------------------------
def _tree_inputs(target, n, seed=0):
    """A random connected tree of n nodes after the committed prefix: tokens [n], positions [n], visible."""
    from dyndepth.tree import DraftTree

    g = torch.Generator().manual_seed(seed)
    parents = [-1] + [int(torch.randint(0, i, (1,), generator=g)) for i in range(1, n)]
    depths = [0]
    for p in parents[1:]:
        depths.append(depths[p] + 1)
    tree = DraftTree(tokens=torch.randint(1, VOCAB - 1, (n,), generator=g).tolist(), parents=parents, depths=depths)
    L = target.length
    return tree, torch.tensor(tree.tokens), tree.position_ids(L, "cpu")[0], tree.visibility(L, "cpu")


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_padding_never_changes_a_real_node(arch):
    """The same tree padded to 8, 16 or 64 rows: identical outputs for the real nodes (pad rows see only the
    pad slot, real rows never see it)."""
    target = tiny_target(arch).variant(static_cache=True, max_len=128)
    prompt = torch.randint(1, VOCAB - 1, (40,), generator=torch.Generator().manual_seed(1))  # > gemma's window
    outs = []
    for bucket in (7, 8, 16, 64):
        target.prefill(prompt)
        _, tokens, positions, visible = _tree_inputs(target, 7)
        row = RowInput(target._row, tokens, positions, visible)
        outs.append(target._forward_static([row], bucket, target._run_base))
    for out in outs[1:]:
        assert torch.allclose(out, outs[0], atol=1e-6)


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gemma3"])
def test_in_place_compaction_matches_the_dynamic_cache(arch):
    """Verify a tree, commit a branch that is not in place, verify the next tree: the static engine's
    committed entries and features equal the dynamic engine's."""
    dynamic = tiny_target(arch)
    static = dynamic.variant(static_cache=True, max_len=128)
    prompt = torch.randint(1, VOCAB - 1, (20,), generator=torch.Generator().manual_seed(2))
    feats = {}
    for name, target in (("dynamic", dynamic), ("static", static)):
        target.prefill(prompt)
        tree, tokens, positions, visible = _tree_inputs(target, 9, seed=3)
        first = target.forward(tokens, positions, visible)  # [9, H]
        path = tree.path_to(8)
        assert path != list(range(len(path)))  # a real gather
        target.commit_path(torch.tensor(path))
        _, tokens, positions, visible = _tree_inputs(target, 5, seed=4)
        feats[name] = (first, target.forward(tokens, positions, visible), target.length)
    assert feats["static"][2] == feats["dynamic"][2] == 20 + len(path)
    assert torch.allclose(feats["static"][0], feats["dynamic"][0], atol=1e-5)
    assert torch.allclose(feats["static"][1], feats["dynamic"][1], atol=1e-5)
    L, start = static.length, static._row.start
    for i, s_layer in enumerate(static.cache.layers):
        assert torch.allclose(s_layer.keys[..., start:start + L, :], dynamic._row.keys[i][..., :L, :], atol=1e-5)
        assert torch.allclose(s_layer.values[..., start:start + L, :], dynamic._row.values[i][..., :L, :],
                              atol=1e-5)


def test_static_draft_cache_grows_the_same_pools():
    target = tiny_target("llama")
    torch.manual_seed(5)
    head = DraftHead(head_config(target.config))
    head.bind(target.embed, target.lm_head.weight)
    g = torch.Generator().manual_seed(6)
    feats = torch.randn(30, 64, generator=g)
    tokens = torch.randint(1, VOCAB - 1, (30,), generator=g)
    pools = []
    for cache in (DraftKV(), StaticDraftKV(64)):
        policy = make_policy("fixed", max_depth=5)
        pool = grow_pool(head, cache, tokens[:20], feats[:20], policy, 4)
        pool = grow_pool(head, cache, tokens[20:], feats[20:], policy, 4)  # a second step on the committed cache
        assert cache.length == cache.committed == 30
        pools.append(pool)
    for d in range(5):
        assert torch.equal(pools[0].level(d)[0], pools[1].level(d)[0])
        assert torch.allclose(pools[0].level(d)[1], pools[1].level(d)[1], atol=1e-5)


def test_static_rows_get_static_draft_caches_and_reuse_the_buffers():
    dec = tiny_decoder("qwen2", policy="fixed", top_k=3, total_tokens=8, max_depth=4)
    static = SpeculativeDecoder(dec.target.variant(static_cache=True, max_len=128), dec.head, policy="fixed",
                                top_k=3, total_tokens=8, max_depth=4)
    cache = static.new_draft_cache()
    assert isinstance(cache, StaticDraftKV) and cache.capacity == 128 + 4 * 3
    prompt = [5, 9, 200, 17]
    first = static.generate(prompt, max_new_tokens=20).token_ids
    buffers = static.target.cache.layers[0].keys.data_ptr()
    assert static.generate(prompt, max_new_tokens=20).token_ids == first == dec.generate(prompt, 20).token_ids
    assert static.target.cache.layers[0].keys.data_ptr() == buffers  # the region was given back and reused


def test_generation_stops_at_max_len():
    dec = tiny_decoder("llama", policy="plain")
    static = SpeculativeDecoder(dec.target.variant(static_cache=True, max_len=24), None, policy="plain")
    out = static.generate(list(range(1, 11)), max_new_tokens=24, ignore_eos=True)  # the whole context: it ends first
    assert out.stats.stop_reason == "context" and len(out.token_ids) == 24 - 10 + 1
    assert out.token_ids == dec.generate(list(range(1, 11)), max_new_tokens=15, ignore_eos=True).token_ids


# -- one-line refusals ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs,message", [
    (dict(compile=True), "compile=True needs static_cache=True"),
    (dict(max_len=64), "max_len sizes the static KV buffers"),
    (dict(static_cache=True, max_len=1), "max_len must be an integer >= 2"),
    (dict(static_cache=True, max_len=1024), "max_len 1024 exceeds the model's context of 512 tokens"),
    (dict(static_cache="yes"), "static_cache must be true or false"),
])
def test_bad_engine_options_are_one_line_errors(kwargs, message):
    model = tiny_target("llama").model
    with pytest.raises(DyndepthError, match=message) as err:
        Target(model, **kwargs)
    assert "\n" not in str(err.value)


def test_options_are_checked_before_loading():
    with pytest.raises(DyndepthError, match="compile=True needs static_cache=True"):
        SpeculativeDecoder.from_pretrained("/nonexistent/model", policy="plain", compile=True)


def test_a_model_with_other_layer_types_is_refused():
    from transformers import AutoModelForCausalLM

    config = tiny_config("llama")
    model = AutoModelForCausalLM.from_config(config)
    model.config.layer_types = ["linear_attention", "full_attention"]
    with pytest.raises(DyndepthError, match=r"cannot use static_cache: it has layer types \['linear_attention'\]"):
        Target(model, static_cache=True)


def test_padded_sizes_are_a_few_buckets():
    assert [padded_size(n) for n in (1, 2, 3, 8, 9, 12, 24, 60, 61, 128)] == [1, 2, 4, 8, 16, 16, 32, 64, 64, 128]


# -- torch.compile (inductor on the CPU; CUDA graphs on a GPU) ------------------------------------------------------
def test_compiled_forward_is_lossless_and_compiles_once_per_bucket():
    """The tiniest model, 8-node trees (one bucket): greedy output equals transformers, and a second and third
    prompt of other lengths reuse the compiled graph (L lives only in tensor contents)."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    target = tiny_target("llama").variant(static_cache=True, max_len=96, compile=True)
    torch.manual_seed(1)
    head = DraftHead(head_config(target.config))
    dec = SpeculativeDecoder(target, head, policy="ddd", top_k=3, total_tokens=8, max_depth=4, checks=(2,),
                             drafter="head")  # one tree size: one bucket
    g = torch.Generator().manual_seed(7)
    for i in range(3):
        prompt = torch.randint(1, VOCAB - 1, (int(torch.randint(3, 20, (1,), generator=g)),), generator=g).tolist()
        out = dec.generate(prompt, max_new_tokens=24)
        assert out.token_ids == test_exactness_tiny.hf_greedy(target, prompt, 24)
        assert {s.tree_size for s in out.stats.step_stats} == {8}
        if i == 0:
            graphs = counters["stats"]["unique_graphs"]
            assert graphs >= 1  # the verify forward really ran compiled
    assert counters["stats"]["unique_graphs"] == graphs  # no recompilation for new lengths


def test_cropping_a_layer_to_a_prefix_keeps_the_buffer():
    """Assigning a prefix view to a layer (``layer.keys = layer.keys[..., :L, :]``, the DynamicCache idiom) keeps
    the static buffer and its address; the auto policy's probe leaves a working static target."""
    dec = tiny_decoder("llama", policy="auto", top_k=3, total_tokens=8, max_depth=4)
    static = SpeculativeDecoder(dec.target.variant(static_cache=True, max_len=128), dec.head, policy="auto", top_k=3,
                                total_tokens=8, max_depth=4)
    prompt = [5, 9, 200, 17]
    expected = test_exactness_tiny.hf_greedy(static.target, prompt, 16)
    assert static.generate(prompt, max_new_tokens=16).token_ids == expected
    layer = static.target.cache.layers[0]
    address = layer.keys.data_ptr()
    layer.keys = layer.keys[..., :5, :]
    assert layer.keys.shape[-2] == 129 and layer.keys.data_ptr() == address
    assert static.generate(prompt, max_new_tokens=16).token_ids == expected
