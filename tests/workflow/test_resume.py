"""Crash safety of the local path: kill -9 a run mid-way, `atomate2-otf resume` finishes it.

Each kill test runs ``python -m tests.crash_points`` (a toy-model run with an EMT reference
that logs every calculation it executes), kills it with SIGKILL inside an MD segment, a
reference calculation or a posterior update, then resumes it with the real CLI in a new
process. The resumed run must equal an uninterrupted run of the same seed (same labelled
structures, same errors, same final state) with at most one repeated reference calculation.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from atomate2_otf.local import resume_runs, run_flow_locally, unfinished_runs
from atomate2_otf.results import read_run_doc
from tests.crash_points import copper, open_store, toy_run_maker

ROOT = Path(__file__).resolve().parents[2]


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "OTF_CALL_LOG": str(tmp_path / "calls.log"), "OMP_NUM_THREADS": "1"}
    env.update(extra)
    return env


def _calls(log: Path) -> list[str]:
    """Reference calculations executed, one per job folder (a job may evaluate twice)."""
    seen: list[str] = []
    for line in log.read_text().splitlines() if log.exists() else []:
        folder = line.split()[0]
        if folder not in seen:
            seen.append(folder)
    return seen


def _starts(log: Path) -> list[str]:
    """Reference jobs that started calculating (one killed mid-way counts too)."""
    starts = Path(f"{log}.starts")
    return starts.read_text().splitlines() if starts.exists() else []


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The same run without a kill: what every resumed run must reproduce."""
    tmp = tmp_path_factory.mktemp("baseline")
    os.environ["OTF_CALL_LOG"] = str(tmp / "calls.log")
    try:
        store = open_store(tmp / "store")
        flow = toy_run_maker().make(copper())
        run_flow_locally(flow, store, root_dir=tmp / "jobs")
    finally:
        del os.environ["OTF_CALL_LOG"]
    doc = read_run_doc(store, flow.output.uuid)
    # toy_run_maker: 40 steps, a call forced every 6 model steps: 1 + 40 // 6 calls
    assert doc is not None and doc.n_reference_calls == 1 + 40 // 6
    assert [call.md_step for call in doc.calls] == [0, 6, 12, 18, 24, 30, 36]
    return doc, len(_calls(tmp / "calls.log"))


def _kill_at(tmp_path: Path, phase: str, index: int) -> Path:
    """Start the crash-point run, wait until it is inside ``phase`` ``index``, kill -9."""
    store_dir = tmp_path / "store"
    flag = tmp_path / "flag"
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.crash_points", str(store_dir)], cwd=ROOT,
        env=_env(tmp_path, OTF_CRASH_PHASE=phase, OTF_CRASH_INDEX=str(index),
                 OTF_CRASH_FLAG=str(flag)),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 240
    while not flag.exists():
        if process.poll() is not None:
            raise AssertionError(f"the run ended before {phase} {index}:\n"
                                 f"{process.stdout.read().decode()[-3000:]}")
        assert time.monotonic() < deadline, f"never reached {phase} {index}"
        time.sleep(0.1)
    os.kill(process.pid, signal.SIGKILL)
    process.wait(30)
    assert process.returncode == -signal.SIGKILL
    return store_dir


@pytest.mark.parametrize(("phase", "index"), [("segment", 2), ("reference", 3), ("update", 2)])
def test_kill_9_then_resume_finishes_the_run_as_if_never_killed(tmp_path, uninterrupted,
                                                                phase, index):
    expected, expected_calls = uninterrupted
    store_dir = _kill_at(tmp_path, phase, index)
    calls_before = len(_calls(tmp_path / "calls.log"))
    store = open_store(store_dir)
    [journal] = unfinished_runs(store)
    assert journal["state"] == "running"  # as the killed process left it

    status = subprocess.run([sys.executable, "-m", "atomate2_otf.cli", "status", "--store",
                             str(store_dir), "--json"], cwd=ROOT, env=_env(tmp_path),
                            capture_output=True, text=True, timeout=120)
    [row] = json.loads(status.stdout)
    assert row["state"] == "interrupted"

    resumed = subprocess.run([sys.executable, "-m", "atomate2_otf.cli", "resume", "--store",
                              str(store_dir), "--json"], cwd=ROOT, env=_env(tmp_path),
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    doc = json.loads(resumed.stdout)
    assert doc["completed"]
    # no labelled structure lost, none extra: the calls are those of the uninterrupted run
    assert doc["n_reference_calls"] == expected.n_reference_calls
    energies = [c["reference_energy"] for c in doc["calls"]]
    np.testing.assert_allclose(energies, [c.reference_energy for c in expected.calls],
                               rtol=0, atol=1e-9)
    assert doc["n_md_steps"] == expected.n_md_steps
    np.testing.assert_allclose(doc["final_state"]["positions"],
                               expected.final_state["positions"], rtol=0, atol=1e-9)
    # every labelled structure was calculated once, except the one the kill interrupted
    assert len(_calls(tmp_path / "calls.log")) == expected_calls
    started = len(_starts(tmp_path / "calls.log"))
    assert started - expected_calls == (1 if phase == "reference" else 0), (calls_before,
                                                                            started)
    assert unfinished_runs(store) == []


def test_resume_skips_a_run_whose_process_is_alive_and_reports_empty_stores(tmp_path):
    from atomate2_otf.local import Journal, journal_store

    store = open_store(tmp_path / "store")
    Journal(journal_store(store), "alive").write("running", [])
    runs = journal_store(store)
    doc = runs.query_one({"run_id": "alive"})
    assert doc["pid"] == os.getpid()
    # the owner (this process) is alive but resume_runs treats its own pid as dead, so
    # fake another live owner: the parent process
    runs.update([{**{k: v for k, v in doc.items() if k != "_id"}, "pid": os.getppid()}],
                key="run_id")
    [outcome] = resume_runs(store)
    assert outcome.state == "skipped" and "still running" in outcome.error
    out = subprocess.run([sys.executable, "-m", "atomate2_otf.cli", "resume", "--store",
                          str(tmp_path / "empty")], cwd=ROOT, env=_env(tmp_path),
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "does not exist" in out.stderr
