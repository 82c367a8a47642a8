"""EAGLE-3 heads: target-layer capture, the reference architecture, both checkpoint layouts, lossless decoding."""

import json
import math

import pytest
import torch
import torch.nn.functional as F

from dyndepth.decoder import SpeculativeDecoder, load_head
from dyndepth.drafters.eagle import grow_pool
from dyndepth.head import DraftKV, Eagle3Head, default_layers, load_head_dir
from dyndepth.policies import make_policy
from tiny_models import VOCAB, eagle3_checkpoint, tiny_deep_target

LAYERS = 7  # default EAGLE-3 layers of a 7-layer target: (2, 3, 4)


@pytest.fixture(autouse=True)
def one_thread():  # tiny models on a shared 2-core machine: a second thread only adds spin-waiting
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def targets():
    return {arch: tiny_deep_target(arch, LAYERS) for arch in ("llama", "qwen2", "gemma3")}


def hf_greedy(target, prompt, n):
    out = target.model.generate(torch.tensor([prompt]), max_new_tokens=n, do_sample=False,
                                eos_token_id=sorted(target.stop_token_ids()) or None, pad_token_id=0)
    return out[0, len(prompt):].tolist()


class _Layers:  # the part of a head that Target.prefill_features asks
    def __init__(self, ids):
        self.ids = ids

    def feature_layers(self, num_layers):
        return self.ids or default_layers(num_layers)


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gemma3"])
@pytest.mark.parametrize("ids", [None, (0, 1, 6), (5, 2)])
def test_captured_layers_are_output_hidden_states(targets, arch, ids):
    """Layer id i = transformers' output_hidden_states[i] (the input of decoder layer i), in prefill and in a
    later cached forward, and the final features stay the lm_head input."""
    target = targets[arch]
    prompt = torch.tensor([5, 9, 200, 17, 3, 44, 8])
    logits, feats, head_feats = target.prefill_features(prompt[:5], _Layers(ids))
    with torch.no_grad():
        out = target.model(prompt[None], output_hidden_states=True)
    want = ids or default_layers(LAYERS)
    expected = torch.cat([out.hidden_states[i][0] for i in want], dim=-1)  # [7, k·H]
    assert head_feats.shape == (5, len(want) * target.config.hidden_size)
    assert torch.allclose(head_feats, expected[:5], atol=1e-5)
    assert torch.allclose(target.logits(feats), out.logits[0, :5].float(), atol=1e-4)
    vis = torch.ones(2, 7, dtype=torch.bool)
    vis[0, 6] = False
    feats2, head2 = target.forward_features(prompt[5:], torch.arange(5, 7), vis)
    assert torch.allclose(head2, expected[5:], atol=1e-4)
    target.capture(None)
    assert target._hooks == []


def test_eagle1_heads_capture_nothing(targets):
    from dyndepth.head import DraftHead, head_config

    target = targets["llama"]
    dec = SpeculativeDecoder(target, DraftHead(head_config(target.config)), policy="fixed", top_k=2,
                             total_tokens=4, max_depth=2)
    dec.generate([3, 4, 5], max_new_tokens=4)
    assert target._hooks == [] and target._capture_ids is None


# -- the architecture, against an independent implementation of EAGLE3.md's formulas -------------------------
def _rms(x, w, eps=1e-5):
    return w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


