"""A tiny pair-potential FoundationModel for fast tests of the Bayesian machinery.

Real adapters (CHGNet, SevenNet) are tested separately and in the slow fine-tuning tests;
this one makes the posterior's bookkeeping testable in milliseconds. It names the device of
every tensor it makes (inputs on the CPU, the rest where the positions are), so the
device-discipline tests can run it with torch's default device set to "meta".
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from atomate2_otf.models.base import (
    FamilyDefaults,
    FoundationModel,
    ModelOutput,
    periodic_stress,
)
from atomate2_otf.records import StructureRecord


class PairMLP(nn.Module):
    def __init__(self, n_rbf: int = 8, cutoff: float = 5.0) -> None:
        super().__init__()
        self.register_buffer("centers", torch.linspace(0.5, cutoff, n_rbf, device="cpu"))
        self.mlp = nn.Sequential(nn.Linear(n_rbf, 16, device="cpu"), nn.SiLU(),
                                 nn.Linear(16, 1, device="cpu"))
        torch.manual_seed(0)
        for p in self.mlp.parameters():
            nn.init.normal_(p, std=0.3)

    def rbf(self, r: torch.Tensor) -> torch.Tensor:
        return torch.exp(-((r[..., None] - self.centers) ** 2))


class ToyModel(FoundationModel):
    """Pair energy of the atoms listed (no periodic images) plus, for a fully periodic cell,
    a volume term ``0.5 * BULK_MODULUS * N * (V/N - VOLUME_PER_ATOM)**2 / VOLUME_PER_ATOM``.

    Stress (on request) is ``(1/V) dE/d(strain)`` with ASE's sign, taken by autograd of the
    energy of the strained structure (positions and cell both times ``1 + strain``), so
    the pair term contributes a virial and the volume term ``dE/dV`` on the diagonal;
    non-periodic structures get NaN rows (:func:`periodic_stress`). The volume term has
    no parameters (the parameter vector is the pair network's alone, as stored
    checkpoints expect); the stress still depends on the parameters through the pair
    virial, so stress labels take part in the fine-tuning.
    """

    family = "toy"
    defaults = FamilyDefaults(sigma_tl=0.5, step_size=1e-3, calibration_a=1.5,
                              calibration_b=10.0)
    #: eV/A^3 (about 80 GPa) and A^3 per atom (fcc Cu has 11.8): the volume term's constants
    BULK_MODULUS = 0.5
    VOLUME_PER_ATOM = 12.0

    def __init__(self) -> None:
        super().__init__(PairMLP(), "toy")

    @property
    def feature_dim(self) -> int:
        return 8

    @property
    def supported_numbers(self) -> frozenset[int]:
        return frozenset({1, 6, 8, 29})

    def prepare(self, structure: StructureRecord) -> Any:
        return (torch.tensor(structure.positions, dtype=torch.float32, device="cpu"),
                torch.tensor(structure.cell, dtype=torch.float32, device="cpu"),
                bool(structure.periodic and abs(np.linalg.det(structure.cell)) > 0))

    def collate(self, prepared: Sequence[Any]) -> Any:
        return list(prepared)

    def volume_energy(self, volume: torch.Tensor, n_atoms: int) -> torch.Tensor:
        """The cell-dependent term (periodic structures only)."""
        v0 = self.VOLUME_PER_ATOM
        return 0.5 * self.BULK_MODULUS * n_atoms * (volume / n_atoms - v0) ** 2 / v0

    def evaluate(self, batch: Any, *, compute_stress: bool = False,
                 create_graph: bool = False) -> ModelOutput:
        positions = [pos.clone().requires_grad_(True) for pos, _, _ in batch]
        device = positions[0].device
        strains = [torch.zeros(3, 3, requires_grad=compute_stress, device=device)
                   for _ in batch]
        energies, features, volumes = [], [], []
        for pos, strain, (_, cell, periodic) in zip(positions, strains, batch, strict=True):
            deform = torch.eye(3, device=device) + strain
            pos = pos @ deform
            diff = pos[:, None, :] - pos[None, :, :]
            mask = ~torch.eye(len(pos), dtype=torch.bool, device=device)
            r = torch.sqrt((diff**2).sum(-1) + torch.eye(len(pos), device=device))
            rbf = self.module.rbf(r) * mask[..., None]
            pair = self.module.mlp(rbf).squeeze(-1) * mask
            energy = 0.5 * pair.sum()
            volume = torch.linalg.det(cell @ deform).abs()
            if periodic:
                energy = energy + self.volume_energy(volume, len(pos))
            energies.append(energy)
            volumes.append(volume.detach())
            features.append(rbf.sum(1))
        energy = torch.stack(energies)
        inputs = positions + (strains if compute_stress else [])
        grads = torch.autograd.grad(energy.sum(), inputs, create_graph=create_graph)
        forces = -torch.cat(grads[:len(positions)])
        stress = None
        if compute_stress:
            periodic = torch.tensor([p for _, _, p in batch], device=device)
            stress = periodic_stress(torch.stack(grads[len(positions):]),
                                     torch.stack(volumes), periodic)
        if not create_graph:
            energy, forces = energy.detach(), forces.detach()
            stress = None if stress is None else stress.detach()
        return ModelOutput(energy=energy, forces=forces, stress=stress,
                           features=torch.cat(features),
                           n_atoms=torch.tensor([len(p) for p in positions], device=device))


class ChattyToyModel(ToyModel):
    """The toy model, announcing itself on stdout as CHGNet does, from Python and from C
    (file descriptor 1): the ``--json`` tests check that none of it reaches stdout."""

    def __init__(self) -> None:
        import os
        import sys

        super().__init__()
        print("ChattyToyModel initialized with 161 parameters")  # noqa: T201
        sys.stdout.flush()
        os.write(1, b"ChattyToyModel: a C library writes here\n")

    def __setstate__(self, state: dict) -> None:  # unpickled in each ChainPool worker
        import os

        self.__dict__.update(state)
        os.write(1, b"ChattyToyModel: a worker writes here\n")
