"""Quantum ESPRESSO (pw.x) single points for periodic cells, through atomate2's ASE Makers.

The offline plane-wave DFT reference: Debian's ``quantum-espresso`` (pw.x) and the
pseudopotentials of ``quantum-espresso-data`` (``/usr/share/espresso/pseudo``), driven by
ASE's ``Espresso`` calculator inside atomate2's ``AseRelaxMaker`` with ``steps=1``, so the
output is the same task document (eV, eV/A, kbar with VASP's sign) every reference gives.

Settings are fixed for a whole run (every label is compared on one energy zero):

- PBE, with one pseudopotential per element from :data:`PBE_PSEUDOPOTENTIALS` (PSlibrary
  1.0.0 where the package has it), else the first ``<El>.pbe-*`` file of the folder in
  sorted order; ``pseudopotentials={"Si": "..."}`` overrides. Only PBE files are picked,
  since pw.x refuses pseudopotentials of different functionals in one calculation. A
  missing element fails with a ValueError naming the element and the folder.
- ``ecutwfc`` (Ry, default 40) and ``ecutrho`` (default 8 x ecutwfc, enough for the
  ultrasoft/PAW files) are fixed numbers, not per-structure choices.
- k-points: ``kspacing`` (1/A without the 2 pi, ASE's convention; default 0.04, about
  VASP's KSPACING = 0.25) gives a Monkhorst-Pack mesh that depends only on the cell, so it
  is the same for every call of an NVT/NVE run; for NPT pass ``kpts=(n1, n2, n3)`` so the
  mesh does not jump as the cell changes.
- Gaussian smearing of 0.01 Ry (valid for metals and insulators alike), ``conv_thr`` 1e-8
  Ry per cell, forces (``tprnfor``) and stress (``tstress``) always on.

Failures (see :mod:`atomate2_otf.reference.retry`): pw.x stops with a nonzero exit status
when the SCF does not converge ("convergence NOT achieved"); the output file is read to
tell that apart from a crash. Either is retried once with three times the SCF steps (at
least 300), half the mixing factor and local Thomas-Fermi mixing, which change how the SCF
gets to the answer but not the answer.

pw.x runs in ``qe_reference/`` below the job's directory (``espresso.pwi``/``.pwo`` stay
there for inspection). ``command`` is the pw.x command (e.g. ``"mpirun -np 4 pw.x"``).
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from atomate2.ase.jobs import AseRelaxMaker

from atomate2_otf.reference.retry import RetryOnFailure, SCFNotConvergedError, deep_update

if TYPE_CHECKING:
    from ase.calculators.calculator import Calculator
    from atomate2.ase.schemas import AseResult
    from pymatgen.core import Molecule, Structure

logger = logging.getLogger(__name__)

#: where Debian's quantum-espresso-data installs its pseudopotentials
DEBIAN_PSEUDO_DIR = "/usr/share/espresso/pseudo"

#: the PBE pseudopotential per element (file names of quantum-espresso-data 6.7)
PBE_PSEUDOPOTENTIALS: dict[str, str] = {
    "H": "H.pbe-kjpaw.UPF",
    "B": "B.pbe-n-kjpaw_psl.1.0.0.UPF",
    "C": "C.pbe-n-kjpaw_psl.0.1.UPF",
    "N": "N.pbe-n-kjpaw_psl.1.0.0.UPF",
    "O": "O.pbe-kjpaw.UPF",
    "Si": "Si.pbe-nl-rrkjus_psl.1.0.0.UPF",
    "Cr": "Cr.pbe-spn-kjpaw_psl.1.0.0.UPF",
    "Fe": "Fe.pbe-spn-rrkjus_psl.0.2.1.UPF",
    "Ni": "Ni.pbe-spn-kjpaw_psl.1.0.0.UPF",
    "Cu": "Cu.pbe-kjpaw.UPF",
    "Ge": "Ge.pbe-kjpaw.UPF",
    "Rh": "Rh.pbe-rrkjus_lb.UPF",
    "I": "I.pbe-n-kjpaw_psl.1.0.0.UPF",
}

#: pw.x input every call uses (ecutwfc/ecutrho and the k-mesh are Maker fields)
QE_INPUT: dict[str, dict[str, Any]] = {
    "control": {"calculation": "scf", "tprnfor": True, "tstress": True,
                "disk_io": "low"},
    "system": {"occupations": "smearing", "smearing": "gaussian", "degauss": 0.01},
    "electrons": {"conv_thr": 1e-8, "electron_maxstep": 100, "mixing_beta": 0.7,
                  "mixing_mode": "plain"},
}


#: what a label needs from pw.x (see QEStaticMaker._get_calculator)
LABEL_PROPERTIES = frozenset({"energy", "free_energy", "forces", "stress"})


def default_pseudo_dir() -> Path:
    """``$ESPRESSO_PSEUDO`` if set, else Debian's quantum-espresso-data folder."""
    return Path(os.environ.get("ESPRESSO_PSEUDO") or DEBIAN_PSEUDO_DIR)


