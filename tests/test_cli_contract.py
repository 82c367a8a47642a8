"""The command line's contract: every user mistake is one line on stderr with exit code 2 (never a traceback),
checked before any model loads where it can be; streamed text is whole characters; --json is strict JSON."""

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from dyndepth.cli import main

GEN = ["generate", "--dtype", "float32", "--threads", "1", "--max-new-tokens", "6"]


def run_cli(capsys, argv):
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code, err, *needles):
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


# Each of these must fail before the model loads: the model argument names a directory that does not exist, so
# an error that mentions the model would mean the option was checked too late.
@pytest.mark.parametrize("args,needles", [
    (["--total-tokens", "0"], ["--total-tokens", "got 0"]),
    (["--total-tokens", "1"], ["--total-tokens", "plain"]),
    (["--total-tokens", "100000"], ["--total-tokens", "100000"]),
    (["--draft-top-k", "1024"], ["--draft-top-k", "1024"]),
    (["--threshold", "nan"], ["--threshold", "finite", "nan"]),
    (["--temperature", "inf"], ["--temperature", "inf"]),
    (["--top-p", "1.5"], ["--top-p"]),
    (["--checks", ""], ["--checks", "at least one"]),
    (["--checks", "5,x"], ["--checks", "comma-separated"]),
    (["--max-depth", "4"], ["--max-depth", "default check depths"]),
    (["--policy", "fixed", "--threshold", "-1"], ["--threshold", "'ddd' policy only"]),
    (["--policy", "plain", "--total-tokens", "12"], ["--total-tokens", "plain"]),
    (["--policy", "plain", "--head", "some/head"], ["--head", "does not apply to the 'plain' policy"]),
    (["--policy", "plain", "--drafter", "suffix"], ["--drafter", "does not apply to the 'plain' policy"]),
    (["--drafter", "suffix", "--head", "random"], ["--head", "does not apply to the 'suffix' drafter"]),
    (["--threads", "-1"], ["--threads", "-1"]),
    (["--threads", "0"], ["--threads", "got 0"]),
    (["--device", "tpu"], ["--device", "tpu"]),
    (["--device", "cuda:0"], ["--device"]),
    (["--device", "mps"], ["--device", "mps"]),
    (["--min-new-tokens", "9"], ["--min-new-tokens", "max_new_tokens"]),
    (["--stop", ""], ["--stop", "empty"]),
    (["--seed", "-3"], ["--seed"]),
])
def test_bad_options_fail_before_the_model_loads(capsys, tmp_path, args, needles):
    import torch

    if args[:2] == ["--device", "cuda:0"] and torch.cuda.is_available():
        pytest.skip("this machine has a GPU, so --device cuda:0 is valid here")
    code, _, err = run_cli(capsys, GEN + ["--model", str(tmp_path / "no-such-model"), "--prompt", "hi"] + args)
    assert_one_line_error(code, err, *needles)
    assert "no-such-model" not in err


def test_non_utf8_prompt_is_one_line(capsys, tmp_path):
    code, _, err = run_cli(capsys, GEN + ["--model", str(tmp_path), "--prompt", "caf\udce9"])
    assert_one_line_error(code, err, "--prompt", "UTF-8")
    bad = tmp_path / "prompt.txt"
    bad.write_bytes(b"caf\xe9 latin-1")
    code, _, err = run_cli(capsys, GEN + ["--model", str(tmp_path), "--prompt-file", str(bad)])
    assert_one_line_error(code, err, "--prompt-file", "UTF-8")


@pytest.mark.parametrize("argv_tail,needles", [
    ([], ["exactly one of --prompt"]),
    (["--prompt", "a", "--prompt-file", "x.txt"], ["exactly one", "--prompt-file"]),
    (["--prompt", "a", "--system", "be brief"], ["--system needs --chat"]),
    (["--prompt-file", "/no/such/file.txt"], ["--prompt-file", "no such file"]),
])
def test_prompt_sources_are_checked(capsys, tmp_path, argv_tail, needles):
    code, _, err = run_cli(capsys, GEN + ["--model", str(tmp_path)] + argv_tail)
    assert_one_line_error(code, err, *needles)


@pytest.mark.parametrize("content,needles", [
    ("[", ["not valid JSON"]),
    ('{"role": "user"}', ["non-empty JSON list"]),
    ('[{"role": "user", "content": 3}]', ["item 0"]),
    ('[{"role": "robot", "content": "x"}]', ["item 0 has an unknown role", "'robot'"]),
    ('[{"role": "user", "content": "\\ud800"}]', ["item 0 content", "UTF-8", "U+D800"]),
    ('[{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]', ["last turn"]),
])
def test_messages_files_are_checked(capsys, tmp_path, content, needles):
    f = tmp_path / "m.json"
    f.write_text(content)
    code, _, err = run_cli(capsys, GEN + ["--model", str(tmp_path), "--messages", str(f)])
    assert_one_line_error(code, err, "--messages", *needles)


