"""Real labelled frames from cheap reference calculators (GFN2-xTB via tblite, ASE's EMT).

Frames come from short Langevin MD driven by the reference itself, so they look like what
an on-the-fly run meets: thermal distortions of one system, not random noise.
"""

from __future__ import annotations

from functools import lru_cache

from ase.build import bulk, molecule

from atomate2_otf.atoms import labelled_md_frames
from atomate2_otf.records import StructureRecord


def xtb_calculator():
    from tblite.ase import TBLite

    return TBLite(method="GFN2-xTB", verbosity=0)


@lru_cache(maxsize=None)
def ethanol_xtb(n_frames: int = 20, seed: int = 0) -> tuple[StructureRecord, ...]:
    """Ethanol at 500 K labelled with GFN2-xTB (non-periodic: no stress)."""
    return tuple(labelled_md_frames(molecule("CH3CH2OH"), xtb_calculator(), n_frames, 25, 500.0, seed))


@lru_cache(maxsize=None)
def copper_emt(n_frames: int = 20, seed: int = 0) -> tuple[StructureRecord, ...]:
    """8-atom fcc Cu at 800 K labelled with EMT (periodic: energy, forces, stress).

    Small on purpose: CHGNet's 6 A graph gives each Cu atom ~80 neighbours, so a training
    step on five 32-atom cells costs ~2 s on one core.
    """
    from ase.calculators.emt import EMT

    atoms = bulk("Cu", "fcc", a=3.61, cubic=True) * (2, 1, 1)
    return tuple(labelled_md_frames(atoms, EMT(), n_frames, 20, 800.0, seed))
