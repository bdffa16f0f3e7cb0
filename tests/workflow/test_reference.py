"""Reference Makers and the label reader: units, signs and failures."""

import numpy as np
import pytest
from ase.build import bulk, molecule
from ase.calculators.emt import EMT
from ase.units import GPa
from jobflow import run_locally
from pymatgen.io.ase import AseAtomsAdaptor

from atomate2_otf.atoms import record_from_atoms
from atomate2_otf.records import StructureRecord
from atomate2_otf.reference import get_reference_maker, label_from_output, reference_names
from atomate2_otf.reference.labels import (
    ase_stress_to_kbar,
    elapsed_from_output,
    kbar_to_ase_stress,
)

#: one atom in a periodic cell: a stress label is kept
ONE_ATOM_CELL = StructureRecord([29], [[0.0, 0.0, 0.0]], np.eye(3) * 3.0, True)


def _run(maker, structure):
    job = maker.make(structure)
    responses = run_locally(job, log=False, ensure_success=True)
    return responses[job.uuid][1].output


def test_kbar_conversion_matches_ase_convention():
    """A compressed cell: ASE stress is negative (eV/A^3), VASP/atomate2 kbar positive."""
    atoms = bulk("Cu", "fcc", a=3.4, cubic=True)  # EMT's equilibrium is ~3.59 A
    atoms.calc = EMT()
    stress = atoms.get_stress(voigt=False)
    assert np.all(np.diag(stress) < 0)
    kbar = ase_stress_to_kbar(stress)
    assert np.all(np.diag(kbar) > 0)
    np.testing.assert_allclose(kbar, -10.0 * stress / GPa, rtol=1e-14)
    np.testing.assert_allclose(kbar_to_ase_stress(kbar), stress, rtol=1e-14, atol=1e-16)
    # 1 kbar = 0.1 GPa = 6.2415e-4 eV/A^3
    np.testing.assert_allclose(kbar_to_ase_stress(-np.eye(3))[0, 0], 0.1 * GPa, rtol=1e-14)


def test_emt_maker_labels_equal_ase(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    atoms = bulk("Cu", "fcc", a=3.55, cubic=True) * (2, 1, 1)
    atoms.rattle(0.05, seed=1)
    output = _run(get_reference_maker("emt"), AseAtomsAdaptor.get_structure(atoms))
    label = label_from_output(output, record_from_atoms(atoms))
    atoms.calc = EMT()
    assert abs(label.energy - atoms.get_potential_energy()) < 1e-10
    np.testing.assert_allclose(label.forces, atoms.get_forces(), atol=1e-10)
    np.testing.assert_allclose(label.stress, atoms.get_stress(voigt=False), atol=1e-12)


def test_gfn2_maker_labels_a_molecule_without_stress(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    from tblite.ase import TBLite

    atoms = molecule("CH3CH2OH")
    output = _run(get_reference_maker("gfn2-xtb"), AseAtomsAdaptor.get_molecule(atoms))
    label = label_from_output(output, record_from_atoms(atoms))
    atoms.calc = TBLite(method="GFN2-xTB", verbosity=0)
    assert label.stress is None
    assert abs(label.energy - atoms.get_potential_energy()) < 1e-6
    np.testing.assert_allclose(label.forces, atoms.get_forces(), atol=1e-6)


def test_unknown_reference_lists_the_accepted_ones():
    with pytest.raises(ValueError, match="unknown reference 'vasp-ish'.*emt.*gfn1-xtb.*gfn2-xtb"):
        get_reference_maker("vasp-ish")
    assert set(reference_names()) == {"emt", "gfn1-xtb", "gfn2-xtb", "vasp", "qe", "pyscf"}


@pytest.mark.parametrize("bad, message", [
    ({"energy": float("nan"), "forces": [[0.0, 0.0, 0.0]]}, "non-finite"),
    ({"energy": 1.0, "forces": [[0.0, np.inf, 0.0]]}, "non-finite"),
    ({"energy": None, "forces": None}, "no energy and forces"),
    ({"energy": 1.0, "forces": [[0.0, 0.0, 0.0]] * 2}, r"shape \(2, 3\)"),
    ({"energy": 1.0, "forces": [[0.0, 0.0, 0.0]], "stress": np.zeros((3, 3))}, "stress_unit"),
])
def test_bad_reference_output_is_refused_with_the_call_named(bad, message):
    with pytest.raises(ValueError, match=message) as info:
        label_from_output(bad, ONE_ATOM_CELL, where="reference call 4 (MD step 120)")
    assert "reference call 4 (MD step 120)" in str(info.value)


def test_plain_dict_label_with_ase_stress():
    label = label_from_output({"energy": -1.0, "forces": [[0.1, 0.0, 0.0]],
                               "stress": np.eye(3).tolist(), "stress_unit": "eV/A^3"}, ONE_ATOM_CELL)
    np.testing.assert_array_equal(label.stress, np.eye(3))
    # the label is the structure it was asked for, labelled
    np.testing.assert_array_equal(label.positions, ONE_ATOM_CELL.positions)
    assert label.energy == -1.0


def test_a_molecule_label_keeps_no_stress():
    molecule = StructureRecord([1], [[0.0, 0.0, 0.0]])
    label = label_from_output({"energy": -1.0, "forces": [[0.1, 0.0, 0.0]],
                               "stress": np.eye(3).tolist(), "stress_unit": "eV/A^3"}, molecule)
    assert label.stress is None and label.is_labelled


@pytest.mark.parametrize("output, seconds", [
    ({"energy": 1.0, "forces": [[0.0, 0.0, 0.0]], "elapsed_s": 2.5}, 2.5),
    ({"energy": 1.0, "forces": [[0.0, 0.0, 0.0]]}, None),
    ({"output": {"energy": 1.0, "forces": [[0.0, 0.0, 0.0]], "elapsed_time": 4.0}}, 4.0),
    ({"output": {"energy": 1.0, "forces": [[0.0, 0.0, 0.0]]},
      "run_stats": {"overall": {"elapsed_time": 7.0}}}, 7.0),
])
def test_reference_time_from_each_kind_of_output(output, seconds):
    assert elapsed_from_output(output) == seconds
