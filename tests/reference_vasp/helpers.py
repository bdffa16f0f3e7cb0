"""Shared helpers of the VASP-path tests: Cu cells, EMT ground truth, running a flow."""

from __future__ import annotations

import numpy as np
from ase.build import bulk


def copper(a: float = 3.61, rattle: float = 0.02, seed: int = 3):
    """The 4-atom cubic Cu cell of the workflow tests, rattled."""
    atoms = bulk("Cu", "fcc", a=a, cubic=True)
    atoms.rattle(rattle, seed=seed)
    return atoms


def emt_values(atoms) -> tuple[float, np.ndarray, np.ndarray]:
    """Energy, forces and stress (3x3, ASE's sign) of ASE's EMT: what labels must equal."""
    from ase.calculators.emt import EMT

    atoms = atoms.copy()
    atoms.calc = EMT()
    return (float(atoms.get_potential_energy()), np.asarray(atoms.get_forces()),
            np.asarray(atoms.get_stress(voigt=False)))


def record_atoms(record):
    """ASE atoms of a posterior's StructureRecord."""
    from ase import Atoms

    return Atoms(numbers=record.numbers, positions=record.positions, cell=record.cell,
                 pbc=record.pbc)


def final_labels(store, doc):
    """The labelled records in a finished run's final checkpoint (all labels of the run)."""
    from atomate2_otf.bnn.posterior import Posterior
    from atomate2_otf.store import load_checkpoint

    return Posterior.from_bytes(load_checkpoint(store, doc.final_checkpoint)).data


def run_static(maker, atoms, root):
    """One reference job under run_locally in its own folder: (task document, job folder)."""
    from pathlib import Path

    from jobflow import run_locally
    from pymatgen.io.ase import AseAtomsAdaptor

    job = maker.make(AseAtomsAdaptor.get_structure(atoms))
    responses = run_locally(job, root_dir=root, create_folders=True, log=False,
                            ensure_success=True, raise_immediately=True)
    doc = responses[job.uuid][1].output
    folder = Path(str(doc.dir_name).split(":", 1)[-1])
    return doc, folder


def run_otf(maker, structure, store, root_dir):
    """Run an on-the-fly flow under run_locally, each job in its own folder; the OTFRunDoc."""
    from jobflow import run_locally

    from atomate2_otf.results import read_run_doc

    flow = maker.make(structure)
    run_locally(flow, store=store, root_dir=root_dir, create_folders=True, log=False,
                ensure_success=True, raise_immediately=True)
    doc = read_run_doc(store, flow.output.uuid)
    assert doc is not None and doc.completed, "the on-the-fly run did not finish"
    return doc
