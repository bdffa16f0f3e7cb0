"""CHGNet adapter: same numbers as CHGNet's own calculator, consistent derivatives."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase.build import bulk, molecule

from atomate2_otf.atoms import record_from_atoms
from atomate2_otf.bnn.data import StructureRecord
from atomate2_otf.models.base import load_model, registered_models
from atomate2_otf.models.chgnet import CHGNetModel
from tests.models.conventions import (check_batch_equals_single, check_features_trainable,
                                      check_forces_are_gradient, check_stress_is_strain_derivative)


@pytest.fixture(scope="module")
def model() -> CHGNetModel:
    return load_model("chgnet")


def si64(seed: int = 0):
    atoms = bulk("Si", "diamond", a=5.43, cubic=True) * (2, 2, 2)
    atoms.rattle(0.05, seed=seed)
    return atoms


def test_matches_chgnet_calculator(model):
    from chgnet.model.dynamics import CHGNetCalculator

    calc = CHGNetCalculator(model=model.module, use_device="cpu")
    atoms = si64()
    atoms.calc = calc
    out = model.evaluate(model.collate([model.prepare(record_from_atoms(atoms))]),
                         compute_stress=True)
    assert out.energy.item() == pytest.approx(atoms.get_potential_energy(), abs=1e-4)
    np.testing.assert_allclose(out.forces.numpy(), atoms.get_forces(), atol=1e-4)
    np.testing.assert_allclose(out.stress[0].numpy(), atoms.get_stress(voigt=False), atol=1e-5)


def test_molecule_in_box_matches_calculator_in_big_box(model):
    from chgnet.model.dynamics import CHGNetCalculator

    atoms = molecule("CH3CH2OH")
    out = model.evaluate(model.collate([model.prepare(record_from_atoms(atoms))]))
    boxed = atoms.copy()
    boxed.cell, boxed.pbc = [40, 40, 40], True
    boxed.center()
    boxed.calc = CHGNetCalculator(model=model.module, use_device="cpu")
    assert out.energy.item() == pytest.approx(boxed.get_potential_energy(), abs=1e-4)
    # float32 sums in another box placement differ at the 1e-4 level
    np.testing.assert_allclose(out.forces.numpy(), boxed.get_forces(), atol=3e-4)


def test_forces_are_minus_energy_gradient(model):
    atoms = bulk("Si", "diamond", a=5.43) * (2, 1, 1)
    atoms.rattle(0.05, seed=1)
    check_forces_are_gradient(model, record_from_atoms(atoms))


def test_stress_sign_and_unit(model):
    atoms = bulk("Si", "diamond", a=5.30) * (2, 1, 1)  # compressed: clear stress
    atoms.rattle(0.02, seed=2)
    check_stress_is_strain_derivative(model, record_from_atoms(atoms))


def test_batch_equals_single(model):
    records = [record_from_atoms(molecule("CH3CH2OH")), record_from_atoms(si64()),
               record_from_atoms(bulk("Cu", "fcc", a=3.6) * (2, 2, 2))]
    check_batch_equals_single(model, records)


def test_features_are_trainable(model):
    check_features_trainable(model, record_from_atoms(molecule("CH3CH2OH")))


def test_registry(model):
    assert isinstance(model, CHGNetModel)
    assert {"chgnet", "sevenn-0"} <= set(registered_models())
    assert model.spec() == {"name": "chgnet", "version": "0.3.0"}
    with pytest.raises(ValueError, match=r"unknown model name 'nope'.*chgnet.*sevenn-0"):
        load_model("nope")


def test_uncovered_element(model):
    record = StructureRecord(numbers=[1, 95], positions=[[0, 0, 0], [2, 0, 0]])
    with pytest.raises(ValueError, match=r"Am \(Z=95\)"):
        model.check_elements(record.numbers)
    model.check_elements([1, 6, 8, 94])