def pick_pseudopotentials(elements: list[str] | set[str], pseudo_dir: str | Path,
                          overrides: dict[str, str] | None = None) -> dict[str, str]:
    """One PBE pseudopotential file per element (see the module docstring).

    Raises ValueError naming the element and the folder when none is there.
    """
    folder = Path(pseudo_dir)
    if not folder.is_dir():
        raise ValueError(f"pseudopotential folder {str(folder)!r} does not exist; install "
                         f"Debian's quantum-espresso-data or pass pseudo_dir=")
    overrides = overrides or {}
    chosen: dict[str, str] = {}
    for element in sorted(set(elements)):
        name = overrides.get(element) or PBE_PSEUDOPOTENTIALS.get(element)
        if name is None or not (folder / name).is_file():
            candidates = sorted(p.name for p in folder.iterdir()
                                if p.name.lower().startswith(f"{element.lower()}.pbe-")
                                and p.suffix.lower() == ".upf")
            if element in overrides:
                candidates = []  # an explicit choice that is missing is an error
            if not candidates:
                others = sorted(p.name for p in folder.iterdir()
                                if p.name.split(".")[0].split("_")[0] == element)
                raise ValueError(
                    f"no PBE pseudopotential for element {element!r} in {str(folder)!r}"
                    + (f" (asked for {overrides[element]!r})" if element in overrides else "")
                    + (f"; files for {element} there: {', '.join(others)}" if others
                       else "")
                    + "; pass pseudopotentials={'%s': '<file>'} or pseudo_dir=" % element)
            name = candidates[0]
        chosen[element] = name
    return chosen


def scf_failure_from_output(path: Path) -> str | None:
    """pw.x's own account of why it stopped: the non-convergence line or its error box."""
    if not path.is_file():
        return None
    text = path.read_text(errors="replace")
    match = re.search(r"convergence NOT achieved after\s+\d+\s+iterations", text)
    if match:
        return match.group(0)
    box = re.search(r"%{10,}\n(.*?)\n\s*%{10,}", text, re.S)
    if box:
        return " ".join(box.group(1).split())
    return None


def scf_accuracy_not_reached(path: Path) -> str | None:
    """Why a pw.x run that exited normally is nonetheless unconverged, or None: its final
    estimated SCF accuracy is not below its convergence threshold."""
    if not path.is_file():
        return None
    text = path.read_text(errors="replace")
    threshold = re.search(r"scf convergence threshold\s*=\s*(\S+)", text)
    accuracies = re.findall(r"estimated scf accuracy\s*<\s*(\S+)\s*Ry", text)
    if threshold is None or not accuracies:
        return None
    try:
        limit, last = float(threshold.group(1)), float(accuracies[-1])
    except ValueError:
        return None
    if last < limit:
        return None
    return (f"SCF stopped at estimated accuracy {last:.3g} Ry, above conv_thr {limit:.3g} Ry "
            f"(scf_must_converge=.false.?)")


