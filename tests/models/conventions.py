"""Checks every FoundationModel adapter must pass (units, signs, batching, features)."""

from __future__ import annotations

import numpy as np
import torch

from atomate2_otf.bnn.data import StructureRecord
from atomate2_otf.models.base import FoundationModel


def si_pair(a: float = 5.43, rattle: float = 0.05, seed: int = 1) -> StructureRecord:
    """A rattled two-cell diamond Si: small enough for finite differences; ``a=5.30`` is
    compressed, giving a clear (negative, ASE sign) stress to pin sign and unit."""
    from ase.build import bulk

    from atomate2_otf.atoms import record_from_atoms

    atoms = bulk("Si", "diamond", a=a) * (2, 1, 1)
    atoms.rattle(rattle, seed=seed)
    return record_from_atoms(atoms)


def energy_of(model: FoundationModel, record: StructureRecord) -> float:
    out = model.evaluate(model.collate([model.prepare(record)]))
    return float(out.energy.double().item())


def check_forces_are_gradient(model: FoundationModel, record: StructureRecord,
                              step: float = 1e-3, atol: float = 2e-2) -> None:
    out = model.evaluate(model.collate([model.prepare(record)]))
    forces = out.forces.double().numpy()
    for atom, axis in [(0, 0), (1, 2), (len(record.numbers) - 1, 1)]:
        shifted = []
        for sign in (1, -1):
            pos = record.positions.copy()
            pos[atom, axis] += sign * step
            shifted.append(energy_of(model, StructureRecord(record.numbers, pos, record.cell,
                                                            record.pbc)))
        numeric = -(shifted[0] - shifted[1]) / (2 * step)
        assert abs(numeric - forces[atom, axis]) < atol, (atom, axis, numeric, forces[atom, axis])


def check_stress_is_strain_derivative(model: FoundationModel, record: StructureRecord,
                                      step: float = 1e-3, atol: float = 2e-4) -> None:
    """ASE convention: stress = (1/V) dE/d(strain), eV/A^3 (positive = tensile)."""
    out = model.evaluate(model.collate([model.prepare(record)]), compute_stress=True)
    stress = out.stress[0].double().numpy()
    volume = abs(np.linalg.det(record.cell))
    assert np.abs(stress).max() > 10 * atol  # a test that cannot pass trivially
    for i, j in [(0, 0), (1, 1), (0, 1)]:
        energies = []
        for sign in (1, -1):
            strain = np.eye(3)
            strain[i, j] += sign * step / (2 if i != j else 1)
            strain[j, i] += sign * step / 2 if i != j else 0
            energies.append(energy_of(model, StructureRecord(
                record.numbers, record.positions @ strain, record.cell @ strain, record.pbc)))
        numeric = (energies[0] - energies[1]) / (2 * step) / volume
        assert abs(numeric - stress[i, j]) < atol, (i, j, numeric, stress[i, j])


def check_batch_equals_single(model: FoundationModel, records: list[StructureRecord]) -> None:
    stress = all(r.periodic for r in records)
    batch = model.evaluate(model.collate([model.prepare(r) for r in records]),
                           compute_stress=stress)
    offsets = np.concatenate([[0], np.cumsum(batch.n_atoms.numpy())])
    for k, record in enumerate(records):
        single = model.evaluate(model.collate([model.prepare(record)]), compute_stress=stress)
        sl = slice(offsets[k], offsets[k + 1])
        np.testing.assert_allclose(batch.energy[k].item(), single.energy[0].item(), atol=1e-4)
        np.testing.assert_allclose(batch.forces[sl].numpy(), single.forces.numpy(), atol=1e-4)
        np.testing.assert_allclose(batch.features[sl].detach().numpy(),
                                   single.features.detach().numpy(), atol=1e-4)
    assert batch.features.shape == (offsets[-1], model.feature_dim)


def check_features_trainable(model: FoundationModel, record: StructureRecord) -> None:
    out = model.evaluate(model.collate([model.prepare(record)]), create_graph=True)
    assert out.features.shape == (record.n_atoms, model.feature_dim)
    assert torch.isfinite(out.features).all()
    params = model.parameters()
    grads = torch.autograd.grad(out.features.sum() + out.forces.pow(2).sum(), params,
                                allow_unused=True)
    assert sum(float(g.abs().sum()) for g in grads if g is not None) > 0
