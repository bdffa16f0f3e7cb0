"""A reference calculation's result for one structure, in the form the MD loop replays."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from ase.stress import full_3x3_to_voigt_6_stress, voigt_6_to_full_3x3_stress

if TYPE_CHECKING:
    from ase import Atoms


@dataclass
class Label:
    """Reference energy (eV), forces (eV/A) and stress (3x3 eV/A^3, ASE sign, or None) at
    exactly ``positions`` and ``cell``: the structure a triggered segment handed out as
    ``pending``. Its positions must be the pending ones (not re-wrapped or rounded by the
    reference code), since the redone MD step must land on them.
    """

    positions: np.ndarray
    cell: np.ndarray
    energy: float
    forces: np.ndarray
    stress: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.positions = np.array(self.positions, dtype=np.float64).reshape(-1, 3)
        self.cell = np.array(self.cell, dtype=np.float64).reshape(3, 3)
        self.energy = float(self.energy)
        if not math.isfinite(self.energy):
            raise ValueError(f"label energy must be finite, got {self.energy!r}")
        self.forces = np.array(self.forces, dtype=np.float64)
        if self.forces.shape != self.positions.shape:
            raise ValueError(f"label forces have shape {self.forces.shape}, expected "
                             f"{self.positions.shape} (one row per atom)")
        if not np.all(np.isfinite(self.forces)):
            raise ValueError("label forces must be finite")
        if self.stress is not None:
            stress = np.array(self.stress, dtype=np.float64)
            if stress.shape == (6,):
                stress = voigt_6_to_full_3x3_stress(stress)
            if stress.shape != (3, 3):
                raise ValueError(f"label stress must be 3x3 or Voigt 6, got shape {stress.shape}")
            self.stress = stress

    @classmethod
    def from_atoms(cls, atoms: Atoms) -> Label:
        """Take E/F (and S for periodic atoms, when the calculator has it) from ``atoms.calc``."""
        from ase.calculators.calculator import PropertyNotImplementedError

        stress = None
        if atoms.pbc.all():
            try:
                stress = atoms.get_stress(voigt=False)
            except PropertyNotImplementedError:
                stress = None
        return cls(positions=atoms.get_positions(), cell=np.array(atoms.get_cell()),
                   energy=atoms.get_potential_energy(), forces=atoms.get_forces(),
                   stress=stress)

    def results(self) -> dict[str, Any]:
        """ASE calculator results (stress in Voigt form)."""
        out: dict[str, Any] = {"energy": self.energy, "free_energy": self.energy,
                               "forces": self.forces.copy()}
        if self.stress is not None:
            out["stress"] = full_3x3_to_voigt_6_stress(self.stress)
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"positions": self.positions.tolist(), "cell": self.cell.tolist(),
                "energy": self.energy, "forces": self.forces.tolist(),
                "stress": None if self.stress is None else self.stress.tolist()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Label:
        return cls(**data)