def test_broken_model_directories_are_one_line(capsys, tmp_path, tiny_chat_model):
    import shutil

    cases = {}
    d = tmp_path / "truncated-config"
    shutil.copytree(tiny_chat_model, d)
    (d / "config.json").write_text((d / "config.json").read_text()[:40])
    cases[d] = "not valid JSON"
    d = tmp_path / "list-config"
    shutil.copytree(tiny_chat_model, d)
    (d / "config.json").write_text("[1, 2]")
    cases[d] = "JSON object"
    d = tmp_path / "no-weights"
    shutil.copytree(tiny_chat_model, d)
    (d / "model.safetensors").unlink()
    cases[d] = "no weights"
    d = tmp_path / "truncated-weights"
    shutil.copytree(tiny_chat_model, d)
    w = d / "model.safetensors"
    w.write_bytes(w.read_bytes()[:1000])
    cases[d] = "cannot load the model"
    d = tmp_path / "not-a-model"
    d.mkdir()
    cases[d] = "no config.json"
    for folder, needle in cases.items():
        code, _, err = run_cli(capsys, GEN + ["--model", str(folder), "--policy", "plain", "--prompt", "hi"])
        assert_one_line_error(code, err, needle)


def test_bench_out_under_a_file_and_bad_method_settings(capsys, tmp_path):
    f = tmp_path / "a-file"
    f.write_text("x")
    base = ["bench", "--model", str(tmp_path / "no-such-model"), "--head", "random", "--questions", "1"]
    code, _, err = run_cli(capsys, base + ["--out", str(f / "sub")])
    assert_one_line_error(code, err, "--out", "is a file")
    for setting, needle in (("ddd.threshold=nan", "threshold"), ("ddd.checks=", "checks"),
                            ("eagle2-cpu.total_tokens=1", "total_tokens"), ("eagle2-cpu.top_k=500", "top_k")):
        code, _, err = run_cli(capsys, base + ["--methods", "ddd,eagle2-cpu", "--set", setting,
                                               "--out", str(tmp_path / "o")])
        assert_one_line_error(code, err, needle)
        assert "no-such-model" not in err  # refused at planning time, before the model would load
    for content, needle in ((b"\xff\xfe", "not UTF-8"), (b'{"question_id": [1], "turns": ["a"]}', "question_id"),
                            (b"[", "not valid JSON")):
        qf = tmp_path / "q.jsonl"
        qf.write_bytes(content)
        code, _, err = run_cli(capsys, base + ["--bench", str(qf), "--out", str(tmp_path / "o")])
        assert_one_line_error(code, err, needle)
    code, _, err = run_cli(capsys, base + ["--threads", "0", "--out", str(tmp_path / "o")])
    assert_one_line_error(code, err, "--threads")
    for extra, needle in ((["--only", "ddd=1"], "needs --batch-size"),
                          (["--batch-size", "1,4", "--only", "auto=1"], "METHOD in --methods"),
                          (["--batch-size", "1,4", "--only", "ddd=2"], "not in --batch-size")):
        code, _, err = run_cli(capsys, base + ["--methods", "vanilla,ddd", *extra, "--out", str(tmp_path / "o")])
        assert_one_line_error(code, err, needle)
    code, _, err = run_cli(capsys, base + ["--device", "tpu", "--out", str(tmp_path / "o")])
    assert_one_line_error(code, err, "--device")


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    from dyndepth import __version__

    assert capsys.readouterr().out.strip() == f"dyndepth {__version__}"


# -- runs on a real (tiny) model ---------------------------------------------------------------------------------
def test_stdin_prompt_file_and_messages_give_the_same_answer(capsys, monkeypatch, tmp_path, tiny_chat_model):
    common = GEN + ["--model", str(tiny_chat_model), "--head", "random", "--json", "--temperature", "0"]
    (tmp_path / "p.txt").write_text("Tell me a story.", encoding="utf-8")
    msgs = tmp_path / "m.json"
    msgs.write_text(json.dumps([{"role": "system", "content": "Be brief."},
                                {"role": "user", "content": "Tell me a story."}]))
    answers = {}
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO("Tell me a story.".encode())))
    for name, src in {"stdin": ["--prompt", "-", "--chat", "--system", "Be brief."],
                      "file": ["--prompt-file", str(tmp_path / "p.txt"), "--chat", "--system", "Be brief."],
                      "messages": ["--messages", str(msgs)],
                      "arg": ["--prompt", "Tell me a story.", "--chat", "--system", "Be brief."],
                      "no-system": ["--prompt", "Tell me a story.", "--chat"]}.items():
        code, out, err = run_cli(capsys, common + src)
        assert code == 0, err
        answers[name] = json.loads(out)
    ids = {k: v["token_ids"] for k, v in answers.items()}
    assert ids["stdin"] == ids["file"] == ids["messages"] == ids["arg"]
    settings = answers["arg"]["settings"]  # the beam width is not the sampling top_k printed under "sampling"
    assert settings["draft_top_k"] >= 1 and "top_k" not in settings and "top_k" in answers["arg"]["sampling"]
    assert answers["arg"]["stats"]["prompt_tokens"] != answers["no-system"]["stats"]["prompt_tokens"]
    assert answers["arg"]["sampling"]["temperature"] == 0.0


