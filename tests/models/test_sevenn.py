"""SevenNet-0 adapter: same numbers as SevenNet's own calculator, consistent derivatives."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from ase.build import bulk, molecule

pytest.importorskip("sevenn")

from atomate2_otf.atoms import record_from_atoms  # noqa: E402
from atomate2_otf.models.base import load_model  # noqa: E402
from atomate2_otf.models.sevenn import SevenNetModel  # noqa: E402
from tests.models.conventions import (  # noqa: E402
    check_batch_equals_single,
    check_features_invariant,
    check_features_trainable,
    check_forces_are_gradient,
    check_mixed_batch_stress_nan,
    check_pickle_round_trip,
    check_stress_is_strain_derivative,
    check_training_graph_then_inference_unchanged,
    si_pair,
)


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


def single(model, record, **kwargs):
    return model.evaluate(model.collate([model.prepare(record)]), **kwargs)


def test_load_model_builds_sevennet(model):
    assert isinstance(model, SevenNetModel)
    assert model.family == "sevenn" and model.name == "sevenn-0"
    assert model.spec() == {"name": "sevenn-0", "checkpoint": "7net-0"}
    params = model.parameters()
    assert params and all(p.requires_grad for p in params)
    assert len(model.pretrained) == sum(p.numel() for p in params)
    assert not model.module.training
    # nothing in the network may behave differently between train and eval mode
    kinds = {type(m).__name__ for m in model.module.modules()}
    assert not {k for k in kinds if "Dropout" in k or "Norm" in k}, kinds


def test_build_frozen_parameters_stay_frozen(model):
    """SevenNet's build freezes the neighbour-count normalisers and the per-species energy
    shift/scale; the posterior must not sample them (unless asked)."""
    names = {n for n, _ in model.module.named_parameters()}
    frozen = set(model.frozen)
    assert {n for n in names if n.endswith("denominator")} <= frozen
    assert {"rescale_atomic_energy.shift", "rescale_atomic_energy.scale"} <= frozen
    sampled = {id(p) for p in model.parameters()}
    for n, p in model.module.named_parameters():
        assert (id(p) in sampled) == (n not in frozen), n
        assert p.requires_grad == (n not in frozen), n
    everything = load_model("sevenn-0", train_frozen=True)
    assert everything.frozen == ()
    assert len(everything.parameters()) == len(names)
    assert everything.spec()["train_frozen"] is True
    with pytest.raises(ValueError, match="not parameters"):
        SevenNetModel(pickle.loads(pickle.dumps(model.module)), frozen=["no.such"])


@pytest.mark.parametrize("make", [si64, lambda: molecule("CH3CH2OH")], ids=["si64", "ethanol"])
def test_matches_sevennet_calculator(model, calculator, make):
    atoms = make()
    periodic = atoms.pbc.all()
    out = single(model, record_from_atoms(atoms), compute_stress=periodic)
    atoms.calc = calculator
    assert out.energy.shape == (1,) and out.n_atoms.tolist() == [len(atoms)]
    assert out.energy.item() == pytest.approx(atoms.get_potential_energy(), abs=1e-4)
    np.testing.assert_allclose(out.forces.numpy(), atoms.get_forces(), atol=1e-4)
    if periodic:
        reference = atoms.get_stress(voigt=False)
        assert np.abs(reference).max() > 1e-3  # the comparison is not between zeros
        np.testing.assert_allclose(out.stress[0].numpy(), reference, atol=1e-5)


def test_forces_are_minus_energy_gradient(model):
    check_forces_are_gradient(model, si_pair())


def test_stress_sign_and_unit(model):
    # compressed cell: a large (negative, ASE sign) stress whose sign the check pins
    check_stress_is_strain_derivative(model, si_pair(a=5.30, rattle=0.02, seed=2))


def test_batch_equals_single(model):
    records = [record_from_atoms(molecule("CH3CH2OH")), record_from_atoms(si64()),
               record_from_atoms(bulk("Cu", "fcc", a=3.6) * (2, 2, 2))]
    check_batch_equals_single(model, records)


def test_mixed_batch_stress_nan_for_molecule_only(model):
    check_mixed_batch_stress_nan(model, record_from_atoms(bulk("Cu", "fcc", a=3.5) * (2, 2, 2)))


def test_training_graph_then_inference_unchanged(model):
    check_training_graph_then_inference_unchanged(model, atol=1e-6)


def test_features_invariant_and_trainable(model):
    record = record_from_atoms(si64())
    check_features_trainable(model, record)
    check_features_invariant(model, record, atol=1e-4)
    assert model.feature_dim == 128


def test_uncovered_element(model):
    assert 95 not in model.supported_numbers and 14 in model.supported_numbers
    assert {1, 6, 8, 29} <= model.supported_numbers
    with pytest.raises(ValueError, match=r"Am \(Z=95\)"):
        model.check_elements([14, 95])
    atoms = bulk("Si", "diamond", a=5.43)
    atoms.numbers[1] = 95
    with pytest.raises(ValueError, match=r"Am \(Z=95\)"):
        model.prepare(record_from_atoms(atoms))


def test_pickle_round_trip(model):
    check_pickle_round_trip(model, atol=1e-6)
