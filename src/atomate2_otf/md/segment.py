"""Run MD until the trigger fires or the step budget ends; the full state goes in and out.

Exactness across job boundaries: before every step the complete state is snapshotted
(positions, momenta, cell, the results at these positions, integrator variables with the
random state). When the trigger fires on the model's prediction for the new positions, the
segment returns the snapshot from the *start* of that step and the new structure as
``pending``. The caller labels ``pending`` and calls :func:`run_segment` again with that
state and the label: the step is redone from the same forces and random numbers, lands on
exactly the pending positions, and the label's forces (and stress) drive it (paper,
Fig. 2). With a label from the model itself the split run equals the unsplit one.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from ase.md.velocitydistribution import Stationary, thermalize_momenta
from ase.neighborlist import neighbor_list
from ase.stress import voigt_6_to_full_3x3_stress

from atomate2_otf.md.integrators import (
    build_integrator,
    capture,
    new_rng_state,
    set_target_temperature,
)
from atomate2_otf.md.replay import KnownResults, ReplayCalculator
from atomate2_otf.md.settings import ENSEMBLES, MDSettings
from atomate2_otf.md.state import MDState

if TYPE_CHECKING:
    from ase import Atoms
    from ase.calculators.calculator import Calculator
    from ase.md.md import MolecularDynamics

    from atomate2_otf.records import StructureRecord

__all__ = [
    "ENSEMBLES", "MIN_DISTANCE", "LABEL_ATOL", "MDSettings", "MDState",
    "SegmentResult", "check_structure_for_md", "initial_state", "run_segment",
]

logger = logging.getLogger(__name__)

#: atoms closer than this (A) are refused before any MD or reference call
MIN_DISTANCE = 0.5
#: a label may deviate this much (A) from the structure its step reaches (rounding only)
LABEL_ATOL = 1e-8
#: scalar results copied into the trajectory when the calculator provides them
TRAJECTORY_EXTRAS = ("energy_std", "energy_std_epistemic", "prob_within")


def check_structure_for_md(atoms: Atoms, settings: MDSettings) -> None:
    """Refuse structures the MD cannot run: overlapping atoms, NPT without a periodic cell."""
    pbc = np.asarray(atoms.get_pbc(), dtype=bool)
    if settings.ensemble == "npt" and not pbc.all():
        raise ValueError(f"ensemble 'npt' needs a fully periodic structure, got "
                         f"pbc={pbc.tolist()}; use 'nvt' or 'nve' for molecules and slabs")
    if pbc.all() and abs(atoms.cell.volume) < 1e-12:
        raise ValueError(f"a periodic structure needs a cell with volume > 0, got "
                         f"{atoms.cell.tolist()}")
    i, j, d = neighbor_list("ijd", atoms, MIN_DISTANCE)
    if len(d):
        k = int(np.argmin(d))
        a, b = int(i[k]), int(j[k])
        symbols = atoms.get_chemical_symbols()
        which = (f"atom {a} ({symbols[a]}) and its periodic image" if a == b else
                 f"atoms {a} ({symbols[a]}) and {b} ({symbols[b]})")
        raise ValueError(f"{which} are {d[k]:.4f} A apart, closer than the minimum "
                         f"{MIN_DISTANCE} A: the structure is unphysical")


def initial_state(atoms: Atoms, settings: MDSettings, seed: int) -> MDState:
    """Step-0 state: Maxwell-Boltzmann velocities at T(0) drawn from ``default_rng(seed)``
    without centre-of-mass drift; integrator stream seeded from the same seed; results are
    computed on first use."""
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
    check_structure_for_md(atoms, settings)
    atoms = atoms.copy()
    atoms.calc = None
    temperature = settings.temperature_at(0)
    thermalize_momenta(atoms, temperature, rng=np.random.default_rng(int(seed)))
    Stationary(atoms)
    state = MDState.from_atoms(atoms, step=0)
    state.integrator = {"ensemble": settings.ensemble, "rng": new_rng_state(int(seed))}
    return state


@dataclass
class SegmentResult:
    """What one segment hands back.

    state: where the next segment starts (for a trigger: the start of the triggering step).
    triggered: whether the segment stopped for a label (the trigger fired, or an audit).
    pending: the atoms to label, or None.
    trajectory: small dicts, one every ``trajectory_interval`` steps plus the last.
    n_steps_done: steps completed and kept in this segment.
    reason: why it stopped for a label: "trigger" or "audit" (None when it did not).
    """

    state: MDState
    triggered: bool
    pending: Atoms | None
    trajectory: list[dict[str, Any]] = field(default_factory=list)
    n_steps_done: int = 0
    reason: str | None = None


def _state_results(state: MDState) -> dict[str, Any]:
    from ase.stress import full_3x3_to_voigt_6_stress

    out: dict[str, Any] = {"energy": state.energy, "free_energy": state.energy,
                           "forces": state.forces.copy()}
    if state.stress is not None:
        out["stress"] = full_3x3_to_voigt_6_stress(state.stress)
    return out


def _snapshot(atoms: Atoms, dyn: MolecularDynamics, calc: ReplayCalculator,
              settings: MDSettings, step: int) -> MDState:
    """The full state now, including the results at these positions (computed if needed)."""
    forces = atoms.get_forces()
    energy = atoms.get_potential_energy()
    stress = calc.results.get("stress")
    return MDState(
        numbers=atoms.numbers, positions=atoms.get_positions(), momenta=atoms.get_momenta(),
        cell=np.array(atoms.cell), pbc=atoms.pbc, masses=atoms.get_masses(), step=step,
        energy=energy, forces=forces,
        stress=None if stress is None else voigt_6_to_full_3x3_stress(stress),
        integrator=capture(dyn, settings.ensemble),
    )


def _entry(atoms: Atoms, results: dict[str, Any], settings: MDSettings, step: int,
           target: float) -> dict[str, Any]:
    """One trajectory frame. ``target_temperature_K`` is the thermostat target of the step
    that produced this frame, T(step - 1) of the schedule (T(0) for frame 0); analysis of
    calls uses the schedule at the call's own step, one step later on a ramp."""
    entry = {"step": step, "time_fs": step * settings.timestep_fs,
             "temperature_K": float(atoms.get_temperature()),
             "target_temperature_K": float(target), "energy": float(results["energy"])}
    for key in TRAJECTORY_EXTRAS:
        if key in results:
            entry[key] = float(results[key])
    if settings.ensemble == "npt":
        entry["volume_A3"] = float(atoms.get_volume())
    # the structure itself, so that frames can be drawn from a run and labelled afterwards
    # (the paper's check of the final ensemble on random frames of its trajectory)
    entry["positions"] = atoms.get_positions().tolist()
    if atoms.pbc.any():
        entry["cell"] = atoms.cell.array.tolist()
    return entry


