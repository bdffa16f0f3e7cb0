"""FireWorks workers for the production tests: real ``rlaunch rapidfire`` subprocesses.

The tests run a flow the way a cluster does: a LaunchPad on the test MongoDB server, one
``rlaunch`` process per worker (each with its own fworker file and category), launch
directories in a tmp folder, and kill -9 to crash a worker mid-job. Workers poll forever
(``--nlaunches infinite``): with ``--nlaunches 0`` rapidfire exits as soon as
``future_run_exists`` sees nothing of *its own* category running with WAITING children,
which is the normal state of the reference worker while the MD worker runs a segment.

To crash a worker at a known point, the jobs are made to *hold* there: the test-only
reference Maker and model below block, once, when the running jobflow job is the one
named by (kind, index) (read from ``CURRENT_JOB.job.metadata``, the ``otf_kind`` and
``otf_index`` each job of a run carries). The first time, they create a marker file and
sleep; the test sees the marker, kills the worker, and the rerun finds the marker and
does not hold again. Everything here is importable by a worker (PYTHONPATH has the repo).
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from atomate2_otf.reference.retry import RetryingEMTStaticMaker
from tests.toy_model import ToyModel

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent
#: how long a held job sleeps if nobody kills it (then it carries on, and the test fails)
HOLD_LIMIT_S = 300.0


# -- holding at a precise point -----------------------------------------------------------
def hold_once(kind: str | None, index: int | None, marker: str | None) -> None:
    """Block the running job if it is (kind, index) and ``marker`` does not exist yet."""
    if not kind or marker is None:
        return
    from jobflow import CURRENT_JOB

    job = CURRENT_JOB.job
    metadata = (job.metadata or {}) if job is not None else {}
    if metadata.get("otf_kind") != kind or metadata.get("otf_index") != index:
        return
    path = Path(marker)
    try:
        with open(path, "x") as handle:  # exclusive create: only the first attempt holds
            handle.write(f"{os.getpid()}\n")
    except FileExistsError:
        return
    deadline = time.monotonic() + HOLD_LIMIT_S
    while time.monotonic() < deadline:
        time.sleep(0.2)


class HoldingToyModel(ToyModel):
    """The toy model, holding once in an MD segment or update (see :func:`hold_once`)."""

    def __init__(self, hold_kind: str | None = None, hold_index: int | None = None,
                 hold_marker: str | None = None) -> None:
        super().__init__()
        self.hold = (hold_kind, hold_index, hold_marker)

    def evaluate(self, batch: Any, **kwargs: Any):
        hold_once(*self.hold)
        return super().evaluate(batch, **kwargs)


def holding_emt_calculator(hold_index: int | None, hold_marker: str | None):
    from ase.calculators.emt import EMT

    class HoldingEMT(EMT):
        def calculate(self, *args: Any, **kwargs: Any) -> None:
            hold_once("reference", hold_index, hold_marker)
            super().calculate(*args, **kwargs)

    return HoldingEMT()


@dataclass
class HoldingEMTMaker(RetryingEMTStaticMaker):
    """The EMT reference (as ``get_reference_maker("emt")``), holding once in call index
    ``hold_index``; ``calls_file`` gets one line per calculation started, so a test can
    count reference calculations, repeated ones included."""

    hold_index: int | None = None
    hold_marker: str | None = None
    calls_file: str | None = None

    def _get_calculator(self):
        if self.calls_file:
            from jobflow import CURRENT_JOB

            index = (CURRENT_JOB.job.metadata or {}).get("otf_index") if CURRENT_JOB.job else None
            with open(self.calls_file, "a") as handle:
                handle.write(f"{index}\n")
        return holding_emt_calculator(self.hold_index, self.hold_marker)


# -- launchpad and worker files -----------------------------------------------------------
def write_launchpad_file(path: Path, host: str, port: int, name: str) -> Path:
    path.write_text(f"host: {host}\nport: {int(port)}\nname: {name}\nstrm_lvl: INFO\n")
    return path


def write_fworker_file(path: Path, name: str, category: str | list[str]) -> Path:
    categories = [category] if isinstance(category, str) else list(category)
    lines = [f"name: {name}", "category:"] + [f"  - {c}" for c in categories] + ["query: '{}'"]
    path.write_text("\n".join(lines) + "\n")
    return path


def write_fw_config(path: Path, ping_s: int = 1) -> Path:
    """FireWorks settings for the workers: ping the launchpad every ``ping_s`` seconds, so
    that a killed worker's launch goes stale (detect_lostruns) within seconds, not hours."""
    path.write_text(f"PING_TIME_SECS: {int(ping_s)}\nRAPIDFIRE_SLEEP_SECS: 1\n")
    return path


