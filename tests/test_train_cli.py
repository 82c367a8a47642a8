"""`dyndepth train-head` end to end on SmolLM2 with the small fixed chat set, and its one-line errors."""

import json
from pathlib import Path

import pytest
import torch

from dyndepth.cli import main

DATA = Path(__file__).parent / "data" / "chat40.json"


@pytest.fixture
def one_thread():  # tiny models on a shared 2-core machine: a second thread only adds spin-waiting
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.slow
def test_train_head_smoke_run_saves_a_working_head(smollm2_path, tmp_path, one_thread, capsys):
    from dyndepth.decoder import SpeculativeDecoder
    from dyndepth.head import DraftHead
    from dyndepth.target import Target

    out = tmp_path / "head"
    args = ["train-head", "--model", str(smollm2_path), "--data", str(DATA), "--tokens", "1.5k", "--out", str(out),
            "--max-len", "96", "--epochs", "3", "--lr", "3e-3", "--batch-size", "4", "--draft-vocab", "600",
            "--intermediate-size", "256", "--eval-steps", "2", "--holdout", "0.15",
            "--cache-dir", str(tmp_path / "cache"), "--threads", "1", "--no-progress"]
    assert main(args) == 0
    log = capsys.readouterr().out
    assert "time estimate" in log and "saved head" in log
    rec = json.loads((out / "training.json").read_text())
    hist = rec["history"]
    assert len(hist) == 3 and hist[-1]["loss"] < hist[0]["loss"] and hist[-1]["train_loss"] < hist[0]["train_loss"]
    assert rec["draft_vocab"]["draft_vocab_size"] == 600 and rec["data_stats"]["train_tokens"] >= 1500

    head = DraftHead.from_pretrained(out)
    assert head.draft_vocab_size == 600 and head.config.intermediate_size == 256
    assert (out / "model.safetensors").stat().st_size < 5e6  # no embedding / lm_head copies inside
    target = Target.from_pretrained(str(smollm2_path), dtype="float32")
    dec = SpeculativeDecoder(target, head.float(), policy="fixed", top_k=4, total_tokens=8, max_depth=3)
    plain = SpeculativeDecoder(target, None, policy="plain")
    ids = dec.chat_ids("What is the capital of France?")
    got = dec.generate(ids, max_new_tokens=12)
    assert got.token_ids == plain.generate(ids, max_new_tokens=12).token_ids  # lossless with the new head
    assert got.stats.steps <= 12

    # a rerun with the same data reuses the cached features (resumable extraction); a time budget far too
    # small for 3 epochs trains one
    assert main(args + ["--time-budget", "0.001", "--out", str(tmp_path / "head2")]) == 0
    log = capsys.readouterr().out
    assert "resuming" in log and "training 1 of 3 epochs" in log
    assert len(json.loads((tmp_path / "head2" / "training.json").read_text())["history"]) == 1

    # --features memory: the same data trains without writing a feature shard
    mem_cache = tmp_path / "cache-mem"
    argv = args[:args.index("--cache-dir")] + ["--cache-dir", str(mem_cache), "--threads", "1", "--no-progress",
                                                "--epochs", "1", "--features", "memory", "--out", str(tmp_path / "h3")]
    assert main(argv) == 0
    assert "saved head" in capsys.readouterr().out
    assert not list(mem_cache.rglob("*.safetensors")) and (tmp_path / "h3" / "model.safetensors").is_file()