def _check_max_steps(max_steps: int | None) -> None:
    if max_steps is not None and (isinstance(max_steps, bool) or
                                  not isinstance(max_steps, int | np.integer) or max_steps < 0):
        raise ValueError(f"max_steps must be None or an integer >= 0, got {max_steps!r}")


def run_segment(
    state: MDState,
    calculator: Calculator,
    settings: MDSettings,
    *,
    max_steps: int | None = None,
    trigger: Callable[[dict[str, Any]], bool] | None = None,
    pending_label: StructureRecord | None = None,
    callback: Callable[[int, dict[str, Any]], None] | None = None,
    audit: Callable[[int], bool] | None = None,
) -> SegmentResult:
    """Continue MD from ``state`` with ``calculator`` until ``trigger`` fires on the model's
    results for a new structure, the run's ``settings.n_steps`` are done, or ``max_steps``
    steps of this segment are done.

    ``pending_label``: the labelled structure a previous segment returned as ``pending``
    with this ``state``; its reference results drive the redone step. ``callback(step,
    results)`` is called after every kept step (progress bars). ``audit(step)``: whether a
    model-evaluated step the trigger let pass is labelled anyway (the online audit); the
    segment then stops there exactly as for a trigger, with ``reason="audit"``.
    """
    _check_max_steps(max_steps)
    if settings.ensemble == "npt" and not state.pbc.all():
        raise ValueError(f"ensemble 'npt' needs a fully periodic structure, got "
                         f"pbc={state.pbc.tolist()}")
    known = []
    if state.has_results:
        known.append(KnownResults("state", state.positions, state.cell, _state_results(state)))
    label_known = None
    if pending_label is not None:
        if pending_label.positions.shape != state.positions.shape:
            raise ValueError(f"pending_label has {len(pending_label.positions)} atoms, the "
                             f"state has {state.n_atoms}")
        if not pending_label.is_labelled:
            raise ValueError("pending_label has no energy and forces: label it first")
        if settings.ensemble == "npt" and pending_label.stress is None:
            raise ValueError("ensemble 'npt' needs the label's stress to drive the cell; "
                             "the pending_label has stress=None")
        label_known = KnownResults("label", pending_label.positions, pending_label.cell,
                                   pending_label.calculator_results(), atol=LABEL_ATOL)
        known.append(label_known)

    if hasattr(calculator, "reset"):
        calculator.reset()  # results cached before a posterior update are stale
    calc = ReplayCalculator(calculator, need_stress=settings.ensemble == "npt", known=known)
    atoms = state.to_atoms()
    atoms.calc = calc
    dyn = build_integrator(atoms, settings, state)

    step, done = state.step, 0
    trajectory: list[dict[str, Any]] = []
    last_entry: dict[str, Any] | None = None
    logger.debug("MD segment from step %d (ensemble %s, %d model structures known)",
                 step, settings.ensemble, len(known))
    if step == 0 and pending_label is None:  # a redone first step has it already
        atoms.get_forces()
        trajectory.append(_entry(atoms, calc.results, settings, 0, settings.temperature_at(0)))

    while step < settings.n_steps and (max_steps is None or done < max_steps):
        target = settings.temperature_at(step)
        set_target_temperature(dyn, target)
        snapshot = _snapshot(atoms, dyn, calc, settings, step)
        dyn.step()
        step += 1
        atoms.get_forces()  # the integrator has them already; makes sure results are current
        source, results = calc.source, calc.results
        if label_known is not None and done == 0 and source != "label":
            raise ValueError(
                f"pending_label does not match the structure the step from this state reaches "
                f"(max deviation {label_known.deviation(atoms.positions, atoms.cell.array):.3g}"
                f" A, tolerance {LABEL_ATOL} A): label the `pending` atoms returned together "
                f"with this state, with unchanged positions and cell")
        reason = None
        if source == "model" and trigger is not None and trigger(dict(results)):
            reason = "trigger"
        elif source == "model" and audit is not None and audit(step):
            reason = "audit"
        if reason is not None:
            pending = atoms.copy()
            pending.calc = None
            if last_entry is not None and (not trajectory or trajectory[-1] is not last_entry):
                trajectory.append(last_entry)
            logger.info("%s at step %d: returning the state of step %d",
                        "trigger fired" if reason == "trigger" else "audit", step,
                        snapshot.step)
            return SegmentResult(state=snapshot, triggered=True, pending=pending,
                                 trajectory=trajectory, n_steps_done=done, reason=reason)
        done += 1
        last_entry = _entry(atoms, results, settings, step, target)
        if step % settings.trajectory_interval == 0:
            trajectory.append(last_entry)
        if callback is not None:
            callback(step, results)

    final = _snapshot(atoms, dyn, calc, settings, step)
    if last_entry is not None and (not trajectory or trajectory[-1] is not last_entry):
        trajectory.append(last_entry)
    logger.debug("MD segment ended at step %d after %d steps (%d model calls)", step, done,
                 calc.n_model_calls)
    return SegmentResult(state=final, triggered=False, pending=None, trajectory=trajectory,
                         n_steps_done=done)
