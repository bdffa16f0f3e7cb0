"""A plain, library-neutral record of one (optionally labelled) structure.

`bnn/` must not depend on ASE or pymatgen, yet the posterior has to keep its data set
(for checkpoints) and hand structures to a model adapter. This record is that common
currency: numpy arrays in the package's units (eV, Angstrom, eV/A, eV/A^3 with ASE's
stress sign), convertible to and from plain dicts for serialisation.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class StructureRecord:
    """Atoms of one structure and, when labelled, its reference energy, forces and stress.

    ``stress`` is the 3x3 tensor in eV/A^3 with ASE's sign (negative under compression is
    *not* assumed: it is whatever ``ase.Atoms.get_stress`` would return). It is only
    meaningful for periodic structures; molecules carry ``None``.
    """

    numbers: np.ndarray
    positions: np.ndarray
    cell: np.ndarray = field(default_factory=lambda: np.zeros((3, 3)))
    pbc: np.ndarray = field(default_factory=lambda: np.zeros(3, dtype=bool))
    energy: float | None = None
    forces: np.ndarray | None = None
    stress: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.numbers = np.asarray(self.numbers, dtype=np.int64).reshape(-1)
        self.positions = np.asarray(self.positions, dtype=np.float64).reshape(-1, 3)
        self.cell = np.asarray(self.cell, dtype=np.float64).reshape(3, 3)
        self.pbc = np.broadcast_to(np.asarray(self.pbc, dtype=bool), (3,)).copy()
        if len(self.numbers) != len(self.positions):
            raise ValueError(
                f"numbers has {len(self.numbers)} entries but positions has "
                f"{len(self.positions)} rows; they must match"
            )
        if len(self.numbers) == 0:
            raise ValueError("a structure needs at least one atom, got 0")
        if self.energy is not None:
            self.energy = float(self.energy)
        if self.forces is not None:
            self.forces = np.asarray(self.forces, dtype=np.float64).reshape(-1, 3)
            if len(self.forces) != len(self.numbers):
                raise ValueError(
                    f"forces has {len(self.forces)} rows for {len(self.numbers)} atoms"
                )
        if self.stress is not None:
            stress = np.asarray(self.stress, dtype=np.float64)
            if stress.shape == (6,):  # Voigt order xx yy zz yz xz xy, as ASE
                xx, yy, zz, yz, xz, xy = stress
                stress = np.array([[xx, xy, xz], [xy, yy, yz], [xz, yz, zz]])
            self.stress = stress.reshape(3, 3)

    @property
    def n_atoms(self) -> int:
        return len(self.numbers)

    @property
    def composition(self) -> str:
        """``"Z:count"`` pairs by atomic number, e.g. ``"1:6 6:2 8:1"`` for ethanol: the key
        of the posterior's per-composition energy offsets."""
        numbers, counts = np.unique(self.numbers, return_counts=True)
        return " ".join(f"{z}:{n}" for z, n in zip(numbers, counts, strict=True))

    @property
    def periodic(self) -> bool:
        return bool(self.pbc.all())

    @property
    def is_labelled(self) -> bool:
        return self.energy is not None and self.forces is not None

    @property
    def has_stress(self) -> bool:
        return self.stress is not None and self.periodic

    def unlabelled(self) -> StructureRecord:
        """The same atoms without labels (what a model is asked to predict)."""
        return StructureRecord(self.numbers, self.positions, self.cell, self.pbc)

    def labelled(self, energy: float, forces: Any, stress: Any = None) -> StructureRecord:
        """The same atoms with a reference's labels; a stress is kept for periodic cells only
        (molecules carry none)."""
        return StructureRecord(self.numbers, self.positions, self.cell, self.pbc,
                               energy=energy, forces=forces,
                               stress=stress if self.periodic else None)

    def calculator_results(self) -> dict[str, Any]:
        """The labels as an ASE calculator's results (stress in Voigt order xx yy zz yz xz
        xy, symmetrised as ASE does), so that MD can replay them exactly."""
        if not self.is_labelled:
            raise ValueError("an unlabelled structure has no results to replay")
        out: dict[str, Any] = {"energy": self.energy, "free_energy": self.energy,
                               "forces": self.forces.copy()}
        if self.stress is not None:
            s = self.stress
            out["stress"] = np.array([s[0, 0], s[1, 1], s[2, 2], (s[1, 2] + s[2, 1]) / 2,
                                      (s[0, 2] + s[2, 0]) / 2, (s[0, 1] + s[1, 0]) / 2])
        return out

    def to_dict(self) -> dict[str, Any]:
        """Plain types only: safe for JSON, msgpack and ``torch.load(weights_only=True)``."""
        return {
            "numbers": self.numbers.tolist(),
            "positions": self.positions.tolist(),
            "cell": self.cell.tolist(),
            "pbc": self.pbc.tolist(),
            "energy": self.energy,
            "forces": None if self.forces is None else self.forces.tolist(),
            "stress": None if self.stress is None else self.stress.tolist(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StructureRecord:
        return cls(**{key: data.get(key) for key in ("numbers", "positions")},
                   cell=data.get("cell", np.zeros((3, 3))),
                   pbc=data.get("pbc", False),
                   energy=data.get("energy"),
                   forces=data.get("forces"),
                   stress=data.get("stress"))
