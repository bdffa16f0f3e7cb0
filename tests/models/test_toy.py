"""The toy model of the fast tests: its stress is the strain derivative of its energy.

The workflow tests label periodic Cu with EMT, whose stress reaches the likelihood only if
the model predicts a stress too; these checks make sure the toy's stress is the one ASE
would compute from the toy's own energy, so those tests exercise stress consistently.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import pytest
from ase.build import bulk
from ase.calculators.calculator import Calculator, all_changes
from ase.calculators.fd import calculate_numerical_stress

from atomate2_otf.atoms import record_from_atoms
from atomate2_otf.records import StructureRecord
from tests.models.conventions import (
    check_batch_equals_single,
    check_forces_are_gradient,
    check_mixed_batch_stress_nan,
    check_stress_is_strain_derivative,
)
from tests.toy_model import ToyModel


def copper(a: float = 3.61, seed: int = 1):
    atoms = bulk("Cu", "fcc", a=a, cubic=True)
    atoms.rattle(0.05, seed=seed)
    return atoms


class ToyEnergy(Calculator):
    """The toy model's energy alone, for ASE's finite-difference stress."""

    implemented_properties: ClassVar[list[str]] = ["energy"]

    def __init__(self, model: ToyModel) -> None:
        super().__init__()
        self.model = model

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        record = record_from_atoms(self.atoms)
        out = self.model.evaluate(self.model.collate([self.model.prepare(record)]))
        self.results = {"energy": float(out.energy[0])}


def predict(model: ToyModel, record: StructureRecord, **kwargs):
    return model.evaluate(model.collate([model.prepare(record)]), **kwargs)


@pytest.mark.parametrize("a", [3.45, 3.61, 3.80])
def test_stress_is_ases_numerical_stress_of_the_energy(a):
    """All nine components, against ASE's own finite differences (its strain convention and
    sign: positive = tensile); float32 energies allow about 1e-5 eV/A^3 at this step."""
    model = ToyModel()
    atoms = copper(a)
    stress = predict(model, record_from_atoms(atoms), compute_stress=True).stress
    assert stress.shape == (1, 3, 3)
    stress = stress[0].double().numpy()
    atoms.calc = ToyEnergy(model)
    numeric = calculate_numerical_stress(atoms, eps=3e-3, voigt=False, force_consistent=False)
    assert np.abs(stress[~np.eye(3, dtype=bool)]).max() > 3e-4  # shear is checked too
    np.testing.assert_allclose(stress, numeric, rtol=0, atol=2e-5)
    np.testing.assert_allclose(stress, stress.T, rtol=0, atol=1e-6)


def test_compressed_cell_has_negative_stretched_cell_positive_stress():
    model = ToyModel()
    compressed = predict(model, record_from_atoms(copper(3.45)), compute_stress=True)
    stretched = predict(model, record_from_atoms(copper(3.80)), compute_stress=True)
    assert np.all(np.diag(compressed.stress[0].numpy()) < -0.01)
    assert np.all(np.diag(stretched.stress[0].numpy()) > 0.01)


def test_energy_depends_on_the_cell_of_a_periodic_structure_only():
    model = ToyModel()
    record = record_from_atoms(copper())
    bigger = StructureRecord(record.numbers, record.positions, 1.1 * record.cell, record.pbc)
    assert abs(predict(model, bigger).energy.item() - predict(model, record).energy.item()) \
        > 1e-3
    # same positions: same forces (the cell term does not depend on them)
    np.testing.assert_array_equal(predict(model, bigger).forces.numpy(),
                                  predict(model, record).forces.numpy())
    cluster = StructureRecord(record.numbers, record.positions)
    other_cell = StructureRecord(record.numbers, record.positions, 2 * record.cell)
    assert predict(model, cluster).energy.item() == predict(model, other_cell).energy.item()


def test_adapter_conventions():
    model = ToyModel()
    crystal = record_from_atoms(copper())
    check_forces_are_gradient(model, crystal, atol=1e-3)
    check_stress_is_strain_derivative(model, crystal, atol=2e-5)
    check_stress_is_strain_derivative(model, record_from_atoms(copper(3.45, seed=2)),
                                      atol=2e-5)
    check_mixed_batch_stress_nan(model, crystal)
    check_batch_equals_single(model, [crystal, record_from_atoms(copper(3.7, seed=4))])
