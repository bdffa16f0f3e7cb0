"""How one structure gets labelled: atomate2 static Makers and ASE calculators.

Any jobflow Maker whose ``make(structure)`` job outputs energy, forces and (periodic)
stress can label structures for an on-the-fly run: atomate2's ASE Makers (below), its VASP
``StaticMaker`` or a user's own. :func:`label_from_output` reads such an output into the
package's units.
"""

from atomate2_otf.reference.labels import ReferenceLabel, label_from_output
from atomate2_otf.reference.makers import (
    EMTStaticMaker,
    GFN1xTBStaticMaker,
    GFN2xTBStaticMaker,
    get_reference_maker,
    reference_names,
)

__all__ = [
    "EMTStaticMaker",
    "GFN1xTBStaticMaker",
    "GFN2xTBStaticMaker",
    "ReferenceLabel",
    "get_reference_maker",
    "label_from_output",
    "reference_names",
]
