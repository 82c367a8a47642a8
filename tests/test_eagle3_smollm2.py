"""EAGLE-3 heads through the public entry points: ``SpeculativeDecoder.from_pretrained(target, head=DIR)`` and
``dyndepth generate --head DIR`` (lossless, float32), on SmolLM2-135M-Instruct and on a tiny model directory
with SmolLM2's tokenizer; a malformed head through the CLI gives one line and exit code 2."""

import json
import os

import pytest
import torch

from dyndepth.cli import main
from tiny_models import eagle3_checkpoint

QUESTIONS = ["What is the capital of France?", "Write a haiku about CPUs.", "Explain recursion in one sentence."]


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(int(os.environ.get("DYNDEPTH_TEST_THREADS", "1")))
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny_chat_model(smollm2_path, tmp_path_factory):
    """A 7-layer random Llama with SmolLM2's tokenizer, saved as a model directory."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    folder = tmp_path_factory.mktemp("tiny_chat7")
    tok = AutoTokenizer.from_pretrained(smollm2_path)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=7,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                         bos_token_id=1, eos_token_id=2, pad_token_id=2, tie_word_embeddings=False)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        model.get_output_embeddings().weight.mul_(8.0)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def _target_of(path):
    from dyndepth.target import Target

    return Target.from_pretrained(str(path), dtype="float32")


def _hf_greedy(target, ids, n):
    stop = sorted(target.stop_token_ids())
    out = target.model.generate(torch.tensor([ids]), max_new_tokens=n, do_sample=False, eos_token_id=stop,
                                pad_token_id=stop[0])
    return out[0, len(ids):].tolist()


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["official", "speculators"])
def test_smollm2_with_an_eagle3_head_equals_transformers_greedy(smollm2_path, tmp_path, layout):
    from dyndepth.decoder import SpeculativeDecoder

    probe = _target_of(smollm2_path)
    vocab = sorted(set(range(0, 49152, 6)) | {0, 1, 2})  # a reduced draft vocabulary: d2t/t2d in use
    head_dir, _ = eagle3_checkpoint(probe, tmp_path / "head", layout=layout, draft_vocab=vocab, seed=5,
                                    fmt="bin" if layout == "speculators" else "safetensors")
    dec = SpeculativeDecoder.from_pretrained(str(smollm2_path), head=str(head_dir), dtype="float32", policy="ddd",
                                             top_k=4, total_tokens=12)
    assert dec.head.arch == "eagle3" and dec.head.feature_layers(30) == (2, 15, 27)
    for q in QUESTIONS[:2]:
        ids = dec.chat_ids(q)
        out = dec.generate(ids, max_new_tokens=40)
        assert out.token_ids == _hf_greedy(dec.target, ids, 40)
        assert max(out.stats.depths) >= 2


def test_cli_generate_with_an_eagle3_head_is_lossless(tiny_chat_model, tmp_path, capsys):
    target = _target_of(tiny_chat_model)
    head_dir, _ = eagle3_checkpoint(target, tmp_path / "head", layout="speculators",
                                    draft_vocab=list(range(0, 49152, 8)), seed=2)
    rc = main(["generate", "--model", str(tiny_chat_model), "--head", str(head_dir), "--prompt", "Hello there",
               "--dtype", "float32", "--max-new-tokens", "24", "--policy", "fixed", "--max-depth", "4",
               "--draft-top-k", "3", "--total-tokens", "8", "--json", "--ignore-eos", "--threads", "1"])
    doc = json.loads(capsys.readouterr().out)
    assert rc == 0
    ids = target.tokenizer("Hello there")["input_ids"]
    ref = target.model.generate(torch.tensor([ids]), max_new_tokens=24, do_sample=False, eos_token_id=None,
                                pad_token_id=2)[0, len(ids):].tolist()
    assert doc["token_ids"] == ref


@pytest.mark.parametrize("damage,needle", [
    ("config", "not valid JSON"),
    ("weights", "truncated or corrupt"),
    ("d2t", "'d2t'"),
    ("shape", "'num_attention_heads'"),
])
def test_cli_generate_with_a_malformed_head_gives_one_line(tiny_chat_model, tmp_path, capsys, damage, needle):
    from safetensors.torch import load_file, save_file

    target = _target_of(tiny_chat_model)
    head_dir, _ = eagle3_checkpoint(target, tmp_path / "bad", draft_vocab=list(range(0, 49152, 8)))
    cfg, st = head_dir / "config.json", head_dir / "model.safetensors"
    if damage == "config":
        cfg.write_text(cfg.read_text()[:40])
    elif damage == "weights":
        st.write_bytes(st.read_bytes()[:1000])
    elif damage == "d2t":
        state = load_file(str(st))
        state["d2t"][3] = 10**6
        save_file(state, str(st))
    else:
        cfg.write_text(json.dumps({**json.loads(cfg.read_text()), "hidden_size": 512, "num_attention_heads": 9,
                                   "num_key_value_heads": 3}))
    capsys.readouterr()
    rc = main(["generate", "--model", str(tiny_chat_model), "--head", str(head_dir), "--prompt", "Hi",
               "--max-new-tokens", "4", "--threads", "1"])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.count("\n") == 1 and err.startswith("error:") and needle in err and "Traceback" not in err
