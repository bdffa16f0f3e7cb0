"""Process hygiene at the user's boundary: a signalled or killed ``atomate2-otf run`` leaves
no process behind, and SIGTERM/SIGINT leave a run that ``resume`` finishes.

Each test starts the real command in its own session (process group) with a pool of two
chain workers, waits until a worker reports progress from inside an SGHMC chain (the flag
of ``tests.cli_probe``, which records the workers' pids), signals it, and then looks for
every process of the group and every recorded worker.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from tests.processes import ROOT, alive, subprocess_env

#: how long a worker may outlive its run (the issue's bound)
GRACE_S = 10.0


def _run_args(cif: Path, store: Path) -> list[str]:
    # the toy model: an update of 2 chains x 1000 steps takes seconds
    return ["run", str(cif), "--model", "tests.toy_model:ToyModel", "--reference", "emt",
            "--steps", "20", "--chains", "2", "--update-steps", "1000", "--workers", "2",
            "--store", str(store), "--json"]


def _start_mid_update(tmp_path: Path, cif: Path) -> tuple[subprocess.Popen, list[int], Path]:
    """The command, its worker pids, its store, once a worker is inside a chain."""
    flag, store = tmp_path / "flag", tmp_path / "store"
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.cli_probe", str(flag), *_run_args(cif, store)],
        cwd=ROOT, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True)
    deadline = time.monotonic() + 180
    while not flag.exists():
        if process.poll() is not None:
            raise AssertionError(f"the run ended before its first update:\n"
                                 f"{process.stderr.read()[-3000:]}")
        assert time.monotonic() < deadline, "no worker reported progress in 180 s"
        time.sleep(0.05)
    workers = [int(line) for line in flag.read_text().split()]
    assert len(workers) == 2
    assert all(alive(pid) for pid in workers)  # the check below can fail
    return process, workers, store


def _group(pgid: int) -> list[int]:
    """Live processes of a process group."""
    found = []
    for proc in psutil.process_iter(["pid"]):
        try:
            if os.getpgid(proc.pid) == pgid and alive(proc.pid):
                found.append(proc.pid)
        except (ProcessLookupError, psutil.NoSuchProcess):
            continue
    return found


def _assert_all_gone(pgid: int, workers: list[int]) -> float:
    """Seconds until neither the group nor a recorded worker has a live process."""
    start = time.monotonic()
    while time.monotonic() - start < GRACE_S:
        left = set(_group(pgid)) | {pid for pid in workers if alive(pid)}
        if not left:
            return time.monotonic() - start
        time.sleep(0.1)
    left = set(_group(pgid)) | {pid for pid in workers if alive(pid)}
    raise AssertionError(f"processes still alive {GRACE_S} s after the run died: "
                         f"{[(p, psutil.Process(p).cmdline()) for p in left]}")


def _journal(store: Path) -> dict:
    from atomate2_otf.local import journal_store
    from atomate2_otf.store import open_job_store

    job_store = open_job_store(str(store))
    job_store.connect()
    [doc] = journal_store(job_store).query({})
    return doc


def test_sigkill_during_an_update_leaves_no_worker(tmp_path, cu_cif):
    process, workers, store = _start_mid_update(tmp_path, cu_cif)
    pgid = os.getpgid(process.pid)
    process.kill()
    process.wait(30)
    assert process.returncode == -signal.SIGKILL
    _assert_all_gone(pgid, workers)
    assert _journal(store)["state"] == "running"  # what a kill -9 leaves: resume finishes it


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_sigterm_and_sigint_stop_the_workers_and_resume_finishes_the_run(tmp_path, cu_cif,
                                                                         signum):
    process, workers, store = _start_mid_update(tmp_path, cu_cif)
    pgid = os.getpgid(process.pid)
    if signum == signal.SIGINT:
        os.killpg(pgid, signum)  # Ctrl-C in a terminal: the whole foreground group
    else:
        process.send_signal(signum)  # a batch system or `kill`: the command only
    out, err = process.communicate(timeout=60)
    assert process.returncode == 128 + signum, err[-3000:]
    assert out == ""  # no document for a run that did not finish
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert lines == [f"error: interrupted by {signal.Signals(signum).name}; the run is "
                     f"journalled as interrupted: 'atomate2-otf resume --store {store}' "
                     f"finishes it"], err[-3000:]
    assert "Traceback" not in err
    _assert_all_gone(pgid, workers)
    journal = _journal(store)
    assert journal["state"] == "interrupted"

    status = subprocess.run([sys.executable, "-m", "atomate2_otf.cli", "status", "--store",
                             str(store), "--json"], cwd=ROOT, env=subprocess_env(),
                            capture_output=True, text=True, timeout=120)
    assert [row["state"] for row in json.loads(status.stdout)] == ["interrupted"]
    resumed = subprocess.run([sys.executable, "-m", "atomate2_otf.cli", "resume", "--store",
                              str(store), "--json"], cwd=ROOT, env=subprocess_env(),
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    doc = json.loads(resumed.stdout)
    assert doc["completed"] and doc["n_md_steps"] == 20
    assert _journal(store)["state"] == "completed"
