"""`dyndepth serve` options: safe defaults and one-line refusals, all before any model loads (no model needed)."""

import pytest

pytest.importorskip("fastapi", reason="the 'serve' extra is not installed")

from dyndepth.cli import build_parser, main  # noqa: E402


def test_serve_binds_loopback_without_a_key_by_default():
    args = build_parser().parse_args(["serve"])
    assert (args.host, args.port, args.api_key, args.cors_origin) == ("127.0.0.1", 8000, None, [])
    assert args.max_queue >= 1 and args.request_timeout > 0


@pytest.mark.parametrize("argv, message", [
    (["--port", "0"], "--port must be in 1..65535, got 0"),
    (["--max-queue", "0"], "--max-queue must be >= 1, got 0"),
    (["--request-timeout", "-1"], "--request-timeout must be >= 0.0, got -1.0"),
    (["--cors-origin", "*"], "--cors-origin '*' would let any web page use this server; name the origins"),
    (["--api-key", " "], "--api-key must not be empty"),
    (["--policy", "plain", "--total-tokens", "8"], "--total-tokens does not apply to the 'plain' policy"),
    (["--policy", "plain", "--head", "some/head"], "--head does not apply to the 'plain' policy"),
    (["--drafter", "head", "--suffix-cache", "16"],
     "--suffix-cache applies to the suffix, hybrid and switch drafters, not the 'head'"),
    (["--drafter", "suffix", "--suffix-cache", "-1"], "--suffix-cache must be in 0..65536, got -1"),
    (["--drafter", "suffix", "--head", "random"], "--head does not apply to the 'suffix' drafter"),
    (["--cors-origin", "not a url"], "--cors-origin 'not a url' is not an origin"),
    (["--cors-origin", "http://localhost:3000/"], "without a path"),
    (["--served-model-name", ""], "--served-model-name must not be empty"),
    (["--served-model-name", "  "], "--served-model-name must not be empty"),
    (["--step-log", "/no/such/folder/steps.jsonl"], "--step-log: folder /no/such/folder does not exist"),
    (["--step-log", "steps.jsonl", "--replicas", "2"], "--step-log logs this process's engine"),
])
def test_bad_server_options_are_one_line_errors_before_loading(argv, message, capsys, monkeypatch):
    import uvicorn

    from dyndepth.decoder import SpeculativeDecoder

    def loaded(*a, **k):
        pytest.fail("the model loaded (or the server started) before the options were refused")

    monkeypatch.setattr(SpeculativeDecoder, "from_pretrained", classmethod(loaded))
    monkeypatch.setattr(uvicorn, "run", loaded)
    monkeypatch.setattr(uvicorn.Server, "run", loaded)
    monkeypatch.delenv("DYNDEPTH_API_KEY", raising=False)
    assert main(["serve", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1


def test_a_busy_port_is_one_line_before_the_model_loads(capsys, monkeypatch, tmp_path):
    import socket

    monkeypatch.delenv("DYNDEPTH_API_KEY", raising=False)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        rc = main(["serve", "--model", str(tmp_path / "no-such-model"), "--port", str(port)])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1, err
    assert f"--port {port}: the address is already in use" in err and "no-such-model" not in err


def test_a_default_budget_above_the_context_is_refused_at_start(capsys, monkeypatch, tiny_chat_model):
    """The tiny model's context is 2048 tokens: a default max_tokens above it could never be used up."""
    import socket

    import uvicorn

    def served(*a, **k):
        pytest.fail("the server started despite a default budget it can never use")

    monkeypatch.setattr(uvicorn, "run", served)
    monkeypatch.setattr(uvicorn.Server, "run", served)
    monkeypatch.delenv("DYNDEPTH_API_KEY", raising=False)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    rc = main(["serve", "--model", str(tiny_chat_model), "--head", "random", "--dtype", "float32", "--port",
               str(port), "--default-max-tokens", "5000"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1, err
    assert "--default-max-tokens must be at most the model's maximum context length of 2048 tokens" in err


def test_every_serve_option_is_documented_in_help_and_serving_md():
    """--help explains every option, and docs/SERVING.md names every policy `serve` takes (auto included)."""
    from pathlib import Path

    parser = build_parser()
    serve = parser._subparsers._group_actions[0].choices["serve"]
    undocumented = [a.option_strings[0] for a in serve._actions if a.option_strings and not a.help]
    assert undocumented == []
    policy = next(a for a in serve._actions if "--policy" in a.option_strings)
    doc = (Path(__file__).parents[1] / "docs" / "SERVING.md").read_text(encoding="utf-8")
    assert f"`--policy {'|'.join(policy.choices)}`" in doc
