"""The Python API's contract: one generation at a time per decoder, one prompt per call, every bad option one
clear error, and the generation options (stop strings, stop ids, min_new_tokens, ignore_eos, the model's own
generation_config defaults) lossless against transformers' generate."""

import math

import numpy as np
import pytest
import torch

from dyndepth.decoder import SpeculativeDecoder
from dyndepth.errors import DyndepthError
from dyndepth.head import DraftHead, head_config
from dyndepth.target import Target
from dyndepth.validate import OptionError
from oracle_head import OracleHead
from tiny_models import VOCAB, tiny_decoder, tiny_target

PROMPT = list(range(20, 32))


def hf_greedy(target, prompt, n, **kw):
    kw = {"eos_token_id": None, **kw}
    out = target.model.generate(torch.tensor([prompt]), max_new_tokens=n, do_sample=False, pad_token_id=0, **kw)
    return out[0, len(prompt):].tolist()


@pytest.fixture(scope="module")
def dec():
    d = tiny_decoder("llama", policy="fixed", top_k=3, total_tokens=8, max_depth=4)
    d.stop_ids = set()
    return d


@pytest.fixture(scope="module")
def reference(dec):
    return hf_greedy(dec.target, PROMPT, 24)


# -- one generation at a time ---------------------------------------------------------------------------------
def test_a_second_stream_invalidates_the_first(dec, reference):
    first = dec.stream(PROMPT, max_new_tokens=24)
    assert next(first) == reference[:1]
    second = dec.stream(PROMPT[:6], max_new_tokens=24)
    with pytest.raises(DyndepthError, match="invalidated"):
        next(first)  # the old stream must not go on decoding from a KV cache the new one owns
    tokens = [t for chunk in second for t in chunk]
    assert tokens == hf_greedy(dec.target, PROMPT[:6], 24)  # the new one is untouched


def test_generate_invalidates_an_open_stream_and_is_itself_exact(dec, reference):
    stream = dec.stream(PROMPT, max_new_tokens=24)
    next(stream), next(stream)
    out = dec.generate(PROMPT, max_new_tokens=24)
    assert out.token_ids == reference
    with pytest.raises(DyndepthError, match="one decoder runs one generation at a time"):
        next(stream)


def test_a_stream_after_an_invalidated_one_is_exact(dec, reference):
    old = dec.stream(PROMPT, max_new_tokens=24)
    next(old)
    new = dec.stream(PROMPT, max_new_tokens=24)
    with pytest.raises(DyndepthError):
        next(old)
    assert [t for c in new for t in c] == reference


def test_two_decoders_sharing_a_target_do_not_mix(dec, reference):
    other = SpeculativeDecoder(dec.target, None, policy="plain")
    other.stop_ids = set()
    a = dec.stream(PROMPT, max_new_tokens=24)
    next(a)
    assert other.generate(PROMPT, max_new_tokens=24).token_ids == reference
    with pytest.raises(DyndepthError, match="invalidated"):
        next(a)


# -- one prompt or a list of prompts per call ---------------------------------------------------------------
def test_a_batch_gives_a_list_and_one_prompt_one_output(dec, reference):
    for batch in ([PROMPT, PROMPT], torch.tensor([PROMPT, PROMPT]), np.array([PROMPT, PROMPT]), [PROMPT]):
        outs = dec.generate(batch, max_new_tokens=24)
        assert isinstance(outs, list) and [o.token_ids for o in outs] == [reference] * len(batch)
    for one_row in (torch.tensor([PROMPT]), np.array([PROMPT]), np.array(PROMPT), tuple(PROMPT)):
        assert dec.generate(one_row, max_new_tokens=24).token_ids == reference


