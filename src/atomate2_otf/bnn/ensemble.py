"""An ensemble's prediction: the M chains' outputs combined into a mean and a variance.

The variance is split as the paper splits it (METHOD.md sec. 4): epistemic, the spread of
the chains' means, and aleatoric, the mean of the noise variances the chains predict.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class EnsemblePrediction:
    """Ensemble mean and variance split into epistemic (spread of the M means) and aleatoric
    (mean of the M predicted noise variances) parts. Energies are in the *reference's*
    energy zero (the offset is removed); forces eV/A; stress eV/A^3 or None.
    """

    energy: np.ndarray
    energy_var_epistemic: np.ndarray
    energy_var_aleatoric: np.ndarray
    forces: np.ndarray
    forces_var_epistemic: np.ndarray
    forces_var_aleatoric: np.ndarray
    stress: np.ndarray | None
    stress_var_epistemic: np.ndarray | None
    stress_var_aleatoric: np.ndarray | None
    n_atoms: np.ndarray
    chain_energies: np.ndarray

    @property
    def energy_var(self) -> np.ndarray:
        return self.energy_var_epistemic + self.energy_var_aleatoric

    @property
    def energy_std(self) -> np.ndarray:
        return np.sqrt(self.energy_var)

    @property
    def forces_var(self) -> np.ndarray:
        return self.forces_var_epistemic + self.forces_var_aleatoric

    def split_atoms(self, values: np.ndarray) -> list[np.ndarray]:
        """Split a per-atom array [N, ...] of the batch into one array per structure."""
        return np.split(values, np.cumsum(self.n_atoms)[:-1])


@dataclass
class ChainOutput:
    """One chain's raw prediction for a batch (model energy zero), as numpy float64."""

    energy: np.ndarray
    forces: np.ndarray
    force_sigma: np.ndarray
    stress: np.ndarray | None
    n_atoms: np.ndarray


def combine_ensemble(means: np.ndarray, variances: np.ndarray) -> tuple[np.ndarray, ...]:
    """Over chains (axis 0): the mean, the epistemic variance and the aleatoric variance.

    Epistemic: the *sample* variance (ddof = 1) of the M means, as the reference code's
    ``torch.var`` (METHOD.md sec. 4): M = 8 draws of the posterior estimate its spread, and
    ddof = 0 would understate it by (M - 1) / M. One chain has no spread to estimate: 0.
    Aleatoric: the mean of the M predicted noise variances.
    """
    epistemic = means.var(0, ddof=1) if len(means) > 1 else np.zeros_like(means[0])
    return means.mean(0), epistemic, variances.mean(0)
