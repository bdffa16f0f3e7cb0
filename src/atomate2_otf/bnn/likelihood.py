"""Gaussian log-likelihood of labelled structures (METHOD.md sec. 1).

Independent Gaussians on the energy, every force component (per-atom std from the noise
head) and, for periodic structures with a labelled stress, the six independent stress
components. Constants that do not depend on the parameters are dropped.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from atomate2_otf.records import StructureRecord

#: the paper's fixed stress std, 0.1/16 kcal/mol/A^3, in eV/A^3
DEFAULT_STRESS_SIGMA = 0.1 / 16 * 0.0433641043
_VOIGT = (torch.tensor([0, 1, 2, 1, 0, 0]), torch.tensor([0, 1, 2, 2, 2, 1]))


@dataclass
class Targets:
    """Labels of a batch as tensors: energy [B], forces [N, 3], stress [B, 3, 3], mask [B]."""

    energy: torch.Tensor
    forces: torch.Tensor
    stress: torch.Tensor
    stress_mask: torch.Tensor
    n_atoms: torch.Tensor

    @classmethod
    def from_records(
        cls, records: Sequence[StructureRecord],
        energy_offset: float | Sequence[float] = 0.0, dtype: torch.dtype = torch.float32,
        device: str | torch.device = "cpu",
    ) -> Targets:
        """Collate labels on ``device``; ``energy_offset`` (one for all, or one per record)
        moves the reference energies to the model's zero."""
        for i, record in enumerate(records):
            if not record.is_labelled:
                raise ValueError(f"structure {i} has no energy/forces label")
        offsets = ([float(energy_offset)] * len(records)
                   if isinstance(energy_offset, int | float) else list(energy_offset))
        stress = [r.stress if r.has_stress else np.zeros((3, 3)) for r in records]
        return cls(
            energy=torch.tensor([r.energy + o for r, o in zip(records, offsets, strict=True)],
                                dtype=dtype, device=device),
            forces=torch.cat([torch.as_tensor(r.forces, dtype=dtype, device=device)
                              for r in records]),
            stress=torch.stack([torch.as_tensor(s, dtype=dtype, device=device)
                                for s in stress]),
            stress_mask=torch.tensor([r.has_stress for r in records], device=device),
            n_atoms=torch.tensor([r.n_atoms for r in records], device=device),
        )


def log_likelihood(
    energy: torch.Tensor,
    forces: torch.Tensor,
    force_sigma: torch.Tensor,
    targets: Targets,
    *,
    energy_sigma: float,
    stress: torch.Tensor | None = None,
    stress_sigma: float = DEFAULT_STRESS_SIGMA,
) -> torch.Tensor:
    """Per-structure log-likelihood [B].

    energy [B], forces [N, 3], force_sigma [N] (per-atom std, eV/A), stress [B, 3, 3] or
    None (then stress labels are ignored).
    """
    ll_energy = (-0.5 * ((energy - targets.energy) / energy_sigma) ** 2
                 - math.log(energy_sigma))
    per_atom = (-0.5 * (((forces - targets.forces) / force_sigma[:, None]) ** 2).sum(-1)
                - 3.0 * torch.log(force_sigma))
    owners = torch.repeat_interleave(
        torch.arange(len(targets.n_atoms), device=targets.n_atoms.device), targets.n_atoms)
    ll_forces = torch.zeros_like(ll_energy).index_add(0, owners, per_atom)
    total = ll_energy + ll_forces
    if stress is not None and bool(targets.stress_mask.any()):
        # index, not torch.where: a molecule's stress may be inf/NaN, and where() would
        # still send NaN gradients through the masked branch
        rows = torch.nonzero(targets.stress_mask).squeeze(-1)
        voigt = [index.to(stress.device) for index in _VOIGT]
        diff = (stress[rows] - targets.stress[rows])[:, voigt[0], voigt[1]]
        ll_stress = (-0.5 * (diff / stress_sigma) ** 2 - math.log(stress_sigma)).sum(-1)
        total = total.index_add(0, rows, ll_stress)
    return total
