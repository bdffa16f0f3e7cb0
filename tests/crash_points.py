"""Kill an on-the-fly run at a chosen point, for the resume tests.

``python -m tests.crash_points STORE_DIR`` runs a short toy-model run (EMT reference) with
:func:`atomate2_otf.local.run_flow_locally`. Environment variables steer it:

- ``OTF_CALL_LOG``: a file that gets one line per finished calculation, and
  ``OTF_CALL_LOG.starts`` one line per reference job that started calculating (so a test
  counts repeated reference calculations across processes, killed ones included);
- ``OTF_AUDIT``: the run's ``audit_fraction`` (default 0: no audit);
- ``OTF_CRASH_PHASE`` (``segment``, ``reference`` or ``update``) and ``OTF_CRASH_INDEX``
  (k): when the run is inside that phase of cycle k it writes ``OTF_CRASH_FLAG`` and
  sleeps, so that the test can ``kill -9`` it there. Resumed processes have no crash phase.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from ase.calculators.emt import EMT

from atomate2_otf.reference.makers import EMTStaticMaker

HANG_S = 600.0


def _crash_here(phase: str, index: int) -> None:
    if os.environ.get("OTF_CRASH_PHASE") != phase:
        return
    if int(os.environ.get("OTF_CRASH_INDEX", "-1")) != int(index):
        return
    Path(os.environ["OTF_CRASH_FLAG"]).write_text(f"{phase} {index} pid {os.getpid()}\n")
    time.sleep(HANG_S)  # the test kills this process here


class LoggedEMT(EMT):
    """EMT that logs every calculation it executes (and may hang for the kill test)."""

    def calculate(self, *args, **kwargs):
        log = os.environ.get("OTF_CALL_LOG")
        if log:  # reference job k is the k-th job folder that calculates (0: the start)
            path = Path(log)
            lines = path.read_text().splitlines() if path.exists() else []
            folders = list(dict.fromkeys(line.split()[0] for line in lines))
            if os.getcwd() not in folders:
                with open(f"{log}.starts", "a") as handle:  # started, maybe never finished
                    handle.write(f"{os.getcwd()}\n")
                _crash_here("reference", len(folders))
        super().calculate(*args, **kwargs)
        if log:
            with open(log, "a") as handle:
                handle.write(f"{os.getcwd()} {self.results['energy']:.12f}\n")


@dataclass
class LoggedEMTMaker(EMTStaticMaker):
    """The EMT reference Maker with :class:`LoggedEMT` (importable by resumed processes)."""

    name: str = "logged EMT static"

    def _get_calculator(self):
        return LoggedEMT(**self.calculator_kwargs)


def toy_run_maker(n_steps: int = 40, seed: int = 11, audit_fraction: float | None = None):
    from atomate2_otf.flows import OTFMDMaker

    if audit_fraction is None:
        audit_fraction = float(os.environ.get("OTF_AUDIT", "0"))
    return OTFMDMaker(model="tests.toy_model:ToyModel", reference_maker=LoggedEMTMaker(),
                      n_steps=n_steps, timestep_fs=1.0, temperature=300.0, n_chains=2,
                      update_steps=20, initial_update_steps=20, n_workers=1,
                      force_trigger_every=6, trajectory_interval=5, threshold=0.05, seed=seed,
                      audit_fraction=audit_fraction)


def copper():
    from ase.build import bulk

    atoms = bulk("Cu", "fcc", a=3.61, cubic=True)
    atoms.rattle(0.02, seed=3)
    return atoms


def install_crash_hooks() -> None:
    """Hang inside MD segment k (after 3 steps) or inside update k, as the env asks."""
    import atomate2_otf.jobs as jobs
    import atomate2_otf.md.segment as segment

    original_update = jobs._update
    original_segment = segment.run_segment

    def update(posterior, config, n_steps, label):
        if label.startswith("update "):
            _crash_here("update", int(label.split()[1]))
        return original_update(posterior, config, n_steps, label)

    def run_segment(state, calculator, settings, **kwargs):
        index = run_segment.calls
        run_segment.calls += 1
        inner = kwargs.get("callback")
        steps = {"n": 0}

        def callback(step, results):
            steps["n"] += 1
            if steps["n"] == 3:
                _crash_here("segment", index)
            if inner is not None:
                inner(step, results)

        kwargs["callback"] = callback
        return original_segment(state, calculator, settings, **kwargs)

    run_segment.calls = 0
    jobs._update = update
    segment.run_segment = run_segment


def open_store(store_dir: str | Path):
    """The store the CLI opens for a folder (with its ``runs`` journal)."""
    from atomate2_otf.store import open_job_store

    store = open_job_store(store_dir)
    store.connect()
    return store


def main(store_dir: str) -> int:
    from atomate2_otf.local import run_flow_locally

    install_crash_hooks()
    store = open_store(store_dir)
    flow = toy_run_maker().make(copper())
    run_flow_locally(flow, store, root_dir=Path(store_dir) / "jobs")
    return 0


if __name__ == "__main__":
    # run the importable module's main, so that the Makers serialise as tests.crash_points.*
    # (classes of __main__ could not be decoded by the resuming process)
    from tests.crash_points import main as importable_main

    sys.exit(importable_main(sys.argv[1]))
