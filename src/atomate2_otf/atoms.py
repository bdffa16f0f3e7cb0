"""Conversions between ASE / pymatgen objects and :class:`StructureRecord`.

The only place outside the adapters where ASE meets the Bayesian layer's plain records,
so that `bnn/` stays free of atomistic libraries.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from atomate2_otf.records import StructureRecord

if TYPE_CHECKING:
    from ase import Atoms
    from pymatgen.core import Molecule, Structure


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


def labelled_md_frames(atoms: Atoms, calculator, n_frames: int, every: int,
                       temperature_k: float, seed: int = 0,
                       timestep_fs: float = 1.0) -> list[StructureRecord]:
    """Labelled frames every ``every`` steps of a Langevin run driven by ``calculator``.

    Thermal distortions of one system, labelled by the reference itself: what an
    on-the-fly run meets, for tests, examples and offline fine-tuning.
    """
    from ase import units
    from ase.md.langevin import Langevin
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution

    atoms = atoms.copy()
    atoms.calc = calculator
    rng = np.random.default_rng(seed)
    MaxwellBoltzmannDistribution(atoms, temperature_K=temperature_k, rng=rng)
    dyn = Langevin(atoms, timestep_fs * units.fs, temperature_K=temperature_k, friction=0.02,
                   fixcm=False, rng=rng)
    frames = []
    for _ in range(n_frames):
        dyn.run(every)
        frames.append(record_from_atoms(atoms, with_labels=True))
    return frames


def to_atoms(structure: Structure | Molecule | Atoms | str | Path) -> Atoms:
    """ASE atoms from a pymatgen Structure/Molecule, ASE Atoms or a structure file.

    A file that is missing or does not parse raises ValueError naming it.
    """
    from ase import Atoms

    if isinstance(structure, Atoms):
        return structure.copy()
    if isinstance(structure, str | Path):
        path = Path(structure).expanduser()
        if not path.is_file():
            raise ValueError(f"structure file {str(path)!r} does not exist or is not a file")
        from ase.io import read

        try:
            atoms = read(str(path))
        except Exception as err:  # ASE raises many kinds; the user needs the file and why
            why = str(err) or f"{type(err).__name__} in ASE's reader (not a valid file?)"
            raise ValueError(f"could not read structure file {str(path)!r}: {why}; give a "
                             f"file ASE reads (POSCAR, CIF, XYZ, ...)") from err
        return atoms if isinstance(atoms, Atoms) else atoms[-1]
    from pymatgen.io.ase import AseAtomsAdaptor

    return AseAtomsAdaptor.get_atoms(structure)


def to_pymatgen(atoms: Atoms) -> Structure | Molecule:
    """Structure for fully periodic atoms, Molecule otherwise (what atomate2 Makers take)."""
    from pymatgen.io.ase import AseAtomsAdaptor

    return (AseAtomsAdaptor.get_structure(atoms) if atoms.pbc.all()
            else AseAtomsAdaptor.get_molecule(atoms))
