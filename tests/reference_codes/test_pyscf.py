"""PySCF reference (reference.pyscf) on H2O with PBE/STO-3G: labels equal PySCF called
directly (units: Hartree -> eV, Hartree/Bohr -> eV/A), forces equal the energy's finite
difference, periodic cells and stress are refused, SCF non-convergence is retried once;
a short on-the-fly run with the toy model."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from ase.build import bulk, molecule
from jobflow import run_locally
from pymatgen.io.ase import AseAtomsAdaptor

from atomate2_otf.atoms import record_from_atoms
from atomate2_otf.flows import OTFMDMaker
from atomate2_otf.reference import get_reference_maker, label_from_output
from atomate2_otf.reference.pyscf import PySCFCalculator, PySCFStaticMaker
from atomate2_otf.reference.retry import ReferenceCalculationError
from atomate2_otf.results import read_run_doc
from tests.reference_codes.conftest import energy_forces, needs_pyscf

CHEAP = {"xc": "PBE", "basis": "sto-3g"}


def water(seed: int = 2):
    atoms = molecule("H2O")
    atoms.rattle(0.05, seed=seed)
    return atoms


def as_molecule(atoms):
    return AseAtomsAdaptor.get_molecule(atoms)


def test_refuses_periodic_cells_and_stress():
    with pytest.raises(ValueError, match=r"periodic Structure \(Si2\).*molecules only.*"
                                         r"Bohr\^2.*use 'qe'"):
        PySCFStaticMaker().run_ase(AseAtomsAdaptor.get_structure(bulk("Si")))
    boxed = water()
    boxed.cell = [8.0, 8.0, 8.0]
    boxed.pbc = True
    boxed.calc = PySCFCalculator(**CHEAP)
    with pytest.raises(ValueError, match=r"periodic cell \(pbc=\[True, True, True\]"):
        boxed.get_potential_energy()
    atoms = water()
    atoms.calc = PySCFCalculator(**CHEAP)
    with pytest.raises(Exception, match="stress"):  # not implemented: never a wrong one
        atoms.get_stress()
    with pytest.raises(ValueError, match=r"unknown PySCF setting\(s\) \['basis_set'\]"):
        PySCFStaticMaker(calculator_kwargs={"basis_set": "sto-3g"})
    assert isinstance(get_reference_maker("pyscf"), PySCFStaticMaker)


@needs_pyscf
def test_labels_equal_pyscf_called_directly(tmp_path, monkeypatch):
    from ase.units import Bohr, Hartree
    from pyscf import dft, gto

    monkeypatch.chdir(tmp_path)
    atoms = water()
    job = PySCFStaticMaker(calculator_kwargs=dict(CHEAP)).make(as_molecule(atoms))
    responses = run_locally(job, log=False, ensure_success=True)
    label = label_from_output(responses[job.uuid][1].output, record_from_atoms(atoms))
    mol = gto.M(atom=list(zip(atoms.get_chemical_symbols(), atoms.positions.tolist())),
                unit="Angstrom", basis="sto-3g", verbose=0)
    mf = dft.RKS(mol, xc="PBE")
    mf.conv_tol = 1e-9
    energy = mf.kernel() * Hartree
    forces = -mf.nuc_grad_method().kernel() * Hartree / Bohr
    assert label.stress is None
    assert abs(label.energy - energy) < 1e-6
    np.testing.assert_allclose(label.forces, forces, atol=1e-5)
    assert np.abs(label.forces).max() > 0.1


@needs_pyscf
def test_forces_equal_the_finite_difference_of_the_energy(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    maker = PySCFStaticMaker(calculator_kwargs=dict(CHEAP))
    atoms = water()
    _, forces = energy_forces(maker.run_ase(as_molecule(atoms)))
    h = 1e-3
    energies = []
    for sign in (1, -1):
        displaced = atoms.copy()
        displaced.positions[0, 2] += sign * h
        energies.append(energy_forces(maker.run_ase(as_molecule(displaced)))[0])
    # the DFT grid moves with the atoms (no grid response in the gradient): ~1e-4 eV/A
    assert abs(-(energies[0] - energies[1]) / (2 * h) - forces[0, 2]) < 1e-3


@needs_pyscf
def test_scf_non_convergence_is_retried_once_then_fails_naming_the_code(
        tmp_path, monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)
    attempts = []
    original = PySCFCalculator.calculate

    def counted(self, *args, **kwargs):
        attempts.append(dict(self.parameters))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(PySCFCalculator, "calculate", counted)
    atoms = water()
    maker = PySCFStaticMaker(calculator_kwargs={**CHEAP, "max_cycle": 2})
    assert maker.safer_settings() == {"max_cycle": 200, "level_shift": 0.25, "damp": 0.5}
    with caplog.at_level(logging.WARNING):
        energy, forces = energy_forces(maker.run_ase(as_molecule(atoms)))
    assert [a["max_cycle"] for a in attempts] == [2, 200]
    assert any("did not converge in 2 cycles" in r.getMessage() for r in caplog.records)
    reference_energy, reference_forces = energy_forces(
        PySCFStaticMaker(calculator_kwargs=dict(CHEAP)).run_ase(as_molecule(atoms)))
    assert abs(energy - reference_energy) < 1e-6  # level shift/damping: same solution
    np.testing.assert_allclose(forces, reference_forces, atol=1e-4)
    attempts.clear()
    maker = PySCFStaticMaker(calculator_kwargs={**CHEAP, "max_cycle": 2},
                             retry_settings={"max_cycle": 2})
    with pytest.raises(ReferenceCalculationError,
                       match=r"PySCF failed on H2O: SCF not converged: PySCF PBE/sto-3g SCF "
                             r"did not converge in 2 cycles.*retry.*failed too"):
        maker.run_ase(as_molecule(atoms))
    assert len(attempts) == 2


@needs_pyscf
def test_short_otf_run_with_pyscf(store):
    """Three reference calls (initial + 2 triggers) on H2O with the toy model."""
    maker = OTFMDMaker(model="toy", reference_maker=PySCFStaticMaker(
        calculator_kwargs=dict(CHEAP)), n_steps=10, timestep_fs=0.5, temperature=300.0,
        n_chains=2, update_steps=2, initial_update_steps=2, n_workers=1,
        force_trigger_every=4, threshold=0.05)
    flow = maker.make(water())
    run_locally(flow, store=store, log=False, ensure_success=True, raise_immediately=True)
    doc = read_run_doc(store, flow.output.uuid)
    assert doc is not None and doc.completed and doc.n_md_steps == 10
    assert doc.n_reference_calls == 3 and doc.reference.startswith("PySCF")
    assert all(-2050 < c.reference_energy < -2040 for c in doc.calls)  # PBE/STO-3G H2O
