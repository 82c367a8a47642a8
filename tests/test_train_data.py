"""Training data: ShareGPT salvage, role mapping, chat rendering with assistant-only loss masks, draft vocab."""

import json
from pathlib import Path

import pytest
import torch

from dyndepth.errors import DyndepthError
from dyndepth.train.data import load_conversations, render, salvage_json_array, to_messages
from dyndepth.train.vocab import coverage, frequent_tokens, token_counts

DATA = Path(__file__).parent / "data" / "chat40.json"


def test_salvage_stops_at_truncated_item():
    items = [{"id": str(i), "conversations": [{"from": "human", "value": f"q{i}, with [brackets] and \"quotes\""},
                                              {"from": "gpt", "value": f"a{i}"}]} for i in range(5)]
    text = json.dumps(items, indent=2)
    cut = text.index('"id": "3"') + 5  # inside item 3
    assert salvage_json_array(text[:cut]) == items[:3]
    assert salvage_json_array(text) == items  # a complete array loads whole
    assert salvage_json_array("  [ ]") == []
    with pytest.raises(DyndepthError):
        salvage_json_array('{"not": "an array"}')


def test_role_mapping_and_leading_replies():
    item = {"conversations": [{"from": "gpt", "value": "stray"}, {"from": "system", "value": "sys"},
                              {"from": "human", "value": "hi"}, {"from": "bing", "value": "hello"},
                              {"from": "user", "value": "more"}, {"from": "bard", "value": "sure"},
                              {"from": "tool", "value": "x"}, {"from": "chatgpt", "value": "ok"}]}
    assert [(m["role"], m["content"]) for m in to_messages(item)] == [
        ("user", "hi"), ("assistant", "hello"), ("user", "more"), ("assistant", "sure"), ("assistant", "ok")]
    assert to_messages({"conversations": [{"from": "human", "value": "only a question"}]}) == []
    assert to_messages({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]})


def test_load_file_and_bad_files(tmp_path):
    convs = load_conversations(str(DATA))
    assert len(convs) == 40
    (tmp_path / "x.jsonl").write_text('{"conversations": [{"from": "human", "value": "q"}, '
                                      '{"from": "gpt", "value": "a"}]}\nnot json\n')
    with pytest.raises(DyndepthError, match="x.jsonl:2"):
        load_conversations(str(tmp_path / "x.jsonl"))
    with pytest.raises(DyndepthError, match="not found"):
        load_conversations(str(tmp_path / "missing.json"))
    # JSON Lines split on "\n" only: U+2028 and form feeds written raw inside strings are content
    msgs = [{"role": "user", "content": "a\u2028b\x0cc"}, {"role": "assistant", "content": "d\x1ce"}]
    (tmp_path / "raw.jsonl").write_text(json.dumps({"messages": msgs}, ensure_ascii=False) + "\n", encoding="utf-8")
    assert load_conversations(str(tmp_path / "raw.jsonl")) == [msgs]
    (tmp_path / "empty.json").write_text("[]")
    with pytest.raises(DyndepthError, match="no usable"):
        load_conversations(str(tmp_path / "empty.json"))


def test_render_masks_exactly_the_assistant_replies(smollm2_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(smollm2_path)
    msgs = [{"role": "user", "content": "What's 2 + 2?"}, {"role": "assistant", "content": "It is 4."},
            {"role": "user", "content": "And 3 + 5?"}, {"role": "assistant", "content": "8, of course."}]
    ids, mask = render(tok, msgs, 4096)
    full = tok.apply_chat_template(msgs, tokenize=False)
    assert tok.decode(ids) == full  # one tokenization of the whole template text
    masked = [i for i, m in zip(ids, mask) if m]
    assert tok.decode(masked) == "It is 4.<|im_end|>8, of course.<|im_end|>"
    assert mask[-1] == 0  # the trailing newline after <|im_end|> is template, not reply
    short_ids, short_mask = render(tok, msgs, 40)
    assert short_ids == ids[:40] and short_mask == mask[:40]
    assert render(tok, msgs, 5) is None  # truncated before any reply: nothing to train on


def test_draft_vocab_frequency_and_coverage():
    examples = [([5, 5, 5, 7, 7, 9, 3], [1, 1, 1, 1, 1, 1, 0]), ([9, 2, 2], [0, 1, 0])]
    counts = token_counts(examples, 12)
    assert counts[5] == 3 and counts[3] == 0 and counts[9] == 1  # only masked (assistant) tokens count
    subset = frequent_tokens(counts, 3, always={11})
    assert subset.tolist() == [5, 7, 11]  # specials always kept; then by frequency; sorted by id
    assert coverage(subset, torch.tensor([5, 5, 2, 11])) == 0.75
