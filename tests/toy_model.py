"""A tiny pair-potential FoundationModel for fast tests of the Bayesian machinery.

Real adapters (CHGNet, SevenNet) are tested separately and in the slow fine-tuning tests;
this one makes the posterior's bookkeeping testable in milliseconds.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from atomate2_otf.bnn.data import StructureRecord
from atomate2_otf.models.base import FamilyDefaults, FoundationModel, ModelOutput


class PairMLP(nn.Module):
    def __init__(self, n_rbf: int = 8, cutoff: float = 5.0) -> None:
        super().__init__()
        self.register_buffer("centers", torch.linspace(0.5, cutoff, n_rbf))
        self.mlp = nn.Sequential(nn.Linear(n_rbf, 16), nn.SiLU(), nn.Linear(16, 1))
        torch.manual_seed(0)
        for p in self.mlp.parameters():
            nn.init.normal_(p, std=0.3)

    def rbf(self, r: torch.Tensor) -> torch.Tensor:
        return torch.exp(-((r[..., None] - self.centers) ** 2))


class ToyModel(FoundationModel):
    family = "toy"
    defaults = FamilyDefaults(sigma_tl=0.5, step_size=1e-3, calibration_a=1.5,
                              calibration_b=10.0)

    def __init__(self) -> None:
        super().__init__(PairMLP(), "toy")

    @property
    def feature_dim(self) -> int:
        return 8

    @property
    def supported_numbers(self) -> frozenset[int]:
        return frozenset({1, 6, 8, 29})

    def prepare(self, structure: StructureRecord) -> Any:
        return torch.tensor(structure.positions, dtype=torch.float32)

    def collate(self, prepared: Sequence[Any]) -> Any:
        return list(prepared)

    def evaluate(self, batch: Any, *, compute_stress: bool = False,
                 create_graph: bool = False) -> ModelOutput:
        positions = [p.clone().requires_grad_(True) for p in batch]
        energies, features = [], []
        for pos in positions:
            diff = pos[:, None, :] - pos[None, :, :]
            mask = ~torch.eye(len(pos), dtype=torch.bool)
            r = torch.sqrt((diff**2).sum(-1) + torch.eye(len(pos)))
            rbf = self.module.rbf(r) * mask[..., None]
            pair = self.module.mlp(rbf).squeeze(-1) * mask
            energies.append(0.5 * pair.sum())
            features.append(rbf.sum(1))
        energy = torch.stack(energies)
        grads = torch.autograd.grad(energy.sum(), positions, create_graph=create_graph)
        forces = -torch.cat(grads)
        if not create_graph:
            energy, forces = energy.detach(), forces.detach()
        return ModelOutput(energy=energy, forces=forces, stress=None,
                           features=torch.cat(features),
                           n_atoms=torch.tensor([len(p) for p in positions]))


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
