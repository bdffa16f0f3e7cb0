"""The replace-cycle run of the slow test and benchmarks/replace_cycles.py: the toy model,
an EMT reference and a forced trigger on every model step, so that each MD step is one
cycle of [reference, update, segment] and jobflow and the store are what is measured."""

from __future__ import annotations

from typing import Any


def cycles_flow(cycles: int, trajectory_interval: int = 1000) -> Any:
    """The flow of ``cycles`` replace cycles ("toy" must be registered)."""
    from ase.build import bulk

    from atomate2_otf.flows import OTFMDMaker
    from atomate2_otf.reference.makers import EMTStaticMaker

    atoms = bulk("Cu", "fcc", a=3.61, cubic=True)
    atoms.rattle(0.02, seed=1)
    # every=1: each segment redoes the labelled step with the label, then triggers on the
    # first model-evaluated step: one reference call per MD step
    maker = OTFMDMaker(model="toy", reference_maker=EMTStaticMaker(), n_steps=cycles,
                       timestep_fs=1.0, n_chains=2, update_steps=1, initial_update_steps=1,
                       n_workers=1, force_trigger_every=1,
                       trajectory_interval=trajectory_interval)
    return maker.make(atoms)


def run_with(manager: str, flow: Any, store: Any) -> None:
    """Run ``flow`` with jobflow's run_locally ("jobflow") or run_flow_locally ("flat")."""
    if manager == "jobflow":
        from jobflow import run_locally

        run_locally(flow, store=store, log=False, ensure_success=True)
    else:
        from atomate2_otf.local import run_flow_locally

        run_flow_locally(flow, store)
