"""`dyndepth demo` (what `make run` shows) on the real default model with its shipped head, kept short."""

from dyndepth.cli import main


def test_demo_prints_identical_texts_and_the_speed_comparison(smollm2_path, capsys):
    code = main(["demo", "--max-new-tokens", "24", "--threads", "1"])
    out = capsys.readouterr().out
    assert code == 0
    assert "float32" in out and "head shipped" in out
    assert "identical tokens: YES (24 vs 24 tokens)" in out  # float32 demo defaults: the exactness mode
    assert "speedup" in out and "tau (mean accepted tokens per step)" in out
    # the demo's DDD defaults reach the decoder: checks 2,3,4, max depth 6, 8 tokens per tree (0: a step whose sure
    # suffix match drafted alone, the default hybrid drafter)
    depths = out.split("depths drafted: ")[1].splitlines()[0]
    assert all(int(d.split(":")[0]) in (0, 2, 3, 4, 6) for d in depths.split(", "))
    assert any(int(d.split(":")[0]) > 0 for d in depths.split(", "))  # the head grew