def test_json_output_is_strict_and_alone_on_stdout(tiny_chat_model):
    """A subprocess, as a user runs it: stdout holds exactly one JSON document (no loading bars), no NaN."""
    cmd = [sys.executable, "-m", "dyndepth.cli"] + GEN + ["--model", str(tiny_chat_model), "--head", "random",
                                                           "--prompt", "hi", "--json", "--stop", "zzz"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr

    def no_constants(name):
        raise AssertionError(f"non-standard JSON constant {name}")

    doc = json.loads(res.stdout, parse_constant=no_constants)
    assert set(doc) >= {"token_ids", "text", "settings", "stats", "sampling"}
    assert doc["sampling"]["stop"] == ["zzz"]


def test_streamed_emoji_are_whole(smollm2_path):
    """SmolLM2 answers this prompt with emoji that span several byte-level tokens; the streamed stdout must
    show them whole (no U+FFFD) and equal the --json text."""
    base = [sys.executable, "-m", "dyndepth.cli", "generate", "--model", "smollm2-135m-instruct", "--policy",
            "plain", "--dtype", "float32", "--threads", "1", "--max-new-tokens", "11", "--temperature", "0",
            "--chat", "--prompt", "Repeat exactly: 😀 🎉 日本語 café"]
    env = {**__import__("os").environ, "PYTHONIOENCODING": "utf-8"}
    streamed = subprocess.run(base, capture_output=True, timeout=300, env=env)
    assert streamed.returncode == 0, streamed.stderr.decode(errors="replace")
    as_json = subprocess.run(base + ["--json"], capture_output=True, timeout=300, env=env)
    text = json.loads(as_json.stdout)["text"]
    assert "🎉" in text and "\ufffd" not in text
    assert streamed.stdout.decode("utf-8") == text + "\n"


def test_cli_sources_are_one_line_errors_on_a_real_model(capsys, tiny_chat_model):
    code, _, err = run_cli(capsys, GEN + ["--model", str(tiny_chat_model), "--head", "random", "--prompt", "hi",
                                          "--stop-token-id", "999999"])
    assert_one_line_error(code, err, "--stop-token-id", "999999")
    code, _, err = run_cli(capsys, GEN + ["--model", str(tiny_chat_model), "--head", str(Path("/no/such/head")),
                                          "--prompt", "hi"])
    assert_one_line_error(code, err, "head")


# -- issue 27: what a new user still hit ----------------------------------------------------------------------------
def _generate_args(*argv):
    from dyndepth.cli import build_parser

    return build_parser().parse_args(["generate", "--model", "m", *argv])


def test_stop_strings_unescape_backslash_n_t_and_backslash():
    """A shell passes --stop "\\n\\n" as a backslash and an n: the README's example must stop at a blank line."""
    from dyndepth.options import sampling_kwargs

    args = _generate_args("--prompt", "hi", "--stop", "\\n\\n", "--stop", "a\\tb", "--stop", "c:\\\\new",
                          "--stop", "\\x")
    assert sampling_kwargs(args)["stop"] == ["\n\n", "a\tb", "c:\\new", "\\x"]


def test_messages_roles_follow_the_rule_of_the_api_and_the_server(tmp_path):
    """One rule for all three (validate.chat_messages): developer is system; the last turn is not the assistant's."""
    from dyndepth.generate_cli import read_prompt
    from dyndepth.validate import chat_messages

    f = tmp_path / "m.json"
    f.write_text(json.dumps([{"role": "developer", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                             {"role": "assistant", "content": "Hello"}, {"role": "system", "content": "Go on."}]))
    turns = read_prompt(_generate_args("--messages", str(f)))
    assert [t["role"] for t in turns] == ["system", "user", "assistant", "system"]
    assert turns == chat_messages(json.loads(f.read_text()))


def test_every_option_has_help():
    from dyndepth.cli import build_parser

    commands = build_parser()._subparsers._group_actions[0].choices
    missing = {name: [a.option_strings[0] for a in commands[name]._actions if a.option_strings and not a.help]
               for name in ("generate", "demo", "serve", "calibrate")}
    assert missing == {name: [] for name in missing}


def test_an_absurd_max_new_tokens_is_one_line(capsys, tiny_chat_model):
    """Above the model's context (2048 for the tiny model) no generation can end by its budget: refused, not run
    until the context or a timeout."""
    code, out, err = run_cli(capsys, GEN[:-2] + ["--model", str(tiny_chat_model), "--head", "random", "--prompt",
                                                  "hi", "--max-new-tokens", "99999999999999999999"])
    assert_one_line_error(code, err, "--max-new-tokens", "maximum context length of 2048 tokens",
                          "99999999999999999999")
    assert out == ""


def test_a_reader_that_leaves_gets_no_traceback(tiny_chat_model):
    """`dyndepth generate ... | head -c 1`: the reader closes the pipe; the command ends quietly (141, as a
    command killed by SIGPIPE reports), without a BrokenPipeError traceback."""
    cmd = [sys.executable, "-m", "dyndepth.cli"] + GEN + ["--model", str(tiny_chat_model), "--head", "random",
                                                           "--prompt", "hi", "--temperature", "0", "--ignore-eos"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # the reader is gone before the first byte is written
    err = proc.stderr.read().decode(errors="replace")
    assert proc.wait(300) == 141, err
    assert "Traceback" not in err and "BrokenPipeError" not in err and "Exception ignored" not in err, err


# -- many prompts: --prompt-file F.jsonl --batch-size B --------------------------------------------------------
def test_a_jsonl_prompt_file_gives_one_json_line_per_prompt_in_order(capsys, tmp_path, tiny_chat_model):
    """Each line's answer equals the same prompt generated alone (greedy, float32), with its own options."""
    lines = [{"prompt": "Tell me a story."}, {"messages": [{"role": "user", "content": "Hi!"}], "max_new_tokens": 3},
             {"prompt": "Name a colour.", "seed": 4}, {"prompt": "Count to three.", "stop": "\n"}]
    path = tmp_path / "prompts.jsonl"
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n\n", encoding="utf-8")
    common = GEN + ["--model", str(tiny_chat_model), "--head", "random", "--temperature", "0", "--chat"]
    code, out, err = run_cli(capsys, common + ["--prompt-file", str(path), "--batch-size", "2"])
    assert code == 0, err
    rows = [json.loads(line) for line in out.splitlines()]
    assert [r["index"] for r in rows] == [0, 1, 2, 3] and all(r["error"] is None for r in rows)
    assert len(rows[1]["token_ids"]) <= 3 and len(rows[0]["token_ids"]) <= 6
    for row, line in zip(rows, lines):
        src = ["--messages", str(tmp_path / "m.json")] if "messages" in line else ["--prompt", line["prompt"]]
        if "messages" in line:
            (tmp_path / "m.json").write_text(json.dumps(line["messages"]))
        extra = ["--max-new-tokens", str(line["max_new_tokens"])] if "max_new_tokens" in line else []
        extra += ["--stop", line["stop"]] if "stop" in line else []
        code, out, err = run_cli(capsys, common + src + extra + ["--json"])
        assert code == 0, err
        assert json.loads(out)["token_ids"] == row["token_ids"]


@pytest.mark.parametrize("content,needles", [
    ('{"prompt": "hi"}\n{"prompt": ', ["line 2", "not valid JSON"]),
    ('{"prompt": "hi", "messages": []}\n', ["line 1", "exactly one of"]),
    ('{"prompt": "hi", "colour": 1}\n', ["line 1", "unknown field(s) colour"]),
    ('{"prompt": ""}\n', ["line 1", "non-empty string"]),
    ('{"messages": [{"role": "robot", "content": "x"}]}\n', ["line 1", "robot"]),
    ("\n\n", ["holds no prompts"]),
])
def test_a_bad_jsonl_line_is_one_error_naming_it(capsys, tmp_path, content, needles):
    path = tmp_path / "p.jsonl"
    path.write_text(content, encoding="utf-8")
    code, _, err = run_cli(capsys, GEN + ["--model", "/no/such/model", "--prompt-file", str(path)])
    assert_one_line_error(code, err, *needles)


def test_batch_size_needs_a_jsonl_prompt_file(capsys):
    code, _, err = run_cli(capsys, GEN + ["--model", "/no/such/model", "--prompt", "hi", "--batch-size", "4"])
    assert_one_line_error(code, err, "--batch-size needs a JSON Lines --prompt-file")
