"""scripts/gpu/plan.py: the GPU benchmark plan, run end to end on the CPU (--dry-run), and its staging."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "scripts" / "gpu"))
import plan  # noqa: E402
import staging  # noqa: E402


def test_dry_run_runs_the_whole_plan(tmp_path, smollm2_path):
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "gpu" / "plan.py"), "--dry-run", "--work",
                           str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = tmp_path / "docs-results" / "gpu-dry-run"
    bench_steps = [st for st in plan.steps(plan.dry_settings(tmp_path), {"smollm2": 1, "qwen": 1, "qwen05": 1})
                   if st.kind == "bench"]
    assert [st.name for st in bench_steps] == ["smollm2-eager", "smollm2-auto", "smollm2-static", "qwen-eager",
                                               "qwen-auto", "qwen-static", "qwen-assisted"]
    for st in bench_steps:
        doc = json.loads((results / st.name / "summary.json").read_text())
        env = json.loads((results / st.name / "env.json").read_text())
        assert env["exit_code"] == 0 and env["torch"] and env["transformers"] and env["device"] == "cpu"
        ran = set(doc["summary"]["methods"])
        assert "vanilla" in ran and ran <= set(st.methods.split(","))
        for name in ran - {"vanilla"}:
            assert doc["summary"]["methods"][name]["exactness"]["matches"] == 1, (st.name, name)  # float32
    static = json.loads((results / "smollm2-static" / "summary.json").read_text())["run"]["methods"]
    assert static["static-compiled"]["compile"] is True and static["static-eager"]["static_cache"] is True
    assisted = json.loads((results / "qwen-assisted" / "summary.json").read_text())["summary"]["methods"]
    assert assisted["assisted"]["exactness"]["matches"] == 1  # the staged tiny assistant was found and used
    calls = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert sum("stage-smollm2" in c for c in calls) == len(json.loads(
        (tmp_path / "stage" / "smollm2" / "manifest.json").read_text())["parts"]) >= 3  # one call per part
    assert len(calls) == len(set(c.split("-", 1)[1] for c in calls))  # no step ran twice


def test_staging_round_trip_skips_and_refuses(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.bin").write_bytes(bytes(range(256)) * 40)
    (src / "b.txt").write_text("hello\n")
    m = staging.pack("t", staging.dir_files(src, "model"), tmp_path / "parts", part_bytes=4096)
    assert len(m["parts"]) >= 3
    store, dest = tmp_path / "store", tmp_path / "dest"
    for i, p in enumerate(m["parts"]):
        assert not staging.assemble(m, store, dest)  # not every part is there yet
        assert staging.stage_part(m, tmp_path / "parts" / p["name"], store)
        assert not staging.stage_part(m, tmp_path / "parts" / p["name"], store)  # resumable: already stored
    assert staging.assemble(m, store, dest) and (dest / "model" / "b.txt").read_text() == "hello\n"
    bad = tmp_path / "parts" / m["parts"][0]["name"]
    bad.write_bytes(b"x" + bad.read_bytes()[1:])
    with pytest.raises(SystemExit, match="damaged"):
        staging.stage_part(m, bad, tmp_path / "store2")


def test_resumable_steps_skip_what_is_done(tmp_path):
    s = plan.dry_settings(tmp_path)
    steps = plan.steps(s, {"smollm2": 2, "qwen": 1, "qwen05": 1})
    todo = plan.next_steps(s, steps, tmp_path, {})
    assert [st.name for st in todo[:3]] == ["stage-smollm2-part01", "stage-smollm2-part02", "smollm2-eager"]
    machine = {"smollm2": {"stored": ["part01", "part02"], "prepared": True}}
    (tmp_path / s.tag / "smollm2-eager").mkdir(parents=True)
    (tmp_path / s.tag / "smollm2-eager" / "summary.json").write_text("{}")
    assert plan.next_steps(s, steps, tmp_path, machine)[0].name == "smollm2-auto"
    args = plan.bench_args(s, steps[2], tmp_path, tmp_path / "o")
    assert args[:2] == ["bench", "--model"] and "--device" in args and args[args.index("--methods") + 1] == \
        "vanilla,eagle2,ddd" and "ddd.total_tokens=8" in args and "static-eager.max_len=256" not in args
