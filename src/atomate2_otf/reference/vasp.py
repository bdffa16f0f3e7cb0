"""atomate2's VASP ``StaticMaker`` set up for on-the-fly labelling (the cluster reference).

The input settings (the Materials Project's GGA/GGA+U static set, with every per-structure
adaptation switched off so that all labels of a run share one Hamiltonian), the custodian
handlers and what happens when a calculation fails are explained in ``docs/vasp.md``.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from atomate2.vasp.jobs.base import vasp_job
from atomate2.vasp.jobs.core import StaticMaker
from custodian.custodian import CustodianError, ErrorHandler
from custodian.vasp.handlers import (
    VASP_BACKUP_FILES,
    FrozenJobErrorHandler,
    NonConvergingErrorHandler,
    PositiveEnergyErrorHandler,
    StdErrHandler,
    UnconvergedErrorHandler,
    VaspErrorHandler,
)

from atomate2_otf.reference.retry import ReferenceCalculationError, current_call

if TYPE_CHECKING:
    from collections.abc import Sequence

    from jobflow import Response
    from pymatgen.core import Structure
    from pymatgen.io.vasp.inputs import Kpoints
    from pymatgen.io.vasp.sets import VaspInputSet

logger = logging.getLogger(__name__)

#: INCAR tags every labelling call uses on top of MP's GGA(+U) settings (module docstring)
LABELLING_INCAR: dict[str, Any] = {
    "ISYM": 0,
    "NSW": 0,
    "IBRION": -1,
    "ISIF": 2,
    "ISMEAR": 0,
    "SIGMA": 0.05,
    "EDIFF": 1e-6,
    "LREAL": False,
    "LCHARG": False,
    "LWAVE": False,
    "LORBIT": None,
}

#: MP's k-point density for static calculations (k-points per reciprocal atom volume)
MP_STATIC_RECIPROCAL_DENSITY = 100

#: the outputs a crashed VASP run may leave half-written
_CRASH_OUTPUTS = ("vasprun.xml", "OUTCAR", "OSZICAR", "CONTCAR", "vasp.out", "std_err.txt")


def first_stderr_line(directory: str | Path = ".") -> str:
    """The first non-blank line VASP wrote to stderr (custodian's ``std_err.txt``): for a
    crash, the runtime's own words (e.g. ``forrtl: severe (174): SIGSEGV ...``); ''."""
    path = Path(directory) / "std_err.txt"
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return next((line.strip() for line in lines if line.strip()), "")


class VaspCrashHandler(ErrorHandler):
    """VASP ended without a complete vasprun.xml for no reason the other handlers know:
    rerun once (custodian's ``max_errors`` limits it), ALGO Fast/VeryFast -> Normal.

    Not a monitor: checked after VASP has exited. It stays silent when
    ``VaspErrorHandler``, ``StdErrHandler`` or ``FrozenJobErrorHandler`` (default
    settings) recognise the failure, so one failure is not corrected (and counted) twice.
    The crashed run's files go to custodian's ``error.N.tar.gz``; its partial outputs are
    removed so the rerun's cannot be mixed up with them.
    """

    is_monitor = False

    def __init__(self, output_filename: str = "vasprun.xml") -> None:
        self.output_filename = output_filename

    def check(self, directory: str = "./") -> bool:
        from custodian.vasp.io import load_vasprun

        try:
            load_vasprun(os.path.join(directory, self.output_filename))
            return False
        except Exception:  # noqa: BLE001 - missing or truncated: VASP did not finish
            pass
        for other in (VaspErrorHandler(), StdErrHandler(), FrozenJobErrorHandler()):
            try:
                if other.check(directory=directory):
                    return False
            except Exception:  # noqa: BLE001, S112 - that handler cannot tell
                continue
        return True

    def correct(self, directory: str = "./") -> dict[str, Any]:
        from custodian.utils import backup
        from custodian.vasp.interpreter import VaspModder
        from pymatgen.io.vasp.inputs import VaspInput

        detail = first_stderr_line(directory)
        backup(VASP_BACKUP_FILES, directory=directory)
        vi = VaspInput.from_directory(directory)
        actions: list[dict[str, Any]] = []
        if str(vi["INCAR"].get("ALGO", "Normal")).strip().lower()[:1] in ("f", "v"):
            actions.append({"dict": "INCAR", "action": {"_set": {"ALGO": "Normal"}}})
        actions += [{"file": name, "action": {"_file_delete": {"mode": "actual"}}}
                    for name in _CRASH_OUTPUTS if os.path.isfile(os.path.join(directory, name))]
        VaspModder(vi=vi, directory=directory).apply_actions(actions)
        error = "Crashed" + (f": {detail}" if detail else " (no stderr)")
        return {"errors": [error], "actions": actions or None}


#: custodian handlers whose corrections are numerical only (module docstring)
LABELLING_HANDLERS: tuple[ErrorHandler, ...] = (
    VaspErrorHandler(),
    UnconvergedErrorHandler(),
    NonConvergingErrorHandler(),
    PositiveEnergyErrorHandler(),
    FrozenJobErrorHandler(),
    StdErrHandler(),
    VaspCrashHandler(),
)

#: custodian's limit on corrections: the first failure's, one rerun (module docstring)
LABELLING_MAX_ERRORS = 2

#: custodian polls VASP every second; monitors (error scans of vasp.out, OSZICAR) each minute
LABELLING_CUSTODIAN_KWARGS: dict[str, Any] = {"polling_time_step": 1, "monitor_freq": 60}


#: files an earlier VASP/custodian run leaves behind (custodian decompresses ``*.gz`` inputs
#: over the new ones before it starts VASP, and stale outputs would be parsed as new)
_STALE_PATTERNS = ("vasprun.xml*", "OUTCAR*", "OSZICAR*", "CONTCAR*", "custodian.json*",
                   "INCAR*", "POSCAR*", "KPOINTS*", "POTCAR*")


def check_fresh_directory(directory: Path) -> None:
    """Refuse a job directory that holds files of an earlier VASP calculation.

    Seen with atomate2 0.1.5 + custodian: two reference jobs run in one directory
    (``run_locally`` without ``create_folders=True``) make the second job label the
    *first* structure, silently, because custodian decompresses the first job's
    ``POSCAR.gz`` over the freshly written ``POSCAR``.
    """
    stale = sorted({p.name for pattern in _STALE_PATTERNS for p in directory.glob(pattern)})
    if stale:
        raise ValueError(
            f"the VASP reference job would run in {str(directory)!r}, which already holds "
            f"files of an earlier VASP calculation ({', '.join(stale[:6])}); custodian would "
            f"reuse its inputs and the label would belong to another structure. Run each job "
            f"in its own directory: jobflow's run_locally(..., create_folders=True) "
            f"(FireWorks and jobflow-remote always do)")


@dataclass
class LabellingStaticMaker(StaticMaker):
    """atomate2's VASP ``StaticMaker`` that checks its inputs before any file is written:
    a periodic structure, and a job directory no earlier VASP run has used."""

    name: str = "VASP static (MP PBE)"

    @vasp_job
    def make(self, structure: Structure, prev_dir: str | Path | None = None) -> Response:
        """Run one VASP single point (atomate2's StaticMaker.make after the checks)."""
        from pymatgen.core import Structure

        if not isinstance(structure, Structure):
            raise ValueError(
                f"VASP needs a periodic cell, got a {type(structure).__name__} "
                f"({getattr(structure, 'composition', '?')}); put a molecule in a box "
                f"(periodic ASE Atoms) or use a molecular reference")
        if prev_dir is None:
            check_fresh_directory(Path.cwd())
        try:
            return StaticMaker.make.original(self, structure, prev_dir=prev_dir)
        except CustodianError as error:
            raise ReferenceCalculationError(
                vasp_failure_message(structure, Path.cwd(), error)) from error
        except RuntimeError as error:
            # atomate2's should_stop_children: custodian passed, the output is unconverged
            if "not successful" not in str(error):
                raise
            raise ReferenceCalculationError(
                vasp_failure_message(structure, Path.cwd(), error)) from error


def _describe_actions(actions: list[dict[str, Any]] | None) -> str:
    """custodian's actions in a few words: ``INCAR ALGO=Normal; removed OUTCAR, ...``."""
    if not actions:
        return "no correction possible"
    parts, removed = [], []
    for action in actions:
        for kind, settings in (action.get("action") or {}).items():
            if kind == "_file_delete":
                removed.append(str(action.get("file")))
            elif kind == "_set" and isinstance(settings, dict):
                parts.append(f"{action.get('dict', action.get('file'))} "
                             + ", ".join(f"{k}={v}" for k, v in settings.items()))
            elif kind == "_unset" and isinstance(settings, dict):
                parts.append(f"{action.get('dict', action.get('file'))} without "
                             + ", ".join(settings))
            else:
                parts.append(f"{action.get('dict') or action.get('file')} {kind} {settings}")
    if removed:
        parts.append("removed the partial " + ", ".join(removed))
    return "; ".join(parts)


def _describe_errors(errors: list[str], directory: Path) -> str:
    texts = []
    for error in errors or ["?"]:
        if str(error) == "Unconverged":
            nelm = "NELM"
            try:
                from pymatgen.io.vasp.inputs import Incar

                nelm = f"NELM = {Incar.from_file(directory / 'INCAR').get('NELM', 60)}"
            except Exception:  # noqa: BLE001 - the number is a courtesy
                pass
            texts.append(f"SCF not converged within {nelm} electronic steps")
        else:
            texts.append(str(error))
    return ", ".join(texts)


def custodian_corrections(directory: str | Path) -> list[dict[str, Any]]:
    """The corrections custodian made in ``directory`` (its ``custodian.json``), in order:
    dicts with ``errors``, ``actions`` and ``handler`` (the handler's class name)."""
    path = Path(directory) / "custodian.json"
    try:
        run_log = json.loads(path.read_text())
    except (OSError, ValueError):
        return []
    corrections = []
    for entry in run_log if isinstance(run_log, list) else []:
        for correction in entry.get("corrections", []):
            if correction.get("skipped"):
                continue
            handler = correction.get("handler")
            name = handler.get("@class", "?") if isinstance(handler, dict) else str(handler)
            corrections.append({"errors": correction.get("errors") or [],
                                "actions": correction.get("actions"), "handler": name})
    return corrections


def vasp_failure_message(structure: Structure, directory: str | Path,
                         error: BaseException) -> str:
    """Why a VASP reference call failed, naming the call (and MD step), VASP, the formula,
    each run's failure and custodian's correction, and the job directory."""
    directory = Path(directory)
    formula = "".join(str(structure.composition.hill_formula).split())
    corrections = custodian_corrections(directory)
    gave_up = isinstance(error, CustodianError) and "max errors" in str(error).lower()
    runs = []
    for number, correction in enumerate(corrections, start=1):
        label = "run 1" if number == 1 else f"run {number} (the corrective rerun)"
        actions = _describe_actions(correction["actions"])
        if not correction["actions"]:
            fix = actions
        elif gave_up and number == len(corrections):
            fix = f"custodian's next correction ({actions}) not run"
        else:
            fix = f"rerun with {actions}"
        runs.append(f"{label}: {_describe_errors(correction['errors'], directory)} "
                    f"[{correction['handler']}]; {fix}")
    if gave_up:
        outcome = f"custodian stopped: {str(error).rstrip('.')}"
    elif type(error).__name__ == "ValidationError":
        stderr = first_stderr_line(directory)
        outcome = ("VASP left no complete vasprun.xml (custodian's "
                   f"{type(getattr(error, 'validator', None)).__name__}; crashed?"
                   + (f" stderr: {stderr}" if stderr else "") + ")")
    elif type(error).__name__ == "ReturnCodeError":
        stderr = first_stderr_line(directory)
        outcome = f"VASP exited with an error ({error})" + (f"; stderr: {stderr}"
                                                             if stderr else "")
    elif isinstance(error, CustodianError):
        outcome = f"custodian stopped: {type(error).__name__}: {error}"
    else:
        outcome = ("VASP's output is not converged and no handler corrected it "
                   f"(atomate2: {error})")
    account = "; ".join([*runs, outcome])
    return (f"{current_call()}: VASP failed on {formula}: {account}. The run stops here; "
            f"labels and checkpoints written so far stay (job directory {directory})")


def fixed_kpoints(structure: Structure,
                  reciprocal_density: int = MP_STATIC_RECIPROCAL_DENSITY) -> Kpoints:
    """The Gamma-centred mesh MP's static set gives ``structure``, to keep for a whole run."""
    from pymatgen.io.vasp.inputs import Kpoints

    if int(reciprocal_density) < 1:
        raise ValueError(f"reciprocal_density must be >= 1, got {reciprocal_density!r}")
    return Kpoints.automatic_density_by_vol(structure, int(reciprocal_density), force_gamma=True)


def labelling_input_set(
    structure: Structure | None = None,
    *,
    reciprocal_density: int = MP_STATIC_RECIPROCAL_DENSITY,
    user_incar_settings: dict[str, Any] | None = None,
    user_kpoints_settings: dict[str, Any] | Kpoints | None = None,
    user_potcar_functional: str | None = None,
    user_potcar_settings: dict[str, str] | None = None,
) -> VaspInputSet:
    """pymatgen's ``MPStaticSet`` with the labelling settings of the module docstring.

    ``structure`` (optional) fixes the k-mesh to the one MP's density gives that cell;
    without it the mesh follows each call's cell (the same for every call at fixed cell).
    ``user_kpoints_settings`` overrides both.
    """
    from pymatgen.io.vasp.sets import MPStaticSet

    if int(reciprocal_density) < 1:
        raise ValueError(f"reciprocal_density must be >= 1, got {reciprocal_density!r}")
    if user_kpoints_settings is None:
        user_kpoints_settings = ({"reciprocal_density": int(reciprocal_density)}
                                 if structure is None
                                 else fixed_kpoints(structure, reciprocal_density))
    incar = {**LABELLING_INCAR, **(user_incar_settings or {})}
    if incar.get("ISYM") not in (0, -1):
        logger.warning("ISYM=%r: symmetry stays on; MD snapshots of one run may then be "
                       "treated differently", incar.get("ISYM"))
    return MPStaticSet(
        reciprocal_density=int(reciprocal_density),
        force_gamma=True,
        sort_structure=False,
        inherit_incar=False,
        auto_ismear=False,
        auto_ispin=False,
        auto_kspacing=False,
        auto_lreal=False,
        auto_metal_kpoints=False,
        reduce_structure=None,
        standardize=False,
        user_incar_settings=incar,
        user_kpoints_settings=user_kpoints_settings,
        user_potcar_functional=user_potcar_functional,
        user_potcar_settings=dict(user_potcar_settings or {}),
    )


def vasp_reference_maker(
    structure: Structure | None = None,
    *,
    name: str = "VASP static (MP PBE)",
    reciprocal_density: int = MP_STATIC_RECIPROCAL_DENSITY,
    user_incar_settings: dict[str, Any] | None = None,
    user_kpoints_settings: dict[str, Any] | Kpoints | None = None,
    user_potcar_functional: str | None = None,
    user_potcar_settings: dict[str, str] | None = None,
    input_set_generator: VaspInputSet | None = None,
    vasp_cmd: str | None = None,
    vasp_gamma_cmd: str | None = None,
    handlers: Sequence[ErrorHandler] | None = None,
    custodian_kwargs: dict[str, Any] | None = None,
    run_vasp_kwargs: dict[str, Any] | None = None,
    **maker_kwargs: Any,
) -> LabellingStaticMaker:
    """atomate2's VASP ``StaticMaker`` configured for labelling (see the module docstring).

    Args:
        structure: optional; fixes the k-mesh to this cell's for the whole run (NPT).
        name: the job name (also the run's ``reference`` field).
        reciprocal_density, user_incar_settings, user_kpoints_settings,
        user_potcar_functional, user_potcar_settings: see :func:`labelling_input_set`.
        input_set_generator: use this input set instead of the MP one (the settings above
            are then not applied).
        vasp_cmd, vasp_gamma_cmd: commands; None uses atomate2's ``VASP_CMD`` /
            ``VASP_GAMMA_CMD`` of the machine that runs the job.
        handlers: custodian handlers (default :data:`LABELLING_HANDLERS`).
        custodian_kwargs: ``Custodian`` options (default :data:`LABELLING_CUSTODIAN_KWARGS`).
        run_vasp_kwargs: further :func:`atomate2.vasp.run.run_vasp` arguments (job_type,
            max_errors (default :data:`LABELLING_MAX_ERRORS`: one corrective rerun),
            wall_time, ...); the arguments above take precedence.
        **maker_kwargs: other ``StaticMaker`` fields, e.g.
            ``write_input_set_kwargs={"potcar_spec": True}`` for tests without POTCARs.
    """
    generator = input_set_generator if input_set_generator is not None else labelling_input_set(
        structure, reciprocal_density=reciprocal_density,
        user_incar_settings=user_incar_settings, user_kpoints_settings=user_kpoints_settings,
        user_potcar_functional=user_potcar_functional,
        user_potcar_settings=user_potcar_settings)
    run_kwargs: dict[str, Any] = dict(run_vasp_kwargs or {})
    run_kwargs["handlers"] = list(LABELLING_HANDLERS if handlers is None else handlers)
    run_kwargs.setdefault("max_errors", LABELLING_MAX_ERRORS)
    run_kwargs["custodian_kwargs"] = {**LABELLING_CUSTODIAN_KWARGS,
                                      **run_kwargs.get("custodian_kwargs", {}),
                                      **(custodian_kwargs or {})}
    for key, value in (("vasp_cmd", vasp_cmd), ("vasp_gamma_cmd", vasp_gamma_cmd)):
        if value is not None:
            if not str(value).strip():
                raise ValueError(f"{key} must be a non-empty command, got {value!r}")
            run_kwargs[key] = str(value)
    return LabellingStaticMaker(name=name, input_set_generator=generator,
                                run_vasp_kwargs=run_kwargs, **maker_kwargs)