@pytest.mark.parametrize("batch,kwargs,match", [
    ([PROMPT, [VOCAB]], {}, "prompt 1: input_ids"),
    ([PROMPT, []], {}, "prompt 1: the prompt is empty"),
    ([PROMPT, PROMPT], dict(max_new_tokens=[4, 0]), "prompt 1: max_new_tokens"),
    ([PROMPT, PROMPT], dict(max_new_tokens=[4, 4, 4]), "one value per prompt"),
    ([PROMPT, PROMPT], dict(batch_size=0), "batch_size"),
])
def test_a_bad_row_is_one_line_naming_its_index(dec, batch, kwargs, match):
    with pytest.raises(DyndepthError, match=match) as info:
        dec.generate(batch, **{"max_new_tokens": 4, **kwargs})
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("bad", [
    [20.0, 21.0], [20, 21.5], [True, 21], torch.tensor([20.0, 21.0]), torch.tensor([True, False]),
    np.array([20.0, 21.0]), [[20, 21], 22], [VOCAB], [-1, 3], ["a", "b"],
], ids=["floats", "a float", "a bool", "float tensor", "bool tensor", "float array", "ragged", "vocab", "negative",
        "strings"])
def test_token_ids_must_be_integers_in_range(dec, bad):
    with pytest.raises(DyndepthError, match="input_ids"):
        dec.generate(bad, max_new_tokens=4)


# -- options: one line each, naming the option and the value ----------------------------------------------------
@pytest.mark.parametrize("kwargs,option", [
    (dict(total_tokens=0), "total_tokens"),
    (dict(total_tokens=1), "total_tokens"),  # verifies nothing drafted: refused, not a silent no-op
    (dict(total_tokens=100000), "total_tokens"),
    (dict(total_tokens=8.0), "total_tokens"),
    (dict(top_k=0), "draft top_k"),
    (dict(top_k=1024), "draft top_k"),
    (dict(top_k=True), "draft top_k"),
    (dict(threshold=float("nan")), "threshold"),
    (dict(threshold=float("inf")), "threshold"),
    (dict(checks=()), "checks"),
    (dict(checks=""), "checks"),
    (dict(checks=(3, 12)), "checks"),
    (dict(max_depth=0), "max_depth"),
    (dict(max_depth=4), "max_depth"),  # below every default check depth: says so, does not blame `checks`
    (dict(max_depth=1000), "max_depth"),
])
def test_bad_tree_options_name_the_option(kwargs, option):
    target = tiny_target("llama")
    head = DraftHead(head_config(target.config))
    with pytest.raises(OptionError) as err:
        SpeculativeDecoder(target, head, policy="ddd", **kwargs)
    assert err.value.option == option
    assert str(err.value).startswith(option) and "got" in str(err.value) and "\n" not in str(err.value)


def test_max_depth_keeps_the_default_checks_below_it():
    target = tiny_target("llama")
    d = SpeculativeDecoder(target, DraftHead(head_config(target.config)), policy="ddd", max_depth=6)
    assert d.policy.checks == (5,) and d.policy.max_depth == 6


def test_knobs_of_another_policy_are_refused():
    target = tiny_target("llama")
    head = DraftHead(head_config(target.config))
    with pytest.raises(OptionError, match="'ddd' policy only"):
        SpeculativeDecoder(target, head, policy="fixed", threshold=-1.0)
    with pytest.raises(OptionError, match="does not apply to the 'plain' policy"):
        SpeculativeDecoder(target, None, policy="plain", total_tokens=12)
    with pytest.raises(OptionError, match="policy must be one of"):
        SpeculativeDecoder(target, head, policy="auto-magic")
    with pytest.raises(OptionError, match="'auto' policy only"):
        SpeculativeDecoder(target, head, policy="ddd", objective="step")
    with pytest.raises(OptionError) as err:
        SpeculativeDecoder(target, head, policy="auto", objective="fastest")
    assert err.value.option == "objective" and "run, step" in str(err.value)


def test_top_k_may_not_exceed_the_draft_vocabulary():
    target = tiny_target("llama")
    head = DraftHead(head_config(target.config), draft_vocab=torch.arange(16))
    with pytest.raises(OptionError, match="draft vocabulary"):
        SpeculativeDecoder(target, head, policy="fixed", top_k=17)


