"""Offline reference Makers built on atomate2's ASE static machinery, and a name registry.

atomate2's ``AseRelaxMaker`` with ``steps=1`` is a single-point calculation whose output is
an atomate2 task document (energy in eV, forces in eV/A, stress in kbar with VASP's sign),
exactly the shape a VASP ``StaticMaker`` produces, so the on-the-fly loop treats all
references alike. The CLI and the Makers accept these by name.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from atomate2.ase.jobs import EmtRelaxMaker, GFNxTBStaticMaker

if TYPE_CHECKING:
    from collections.abc import Callable

    from jobflow import Maker


def _xtb_kwargs(method: str) -> dict:
    """tblite settings: atomate2's defaults with the method chosen and output silenced."""
    return {
        "method": method,
        "charge": None,
        "multiplicity": None,
        "accuracy": 1.0,
        "guess": "sad",
        "max_iterations": 250,
        "mixer_damping": 0.4,
        "electric_field": None,
        "spin_polarization": None,
        "electronic_temperature": 300.0,
        "cache_api": True,
        "verbosity": 0,
    }


@dataclass
class GFN2xTBStaticMaker(GFNxTBStaticMaker):
    """Single-point GFN2-xTB (tblite): the offline stand-in for DFT on molecules."""

    name: str = "GFN2-xTB static"
    calculator_kwargs: dict = field(default_factory=lambda: _xtb_kwargs("GFN2-xTB"))


@dataclass
class GFN1xTBStaticMaker(GFNxTBStaticMaker):
    """Single-point GFN1-xTB (tblite): parametrised for most of the periodic table."""

    name: str = "GFN1-xTB static"
    calculator_kwargs: dict = field(default_factory=lambda: _xtb_kwargs("GFN1-xTB"))


@dataclass
class EMTStaticMaker(EmtRelaxMaker):
    """Single-point ASE EMT (Cu, Al, Ni, Pd, Ag, Pt, Au): instant, for tests and demos."""

    name: str = "EMT static"
    steps: int = 1
    relax_cell: bool = False


def _vasp_static() -> Maker:
    """atomate2's VASP StaticMaker with MP-compatible labelling settings (reference.vasp)."""
    from atomate2_otf.reference.vasp import vasp_reference_maker

    return vasp_reference_maker()


def _retrying(name: str) -> Callable[[], Maker]:
    """A factory of reference.retry's Maker ``name`` (one retry with safer settings)."""

    def make() -> Maker:
        from atomate2_otf.reference import retry

        return getattr(retry, name)()

    return make


def _qe_static() -> Maker:
    """Quantum ESPRESSO pw.x, PBE, Debian's pseudopotentials (reference.qe)."""
    from atomate2_otf.reference.qe import QEStaticMaker

    return QEStaticMaker()


def _pyscf_static() -> Maker:
    """PySCF PBE/def2-SVP for molecules, no stress (reference.pyscf)."""
    from atomate2_otf.reference.pyscf import PySCFStaticMaker

    return PySCFStaticMaker()


_REFERENCES: dict[str, Callable[[], Maker]] = {
    "gfn2-xtb": _retrying("RetryingGFN2xTBStaticMaker"),
    "gfn1-xtb": _retrying("RetryingGFN1xTBStaticMaker"),
    "emt": _retrying("RetryingEMTStaticMaker"),
    "vasp": _vasp_static,
    "qe": _qe_static,
    "pyscf": _pyscf_static,
}


def reference_names() -> list[str]:
    """Names accepted by :func:`get_reference_maker` (and the CLI's ``--reference``)."""
    return sorted(_REFERENCES)


def get_reference_maker(name: str) -> Maker:
    """A fresh reference Maker by name, e.g. ``"gfn2-xtb"`` or ``"emt"``."""
    key = str(name).lower()
    if key not in _REFERENCES:
        raise ValueError(
            f"unknown reference {name!r}; accepted references are: {', '.join(reference_names())}"
        )
    return _REFERENCES[key]()
