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
])
def test_bad_server_options_are_one_line_errors_before_loading(argv, message, capsys, monkeypatch):
    monkeypatch.delenv("DYNDEPTH_API_KEY", raising=False)
    assert main(["serve", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1
