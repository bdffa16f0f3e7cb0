"""Conversions between ASE / pymatgen objects and :class:`StructureRecord`.

The only place outside the adapters where ASE meets the Bayesian layer's plain records,
so that `bnn/` stays free of atomistic libraries.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from atomate2_otf.bnn.data import StructureRecord

if TYPE_CHECKING:
    from ase import Atoms


def record_from_atoms(atoms: Atoms, *, with_labels: bool = False) -> StructureRecord:
    """Copy an ``ase.Atoms`` into a record; with ``with_labels`` take E/F/S from its calculator.

    Stress is taken only for fully periodic cells (molecules carry none), in eV/A^3 with
    ASE's sign.
    """
    energy = forces = stress = None
    if with_labels:
        energy = float(atoms.get_potential_energy())
        forces = np.array(atoms.get_forces())
        if atoms.pbc.all():
            stress = np.array(atoms.get_stress(voigt=False))
    return StructureRecord(
        numbers=atoms.get_atomic_numbers(),
        positions=atoms.get_positions(),
        cell=np.array(atoms.get_cell()),
        pbc=atoms.get_pbc(),
        energy=energy,
        forces=forces,
        stress=stress,
    )


def atoms_from_record(record: StructureRecord) -> Atoms:
    """An ``ase.Atoms`` with the record's atoms (labels are not attached)."""
    from ase import Atoms

    return Atoms(
        numbers=record.numbers, positions=record.positions, cell=record.cell, pbc=record.pbc
    )
