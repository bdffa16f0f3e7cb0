"""Read a reference job's output into eV, eV/A and eV/A^3 (ASE's stress sign).

atomate2 task documents (ASE and VASP alike) report stress in kbar with the opposite sign
to ASE (``kbar = -10 * stress_eV_per_A3 / GPa``). This is the one place that converts it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from ase.units import GPa

from atomate2_otf.records import StructureRecord

#: eV/A^3 per kbar (1 kbar = 0.1 GPa)
EV_PER_A3_PER_KBAR = 0.1 * GPa


def kbar_to_ase_stress(stress_kbar: Any) -> np.ndarray:
    """atomate2/VASP stress (kbar, positive = compressive) -> ASE stress (eV/A^3)."""
    return -np.asarray(stress_kbar, dtype=float).reshape(3, 3) * EV_PER_A3_PER_KBAR


def ase_stress_to_kbar(stress: Any) -> np.ndarray:
    """ASE stress (eV/A^3, 3x3) -> atomate2/VASP kbar with VASP's sign."""
    return -np.asarray(stress, dtype=float).reshape(3, 3) / EV_PER_A3_PER_KBAR


def _get(obj: Any, key: str) -> Any:
    return obj.get(key) if isinstance(obj, dict) else getattr(obj, key, None)


def _task_output(output: Any) -> Any:
    """The ``output`` part of an atomate2 task document (or its dict form); None for a
    plain label dict."""
    inner = _get(output, "output")
    return inner if inner is not None and _get(inner, "energy") is not None else None


def elapsed_from_output(output: Any) -> float | None:
    """Wall seconds the reference reported (atomate2's ``output.elapsed_time``, custodian's
    run statistics for VASP, ``elapsed_s`` of a plain dict), or None."""
    inner = _task_output(output)
    if inner is not None:
        elapsed = _get(inner, "elapsed_time")
        if elapsed is None:  # VASP task documents: custodian's run statistics
            overall = (_get(output, "run_stats") or {}).get("overall")
            elapsed = None if overall is None else _get(overall, "elapsed_time")
    else:
        elapsed = _get(output, "elapsed_s")
    return None if elapsed is None else float(elapsed)


def label_from_output(output: Any, structure: StructureRecord, *,
                      where: str = "reference") -> StructureRecord:
    """``structure`` labelled with the energy, forces and stress of a reference job's output.

    Accepts atomate2 task documents (``output.energy``, ``output.forces``, ``output.stress``
    in kbar), their dict forms, or a plain ``{"energy", "forces", "stress"}`` dict whose
    stress is already in eV/A^3 (marked by ``"stress_unit": "eV/A^3"``). Raises ValueError,
    naming ``where``, when a value is missing, has the wrong shape or is not finite. The
    labels are attached to ``structure`` itself (the positions the MD step must land on),
    not to the reference's copy, which a code may have wrapped or rounded.
    """
    inner = _task_output(output)
    if inner is not None:
        energy, forces, stress_raw = (_get(inner, k) for k in ("energy", "forces", "stress"))
        stress = None if stress_raw is None else kbar_to_ase_stress(stress_raw)
    else:
        energy, forces, stress_raw = (_get(output, k) for k in ("energy", "forces", "stress"))
        if stress_raw is not None and _get(output, "stress_unit") != "eV/A^3":
            raise ValueError(f"{where}: a plain label dict must mark its stress with "
                             f"stress_unit='eV/A^3'")
        stress = None if stress_raw is None else np.asarray(stress_raw, float).reshape(3, 3)
    if energy is None or forces is None:
        raise ValueError(f"{where}: the output has no energy and forces "
                         f"(got {type(output).__name__}); a reference must report both")
    forces = np.asarray(forces, dtype=float)
    if forces.shape != (structure.n_atoms, 3):
        raise ValueError(f"{where}: forces have shape {forces.shape}, expected "
                         f"({structure.n_atoms}, 3)")
    energy = float(energy)
    values = [np.array([energy]), forces] + ([stress] if stress is not None else [])
    if not all(np.all(np.isfinite(v)) for v in values):
        raise ValueError(f"{where}: the reference returned a non-finite energy, force or "
                         f"stress (NaN/inf)")
    return structure.labelled(energy, forces, stress)