@dataclass
class QEStaticMaker(RetryOnFailure, AseRelaxMaker):
    """Single-point PBE with Quantum ESPRESSO's pw.x for periodic cells (module docstring).

    Args:
        ecutwfc: wavefunction cutoff (Ry), fixed for the run.
        ecutrho: charge-density cutoff (Ry); None: 8 x ecutwfc.
        kspacing: k-point spacing (1/A, no 2 pi) when ``kpts`` is None.
        kpts: a fixed Monkhorst-Pack mesh; use it for NPT.
        pseudo_dir: pseudopotential folder (default :func:`default_pseudo_dir`).
        pseudopotentials: per-element file names that replace the default choice.
        command: the pw.x command line.
        calculator_kwargs: pw.x input (``{"input_data": {namelist: {...}}}``) deep-merged
            over :data:`QE_INPUT`, plus any other ``Espresso`` keyword.
    """

    name: str = "QE static (PBE)"
    steps: int = 1
    relax_cell: bool = False
    ecutwfc: float = 40.0
    ecutrho: float | None = None
    kspacing: float = 0.04
    kpts: tuple[int, int, int] | None = None
    pseudo_dir: str | None = None
    pseudopotentials: dict[str, str] = field(default_factory=dict)
    command: str = "pw.x"
    directory: str = "qe_reference"

    code: ClassVar[str] = "Quantum ESPRESSO (pw.x)"

    def __post_init__(self) -> None:
        super().__post_init__()
        if not float(self.ecutwfc) > 0:
            raise ValueError(f"ecutwfc must be > 0 Ry, got {self.ecutwfc!r}")
        if self.ecutrho is not None and float(self.ecutrho) < 4 * float(self.ecutwfc):
            raise ValueError(f"ecutrho must be >= 4 x ecutwfc = {4 * self.ecutwfc} Ry, "
                             f"got {self.ecutrho!r}")
        if self.kpts is None and not float(self.kspacing) > 0:
            raise ValueError(f"kspacing must be > 0 1/A, got {self.kspacing!r}")
        if self.kpts is not None and (len(self.kpts) != 3 or min(self.kpts) < 1):
            raise ValueError(f"kpts must be three positive integers, got {self.kpts!r}")
        if not str(self.command).strip():
            raise ValueError(f"command must be a pw.x command line, got {self.command!r}")
        self._elements: list[str] = []

    def safer_settings(self) -> dict[str, Any]:
        """More SCF steps, half the mixing factor, local-TF mixing (same Hamiltonian)."""
        electrons = deep_update(QE_INPUT, self.calculator_kwargs.get("input_data", {}))[
            "electrons"]
        return {"input_data": {"electrons": {
            "electron_maxstep": max(3 * int(electrons["electron_maxstep"]), 300),
            "mixing_beta": 0.5 * float(electrons["mixing_beta"]),
            "mixing_mode": "local-TF"}}}

    def _get_calculator(self) -> Calculator:
        from ase.calculators.espresso import Espresso, EspressoProfile

        pseudo_dir = Path(self.pseudo_dir) if self.pseudo_dir else default_pseudo_dir()
        extra = dict(self.calculator_kwargs)
        input_data = deep_update(QE_INPUT, extra.pop("input_data", {}))
        input_data = deep_update(input_data, {
            "control": {"tprnfor": True, "tstress": True, "outdir": ".",
                        "pseudo_dir": str(pseudo_dir)},
            "system": {"ecutwfc": float(self.ecutwfc),
                       "ecutrho": float(self.ecutrho or 8 * self.ecutwfc)}})
        mesh: dict[str, Any] = ({"kpts": tuple(int(k) for k in self.kpts)} if self.kpts
                                else {"kspacing": float(self.kspacing)})
        profile = EspressoProfile(command=self.command, pseudo_dir=str(pseudo_dir))
        calculator = Espresso(profile=profile, directory=self.directory,
                              input_data=input_data,
                              pseudopotentials=pick_pseudopotentials(
                                  self._elements, pseudo_dir, self.pseudopotentials),
                              **mesh, **extra)
        # ASE's template lists magmoms and dipole, which a spin-unpolarised pw.x run does
        # not print; atomate2 asks for the magmoms after the energy, and ASE would then run
        # pw.x a second time on the same structure (seen: two runs per label)
        calculator.template.implemented_properties = LABEL_PROPERTIES
        return calculator

    def _run_checked(self, mol_or_struct: Structure | Molecule,
                     prev_dir: str | Path | None) -> AseResult:
        """Run pw.x; a nonzero exit is reported as SCF non-convergence when the output says
        so (pw.x stops with status 2 then), as a crash otherwise."""
        output = Path(self.directory) / "espresso.pwo"
        try:
            result = super()._run_checked(mol_or_struct, prev_dir)
        except subprocess.CalledProcessError as error:
            reason = scf_failure_from_output(output)
            if reason and "convergence NOT achieved" in reason:
                raise SCFNotConvergedError(f"pw.x: {reason}") from error
            if reason:
                raise RuntimeError(f"pw.x crashed (exit status {error.returncode}): "
                                   f"{reason}") from error
            raise
        # with scf_must_converge=.false. pw.x 6.7 stops at electron_maxstep, prints
        # "convergence has been achieved" and forces of the unconverged density, exits 0
        unconverged = scf_accuracy_not_reached(output)
        if unconverged:
            raise SCFNotConvergedError(f"pw.x: {unconverged}")
        return result

    def run_ase(self, mol_or_struct: Structure | Molecule,
                prev_dir: str | Path | None = None) -> AseResult:
        """Refuse a molecule, choose the pseudopotentials, then run (with one retry)."""
        from pymatgen.core import Structure

        if not isinstance(mol_or_struct, Structure):
            raise ValueError(
                f"Quantum ESPRESSO (pw.x) labels periodic cells; got a "
                f"{type(mol_or_struct).__name__} ({mol_or_struct.composition.formula}); use "
                f"a molecular reference (e.g. 'pyscf') or put the molecule in a box")
        pseudo_dir = Path(self.pseudo_dir) if self.pseudo_dir else default_pseudo_dir()
        elements = sorted({site.specie.symbol for site in mol_or_struct})
        pick_pseudopotentials(elements, pseudo_dir, self.pseudopotentials)  # fails early
        self._elements = elements
        self._calculator = None
        return super().run_ase(mol_or_struct, prev_dir=prev_dir)