# -- worker processes ----------------------------------------------------------------------
@dataclass
class Worker:
    """One ``rlaunch rapidfire`` subprocess (its own session, so kill -9 takes its group)."""

    name: str
    process: subprocess.Popen
    log: Path
    launch_dir: Path

    def alive(self) -> bool:
        return self.process.poll() is None

    def read_log(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def start_worker(launchpad_file: Path, fworker_file: Path, folder: Path, name: str,
                 fw_config: Path | None = None, timeout_s: int = 900) -> Worker:
    """Start ``rlaunch -l LPAD -w FWORKER rapidfire --nlaunches infinite --sleep 1``.

    Launch directories go under ``folder/name`` (rapidfire launches in its cwd); the repo
    root is on PYTHONPATH so that ``tests.*`` Makers and models import; one thread per
    process (the CI machine has two shared cores). ``timeout_s`` ends a worker that a
    crashed test process left behind.
    """
    rlaunch = Path(sys.executable).with_name("rlaunch")
    launch_dir = folder / name
    launch_dir.mkdir(parents=True, exist_ok=True)
    log = folder / f"{name}.log"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), *filter(None, [env.get("PYTHONPATH")])])
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    if fw_config is not None:
        env["FW_CONFIG_FILE"] = str(fw_config)
    command = [str(rlaunch), "-l", str(launchpad_file), "-w", str(fworker_file),
               "rapidfire", "--nlaunches", "infinite", "--sleep", "1",
               "--timeout", str(int(timeout_s))]
    with open(log, "ab") as handle:
        process = subprocess.Popen(command, cwd=launch_dir, env=env, stdout=handle,
                                   stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   start_new_session=True)
    logger.info("started worker %s (pid %d)", name, process.pid)
    return Worker(name=name, process=process, log=log, launch_dir=launch_dir)


def start_workers(launchpad_file: Path, fworkers: dict[str, Path], folder: Path,
                  fw_config: Path | None = None) -> list[Worker]:
    """One worker per ``{name: fworker file}``."""
    return [start_worker(launchpad_file, fworker, folder, name, fw_config)
            for name, fworker in fworkers.items()]


def kill_worker(worker: Worker) -> None:
    """kill -9 the worker (and anything it started), as a node that dies mid-job."""
    if worker.alive():
        os.killpg(worker.process.pid, signal.SIGKILL)
    worker.process.wait(30)


def stop_workers(workers: list[Worker], timeout: float = 30.0) -> dict[str, str]:
    """SIGTERM every worker still running (SIGKILL after ``timeout``); return their logs."""
    for worker in workers:
        if worker.alive():
            os.killpg(worker.process.pid, signal.SIGTERM)
    for worker in workers:
        try:
            worker.process.wait(timeout)
        except subprocess.TimeoutExpired:
            kill_worker(worker)
    return {worker.name: worker.read_log() for worker in workers}


def _logs(workers: list[Worker], tail: int = 3000) -> str:
    return "\n".join(f"--- {w.name} (alive={w.alive()}) ---\n{w.read_log()[-tail:]}"
                     for w in workers)


def wait_for_workflow(launchpad: Any, fw_id: int, workers: list[Worker],
                      timeout: float = 240.0) -> dict[str, str]:
    """Wait until the workflow of ``fw_id`` is COMPLETED; then stop the workers and return
    their logs. A FIZZLED Firework, dead workers or the timeout fail with the logs."""
    deadline = time.monotonic() + timeout
    while True:
        wf = launchpad.workflows.find_one({"nodes": fw_id}, {"state": 1, "nodes": 1})
        state = wf["state"] if wf else None
        if state == "COMPLETED":
            return stop_workers(workers)
        fizzled = list(launchpad.fireworks.find({"fw_id": {"$in": wf["nodes"]},
                                                 "state": "FIZZLED"}, {"fw_id": 1, "name": 1}))
        if fizzled or not any(w.alive() for w in workers) or time.monotonic() > deadline:
            why = (f"fizzled: {fizzled}" if fizzled else "all workers exited"
                   if not any(w.alive() for w in workers) else f"timeout {timeout} s")
            logs = _logs(workers)
            stop_workers(workers)
            raise AssertionError(f"workflow of fw {fw_id} did not complete ({why}; state "
                                 f"{state}); worker logs:\n{logs}")
        time.sleep(0.5)


def wait_for_hold(launchpad: Any, marker: Path, kind: str, index: int,
                  workers: list[Worker], timeout: float = 180.0) -> dict[str, Any]:
    """Wait until the (kind, index) job holds (its marker exists) and its Firework is
    RUNNING; return the Firework document."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        doc = launchpad.fireworks.find_one({"state": "RUNNING", "spec.otf_kind": kind,
                                            "spec.otf_index": index},
                                           {"fw_id": 1, "name": 1, "launches": 1})
        if doc is not None and marker.exists():
            return doc
        if not any(w.alive() for w in workers):
            break
        time.sleep(0.2)
    raise AssertionError(f"no RUNNING {kind} {index} held within {timeout} s; worker logs:\n"
                         f"{_logs(workers)}")


def rerun_lost(launchpad: Any, fw_id: int, expiration_s: int = 3,
               timeout: float = 60.0) -> list[int]:
    """FireWorks' lost-run detection until it marks ``fw_id`` lost and reruns it.

    A killed worker stops pinging; once its launch is ``expiration_s`` stale,
    ``detect_lostruns(rerun=True)`` marks the launch FIZZLED and sets the Firework READY.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _, lost_fw_ids, _ = launchpad.detect_lostruns(expiration_secs=expiration_s, rerun=True)
        if fw_id in lost_fw_ids:
            return lost_fw_ids
        time.sleep(1.0)
    raise AssertionError(f"detect_lostruns did not report fw {fw_id} as lost in {timeout} s")
