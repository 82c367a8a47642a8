"""`dyndepth bench` with the static-cache engine: engine settings on any tree method, the static-eager method."""

import json

import pytest

from dyndepth.bench.methods import METHODS, parse_overrides, plan_methods
from dyndepth.bench.tree_methods import check_settings
from dyndepth.cli import main
from dyndepth.errors import DyndepthError


def test_engine_settings_parse_for_every_tree_method():
    over = parse_overrides(["ddd.static_cache=true", "ddd.compile=yes", "ddd.max_len=512", "eagle2.static_cache=0"])
    assert over == {"ddd": {"static_cache": True, "compile": True, "max_len": 512}, "eagle2": {"static_cache": False}}
    plans = {p.name: p.settings for p in plan_methods(["vanilla", "ddd", "eagle2"], over)}
    assert plans["ddd"]["static_cache"] is True and plans["eagle2"]["compile"] is False
    assert "static_cache" not in plans["vanilla"]  # not a tree method: no engine keys


@pytest.mark.parametrize("item,message", [
    ("ddd.static_cache=maybe", "bad value 'maybe' for static_cache"),
    ("vanilla.static_cache=true", "method 'vanilla' has no setting 'static_cache'"),
])
def test_bad_engine_settings_are_one_line_errors(item, message):
    with pytest.raises(DyndepthError, match=message):
        parse_overrides([item])


def test_engine_settings_are_checked_at_planning_time():
    settings = plan_methods(["ddd"], {"ddd": {"compile": True}})[0].settings
    with pytest.raises(DyndepthError, match="method 'ddd': compile=True needs static_cache=True"):
        check_settings("ddd", settings)
    assert METHODS["static-compiled"].defaults["compile"] is True
    check_settings("static-compiled", plan_methods(["static-compiled"])[0].settings)


def test_static_methods_run_and_are_exact(tiny_chat_model, tmp_path):
    out = tmp_path / "static"
    code = main(["bench", "--model", str(tiny_chat_model), "--head", "random", "--questions", "1",
                 "--max-new-tokens", "8", "--methods", "vanilla,ddd,static-eager", "--set", "static-eager.max_len=512",
                 "--set", "ddd.total_tokens=12", "--set", "static-eager.total_tokens=12", "--dtype", "float32",
                 "--threads", "1", "--warmup", "0", "--no-plots", "--out", str(out)])
    assert code == 0
    doc = json.loads((out / "summary.json").read_text())
    run = doc["run"]["methods"]
    assert run["static-eager"]["static_cache"] is True and run["static-eager"]["max_len"] == 512
    assert run["static-eager"]["compile"] is False and "static_cache" not in run["ddd"]
    for name in ("ddd", "static-eager"):
        assert doc["summary"]["methods"][name]["exactness"]["matches"] == 2, name
