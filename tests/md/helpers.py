"""Small deterministic systems and calculators for the MD tests (EMT on tiny Cu cells)."""

from __future__ import annotations

import numpy as np
from ase import Atoms
from ase.build import bulk
from ase.calculators.calculator import Calculator, all_changes
from ase.calculators.emt import EMT

from atomate2_otf.atoms import record_from_atoms
from atomate2_otf.md.segment import run_segment
from atomate2_otf.records import StructureRecord


def cu_cell(repeat: int = 2, rattle: float = 0.05) -> Atoms:
    """Cubic fcc Cu, ``repeat``^3 conventional cells (32 atoms for 2), slightly rattled."""
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat((repeat,) * 3)
    atoms.rattle(rattle, seed=1)
    return atoms


def cu_cluster() -> Atoms:
    """A 4-atom Cu molecule (no cell)."""
    return Atoms("Cu4", positions=[[0, 0, 0], [2.5, 0, 0], [0, 2.5, 0], [0, 0, 2.5]])


class ScaledEMT(Calculator):
    """EMT with forces (and stress) times ``scale`` and energy plus ``offset``: a stand-in
    for a reference that disagrees with the model in a known way."""

    implemented_properties = ["energy", "free_energy", "forces", "stress"]

    def __init__(self, scale: float = 2.0, offset: float = 1.0) -> None:
        super().__init__()
        self.scale, self.offset = scale, offset
        self.emt = EMT()

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        self.emt.calculate(self.atoms, ["energy", "forces", "stress"], all_changes)
        res = self.emt.results
        self.results = {"energy": res["energy"] + self.offset,
                        "free_energy": res["energy"] + self.offset,
                        "forces": self.scale * res["forces"],
                        "stress": self.scale * res["stress"]}


def every_nth(n: int):
    """A trigger that fires on every n-th model prediction it is shown."""
    calls = {"n": 0}

    def trigger(results: dict) -> bool:
        calls["n"] += 1
        return calls["n"] % n == 0

    trigger.calls = calls
    return trigger


def label_with(atoms: Atoms, calculator: Calculator) -> StructureRecord:
    """``atoms`` labelled by ``calculator``, as the workflow labels a pending structure."""
    atoms = atoms.copy()
    atoms.calc = calculator
    return record_from_atoms(atoms, with_labels=True)


def split_run(state, settings, trigger, labeller, roundtrip=None, max_segments=100):
    """Run to the end, labelling every pending structure with ``labeller``.

    ``roundtrip`` (optional) is applied to the state between segments, e.g. json.
    Returns the final SegmentResult and the list of all results.
    """
    label, results = None, []
    for _ in range(max_segments):
        result = run_segment(state, EMT(), settings, trigger=trigger, pending_label=label)
        results.append(result)
        if not result.triggered:
            return result, results
        label = label_with(result.pending, labeller)
        state = result.state if roundtrip is None else roundtrip(result.state)
    raise AssertionError("run did not finish")


def velocities(state) -> np.ndarray:
    return state.momenta / state.masses[:, None]