@pytest.mark.parametrize("kwargs,option", [
    (dict(temperature=float("inf")), "temperature"),
    (dict(temperature=float("nan")), "temperature"),
    (dict(temperature=-0.5), "temperature"),
    (dict(temperature=1e-30), "temperature"),
    (dict(top_p=0.0), "top_p"),
    (dict(top_p=float("nan")), "top_p"),
    (dict(top_k=-1), "top_k"),
    (dict(top_k=2.5), "top_k"),
    (dict(max_new_tokens=0), "max_new_tokens"),
    (dict(max_new_tokens=3.0), "max_new_tokens"),
    (dict(max_new_tokens=True), "max_new_tokens"),
    (dict(seed=-1), "seed"),
    (dict(seed=1.5), "seed"),
    (dict(stop=""), "stop"),
    (dict(stop=[1, 2]), "stop"),
    (dict(stop=["\ud800"]), "stop"),  # a lone surrogate: one line, not a UnicodeEncodeError
    (dict(stop="x\udfff"), "stop"),
    (dict(stop_token_ids=[VOCAB]), "stop_token_ids"),
    (dict(stop_token_ids=[2.0]), "stop_token_ids"),
    (dict(min_new_tokens=-1), "min_new_tokens"),
    (dict(min_new_tokens=9, max_new_tokens=8), "min_new_tokens"),
    (dict(ignore_eos="yes"), "ignore_eos"),
])
def test_bad_sampling_options_name_the_option(dec, kwargs, option):
    kwargs = {"max_new_tokens": 8, **kwargs}
    with pytest.raises(OptionError) as err:
        dec.stream(PROMPT, **kwargs)  # checked when the stream is created, before the first next()
    assert err.value.option == option and "\n" not in str(err.value)


def test_stop_strings_need_a_tokenizer(dec):
    with pytest.raises(DyndepthError, match="tokenizer"):
        dec.generate(PROMPT, max_new_tokens=4, stop="x")


# -- generation options, lossless -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def oracle():
    target = tiny_target("llama")

    def make(**kw):
        d = SpeculativeDecoder(target, OracleHead(target, PROMPT[0]), policy="fixed", top_k=3, total_tokens=10,
                               max_depth=6)
        d.stop_ids = set(kw.pop("eos", ()))
        return d

    return target, make


def test_min_new_tokens_equals_transformers(oracle):
    target, make = oracle
    full = hf_greedy(target, PROMPT, 40)
    eos = {full[3], full[9]}  # the 4th token would end the generation early
    for n_min in (0, 5, 12):
        d = make(eos=eos)
        out = d.generate(PROMPT, max_new_tokens=40, min_new_tokens=n_min)
        ref = hf_greedy(target, PROMPT, 40, eos_token_id=sorted(eos), min_new_tokens=n_min)
        ref = ref[:next((i + 1 for i, t in enumerate(ref) if t in eos), len(ref))]  # HF pads after eos
        assert out.token_ids == ref, n_min
        assert out.stats.stop_reason == ("stop_token" if ref[-1] in eos else "max_new_tokens")
        assert len(out.token_ids) >= n_min
        assert max(out.stats.accept_lengths) > 1  # multi-token steps crossed the min_new_tokens boundary
    assert len(make(eos=eos).generate(PROMPT, max_new_tokens=40).token_ids) == 4


def test_extra_stop_ids_and_ignore_eos(oracle):
    target, make = oracle
    full = hf_greedy(target, PROMPT, 30)
    k = next(i for i in range(4, 30) if full[i] not in full[:i])
    out = make().generate(PROMPT, max_new_tokens=30, stop_token_ids=[full[k]])
    assert out.token_ids == full[:k + 1] and out.stats.stop_reason == "stop_token"
    out = make(eos={full[k]}).generate(PROMPT, max_new_tokens=30, ignore_eos=True)
    assert out.token_ids == full and out.stats.stop_reason == "max_new_tokens"
    out = make(eos={full[k]}).generate(PROMPT, max_new_tokens=30, ignore_eos=True, stop_token_ids=[full[k]])
    assert out.token_ids == full[:k + 1]  # an explicit stop id still stops


