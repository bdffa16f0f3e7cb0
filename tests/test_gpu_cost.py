"""benchmarks/gpu_cost.py's code path on the CPU (its numbers need a GPU): the smoke run
measures every column, a scaling row over two CPU workers included, prints the table and
writes the JSON; a model that does not load is listed as skipped, not fatal."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.processes import ROOT, subprocess_env


def test_the_smoke_run_fills_every_column(tmp_path):
    out = tmp_path / "gpu_cost.json"
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu_cost.py"), "--device", "cpu", "--smoke",
         "--models", "tests.toy_model:ToyModel", "no-such-model", "--systems", "ethanol",
         "--chains", "2", "--scaling-devices", "cpu", "cpu", "--out", str(out)],
        cwd=ROOT, env=subprocess_env(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(out.read_text())
    (row,) = report["rows"]
    for key in ("step_single_ms", "step_chains_ms", "step_ratio", "pool_step_ratio",
                "eval_one_ms", "eval_chains_ms", "eval_ratio", "update_min", "scaling"):
        assert isinstance(row[key], float), key
    assert row["device"] == "cpu" and row["scaling_gpus"] == 2 and row["peak_mb"] is None
    assert list(report["meta"]["skipped"]) == ["no-such-model ethanol"]
    assert "| tests.toy_model:ToyModel | ethanol | 9 |" in result.stdout
