"""Malformed head checkpoints: each gives one DyndepthError line naming the file and the key or field."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from dyndepth.errors import DyndepthError
from dyndepth.head import load_head_dir
from test_head_checkpoint import official_checkpoint
from tiny_models import VOCAB, eagle3_checkpoint, tiny_deep_target, tiny_target


@pytest.fixture(scope="module")
def target():
    return tiny_target("llama")


@pytest.fixture(scope="module")
def deep():
    return tiny_deep_target("llama", 7)


def one_line_error(path, *needles):
    with pytest.raises(DyndepthError) as info:
        load_head_dir(path)
    msg = str(info.value)
    assert "\n" not in msg and str(path) in msg, msg
    for needle in needles:
        assert needle in msg, msg
    return msg


def edit_config(path, **changes):
    cfg = json.loads((path / "config.json").read_text())
    for k, v in changes.items():
        if v is None:
            cfg.pop(k, None)
        else:
            cfg[k] = v
    (path / "config.json").write_text(json.dumps(cfg))


def edit_state(path, fn):
    st = path / "model.safetensors"
    state = load_file(str(st))
    fn(state)
    save_file(state, str(st))


# -- files ----------------------------------------------------------------------------------------------------
def test_truncated_config_json(target, tmp_path):
    official_checkpoint(target, tmp_path)
    text = (tmp_path / "config.json").read_text()
    (tmp_path / "config.json").write_text(text[: len(text) // 2])
    one_line_error(tmp_path, "config.json", "not valid JSON")


@pytest.mark.parametrize("content", ["[1, 2]", "\"a string\"", "42"])
def test_config_json_that_is_not_an_object(target, tmp_path, content):
    official_checkpoint(target, tmp_path)
    (tmp_path / "config.json").write_text(content)
    one_line_error(tmp_path, "config.json", "JSON object")


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_damaged_safetensors(deep, tmp_path, damage):
    eagle3_checkpoint(deep, tmp_path)
    st = tmp_path / "model.safetensors"
    data = st.read_bytes()
    st.write_bytes({"truncate": data[: len(data) // 3], "garbage": b"\x07not a safetensors file" * 10,
                    "empty": b""}[damage])
    one_line_error(tmp_path, "model.safetensors", "truncated or corrupt")


@pytest.mark.parametrize("payload,needle", [
    ("list", "not a list"),
    ("nested", "entry 'state_dict' holds a dict"),
    ("object", "cannot be read as a plain tensor state dict"),
    ("truncated", "cannot be read as a plain tensor state dict"),
])
def test_pytorch_model_bin_that_is_not_a_plain_state_dict(target, tmp_path, payload, needle):
    _, state = official_checkpoint(target, tmp_path, fmt="bin")
    pt = tmp_path / "pytorch_model.bin"
    if payload == "list":
        torch.save(list(state.values()), pt)
    elif payload == "nested":
        torch.save({"state_dict": state}, pt)
    elif payload == "object":
        torch.save({"fc.weight": state["fc.weight"], "opt": torch.optim.SGD([torch.nn.Parameter(torch.ones(1))], lr=1)}, pt)
    else:
        pt.write_bytes(pt.read_bytes()[:100])
    one_line_error(tmp_path, "pytorch_model.bin", needle)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_weights_that_are_not_finite_are_refused_at_load(target, deep, tmp_path, bad):
    """A diverged training run's head would load and draft garbage (depth 11, tau 1.0): refused, naming the file
    and the tensor, for EAGLE-1/2 and EAGLE-3 alike."""
    (tmp_path / "eagle").mkdir()
    official_checkpoint(target, tmp_path / "eagle")
    edit_state(tmp_path / "eagle", lambda s: s["fc.weight"].view(-1).__setitem__(3, bad))
    one_line_error(tmp_path / "eagle", "model.safetensors", "key 'fc.weight'", "NaN or infinite")
    eagle3_checkpoint(deep, tmp_path / "eagle3")
    edit_state(tmp_path / "eagle3", lambda s: s["norm.weight"].__setitem__(0, bad))
    one_line_error(tmp_path / "eagle3", "model.safetensors", "key 'norm.weight'", "NaN or infinite")


def test_no_weights_file(target, tmp_path):
    official_checkpoint(target, tmp_path)
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(DyndepthError, match="neither model.safetensors nor pytorch_model.bin"):
        load_head_dir(tmp_path)


# -- impossible or mistyped config fields (both kinds of head) -------------------------------------------------
FIELD_CASES = [
    (dict(hidden_size=512, num_attention_heads=9, num_key_value_heads=3, head_dim=None), "'num_attention_heads'", "no head_dim"),
    (dict(num_attention_heads=4, num_key_value_heads=3), "'num_key_value_heads'", "divide"),
    (dict(intermediate_size=0), "'intermediate_size'", ">= 1"),
    (dict(hidden_size=-64), "'hidden_size'", ">= 1"),
    (dict(hidden_size="64"), "'hidden_size'", "integer"),
    (dict(vocab_size=512.0), "'vocab_size'", "integer"),
    (dict(num_key_value_heads=True), "'num_key_value_heads'", "integer"),
    (dict(rms_norm_eps="small"), "'rms_norm_eps'", "positive number"),
    (dict(num_hidden_layers=2), "'num_hidden_layers'", "must be 1"),
    (dict(hidden_act="wiggle"), "'hidden_act'", "activation"),
    (dict(rope_scaling={"type": "su", "factor": 2.0}), "'rope_scaling'", "not supported"),
    (dict(rope_scaling={"type": "linear"}), "'factor'", "positive number"),
    (dict(head_dim=0), "'head_dim'", ">= 1"),
    (dict(hidden_size=None), "'hidden_size'", "missing"),
]


@pytest.mark.parametrize("changes,field,problem", FIELD_CASES)
def test_eagle1_config_fields(target, tmp_path, changes, field, problem):
    official_checkpoint(target, tmp_path)
    edit_config(tmp_path, **changes)
    one_line_error(tmp_path, "config.json", field, problem)


@pytest.mark.parametrize("changes,field,problem", FIELD_CASES + [
    (dict(draft_vocab_size=VOCAB + 1), "'draft_vocab_size'", "exceeds vocab_size"),
    (dict(target_hidden_size="big"), "'target_hidden_size'", "integer"),
    (dict(eagle_aux_hidden_state_layer_ids=[2, "x", 4]), "'eagle_aux_hidden_state_layer_ids'", "layer indices"),
    (dict(eagle_aux_hidden_state_layer_ids=[]), "'eagle_aux_hidden_state_layer_ids'", "non-empty"),
    (dict(norm_before_residual="yes"), "'norm_before_residual'", "true or false"),
    (dict(fc_norm=True), "'fc_norm'", "not supported"),
    (dict(norm_output=True), "'norm_output'", "not supported"),
    (dict(norm_before_fc=True), "'norm_before_fc'", "not supported"),
])
def test_eagle3_config_fields(deep, tmp_path, changes, field, problem):
    eagle3_checkpoint(deep, tmp_path)
    edit_config(tmp_path, **changes)
    one_line_error(tmp_path, "config.json", field, problem)


def test_eagle1_bias_must_be_a_flag(target, tmp_path):
    official_checkpoint(target, tmp_path)
    edit_config(tmp_path, bias="yes")
    one_line_error(tmp_path, "'bias'", "true or false")


@pytest.mark.parametrize("changes,field", [
    (dict(speculators_model_type="eagle"), "'speculators_model_type'"),
    (dict(transformer_layer_config=[1]), "'transformer_layer_config'"),
])
def test_speculators_config_fields(deep, tmp_path, changes, field):
    eagle3_checkpoint(deep, tmp_path, layout="speculators")
    edit_config(tmp_path, **changes)
    one_line_error(tmp_path, "config.json", field)


# -- the vocabulary mapping ------------------------------------------------------------------------------------
VOCAB_CASES = [
    (lambda s: s.__setitem__("d2t", s["d2t"] + VOCAB), "'d2t'", "outside 0..511"),
    (lambda s: s.__setitem__("d2t", s["d2t"] - 1), "'d2t'", "outside 0..511"),
    (lambda s: s.__setitem__("d2t", s["d2t"].float()), "'d2t'", "integer"),
    (lambda s: s.__setitem__("d2t", torch.cat([s["d2t"][:1] + 4, s["d2t"][1:]])), "'d2t'", "distinct"),
    (lambda s: s.__setitem__("d2t", s["d2t"][:-1]), "'d2t'", "shape"),
    (lambda s: s.pop("d2t"), "'d2t'", "missing"),
    (lambda s: s.__setitem__("t2d", s["t2d"][:-1]), "'t2d'", "shape"),
    (lambda s: s.__setitem__("t2d", ~s["t2d"]), "'t2d'", "disagrees"),
    (lambda s: s.__setitem__("t2d", s["t2d"].float() * 0.5), "'t2d'", "bool"),
]


@pytest.mark.parametrize("fn,key,problem", VOCAB_CASES)
def test_eagle3_vocabulary_mapping(deep, tmp_path, fn, key, problem):
    eagle3_checkpoint(deep, tmp_path, draft_vocab=list(range(0, VOCAB, 4)))
    edit_state(tmp_path, fn)
    one_line_error(tmp_path, "model.safetensors", key, problem)


@pytest.mark.parametrize("fn,key,problem", VOCAB_CASES[:5])
def test_eagle1_vocabulary_mapping(target, tmp_path, fn, key, problem):
    from dyndepth.head import DraftHead, head_config

    head = DraftHead(head_config(target.config))
    head.set_draft_vocab(torch.arange(0, VOCAB, 4))
    head.save_pretrained(tmp_path)
    edit_state(tmp_path, fn)
    one_line_error(tmp_path, "model.safetensors", key, problem)


# -- keys and shapes -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("layout", ["official", "speculators"])
@pytest.mark.parametrize("fn,needle", [
    (lambda s: s.pop("norm.weight"), "missing key 'norm.weight'"),
    (lambda s: s.pop("lm_head.weight"), "missing key 'lm_head.weight'"),
    (lambda s: s.pop(next(k for k in s if k.endswith("hidden_norm.weight"))), "missing key 'midlayer.hidden_norm.weight'"),
    (lambda s: s.__setitem__("fc.weight", torch.zeros(64, 128)), "'fc.weight' has shape (64, 128), expected (64, 192)"),
    (lambda s: s.__setitem__("midlayer.extra.weight", torch.zeros(3)), "unexpected key(s): midlayer.extra.weight"),
    (lambda s: s.__setitem__("fc.weight", s["fc.weight"].long()), "'fc.weight' has dtype torch.int64"),
])
def test_eagle3_keys_and_shapes(deep, tmp_path, layout, fn, needle):
    eagle3_checkpoint(deep, tmp_path, layout=layout)
    edit_state(tmp_path, fn)
    one_line_error(tmp_path, "model.safetensors", needle)


def test_narrow_eagle3_head_without_embedding(deep, tmp_path):
    eagle3_checkpoint(deep, tmp_path, hidden=32)
    one_line_error(tmp_path, "'embed_tokens.weight'", "target_hidden_size")


def test_layers_outside_the_target_are_refused_at_load(deep, tmp_path):
    from dyndepth.decoder import load_head

    eagle3_checkpoint(deep, tmp_path, layer_ids=(2, 3, 9))
    with pytest.raises(DyndepthError, match=r"eagle_aux_hidden_state_layer_ids \[2, 3, 9\] must lie in 0..6"):
        load_head(tmp_path, "tiny", deep)
    eagle3_checkpoint(deep, tmp_path)  # the default (2, L//2, L-3) needs L >= 3
    shallow = tiny_target("llama")  # 2 layers
    with pytest.raises(DyndepthError, match=r"default layers .* must lie in 0..1"):
        load_head(tmp_path, "tiny", shallow)


def test_head_for_another_target_is_refused_at_bind(deep):
    from transformers import LlamaConfig

    from dyndepth.decoder import SpeculativeDecoder
    from dyndepth.head import Eagle3Head, eagle3_config
    from tiny_models import tiny_config

    wide = LlamaConfig(**{**tiny_config("llama").to_dict(), "hidden_size": 128, "head_dim": 32})
    with pytest.raises(DyndepthError, match="target_hidden_size 128 does not match the target's hidden size 64"):
        SpeculativeDecoder(deep, Eagle3Head(eagle3_config(wide)), policy="fixed", top_k=2, total_tokens=4, max_depth=2)
    other_vocab = LlamaConfig(**{**tiny_config("llama").to_dict(), "vocab_size": 1024})
    with pytest.raises(DyndepthError, match="vocab_size 1024 does not match the target's 512"):
        Eagle3Head(eagle3_config(other_vocab)).bind(deep.embed, deep.lm_head.weight)
