"""scripts/gpu_costs.py runs end to end on a CPU with --smoke (tiny shapes) and writes its JSON + Markdown."""

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_gpu_costs_smoke(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path)}
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "gpu_costs.py"), "--smoke"], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = json.loads((tmp_path / "gpu_costs.json").read_text())
    tiny = res["models"]["smoke-tiny"]
    assert not tiny["section_errors"]
    assert set(tiny["verify_ms"]) == {"1", "4", "8"}  # JSON keys
    assert {"full/K4", "reduced/K10"} <= set(tiny["draft"]["levels"])
    assert tiny["engine"]["plain"]["steps"] > 0 and tiny["engine"]["eagle2 N60 D6 K10"]["mean_depth"] == 6
    row = tiny["projection"][0]
    assert row["config"].startswith("eagle2") and row["tau=3"] > 0 and row["tau=6"] is not None
    md = (tmp_path / "gpu_costs.md").read_text()
    assert "Projected speedup" in md and "Target verification" in md
    assert md in proc.stdout
