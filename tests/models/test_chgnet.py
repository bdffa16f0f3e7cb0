"""CHGNet adapter: same numbers as CHGNet's own calculator, consistent derivatives."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase.build import bulk, molecule

from atomate2_otf.atoms import record_from_atoms
from atomate2_otf.models.base import load_model, registered_models
from atomate2_otf.models.chgnet import CHGNetModel, molecule_box
from atomate2_otf.records import StructureRecord
from tests.models.conventions import (
    check_features_trainable,
    check_forces_are_gradient,
    check_pickle_round_trip,
    check_stress_is_strain_derivative,
    si_pair,
)

pytest.importorskip("chgnet")


@pytest.fixture(scope="module")
def model() -> CHGNetModel:
    # CHGNet's small matrices gain nothing from intra-op threads, and on a shared
    # two-core runner several threads oversubscribe (100x slower); restore afterwards.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield load_model("chgnet")
    torch.set_num_threads(threads)


def si64(seed: int = 0):
    atoms = bulk("Si", "diamond", a=5.43, cubic=True) * (2, 2, 2)
    atoms.rattle(0.05, seed=seed)
    return atoms


def evaluate_one(model: CHGNetModel, record: StructureRecord, **kwargs):
    return model.evaluate(model.collate([model.prepare(record)]), **kwargs)


def test_matches_chgnet_calculator_periodic(model):
    from chgnet.model.dynamics import CHGNetCalculator

    atoms = si64()
    out = evaluate_one(model, record_from_atoms(atoms), compute_stress=True)
    atoms.calc = CHGNetCalculator(model=model.module, use_device="cpu")
    assert out.energy.shape == (1,) and out.stress.shape == (1, 3, 3)
    assert out.energy.item() == pytest.approx(atoms.get_potential_energy(), abs=1e-4)
    np.testing.assert_allclose(out.forces.numpy(), atoms.get_forces(), atol=1e-4)
    np.testing.assert_allclose(out.stress[0].numpy(), atoms.get_stress(voigt=False), atol=1e-5)
    assert np.abs(atoms.get_stress()).max() > 1e-4  # the comparison is not of zeros
    # the feature hook is off outside evaluate(): the calculator left nothing behind
    assert model._features is None


def test_molecule_matches_chgnet_calculator(model):
    from chgnet.model.dynamics import CHGNetCalculator

    atoms = molecule("CH3CH2OH")
    out = evaluate_one(model, record_from_atoms(atoms))
    assert out.forces.shape == (len(atoms), 3)
    calc = CHGNetCalculator(model=model.module, use_device="cpu")
    # The same box as the adapter's: identical graph, so energies and forces must agree
    positions, cell = molecule_box(atoms.positions, 6.0)
    same = atoms.copy()
    same.positions, same.cell, same.pbc = positions, cell, True
    same.calc = calc
    assert out.energy.item() == pytest.approx(same.get_potential_energy(), abs=1e-4)
    np.testing.assert_allclose(out.forces.numpy(), same.get_forces(), atol=1e-4)
    # A much larger box: the molecule is isolated in both, up to float32 summation order
    big = atoms.copy()
    big.cell, big.pbc = [40, 40, 40], True
    big.center()
    big.calc = calc
    assert out.energy.item() == pytest.approx(big.get_potential_energy(), abs=1e-3)
    np.testing.assert_allclose(out.forces.numpy(), big.get_forces(), atol=5e-4)


def test_molecule_forces_are_minus_energy_gradient(model):
    atoms = molecule("CH3CH2OH")
    atoms.rattle(0.05, seed=3)
    check_forces_are_gradient(model, record_from_atoms(atoms))


def test_forces_are_minus_energy_gradient(model):
    check_forces_are_gradient(model, si_pair())


def test_stress_sign_and_unit(model):
    # compressed: a clear (compressive, hence negative in ASE's sign) stress
    record = si_pair(a=5.30, rattle=0.02, seed=2)
    check_stress_is_strain_derivative(model, record)
    stress = evaluate_one(model, record, compute_stress=True).stress[0]
    assert torch.trace(stress) < 0


def test_batch_equals_single(model):
    cu = bulk("Cu", "fcc", a=3.6) * (2, 2, 2)
    cu.rattle(0.03, seed=4)
    records = [record_from_atoms(molecule("CH3CH2OH")), record_from_atoms(si64()),
               record_from_atoms(cu)]
    batch = model.evaluate(model.collate([model.prepare(r) for r in records]),
                           compute_stress=True)
    assert batch.n_atoms.tolist() == [r.n_atoms for r in records]
    assert batch.energy.shape == (3,) and batch.stress.shape == (3, 3, 3)
    assert batch.features.shape == (sum(r.n_atoms for r in records), model.feature_dim)
    offsets = np.concatenate([[0], np.cumsum(batch.n_atoms.numpy())])
    for k, record in enumerate(records):
        single = evaluate_one(model, record, compute_stress=True)
        sl = slice(offsets[k], offsets[k + 1])
        assert batch.energy[k].item() == pytest.approx(single.energy[0].item(), abs=1e-4)
        np.testing.assert_allclose(batch.forces[sl].numpy(), single.forces.numpy(), atol=1e-4)
        np.testing.assert_allclose(batch.features[sl].detach().numpy(),
                                   single.features.detach().numpy(), atol=1e-4)
        if record.periodic:  # the molecule's box stress is meaningless and masked
            np.testing.assert_allclose(batch.stress[k].numpy(), single.stress[0].numpy(),
                                       atol=1e-6)


def test_features_are_trainable(model):
    assert model.feature_dim == 64
    check_features_trainable(model, record_from_atoms(molecule("CH3CH2OH")))
    out = evaluate_one(model, record_from_atoms(si64()))  # inference call: still attached
    assert out.features.requires_grad and not out.forces.requires_grad
    grads = torch.autograd.grad(out.features.sum(), model.parameters(), allow_unused=True)
    assert sum(float(g.abs().sum()) for g in grads if g is not None) > 0


def test_features_are_what_the_readout_sees(model):
    """The features feed CHGNet's readout MLP: averaging its site energies (0.3.0 is
    intensive, mlp_first) plus the composition reference gives the energy back."""
    record = record_from_atoms(si64())
    graph = model.prepare(record)
    out = model.evaluate(model.collate([graph]))
    module = model.module
    assert module.mlp_first and module.is_intensive
    with torch.no_grad():
        per_atom = module.mlp(out.features).mean() + module.composition_model([graph])[0]
    assert (per_atom * record.n_atoms).item() == pytest.approx(out.energy.item(), abs=1e-3)


def test_create_graph_gives_parameter_gradient_of_forces(model):
    out = evaluate_one(model, record_from_atoms(si64()), compute_stress=True,
                       create_graph=True)
    loss = out.forces.pow(2).sum() + out.stress.pow(2).sum() + out.energy.sum()
    grads = torch.autograd.grad(loss, model.parameters(), allow_unused=True)
    assert all(p.requires_grad for p in model.parameters())
    assert sum(float(g.abs().sum()) for g in grads if g is not None) > 0


def test_uncovered_element(model):
    assert model.supported_numbers == frozenset(range(1, 95))
    record = StructureRecord(numbers=[1, 95], positions=[[0, 0, 0], [1.5, 0, 0]])
    with pytest.raises(ValueError, match=r"Am \(Z=95\)"):
        model.check_elements(record.numbers)
    with pytest.raises(ValueError, match=r"Am \(Z=95\)"):
        model.prepare(record)
    model.check_elements([1, 6, 8, 94])


def test_partly_periodic_is_refused(model):
    slab = StructureRecord(numbers=[14, 14], positions=[[0, 0, 0], [2.3, 0, 0]],
                           cell=np.eye(3) * 5.0, pbc=[True, True, False])
    with pytest.raises(ValueError, match="fully periodic"):
        model.prepare(slab)


def test_registry(model):
    assert isinstance(model, CHGNetModel)
    assert {"chgnet", "sevenn-0"} <= set(registered_models())
    assert model.spec() == {"name": "chgnet", "version": "0.3.0"}
    with pytest.raises(ValueError, match=r"unknown model name 'nope'.*chgnet.*sevenn-0"):
        load_model("nope")


def test_posterior_checkpoint_round_trip_on_chgnet(model):
    """A real-model posterior survives bytes: same predictions, same continued sampling."""
    from atomate2_otf.bnn.posterior import Posterior, PosteriorConfig
    from atomate2_otf.bnn.sghmc import SGHMCConfig
    from tests.labelled_data import ethanol_xtb

    frames = list(ethanol_xtb())
    config = PosteriorConfig(n_chains=2, seed=3, energy_sigma=0.002,
                             sghmc=SGHMCConfig(n_steps=6, burn_in=2, ramp=2, batch_size=2))
    posterior = Posterior(model, config)
    posterior.add_labels(frames[:3])
    posterior.update()
    loaded = Posterior.from_bytes(posterior.to_bytes())  # model reloaded by name
    probe = [frames[5].unlabelled()]
    a, b = posterior.predict(probe), loaded.predict(probe)
    np.testing.assert_allclose(b.energy, a.energy, atol=1e-6)
    np.testing.assert_allclose(b.forces, a.forces, atol=1e-6)
    np.testing.assert_allclose(b.forces_var, a.forces_var, rtol=1e-6, atol=1e-12)
    for post in (posterior, loaded):
        post.add_labels(frames[3:4])
        post.update()
    np.testing.assert_allclose(loaded.state.theta.numpy(), posterior.state.theta.numpy(),
                               atol=1e-6)


def test_pickle_round_trip(model):
    check_pickle_round_trip(model, atol=0.0)
