"""SevenNet-0 adapter: same numbers as SevenNet's own calculator, consistent derivatives."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase.build import bulk, molecule

pytest.importorskip("sevenn")

from atomate2_otf.atoms import record_from_atoms  # noqa: E402
from atomate2_otf.models.base import load_model  # noqa: E402
from atomate2_otf.models.sevenn import SevenNetModel  # noqa: E402
from tests.models.conventions import (  # noqa: E402
    check_batch_equals_single, check_features_trainable, check_forces_are_gradient,
    check_stress_is_strain_derivative)


@pytest.fixture(scope="module")
def model() -> SevenNetModel:
    return load_model("sevenn-0")


@pytest.fixture(scope="module")
def calculator():
    from sevenn.calculator import SevenNetCalculator

    return SevenNetCalculator("7net-0", device="cpu")


def si64():
    atoms = bulk("Si", "diamond", a=5.43, cubic=True) * (2, 2, 2)
    atoms.rattle(0.05, seed=0)
    return atoms


@pytest.mark.parametrize("make", [si64, lambda: molecule("CH3CH2OH")])
def test_matches_sevennet_calculator(model, calculator, make):
    atoms = make()
    periodic = atoms.pbc.all()
    out = model.evaluate(model.collate([model.prepare(record_from_atoms(atoms))]),
                         compute_stress=periodic)
    atoms.calc = calculator
    assert out.energy.item() == pytest.approx(atoms.get_potential_energy(), abs=1e-4)
    np.testing.assert_allclose(out.forces.numpy(), atoms.get_forces(), atol=1e-4)
    if periodic:
        np.testing.assert_allclose(out.stress[0].numpy(), atoms.get_stress(voigt=False),
                                   atol=1e-5)


def test_forces_are_minus_energy_gradient(model):
    atoms = bulk("Si", "diamond", a=5.43) * (2, 1, 1)
    atoms.rattle(0.05, seed=1)
    check_forces_are_gradient(model, record_from_atoms(atoms))


def test_stress_sign_and_unit(model):
    atoms = bulk("Si", "diamond", a=5.30) * (2, 1, 1)
    atoms.rattle(0.02, seed=2)
    check_stress_is_strain_derivative(model, record_from_atoms(atoms))


def test_batch_equals_single(model):
    records = [record_from_atoms(molecule("CH3CH2OH")), record_from_atoms(si64()),
               record_from_atoms(bulk("Cu", "fcc", a=3.6) * (2, 2, 2))]
    check_batch_equals_single(model, records)


def test_training_graph_then_inference_unchanged(model):
    record = record_from_atoms(molecule("CH3CH2OH"))
    batch = model.collate([model.prepare(record)])
    before = model.evaluate(batch)
    check_features_trainable(model, record)
    out = model.evaluate(batch, create_graph=True)
    grads = torch.autograd.grad(out.forces.pow(2).sum(), model.parameters(), allow_unused=True)
    assert sum(float(g.abs().sum()) for g in grads if g is not None) > 0
    after = model.evaluate(batch)
    assert not model.module.training
    np.testing.assert_allclose(after.forces.numpy(), before.forces.numpy(), atol=1e-6)


def test_uncovered_element(model):
    assert 95 not in model.supported_numbers and 14 in model.supported_numbers
    with pytest.raises(ValueError, match=r"Am \(Z=95\)"):
        model.check_elements([14, 95])
    assert model.spec() == {"name": "sevenn-0", "checkpoint": "7net-0"}
