"""How one structure gets labelled: atomate2 static Makers and ASE calculators.

Registered names (:func:`get_reference_maker`, the CLI's ``--reference``): ``gfn2-xtb``,
``gfn1-xtb``, ``emt`` (retrying versions, :mod:`.retry`), ``vasp`` (:mod:`.vasp`, one custodian
rerun, then ``ReferenceCalculationError``), ``qe`` (Quantum ESPRESSO for periodic cells, :mod:`.qe`) and
``pyscf`` (molecules only, no stress, :mod:`.pyscf`). A failed SCF, a crash or NaN output
of the ASE-based ones is retried once with safer SCF settings; then the run stops with
:class:`ReferenceCalculationError` naming the call and the code.

Any jobflow Maker whose ``make(structure)`` job outputs energy, forces and (periodic)
stress can label structures for an on-the-fly run: atomate2's ASE Makers (below), its VASP
``StaticMaker`` (:func:`vasp_reference_maker`, registered as ``"vasp"``) or a user's own.
:func:`label_from_output` reads such an output into the package's units, as a labelled
:class:`~atomate2_otf.records.StructureRecord`.

Plugging in your own reference Maker
------------------------------------
``OTFMDMaker(reference_maker=maker)`` calls ``maker.make(structure)`` once per label, with a
pymatgen ``Structure`` for periodic cells and a ``Molecule`` otherwise, and adds the returned
Job (or Flow whose ``output`` is the label) to the running flow. Its output must be one of:

1. **An atomate2 task document** (VASP's ``TaskDoc``, the ASE Makers' ``AseStructureTaskDoc``,
   any pydantic model or dict of that shape): ``output.energy`` total energy in eV,
   ``output.forces`` N x 3 in eV/A, ``output.stress`` 3 x 3 **in kbar with VASP's sign**
   (positive = compressive, ``kbar = -10 * stress_ASE / GPa``), or None for molecules.
   ``output.elapsed_time`` (s), if present, is recorded as the reference's cost.
2. **A plain dict** ``{"energy": eV, "forces": N x 3 eV/A, "stress": 3 x 3 eV/A^3 or None,
   "stress_unit": "eV/A^3"}`` with the stress in ASE's convention (``atoms.get_stress
   (voigt=False)``). ``stress_unit`` is required whenever a stress is given, so a kbar
   tensor is never silently read as eV/A^3; ``"elapsed_s"`` is optional.

The forces must be in the order of the structure's sites (do not sort the structure), and
every call of one run must use the same settings: the first label sets the energy offset
between the reference and the foundation model, and every later label is compared on that
zero. Two runs with different references (or different reference settings) each get their
own offset, so only within-run consistency matters; a constant energy shift between
references changes the offset by exactly that shift and nothing else. A missing energy or
forces, a wrong shape or a NaN raises ValueError naming the reference call.
"""

from atomate2_otf.reference.labels import elapsed_from_output, label_from_output
from atomate2_otf.reference.makers import (
    EMTStaticMaker,
    GFN1xTBStaticMaker,
    GFN2xTBStaticMaker,
    get_reference_maker,
    reference_names,
)
from atomate2_otf.reference.pyscf import PySCFCalculator, PySCFStaticMaker
from atomate2_otf.reference.qe import QEStaticMaker
from atomate2_otf.reference.retry import (
    ReferenceCalculationError,
    RetryOnFailure,
    SCFNotConvergedError,
)
from atomate2_otf.reference.vasp import vasp_reference_maker

__all__ = [
    "EMTStaticMaker",
    "GFN1xTBStaticMaker",
    "GFN2xTBStaticMaker",
    "PySCFCalculator",
    "PySCFStaticMaker",
    "QEStaticMaker",
    "ReferenceCalculationError",
    "RetryOnFailure",
    "SCFNotConvergedError",
    "get_reference_maker",
    "elapsed_from_output",
    "label_from_output",
    "reference_names",
    "vasp_reference_maker",
]