def test_generation_config_defaults_apply_when_unset(oracle):
    target, make = oracle
    greedy = hf_greedy(target, PROMPT, 16)
    gc = target.model.generation_config
    try:
        gc.do_sample, gc.temperature, gc.top_k, gc.top_p = True, 0.9, 1, 1.0  # top_k 1: sampling == argmax
        d = make()
        sampled = d.generate(PROMPT, max_new_tokens=16, seed=3)
        assert sampled.token_ids == greedy
        wide = [make().generate(PROMPT, max_new_tokens=16, top_k=0, seed=s).token_ids for s in range(3)]
        assert any(w != greedy for w in wide)  # overriding top_k really samples (so the default was used)
        gc.do_sample = False
        assert make().generate(PROMPT, max_new_tokens=16, seed=3).token_ids == greedy
        assert make().generate(PROMPT, max_new_tokens=16, temperature=0.0).token_ids == greedy
    finally:
        gc.do_sample, gc.temperature, gc.top_k, gc.top_p = False, None, None, None


# -- text: incremental detokenisation and stop strings (a real tokenizer) ---------------------------------------
@pytest.fixture(scope="module")
def chat_dec(tiny_chat_model):
    target = Target.from_pretrained(str(tiny_chat_model), dtype="float32")
    d = SpeculativeDecoder(target, DraftHead(head_config(target.config)).float(), policy="fixed", top_k=3,
                           total_tokens=8, max_depth=3)
    return d


def test_stream_text_never_splits_a_character(smollm2_path):
    from transformers import AutoTokenizer

    from dyndepth.text import TextStream

    tok = AutoTokenizer.from_pretrained(smollm2_path)
    text = "Emoji 😀🎉, accents café naïve, CJK 日本語の文章, math ∑∫ and 🧑‍🔬 done."
    ids = tok(text)["input_ids"]
    assert any("\ufffd" in tok.decode([i]) for i in ids)  # some characters really span several tokens
    stream, deltas = TextStream(tok), []
    for i in ids:
        stream.push(i)
        deltas.append(stream.take())
    deltas.append(stream.take(final=True))
    assert all("\ufffd" not in d for d in deltas)
    assert "".join(deltas) == tok.decode(ids, skip_special_tokens=True) == text


def test_stop_strings_cut_where_str_find_does(chat_dec):
    ids = chat_dec.chat_ids("Tell me a story.")
    full = chat_dec.generate(ids, max_new_tokens=40, temperature=0.0)
    assert full.text == chat_dec.tokenizer.decode(full.token_ids, skip_special_tokens=True)
    text = full.text
    for stop in (text[10:14], [text[25:27], text[12:20]], text[-3:]):
        stops = [stop] if isinstance(stop, str) else stop
        cut = min(i for i in (text.find(s) for s in stops) if i >= 0)
        chunks = list(chat_dec.stream_text(ids, max_new_tokens=40, temperature=0.0, stop=stop))
        streamed = "".join(c.text for c in chunks)
        tokens = [t for c in chunks for t in c.token_ids]
        assert streamed == text[:cut]
        assert tokens == full.token_ids[:len(tokens)]  # a prefix of the unstopped generation
        assert chat_dec.last_stats.stop_reason == "stop_string"
        assert chat_dec.generate(ids, max_new_tokens=40, temperature=0.0, stop=stop).text == text[:cut]


def test_streamed_text_is_never_taken_back(chat_dec):
    """Text that may begin a stop string is held back: every streamed prefix is a prefix of the final text."""
    ids = chat_dec.chat_ids("Tell me a story.")
    text = chat_dec.generate(ids, max_new_tokens=40, temperature=0.0).text
    stop = text[20:26]
    seen = ""
    for chunk in chat_dec.stream_text(ids, max_new_tokens=40, temperature=0.0, stop=[stop, text[5] + "\u2603"]):
        seen += chunk.text
        assert text[:text.find(stop)].startswith(seen)
    assert seen == text[:text.find(stop)]


