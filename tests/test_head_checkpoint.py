"""Draft-head checkpoints in the official EAGLE format."""

import json

import pytest
import torch
from safetensors.torch import save_file

from dyndepth.errors import DyndepthError
from dyndepth.head import DraftHead, head_config
from tiny_models import tiny_target

OFFICIAL_KEYS = {
    "fc.weight", "fc.bias",
    "layers.0.self_attn.q_proj.weight", "layers.0.self_attn.k_proj.weight",
    "layers.0.self_attn.v_proj.weight", "layers.0.self_attn.o_proj.weight",
    "layers.0.mlp.gate_proj.weight", "layers.0.mlp.up_proj.weight", "layers.0.mlp.down_proj.weight",
    "layers.0.post_attention_layernorm.weight",
}


@pytest.fixture(scope="module")
def target():
    return tiny_target("llama")


def official_checkpoint(target, tmp_path, fmt="safetensors", bias=True, drop=None, reshape=None):
    """A checkpoint written by hand with the official key names (as SafeAILab/EAGLE saves them)."""
    c = target.config
    h, i, nh, nkv = c.hidden_size, c.intermediate_size, c.num_attention_heads, c.num_key_value_heads
    d = h // nh
    g = torch.Generator().manual_seed(0)
    shapes = {
        "embed_tokens.weight": (c.vocab_size, h), "fc.weight": (h, 2 * h), "fc.bias": (h,),
        "layers.0.self_attn.q_proj.weight": (nh * d, h), "layers.0.self_attn.k_proj.weight": (nkv * d, h),
        "layers.0.self_attn.v_proj.weight": (nkv * d, h), "layers.0.self_attn.o_proj.weight": (h, nh * d),
        "layers.0.mlp.gate_proj.weight": (i, h), "layers.0.mlp.up_proj.weight": (i, h),
        "layers.0.mlp.down_proj.weight": (h, i), "layers.0.post_attention_layernorm.weight": (h,),
    }
    if not bias:
        del shapes["fc.bias"]
    if reshape:
        shapes[reshape] = tuple(s + 1 for s in shapes[reshape])
    state = {k: torch.randn(s, generator=g) * 0.02 for k, s in shapes.items() if k != drop}
    cfg = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": h, "intermediate_size": i,
           "num_attention_heads": nh, "num_key_value_heads": nkv, "num_hidden_layers": 1, "rms_norm_eps": 1e-6,
           "vocab_size": c.vocab_size, "max_position_embeddings": 2048, "hidden_act": "silu",
           "tie_word_embeddings": False, "torch_dtype": "float16"}
    if not bias:
        cfg["bias"] = False
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    if fmt == "safetensors":
        save_file(state, str(tmp_path / "model.safetensors"))
    else:
        torch.save(state, tmp_path / "pytorch_model.bin")
    return tmp_path, state


@pytest.mark.parametrize("fmt", ["safetensors", "bin"])
@pytest.mark.parametrize("bias", [True, False])
def test_official_checkpoint_loads(target, tmp_path, fmt, bias):
    path, state = official_checkpoint(target, tmp_path, fmt, bias)
    head = DraftHead.from_pretrained(path, dtype=torch.float32)
    sd = head.state_dict()
    assert set(sd) == OFFICIAL_KEYS - (set() if bias else {"fc.bias"})
    for k in sd:
        assert torch.equal(sd[k], state[k].float())


def test_round_trip_in_official_format(target, tmp_path):
    torch.manual_seed(0)
    head = DraftHead(head_config(target.config))
    head.save_pretrained(tmp_path, dtype=torch.float32)
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["num_hidden_layers"] == 1 and cfg["hidden_size"] == target.config.hidden_size
    again = DraftHead.from_pretrained(tmp_path, dtype=torch.float32)
    for k, v in head.state_dict().items():
        assert torch.equal(v, again.state_dict()[k])
    # the same hidden states through both
    head.bind(target.embed, target.lm_head.weight)
    again.bind(target.embed, target.lm_head.weight)
    tokens = torch.tensor([[3, 4, 5]])
    feats = torch.randn(1, 3, target.config.hidden_size)
    pos = torch.arange(3)[None]
    assert torch.equal(head(tokens, feats, pos), again(tokens, feats, pos))


def test_reduced_draft_vocabulary_round_trip(target, tmp_path):
    head = DraftHead(head_config(target.config))
    subset = torch.tensor([500, 3, 77, 9, 511])
    head.set_draft_vocab(subset)
    head.save_pretrained(tmp_path)
    again = DraftHead.from_pretrained(tmp_path)
    assert again.draft_vocab.tolist() == sorted(subset.tolist())
    again.bind(target.embed, target.lm_head.weight)
    assert again.logits(torch.randn(2, target.config.hidden_size)).shape == (2, 5)
    assert again.to_target_ids(torch.tensor([0, 4])).tolist() == [3, 511]


def test_missing_key_is_named(target, tmp_path):
    path, _ = official_checkpoint(target, tmp_path, drop="layers.0.mlp.up_proj.weight")
    with pytest.raises(DyndepthError, match="missing key 'layers.0.mlp.up_proj.weight'"):
        DraftHead.from_pretrained(path)


def test_wrong_shape_is_named(target, tmp_path):
    path, _ = official_checkpoint(target, tmp_path, reshape="fc.weight")
    with pytest.raises(DyndepthError, match="'fc.weight' has shape"):
        DraftHead.from_pretrained(path)


def test_unexpected_key_and_missing_files(target, tmp_path):
    path, state = official_checkpoint(target, tmp_path)
    state["layers.0.input_layernorm.weight"] = torch.ones(target.config.hidden_size)
    save_file(state, str(path / "model.safetensors"))
    with pytest.raises(DyndepthError, match="unexpected key.*input_layernorm"):
        DraftHead.from_pretrained(path)
    with pytest.raises(DyndepthError, match="no config.json"):
        DraftHead.from_pretrained(tmp_path / "nowhere")


def test_head_for_another_target_is_refused(target, tmp_path):
    from tiny_models import tiny_config
    from transformers import LlamaConfig

    other = LlamaConfig(**{**tiny_config("llama").to_dict(), "hidden_size": 32, "head_dim": 8})
    head = DraftHead(head_config(other))
    with pytest.raises(DyndepthError, match="hidden_size"):
        head.bind(target.embed, target.lm_head.weight)
