"""Shared helpers of the workflow tests: the toy run, a reference that fails on purpose,
and a run's jobs found by name."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from ase.build import bulk
from jobflow import Maker, job

from atomate2_otf.flows import OTFMDMaker
from atomate2_otf.reference.makers import EMTStaticMaker


def copper():
    """The rattled 4-atom cubic Cu cell of the toy runs."""
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True)
    atoms.rattle(0.02, seed=3)
    return atoms


def toy_maker(**kwargs):
    """A 30-step toy-model run with EMT labels and a forced trigger every 7 model steps
    (``kwargs`` override any setting)."""
    settings = {"model": "toy", "reference_maker": EMTStaticMaker(), "n_steps": 30,
                "timestep_fs": 1.0, "temperature": 300.0, "n_chains": 2, "update_steps": 3,
                "initial_update_steps": 3, "n_workers": 1, "force_trigger_every": 7,
                "trajectory_interval": 5, "threshold": 0.05}
    return OTFMDMaker(**{**settings, **kwargs})


def forced_reference_calls(n_steps: int, every: int) -> int:
    """Reference calls of a run with ``force_trigger_every=every``: call 0 labels the start;
    each segment counts the model-evaluated steps (the step redone from the previous label
    is not one of them) and stops at the ``every``-th, so calls land on steps every,
    2 * every, ... up to ``n_steps``."""
    return 1 + n_steps // every


class _Counter:
    def __init__(self) -> None:
        self.n = 0

    def bump(self) -> int:
        self.n += 1
        return self.n


#: calls of :class:`BrokenReferenceMaker` so far (set ``.n = 0`` before a run)
broken_reference_calls = _Counter()


@dataclass
class BrokenReferenceMaker(Maker):
    """Labels the first structure(s) with EMT, then fails the way ``mode`` says."""

    name: str = "broken reference"
    mode: str = "nan"
    calls_before_failure: int = 1

    @job
    def make(self, structure):
        from ase.calculators.emt import EMT
        from pymatgen.io.ase import AseAtomsAdaptor

        atoms = AseAtomsAdaptor.get_atoms(structure)
        atoms.calc = EMT()
        label = {"energy": atoms.get_potential_energy(), "forces": atoms.get_forces().tolist(),
                 "stress": atoms.get_stress(voigt=False).tolist(), "stress_unit": "eV/A^3"}
        if broken_reference_calls.bump() > self.calls_before_failure:
            if self.mode == "raise":
                raise RuntimeError("SCF did not converge (simulated)")
            label["energy"] = math.nan
        return label


def otf_job(flow: Any, kind: str, index: int = 0) -> Any:
    """The job of ``kind`` ("reference", "prepare", "segment", "update") and cycle ``index``
    of an on-the-fly flow, found by the metadata every job of a run carries (``otf_kind``,
    ``otf_index``), not by its position in ``flow.jobs``."""
    found = [one for one in flow.jobs
             if (getattr(one, "metadata", None) or {}).get("otf_kind") == kind
             and one.metadata.get("otf_index") == index]
    if len(found) != 1:
        raise LookupError(f"{len(found)} jobs of kind {kind!r} and index {index} in the flow "
                          f"(expected one): {[one.name for one in flow.jobs]}")
    return found[0]


def run_id_of(flow: Any) -> str:
    """The run id of an on-the-fly flow, from its prepare job's metadata."""
    return otf_job(flow, "prepare").metadata["otf_run_id"]
