"""Shared helpers of the production tests: the ``atomate2-otf`` command in a new process,
with the toy model, as a user runs it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TOY = "tests.toy_model:ToyModel"
RUN_OPTIONS = ["--model", TOY, "--reference", "emt", "--steps", "12", "--timestep", "1",
               "--chains", "2", "--update-steps", "3", "--threshold", "0.05", "--workers", "1"]


def cli(*args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    """``python -m atomate2_otf.cli ARGS`` in ``cwd`` (the timeout only guards a hang)."""
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "atomate2_otf.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout, check=False)
