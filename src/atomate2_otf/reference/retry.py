"""One retry with safer settings for a failed reference calculation, then a clear failure.

An on-the-fly run makes hundreds of reference calls on MD snapshots that nobody looked at;
sooner or later one of them does not converge its SCF, the code crashes, or it returns
NaN. Most such failures go away with more SCF iterations or stronger damping, which do not
change the converged answer (so the label stays consistent with every other label of the
run). Failures that more iterations cannot fix (a missing pseudopotential, a periodic cell
given to a molecular code) are input errors and are *not* retried.

:class:`RetryOnFailure` is a mixin for atomate2's ASE Makers (``AseRelaxMaker`` subclasses):
it wraps ``run_ase`` so that a failure of any of these kinds

- SCF non-convergence (raised by the calculator, e.g. tblite's ``CalculationFailed``,
  :class:`SCFNotConvergedError` from this package's QE/PySCF Makers),
- a crashed code (nonzero exit status, any exception from the calculator),
- a non-finite energy, force or stress,

leads to exactly one more attempt with ``calculator_kwargs`` deep-updated by
:meth:`RetryOnFailure.safer_settings` (or the Maker's ``retry_settings``). If that fails
too, :class:`ReferenceCalculationError` names the reference call (index and MD step, read
from the running jobflow job), the code, the structure and both failures. The job fails,
so the flow stops; the labels and checkpoints written by earlier jobs stay in the store.

The VASP Maker (:mod:`atomate2_otf.reference.vasp`) relies on custodian instead: one
corrective rerun (``max_errors=2``, ``VaspCrashHandler`` for crashes), then the same
:class:`ReferenceCalculationError`. NaN in any reference's output is refused by
:func:`atomate2_otf.reference.labels.label_from_output`.
"""

from __future__ import annotations

import copy
import logging
import re
import subprocess
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from atomate2_otf.reference.makers import (
    EMTStaticMaker,
    GFN1xTBStaticMaker,
    GFN2xTBStaticMaker,
)

if TYPE_CHECKING:
    from pathlib import Path

    from atomate2.ase.schemas import AseResult
    from pymatgen.core import Molecule, Structure

logger = logging.getLogger(__name__)

#: exceptions that mean the *input* is wrong: safer SCF settings cannot help, so no retry
NOT_RETRIED: tuple[type[BaseException], ...] = (
    ValueError, TypeError, ImportError, NotImplementedError, FileNotFoundError,
    PermissionError,
)


class SCFNotConvergedError(RuntimeError):
    """The electronic self-consistency loop of a reference code did not converge."""


class NonFiniteOutputError(RuntimeError):
    """A reference code returned NaN or inf for the energy, a force or the stress."""


class ReferenceCalculationError(RuntimeError):
    """A reference calculation failed, and so did its one retry with safer settings."""


def deep_update(base: dict[str, Any], updates: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``base`` with ``updates`` merged in, nested dicts merged key by key (so
    ``{"input_data": {"electrons": {...}}}`` changes only the electrons namelist)."""
    merged = copy.deepcopy(base)
    for key, value in updates.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_update(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def current_call() -> str:
    """Which reference call of an on-the-fly run is running, e.g. ``"reference call 3 (MD
    step 120)"``, from the running jobflow job's metadata or name; ``"reference call"`` when
    not run by an on-the-fly flow."""
    try:
        from jobflow import CURRENT_JOB

        job = CURRENT_JOB.job
    except Exception:  # noqa: BLE001 - no job context (called directly)
        job = None
    if job is None:
        return "reference call"
    metadata = getattr(job, "metadata", None) or {}
    index = metadata.get("otf_index")
    if index is None:
        match = re.search(r"otf reference (\d+)", str(getattr(job, "name", "")))
        index = None if match is None else int(match.group(1))
    if index is None:
        return f"reference job {getattr(job, 'name', '?')!r}"
    md_step = metadata.get("otf_md_step")
    if md_step is not None:
        return f"reference call {index} (MD step {md_step})"
    if int(index) == 0:
        return "reference call 0 (the initial structure)"
    return f"reference call {index}"


def describe_failure(error: BaseException) -> str:
    """A one-line account of a failure: its kind and the code's own words."""
    if isinstance(error, subprocess.CalledProcessError):
        return f"the code crashed (exit status {error.returncode} from {error.cmd!r})"
    if isinstance(error, SCFNotConvergedError):
        return f"SCF not converged: {error}"
    if isinstance(error, NonFiniteOutputError):
        return f"non-finite output: {error}"
    text = str(error).strip() or "(no message)"
    if text.lower().startswith("scf not converged"):
        return text
    if "not converged" in text.lower() or "convergence not achieved" in text.lower():
        return f"SCF not converged: {text}"
    return f"{type(error).__name__}: {text}"


