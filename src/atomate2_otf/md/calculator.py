"""An ASE calculator over the Bayesian posterior: the ensemble mean drives MD, and the
uncertainty that decides when to call the reference travels along in ``.results``.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import numpy as np
from ase.calculators.calculator import Calculator, all_changes
from ase.stress import full_3x3_to_voigt_6_stress

from atomate2_otf.atoms import record_from_atoms
from atomate2_otf.bnn.calibration import (
    check_force_threshold,
    check_threshold,
    per_atom_force_std,
)

if TYPE_CHECKING:
    from ase import Atoms

    from atomate2_otf.bnn.parallel import ChainPool
    from atomate2_otf.bnn.posterior import Posterior

logger = logging.getLogger(__name__)


class PosteriorCalculator(Calculator):
    """Ensemble-mean energy, forces and stress of a :class:`Posterior`, with uncertainty.

    Args:
        posterior: the fine-tuned ensemble.
        threshold: energy-error threshold K (eV) of ``prob_within = P(|e| < K)``.
        pool: optional ChainPool that evaluates the chains in parallel.
        compute_stress: None computes stress only for fully periodic atoms.
        force_threshold: K_F (eV/A) of the force criterion; with it, ``results`` also holds
            ``prob_within_forces`` = P(max_i |F_i error| < K_F). None: not computed.

    Besides the standard properties, ``results`` holds ``energy_std`` (total, eV),
    ``energy_std_epistemic``, ``forces_std`` ([N, 3]), ``prob_within`` and
    ``chain_energies`` ([M]).
    """

    implemented_properties = ["energy", "free_energy", "forces", "stress"]

    def __init__(self, posterior: Posterior, threshold: float, pool: ChainPool | None = None,
                 compute_stress: bool | None = None, force_threshold: float | None = None,
                 **kwargs) -> None:
        super().__init__(**kwargs)
        self.posterior = posterior
        self.threshold = check_threshold(threshold)
        self.force_threshold = (None if force_threshold is None
                                else check_force_threshold(force_threshold))
        self.pool = pool
        self.compute_stress = compute_stress

    def calculate(self, atoms: Atoms | None = None, properties=("energy",),
                  system_changes=all_changes) -> None:
        super().calculate(atoms, properties, system_changes)
        atoms = self.atoms
        periodic = bool(atoms.pbc.all())
        compute_stress = periodic if self.compute_stress is None else bool(self.compute_stress)
        if compute_stress and not periodic:
            raise ValueError(f"compute_stress=True needs fully periodic atoms, got "
                             f"pbc={atoms.pbc.tolist()}")
        record = record_from_atoms(atoms)
        pred = self.posterior.predict([record], compute_stress, pool=self.pool)
        energy = float(pred.energy[0])
        energy_std = float(pred.energy_std[0])
        self.results = {
            "energy": energy,
            "free_energy": energy,
            "forces": np.array(pred.forces, dtype=np.float64),
            "energy_std": energy_std,
            "energy_std_epistemic": float(np.sqrt(pred.energy_var_epistemic[0])),
            "forces_std": np.sqrt(pred.forces_var),
            "prob_within": float(self.posterior.calibration.prob_within(energy_std,
                                                                         self.threshold)),
            "chain_energies": np.array(pred.chain_energies[:, 0], dtype=np.float64),
        }
        if self.force_threshold is not None:
            self.results["prob_within_forces"] = self.posterior.force_calibration \
                .prob_within_max(per_atom_force_std(pred.forces_var), self.force_threshold)
        if compute_stress and pred.stress is not None:
            self.results["stress"] = full_3x3_to_voigt_6_stress(
                np.asarray(pred.stress, dtype=np.float64).reshape(-1, 3, 3)[0])