@pytest.mark.parametrize("bad,message", [
    (["--tokens", "lots"], "--tokens expects a number"),
    (["--tokens", "1k", "--data", "/nonexistent/chats.json"], "not found"),
    (["--tokens", "1k", "--epochs", "x"], "invalid int value"),
    (["--tokens", "1k", "--batch-size", "0"], "--batch-size"),
    (["--tokens", "1k", "--holdout", "1.5"], "--holdout"),
    (["--tokens", "1k", "--device", "tpu"], "--device expects"),
    (["--tokens", "1k", "--device", "meta"], "--device expects"),
    (["--tokens", "1k", "--extract-batch-tokens", "0"], "--extract-batch-tokens"),
    (["--tokens", "1k", "--time-budget", "0"], "--time-budget"),
    (["--tokens", "1k", "--conversations", "0"], "--conversations"),
    (["--tokens", "1k", "--conversations", "9:3"], "--conversations"),
    (["--tokens", "1k", "--conversations", "many"], "--conversations"),
    (["--tokens", "1k", "--features", "memory", "--epochs", "0"], "--features memory"),
    (["--tokens", "1k", "--features", "ram"], "invalid choice"),
])
def test_bad_arguments_give_one_line_and_exit_2(bad, message, tmp_path, capsys):
    try:
        rc = main(["train-head", "--model", "smollm2-135m-instruct", "--out", str(tmp_path / "o"), *bad])
    except SystemExit as exc:  # argparse's own errors (here: a non-integer)
        rc = exc.code
    err = capsys.readouterr().err
    assert rc == 2
    assert err.count("\n") == 1 and err.startswith("error:") and message in err


def test_self_distill_builds_examples_from_the_targets_own_replies(smollm2_path, one_thread):
    from dyndepth.target import Target
    from dyndepth.train.data import load_conversations
    from dyndepth.train.distill import prompt_ids, self_distill

    target = Target.from_pretrained(str(smollm2_path), dtype="float32")
    convs = load_conversations(str(DATA))[:3]
    ex = self_distill(target, convs, token_budget=10**6, max_new_tokens=6, batch_size=3, progress=False,
                      log=lambda m: None)
    assert len(ex) == 3
    stops = target.stop_token_ids()
    for conv, (ids, mask) in zip(convs, ex):
        p = prompt_ids(target.tokenizer, conv[:1])
        assert ids[: len(p)] == p and mask == [0] * len(p) + [1] * (len(ids) - len(p))
        reply = ids[len(p):]
        assert 1 <= len(reply) <= 6 and all(t not in stops for t in reply[:-1])
        # the reply is the target's greedy continuation
        out = target.model.generate(torch.tensor([p]), max_new_tokens=len(reply), do_sample=False)
        assert out[0, len(p):].tolist() == reply


def test_conversations_keeps_a_prefix_so_a_longer_file_gives_the_same_training_order(tmp_path):
    from dyndepth.train.pipeline import Options, training_conversations

    convs = [[{"role": "user", "content": f"question {i}"}, {"role": "assistant", "content": f"answer {i}"}]
             for i in range(30)]
    short, long = tmp_path / "short.jsonl", tmp_path / "long.jsonl"
    short.write_text("".join(json.dumps({"messages": c}) + "\n" for c in convs[:20]))
    long.write_text("".join(json.dumps({"messages": c}) + "\n" for c in convs))

    def order(path, n):
        got = training_conversations(Options(model="m", data=str(path), conversations=n, tokens=1, out=tmp_path))
        return [c[0]["content"] for c in got]

    assert order(long, 20) == order(short, None) == order(short, 20)  # the same 20, in the same shuffled order
    assert sorted(order(long, 20)) == sorted(f"question {i}" for i in range(20))
    assert order(long, None) != order(short, None)  # without the prefix the shuffle sees the extra items


def test_conversations_range_selects_a_slice_in_file_order(tmp_path):
    from dyndepth.errors import DyndepthError
    from dyndepth.train.pipeline import Options, conversation_range, training_conversations

    assert conversation_range(None) == slice(None) and conversation_range(7) == slice(0, 7)
    assert conversation_range("7") == slice(0, 7) and conversation_range("3:9") == slice(3, 9)
    assert conversation_range("3:") == slice(3, None) and conversation_range(":5") == slice(0, 5)
    path = tmp_path / "c.jsonl"
    path.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"q{i}"},
                                                     {"role": "assistant", "content": f"a{i}"}]}) + "\n"
                            for i in range(30)))

    def picked(spec):
        got = training_conversations(Options(model="m", data=str(path), conversations=spec, tokens=1, out=tmp_path))
        return sorted(int(c[0]["content"][1:]) for c in got)

    assert picked("20:") == list(range(20, 30)) and picked("5:8") == [5, 6, 7]
    assert set(picked("20:")).isdisjoint(picked(20)) and picked("0:20") == picked(20)
    with pytest.raises(DyndepthError, match="only 30 conversations"):
        picked("40:")
