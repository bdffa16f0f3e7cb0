"""SevenNet-0 adapter: same numbers as SevenNet's own calculator, consistent derivatives."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from ase.build import bulk, molecule

pytest.importorskip("sevenn")

from atomate2_otf.atoms import record_from_atoms  # noqa: E402
from atomate2_otf.bnn.data import StructureRecord  # noqa: E402
from atomate2_otf.models.base import load_model  # noqa: E402
from atomate2_otf.models.sevenn import SevenNetModel  # noqa: E402
from tests.models.conventions import (  # noqa: E402
    check_batch_equals_single, check_features_trainable, check_forces_are_gradient,
    check_stress_is_strain_derivative, si_pair)


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
    cu = bulk("Cu", "fcc", a=3.5) * (2, 2, 2)
    records = [record_from_atoms(molecule("CH3CH2OH")), record_from_atoms(cu)]
    out = model.evaluate(model.collate([model.prepare(r) for r in records]),
                         compute_stress=True, create_graph=True)
    assert out.stress.shape == (2, 3, 3)
    assert torch.isnan(out.stress[0]).all()
    alone = single(model, records[1], compute_stress=True)
    np.testing.assert_allclose(out.stress[1].detach().numpy(), alone.stress[0].numpy(),
                               atol=1e-6)
    # the molecule's NaN must not leak into gradients of the periodic rows
    grads = torch.autograd.grad(out.stress[1].sum(), model.parameters(), allow_unused=True)
    grads = [g for g in grads if g is not None]
    assert all(torch.isfinite(g).all() for g in grads)
    assert sum(float(g.abs().sum()) for g in grads) > 0


def test_training_graph_then_inference_unchanged(model):
    record = record_from_atoms(molecule("CH3CH2OH"))
    batch = model.collate([model.prepare(record)])
    before = model.evaluate(batch)
    out = model.evaluate(batch, create_graph=True)
    assert out.forces.requires_grad
    for p in model.parameters():
        p.grad = None
    out.forces.pow(2).sum().backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    try:
        assert grads and sum(float(g.abs().sum()) for g in grads) > 0
    finally:
        for p in model.parameters():
            p.grad = None
    after = model.evaluate(batch)
    assert not model.module.training
    assert not after.forces.requires_grad
    np.testing.assert_allclose(after.forces.numpy(), before.forces.numpy(), atol=1e-6)
    assert after.energy.item() == pytest.approx(before.energy.item(), abs=1e-6)


def test_features_invariant_and_trainable(model):
    record = record_from_atoms(si64())
    check_features_trainable(model, record)
    # also after an inference call: the features' graph must not have been freed
    out = single(model, record)
    assert out.features.shape == (64, model.feature_dim) and model.feature_dim == 128
    assert torch.isfinite(out.features).all()
    grads = torch.autograd.grad(out.features.sum(), model.parameters(), allow_unused=True)
    assert sum(float(g.abs().sum()) for g in grads if g is not None) > 0
    # invariant: a rigid rotation leaves the features unchanged
    rotation = torch.linalg.qr(torch.randn(3, 3, generator=torch.Generator().manual_seed(0),
                                           dtype=torch.float64))[0].numpy()
    rotated = StructureRecord(record.numbers, record.positions @ rotation.T,
                              record.cell @ rotation.T, record.pbc)
    np.testing.assert_allclose(single(model, rotated).features.detach().numpy(),
                               out.features.detach().numpy(), atol=1e-4)


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
    """ChainPool sends the model to spawned workers by pickling it."""
    record = record_from_atoms(molecule("CH3CH2OH"))
    clone = pickle.loads(pickle.dumps(model))
    np.testing.assert_allclose(single(clone, record).forces.numpy(),
                               single(model, record).forces.numpy(), atol=1e-6)
    assert single(clone, record).features.shape == (9, clone.feature_dim)