def test_chat_messages_are_checked(chat_dec):
    for bad in ([], [{"role": "user"}], [{"role": "user", "content": 3}], "x\udcff"):
        with pytest.raises(DyndepthError):
            chat_dec.chat_ids(bad)
    system = chat_dec.chat_ids([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}])
    text = chat_dec.tokenizer.decode(system)
    assert "Be brief." in text and text.index("Be brief.") < text.index("Hi")


def test_strict_json_for_stats():
    import json

    from dyndepth.validate import finite_json

    doc = finite_json({"a": float("nan"), "b": [1.0, float("inf")], "c": {"d": -math.inf}})
    assert json.dumps(doc, allow_nan=False) == '{"a": null, "b": [1.0, null], "c": {"d": null}}'


# -- issue 27 ------------------------------------------------------------------------------------------------------
def test_lone_surrogates_are_one_line_option_errors(chat_dec):
    for bad in ("\ud800", [{"role": "user", "content": "a\udfffb"}]):
        with pytest.raises(OptionError) as err:
            chat_dec.chat_ids(bad)
        msg = str(err.value)
        assert "UTF-8" in msg and "lone surrogate" in msg and "\n" not in msg
        msg.encode("utf-8")  # the message itself can be printed
    with pytest.raises(OptionError) as err:
        chat_dec.generate(chat_dec.chat_ids("hi"), max_new_tokens=2, stop=["ok", "\ud800"])
    assert err.value.option == "stop" and "U+D800" in str(err.value)


def test_one_chat_rule_for_the_api_the_cli_and_the_server():
    from dyndepth.validate import chat_messages

    assert chat_messages("hi") == [{"role": "user", "content": "hi"}]
    turns = chat_messages([{"role": "developer", "content": "Be brief.", "name": "x"},
                           {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"},
                           {"role": "user", "content": "More"}])
    assert turns == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                     {"role": "assistant", "content": "Hello"}, {"role": "user", "content": "More"}]
    for bad, needle in (([], "non-empty"), ([{"role": "tool", "content": "x"}], "unknown role"),
                        ([{"role": "user"}], "item 0"), ("x\ud800", "UTF-8"),
                        ([{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}], "last turn")):
        with pytest.raises(OptionError, match=needle):
            chat_messages(bad)


def test_a_keyword_for_generate_given_to_the_decoder_says_where_it_belongs():
    with pytest.raises(OptionError) as err:
        SpeculativeDecoder.from_pretrained("no-such-model", temperature=0.7)  # refused before any loading
    assert err.value.option == "temperature" and "generate()" in str(err.value)
    with pytest.raises(OptionError) as err:
        SpeculativeDecoder.from_pretrained("no-such-model", beam=4)
    for name in ("total_tokens", "static_cache", "min_depth"):  # tree, engine and auto options all listed
        assert name in str(err.value)


def test_max_new_tokens_above_the_context_is_refused():
    from dyndepth.request import GenerationRequest

    with pytest.raises(OptionError) as err:
        GenerationRequest(max_new_tokens=10**20).resolved(None, VOCAB, set(), context=2048)
    assert err.value.option == "max_new_tokens" and "maximum context length of 2048 tokens" in str(err.value)
    ok = GenerationRequest(max_new_tokens=2048).resolved(None, VOCAB, set(), context=2048)
    assert ok.request.max_new_tokens == 2048


def test_api_md_states_both_dtype_defaults():
    """from_pretrained defaults to float32 (exact), the command line to bfloat16 (fast): API.md says both."""
    import inspect
    from pathlib import Path

    from dyndepth.cli import build_parser

    py = inspect.signature(SpeculativeDecoder.from_pretrained).parameters["dtype"].default
    cli = build_parser().parse_args(["generate"]).dtype
    doc = (Path(__file__).parents[1] / "docs" / "API.md").read_text(encoding="utf-8")
    row = next((line for line in doc.splitlines() if line.startswith("| `dtype` |")), "")
    assert f"`{py}` in Python" in row and f"`{cli}` on the command line" in row