def check_finite(results: dict[str, Any]) -> None:
    """Raise :class:`NonFiniteOutputError` when an energy, force or stress is NaN/inf."""
    bad = []
    for key in ("energy", "free_energy", "forces", "stress"):
        value = results.get(key)
        if value is None:
            continue
        if not np.all(np.isfinite(np.asarray(value, dtype=float))):
            bad.append(key)
    if bad:
        raise NonFiniteOutputError(f"{', '.join(bad)} not finite (NaN/inf)")


@dataclass
class RetryOnFailure:
    """Mixin for atomate2 ASE Makers: one retry with safer settings, then a clear error.

    Put it first among the bases, e.g. ``class M(RetryOnFailure, AseRelaxMaker)``.

    Args:
        retry: False turns the retry off (the first failure is reported at once).
        retry_settings: ``calculator_kwargs`` updates for the retry (deep-merged); None
            uses :meth:`safer_settings`. Retry settings must not change the physics
            (functional, basis, cutoff, k-points), only how the SCF gets there, or the
            retried label would not be comparable with the others of the run.
    """

    retry: bool = True
    retry_settings: dict[str, Any] | None = None

    #: the code's name in failure messages
    code: ClassVar[str] = "reference code"

    def safer_settings(self) -> dict[str, Any]:
        """``calculator_kwargs`` updates that make the SCF more robust (override per code).
        The default retries with unchanged settings (a transient crash may pass)."""
        return {}

    def _run_checked(self, mol_or_struct: Structure | Molecule,
                     prev_dir: str | Path | None) -> AseResult:
        result = super().run_ase(mol_or_struct, prev_dir=prev_dir)  # type: ignore[misc]
        check_finite(getattr(self.calculator, "results", {}) or {})  # type: ignore[attr-defined]
        return result

    def run_ase(self, mol_or_struct: Structure | Molecule,
                prev_dir: str | Path | None = None) -> AseResult:
        """atomate2's ``run_ase``, retried once with safer settings if it fails."""
        composition = getattr(mol_or_struct, "composition", None)
        formula = "".join(str(getattr(composition, "hill_formula", "?")).split())
        try:
            return self._run_checked(mol_or_struct, prev_dir)
        except NOT_RETRIED:
            raise
        except Exception as error:  # noqa: BLE001 - any failure of the code is retried
            first = error
        where = current_call()
        if not self.retry:
            raise ReferenceCalculationError(
                f"{where}: {self.code} failed on {formula}: {describe_failure(first)} "
                f"(retry=False); labels and checkpoints written so far stay") from first
        settings = (self.safer_settings() if self.retry_settings is None
                    else dict(self.retry_settings))
        logger.warning("%s: %s failed on %s (%s); retrying once with safer settings %s",
                       where, self.code, formula, describe_failure(first), settings)
        original = copy.deepcopy(self.calculator_kwargs)  # type: ignore[attr-defined]
        self.calculator_kwargs = deep_update(original, settings)
        self._calculator = None  # rebuilt from the safer settings
        try:
            return self._run_checked(mol_or_struct, prev_dir)
        except Exception as second:  # noqa: BLE001
            raise ReferenceCalculationError(
                f"{where}: {self.code} failed on {formula}: {describe_failure(first)}; the "
                f"one retry with safer settings {settings} failed too: "
                f"{describe_failure(second)}. The run stops here; labels and checkpoints "
                f"written so far stay") from second
        finally:
            # the next call starts from the run's own settings again
            self.calculator_kwargs = original
            self._calculator = None



def _xtb_safer(kwargs: dict[str, Any]) -> dict[str, Any]:
    """tblite: four times the SCF iterations (at least 1000) and half the mixer damping."""
    return {"max_iterations": max(4 * int(kwargs.get("max_iterations", 250)), 1000),
            "mixer_damping": 0.5 * float(kwargs.get("mixer_damping", 0.4))}


@dataclass
class RetryingGFN2xTBStaticMaker(RetryOnFailure, GFN2xTBStaticMaker):
    """GFN2-xTB single point that retries a failed SCF with more iterations and softer
    mixing (tblite's Broyden mixer damping; the converged result does not depend on it)."""

    code: ClassVar[str] = "GFN2-xTB (tblite)"

    def safer_settings(self) -> dict[str, Any]:
        return _xtb_safer(self.calculator_kwargs)


@dataclass
class RetryingGFN1xTBStaticMaker(RetryOnFailure, GFN1xTBStaticMaker):
    """GFN1-xTB single point with the same retry as :class:`RetryingGFN2xTBStaticMaker`."""

    code: ClassVar[str] = "GFN1-xTB (tblite)"

    def safer_settings(self) -> dict[str, Any]:
        return _xtb_safer(self.calculator_kwargs)


@dataclass
class RetryingEMTStaticMaker(RetryOnFailure, EMTStaticMaker):
    """EMT single point; EMT has no SCF, so a retry only catches transient failures."""

    code: ClassVar[str] = "ASE EMT"
