"""Helpers of the tests that start the package in other processes and look for leftovers."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]


def subprocess_env(**extra: str) -> dict[str, str]:
    """This environment with the repository importable (``tests.*``) and one torch thread."""
    return {**os.environ, "OMP_NUM_THREADS": "1",
            "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", **extra}


def alive(pid: int) -> bool:
    """Running (a zombie waiting for its reaper has exited)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def refused_cli_line(*args: str, store: Path) -> str:
    """Run ``atomate2-otf ARGS --store STORE`` in a subprocess that must refuse its input:
    exit status 2, one ``error:`` line on stderr, and nothing written to the store. Returns
    that line, for the caller to check that it names the bad value and what is accepted."""
    out = subprocess.run([sys.executable, "-m", "atomate2_otf.cli", *args, "--store",
                          str(store)], cwd=ROOT, env=subprocess_env(), capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), lines
    assert not store.exists() or not any(store.iterdir())
    return lines[0]
