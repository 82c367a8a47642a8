"""`dyndepth calibrate`: measures the cost curves, stores them where `--policy auto` reads them, prints and plots
them; bad options are one line before any model loads."""

import json

import pytest

from dyndepth.cli import main


def test_calibrate_prints_caches_and_plots(tiny_chat_model, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DYNDEPTH_HOME", str(tmp_path / "home"))
    plot = tmp_path / "costs.png"
    rc = main(["calibrate", "--model", str(tiny_chat_model), "--head", "random", "--dtype", "float32",
               "--threads", "1", "--total-tokens", "12", "--draft-top-k", "3", "--repeats", "3", "--plot", str(plot)])
    out = capsys.readouterr().out
    assert rc == 0
    assert "tree size N | verify ms" in out and "\n12 | " in out and "ms per level" in out
    assert plot.is_file() and plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    cached = list((tmp_path / "home" / "costs").glob("*.json"))
    assert len(cached) == 1 and f"cached for --policy auto: {cached[0]}" in out
    entry = json.loads(cached[0].read_text())
    assert entry["sizes"][0] == 1 and entry["sizes"][-1] == 12 and len(entry["verify_s"]) == len(entry["sizes"])

    # the auto policy of a decoder built the same way starts from that entry: no second probe
    from dyndepth.decoder import SpeculativeDecoder
    from dyndepth.calibrate import curves as costs_mod

    monkeypatch.setattr(costs_mod, "probe", lambda *a, **k: pytest.fail("auto probed again despite the cache"))
    import torch

    torch.set_num_threads(1)
    dec = SpeculativeDecoder.from_pretrained(str(tiny_chat_model), head="random", dtype="float32", policy="auto",
                                             top_k=3, total_tokens=12)
    assert dec.policy.costs.verify_s == pytest.approx(entry["verify_s"], abs=1e-6)


def test_calibrate_json_without_cache_or_plot(tiny_chat_model, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DYNDEPTH_HOME", str(tmp_path / "home"))
    rc = main(["calibrate", "--model", str(tiny_chat_model), "--head", "random", "--dtype", "float32",
               "--total-tokens", "4", "--draft-top-k", "2", "--repeats", "1", "--no-plot", "--no-cache", "--json"])
    doc = json.loads(capsys.readouterr().out)
    assert rc == 0 and doc["cache"] is None and doc["plot"] is None and doc["sizes"] == [1, 2, 4]
    assert not (tmp_path / "home" / "costs").exists()


@pytest.mark.parametrize("argv, message", [
    (["--repeats", "0"], "--repeats must be in 1..100"),
    (["--plot", "x.jpg"], "the plot is a PNG file"),
    (["--plot", "no/such/dir/x.png"], "does not exist"),
    (["--total-tokens", "1"], "--total-tokens"),
    (["--draft-top-k", "0"], "--draft-top-k"),
    (["--threads", "0"], "--threads"),
])
def test_calibrate_bad_options_are_one_line(argv, message, capsys):
    rc = main(["calibrate", "--model", "no-such-model-needed", *argv])
    err = capsys.readouterr().err
    assert rc == 2 and message in err and err.count("\n") == 1 and "Traceback" not in err
