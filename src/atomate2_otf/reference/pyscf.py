"""PySCF single points (energy and analytic forces) for molecules, as an atomate2 ASE Maker.

PySCF is a pip-installable Gaussian-basis code: the offline reference for molecules
(``pip install "atomate2-otf[pyscf]"``). :class:`PySCFCalculator` is a small ASE
calculator around PySCF's own SCF and analytic nuclear gradients; :class:`PySCFStaticMaker`
runs it through atomate2's ``AseRelaxMaker`` with ``steps=1`` so its output is the same
task document every reference gives.

Molecules only, and no stress: PySCF's periodic code is far too slow for MD labelling, and
the stress its ASE interface reports is off by a Bohr^2 factor. A wrong stress is worse
than none (it would be fitted), so a periodic structure, or a request for the stress, is
refused with a ValueError instead.

Settings are fixed for the whole run: functional (``xc``, default PBE; ``"HF"`` for
Hartree-Fock), basis (default def2-SVP), charge, spin (2S, unpaired electrons; > 0 uses
unrestricted KS/HF), ``conv_tol`` 1e-9 Ha and PySCF's default integration grid.
A non-converged SCF (PySCF returns such energies silently, with ``converged = False``)
raises :class:`~atomate2_otf.reference.retry.SCFNotConvergedError`; the retry uses four
times the SCF cycles (at least 200), a 0.25 Ha level shift and damping 0.5, which steer the
SCF but leave its converged solution unchanged.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
from ase.calculators.calculator import Calculator, all_changes
from ase.units import Bohr, Hartree
from atomate2.ase.jobs import AseRelaxMaker

from atomate2_otf.reference.retry import RetryOnFailure, SCFNotConvergedError

if TYPE_CHECKING:
    from pathlib import Path

    from ase import Atoms
    from atomate2.ase.schemas import AseResult
    from pymatgen.core import Molecule, Structure

logger = logging.getLogger(__name__)

#: the PySCF settings a labelling run uses unless told otherwise
PYSCF_DEFAULTS: dict[str, Any] = {
    "xc": "PBE", "basis": "def2-svp", "charge": 0, "spin": 0, "conv_tol": 1e-9,
    "max_cycle": 100, "level_shift": 0.0, "damp": 0.0,
}

_REFUSE_PERIODIC = ("PySCF labels molecules only (no stress: PySCF's periodic stress "
                    "through ASE is off by a Bohr^2 factor, and its periodic code is too "
                    "slow for MD labelling)")


class PySCFCalculator(Calculator):
    """ASE calculator: PySCF energy and analytic forces of a molecule (no stress)."""

    implemented_properties: ClassVar[list[str]] = ["energy", "free_energy", "forces"]
    default_parameters: ClassVar[dict[str, Any]] = dict(PYSCF_DEFAULTS)

    def __init__(self, **kwargs: Any) -> None:
        unknown = set(kwargs) - set(PYSCF_DEFAULTS) - {"label", "atoms", "directory"}
        if unknown:
            raise ValueError(f"unknown PySCF setting(s) {sorted(unknown)}; accepted: "
                             f"{sorted(PYSCF_DEFAULTS)}")
        super().__init__(**kwargs)

    def calculate(self, atoms: Atoms | None = None,
                  properties: list[str] | tuple[str, ...] = ("energy",),
                  system_changes: list[str] = all_changes) -> None:
        """Run the SCF and the analytic gradient; refuse periodic cells and stress."""
        if "stress" in properties:
            raise ValueError(f"the stress was requested: {_REFUSE_PERIODIC}")
        if atoms is not None and any(atoms.pbc):
            raise ValueError(f"got a periodic cell (pbc={atoms.pbc.tolist()}, "
                             f"{atoms.get_chemical_formula()}): {_REFUSE_PERIODIC}")
        super().calculate(atoms, properties, system_changes)
        mf = self._mean_field(self.atoms)
        energy = float(mf.kernel())
        if not mf.converged:
            raise SCFNotConvergedError(
                f"PySCF {self.parameters['xc']}/{self.parameters['basis']} SCF did not "
                f"converge in {self.parameters['max_cycle']} cycles (last energy {energy} Ha)")
        gradient = np.asarray(mf.nuc_grad_method().kernel(), dtype=float)
        self.results = {"energy": energy * Hartree, "free_energy": energy * Hartree,
                        "forces": -gradient * Hartree / Bohr}

    def _mean_field(self, atoms: Atoms) -> Any:
        from pyscf import dft, gto, scf

        p = self.parameters
        mol = gto.M(atom=list(zip(atoms.get_chemical_symbols(), atoms.positions.tolist())),
                    unit="Angstrom", basis=p["basis"], charge=int(p["charge"]),
                    spin=int(p["spin"]), verbose=0)
        unrestricted = int(p["spin"]) > 0
        if str(p["xc"]).upper() == "HF":
            mf = scf.UHF(mol) if unrestricted else scf.RHF(mol)
        else:
            mf = dft.UKS(mol) if unrestricted else dft.RKS(mol)
            mf.xc = p["xc"]
        mf.conv_tol = float(p["conv_tol"])
        mf.max_cycle = int(p["max_cycle"])
        mf.level_shift = float(p["level_shift"])
        mf.damp = float(p["damp"])
        return mf


@dataclass
class PySCFStaticMaker(RetryOnFailure, AseRelaxMaker):
    """Single-point PySCF energy and forces of a molecule (module docstring).

    ``calculator_kwargs`` takes the :data:`PYSCF_DEFAULTS` keys (xc, basis, charge, spin,
    conv_tol, max_cycle, level_shift, damp).
    """

    name: str = "PySCF static (PBE/def2-SVP)"
    steps: int = 1
    relax_cell: bool = False
    calculator_kwargs: dict = field(default_factory=lambda: dict(PYSCF_DEFAULTS))

    code: ClassVar[str] = "PySCF"

    def __post_init__(self) -> None:
        super().__post_init__()
        unknown = set(self.calculator_kwargs) - set(PYSCF_DEFAULTS)
        if unknown:
            raise ValueError(f"unknown PySCF setting(s) {sorted(unknown)} in "
                             f"calculator_kwargs; accepted: {sorted(PYSCF_DEFAULTS)}")

    def safer_settings(self) -> dict[str, Any]:
        """More SCF cycles, a level shift and damping (same converged solution)."""
        cycles = int(self.calculator_kwargs.get("max_cycle", PYSCF_DEFAULTS["max_cycle"]))
        return {"max_cycle": max(4 * cycles, 200), "level_shift": 0.25, "damp": 0.5}

    def _get_calculator(self) -> Calculator:
        try:
            import pyscf  # noqa: F401
        except ImportError:
            raise ImportError("the PySCF reference needs PySCF: "
                              "pip install 'atomate2-otf[pyscf]'") from None
        return PySCFCalculator(**{**PYSCF_DEFAULTS, **self.calculator_kwargs})

    def run_ase(self, mol_or_struct: Structure | Molecule,
                prev_dir: str | Path | None = None) -> AseResult:
        """Refuse a periodic structure before any calculation, then run (one retry)."""
        from pymatgen.core import Structure

        if isinstance(mol_or_struct, Structure):
            raise ValueError(f"got a periodic Structure ({mol_or_struct.composition.formula})"
                             f": {_REFUSE_PERIODIC}; use 'qe' for periodic cells")
        return super().run_ase(mol_or_struct, prev_dir=prev_dir)
