"""At a trigger the reference label, not the model, drives the redone step (paper Fig. 2)."""

import numpy as np
import pytest
from ase import units
from ase.calculators.emt import EMT

from atomate2_otf.md.segment import MDSettings, initial_state, run_segment
from atomate2_otf.records import StructureRecord
from tests.md.helpers import ScaledEMT, cu_cell, label_with

DT_FS = 2.0


def _start(ensemble):
    settings = MDSettings(ensemble=ensemble, timestep_fs=DT_FS, temperature=600, n_steps=20,
                          friction_per_fs=0.02)
    state = run_segment(initial_state(cu_cell(), settings, seed=8), EMT(), settings,
                        max_steps=2).state
    return settings, state


@pytest.mark.parametrize("ensemble", ["nve", "nvt"])
def test_label_forces_drive_the_redone_step(ensemble):
    settings, start = _start(ensemble)
    model_only = run_segment(start, EMT(), settings, max_steps=1).state

    fired = run_segment(start, EMT(), settings, trigger=lambda results: True)
    assert fired.triggered and fired.n_steps_done == 0
    assert fired.state.step == start.step
    np.testing.assert_array_equal(fired.state.positions, start.positions)
    assert fired.state.integrator == start.integrator  # same random numbers for the redo

    label = label_with(fired.pending, ScaledEMT(scale=2.0, offset=1.0))
    redo = run_segment(fired.state, EMT(), settings, pending_label=label, max_steps=1).state
    # the redone step lands exactly on the pending structure ...
    np.testing.assert_array_equal(redo.positions, fired.pending.positions)
    np.testing.assert_array_equal(redo.positions, model_only.positions)
    # ... whose label now is the state's results, for the next half-kick
    assert redo.energy == label.energy == pytest.approx(model_only.energy + 1.0)
    np.testing.assert_array_equal(redo.forces, label.forces)
    # and the label's forces gave the second half-kick: p = p_model + c1 (F_label - F_model)
    dt = DT_FS * units.fs
    fr = settings.friction_per_fs / units.fs
    c1 = dt / 2 if ensemble == "nve" else dt / 2 - dt * dt * fr / 8
    expected = model_only.momenta + c1 * (label.forces - model_only.forces)
    np.testing.assert_allclose(redo.momenta, expected, rtol=1e-12, atol=1e-12)
    assert np.abs(redo.momenta - model_only.momenta).max() > 1e-3


def test_label_forces_also_start_the_next_step():
    settings, start = _start("nve")
    fired = run_segment(start, EMT(), settings, trigger=lambda results: True)
    label = label_with(fired.pending, ScaledEMT(scale=2.0, offset=1.0))
    after_one = run_segment(fired.state, EMT(), settings, pending_label=label,
                            max_steps=1).state
    after_two = run_segment(fired.state, EMT(), settings, pending_label=label,
                            max_steps=2).state
    dt = DT_FS * units.fs
    masses = after_one.masses[:, None]
    # velocity Verlet from the labelled structure uses the label's forces for its first kick
    expected = after_one.positions + dt * (after_one.momenta + 0.5 * dt * label.forces) / masses
    np.testing.assert_allclose(after_two.positions, expected, rtol=0, atol=1e-12)


def test_trigger_is_never_asked_about_labels_or_stored_states():
    settings, start = _start("nvt")
    fired = run_segment(start, EMT(), settings, trigger=lambda results: True)
    label = label_with(fired.pending, EMT())
    seen = []

    def trigger(results):
        seen.append(results["energy"])
        return False

    result = run_segment(fired.state, EMT(), settings, pending_label=label, trigger=trigger,
                         max_steps=4)
    assert result.n_steps_done == 4 and len(seen) == 3
    assert label.energy not in seen


def test_a_label_for_another_structure_is_refused():
    settings, start = _start("nvt")
    fired = run_segment(start, EMT(), settings, trigger=lambda results: True)
    label = label_with(fired.pending, EMT())
    moved = StructureRecord(label.numbers, label.positions + 1e-4, label.cell, label.pbc,
                            energy=label.energy, forces=label.forces, stress=label.stress)
    with pytest.raises(ValueError, match="pending_label does not match"):
        run_segment(fired.state, EMT(), settings, pending_label=moved)


def test_npt_label_needs_stress():
    settings, start = _start("npt")
    fired = run_segment(start, EMT(), settings, trigger=lambda results: True)
    label = label_with(fired.pending, EMT())
    assert label.stress is not None
    no_stress = StructureRecord(label.numbers, label.positions, label.cell, label.pbc,
                                energy=label.energy, forces=label.forces)
    with pytest.raises(ValueError, match="stress"):
        run_segment(fired.state, EMT(), settings, pending_label=no_stress)
    redo = run_segment(fired.state, EMT(), settings, pending_label=label, max_steps=1).state
    np.testing.assert_array_equal(redo.cell, np.array(fired.pending.cell))


def test_label_dict_round_trip():
    settings, start = _start("nve")
    fired = run_segment(start, EMT(), settings, trigger=lambda results: True)
    label = label_with(fired.pending, EMT())
    again = StructureRecord.from_dict(label.to_dict())
    np.testing.assert_array_equal(again.forces, label.forces)
    np.testing.assert_array_equal(again.stress, label.stress)
    assert again.energy == label.energy
    assert again.calculator_results()["stress"].tolist() == \
        label.calculator_results()["stress"].tolist()


def test_an_unlabelled_structure_cannot_drive_the_redone_step():
    settings, start = _start("nve")
    fired = run_segment(start, EMT(), settings, trigger=lambda results: True)
    label = label_with(fired.pending, EMT())
    with pytest.raises(ValueError, match="no energy and forces"):
        run_segment(fired.state, EMT(), settings, pending_label=label.unlabelled())


def test_replayed_stress_is_ase_voigt_order():
    """The replay hands ASE's Voigt stress (xx yy zz yz xz xy) to the integrator."""
    from ase.stress import full_3x3_to_voigt_6_stress

    stress = np.arange(9.0).reshape(3, 3)
    record = StructureRecord([29], [[0.0, 0.0, 0.0]], np.eye(3) * 3.0, True, energy=1.0,
                             forces=[[0.0, 0.0, 0.0]], stress=stress)
    np.testing.assert_array_equal(record.calculator_results()["stress"],
                                  full_3x3_to_voigt_6_stress(stress))