def _rope(x, pos, theta=10000.0):  # x [h, n, d]
    d = x.shape[-1]
    inv = 1.0 / theta ** (torch.arange(0, d, 2).float() / d)
    ang = pos[:, None].float() * inv[None]  # [n, d/2]
    cos, sin = torch.cat([ang, ang], -1).cos(), torch.cat([ang, ang], -1).sin()
    x1, x2 = x[..., : d // 2], x[..., d // 2:]
    return x * cos + torch.cat([-x2, x1], -1) * sin


def reference_step(sd, cfg, embed_w, tokens, g, norm_before_residual=False):
    """tokens [n], g [n, H] -> (pre-norm out [n, H], logits [n, V_d]), causal over the n pairs."""
    p = "midlayer."
    nh, nkv, h = cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["hidden_size"]
    d = h // nh
    e = embed_w[tokens]
    gn = _rms(g, sd[p + "hidden_norm.weight"])
    x = torch.cat([_rms(e, sd[p + "input_layernorm.weight"]), gn], -1)  # [n, 2H]
    n = x.shape[0]
    q = (x @ sd[p + "self_attn.q_proj.weight"].T).view(n, nh, d).transpose(0, 1)
    k = (x @ sd[p + "self_attn.k_proj.weight"].T).view(n, nkv, d).transpose(0, 1)
    v = (x @ sd[p + "self_attn.v_proj.weight"].T).view(n, nkv, d).transpose(0, 1)
    pos = torch.arange(n)
    q, k = _rope(q, pos), _rope(k, pos)
    k, v = k.repeat_interleave(nh // nkv, 0), v.repeat_interleave(nh // nkv, 0)
    att = (q @ k.transpose(1, 2)) / math.sqrt(d) + torch.full((n, n), float("-inf")).triu(1)
    a = (att.softmax(-1) @ v).transpose(0, 1).reshape(n, nh * d) @ sd[p + "self_attn.o_proj.weight"].T
    y = (gn if norm_before_residual else g) + a
    z = _rms(y, sd[p + "post_attention_layernorm.weight"])
    mlp = (F.silu(z @ sd[p + "mlp.gate_proj.weight"].T) * (z @ sd[p + "mlp.up_proj.weight"].T)) @ sd[p + "mlp.down_proj.weight"].T
    out = y + mlp
    return out, _rms(out, sd["norm.weight"]) @ sd["lm_head.weight"].T


@pytest.mark.parametrize("layout", ["official", "speculators"])
@pytest.mark.parametrize("norm_before_residual", [False, True])
def test_forward_is_the_reference_architecture(targets, tmp_path, layout, norm_before_residual):
    target = targets["llama"]
    extra = {"norm_before_residual": True} if norm_before_residual else None
    path, state = eagle3_checkpoint(target, tmp_path, layout=layout, extra_config=extra)
    sd = {k.replace("layers.0.", "midlayer."): v for k, v in state.items()}
    head = load_head_dir(path, dtype=torch.float32).bind(target.embed, target.lm_head.weight)
    cfg = json.loads((path / "config.json").read_text())
    cfg = cfg.get("transformer_layer_config", cfg)
    tokens = torch.tensor([4, 80, 9, 300, 2])
    a = torch.randn(5, 3 * 64)  # fused target features
    g = a @ sd["fc.weight"].T
    out_ref, logits_ref = reference_step(sd, cfg, target.embed.weight, tokens, g, norm_before_residual)
    assert torch.allclose(head.project(a), g, atol=1e-5)
    out = head(tokens[None], head.project(a[None]), torch.arange(5)[None])[0]
    assert torch.allclose(out, out_ref, atol=1e-4)
    assert torch.allclose(head.logits(out), logits_ref, atol=1e-3)


def test_root_draft_reads_the_fused_target_layers(targets, tmp_path):
    """Tree growth's first beam is the top-k of lm_head(norm(layer(e, fc(cat(hs[2], hs[3], hs[4])))))."""
    target = targets["qwen2"]
    path, _ = eagle3_checkpoint(target, tmp_path, draft_vocab=list(range(0, VOCAB, 2)))
    head = load_head(path, "tiny", target)
    head.bind(target.embed, target.lm_head.weight)
    prompt = torch.tensor([7, 19, 33, 250, 11, 6])
    _, _, head_feats = target.prefill_features(prompt, head)
    pair_tokens = torch.cat([prompt[1:], torch.tensor([42])])
    pool = grow_pool(head, DraftKV(), pair_tokens, head_feats, make_policy("fixed", max_depth=1), top_k=3)
    with torch.no_grad():
        hs = target.model(prompt[None], output_hidden_states=True).hidden_states
        fused = torch.cat([hs[i] for i in default_layers(LAYERS)], -1)  # [1, n, 3H]
        out = head(pair_tokens[None], head.fc(fused), torch.arange(6)[None])[0]
        top = head.logits(out[-1]).topk(3).indices
    assert pool._tokens[0].tolist() == (top * 2).tolist()  # draft id i is target id 2i


# -- checkpoints: layouts, files, mapping ---------------------------------------------------------------------
@pytest.mark.parametrize("layout,fmt", [("official", "safetensors"), ("official", "bin"),
                                        ("speculators", "safetensors"), ("speculators", "bin")])
def test_both_layouts_load_the_same_head(targets, tmp_path, layout, fmt):
    target = targets["llama"]
    vocab = sorted(torch.randperm(VOCAB, generator=torch.Generator().manual_seed(1))[:100].tolist())
    path, state = eagle3_checkpoint(target, tmp_path / layout, layout=layout, fmt=fmt, draft_vocab=vocab)
    head = load_head_dir(path)
    assert isinstance(head, Eagle3Head) and head.draft_vocab_size == 100
    assert head.to_target_ids(torch.arange(100)).tolist() == vocab
    sd = head.state_dict()
    assert set(sd) == {k.replace("layers.0.", "midlayer.") for k in state} - {"d2t", "t2d"}
    for k, v in state.items():
        if k not in ("d2t", "t2d"):
            assert torch.equal(sd[k.replace("layers.0.", "midlayer.")], v)


def test_save_writes_the_official_layout_and_round_trips(targets, tmp_path):
    target = targets["llama"]
    vocab = list(range(3, VOCAB, 5))
    src, _ = eagle3_checkpoint(target, tmp_path / "src", layout="speculators", draft_vocab=vocab, layer_ids=(1, 3, 5))
    head = load_head_dir(src)
    head.save_pretrained(tmp_path / "out", dtype=torch.float32)
    from safetensors.torch import load_file

    saved = load_file(str(tmp_path / "out" / "model.safetensors"))
    assert any(k.startswith("midlayer.") for k in saved) and not any(k.startswith("layers.") for k in saved)
    assert saved["d2t"].dtype == torch.int64 and saved["t2d"].dtype == torch.bool
    assert (torch.arange(len(vocab)) + saved["d2t"]).tolist() == vocab
    assert saved["t2d"].nonzero()[:, 0].tolist() == vocab and saved["t2d"].numel() == VOCAB
    cfg = json.loads((tmp_path / "out" / "config.json").read_text())
    assert cfg["eagle_aux_hidden_state_layer_ids"] == [1, 3, 5] and cfg["draft_vocab_size"] == len(vocab)
    again = load_head_dir(tmp_path / "out")
    assert again.feature_layers(LAYERS) == (1, 3, 5)
    assert again.to_target_ids(torch.arange(len(vocab))).tolist() == vocab
    for k, v in head.state_dict().items():
        assert torch.equal(v, again.state_dict()[k])


def test_layer_ids_from_eagle_config_count_layer_outputs(targets, tmp_path):
    target = targets["llama"]
    path, _ = eagle3_checkpoint(target, tmp_path, layer_ids=(2, 3, 4), layer_ids_in="eagle_config")
    assert json.loads((path / "config.json").read_text())["eagle_config"]["eagle_aux_hidden_state_layer_ids"] == [1, 2, 3]
    assert load_head_dir(path).feature_layers(LAYERS) == (2, 3, 4)


def test_own_embedding_and_a_narrower_head(targets, tmp_path):
    """A head with H != H_t ships embed_tokens [V, H]; fc maps 3·H_t -> H."""
    target = targets["llama"]
    path, state = eagle3_checkpoint(target, tmp_path, embed=True, hidden=32)
    head = load_head(path, "tiny", target)
    head.bind(target.embed, target.lm_head.weight)
    assert head.fc.weight.shape == (32, 3 * 64)
    assert torch.equal(head.embed(torch.tensor([5])), state["embed_tokens.weight"][5:6])


# -- lossless decoding ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", ["llama", "qwen2"])
@pytest.mark.parametrize("layout,vocab", [("official", None), ("speculators", "half")])
@pytest.mark.parametrize("policy,kwargs", [
    ("ddd", dict(top_k=4, total_tokens=12, max_depth=6, checks=(2, 4), threshold=-0.3)),
    ("fixed", dict(top_k=3, total_tokens=8, max_depth=4)),
])
def test_greedy_equals_transformers(targets, tmp_path, arch, layout, vocab, policy, kwargs):
    target = targets[arch]
    draft_vocab = list(range(0, VOCAB, 2)) + [VOCAB - 1] if vocab else None
    path, _ = eagle3_checkpoint(target, tmp_path, layout=layout, draft_vocab=draft_vocab, seed=3)
    dec = SpeculativeDecoder(target, load_head(path, "tiny", target), policy=policy, **kwargs)
    g = torch.Generator().manual_seed(11)
    depths = []
    for _ in range(3):
        prompt = torch.randint(1, VOCAB - 1, (int(torch.randint(3, 20, (1,), generator=g)),), generator=g).tolist()
        out = dec.generate(prompt, max_new_tokens=32)
        assert out.token_ids == hf_greedy(target, prompt, 32)
        depths += out.stats.depths
    assert max(depths) >= 2  # the fed-back (pre-norm) path was exercised
