"""The acceptance line: a run split at triggers, with pending structures labelled by the
model itself, is the unsplit run."""

import json

import numpy as np
import pytest
from ase.calculators.emt import EMT

from atomate2_otf.md.segment import MDSettings, initial_state, run_segment
from atomate2_otf.md.state import MDState
from tests.md.helpers import cu_cell, every_nth, split_run, velocities

N_STEPS = 30


def _settings(ensemble, **kwargs):
    return MDSettings(ensemble=ensemble, timestep_fs=2.0, temperature=[600, 900],
                      n_steps=N_STEPS, trajectory_interval=5, **kwargs)


@pytest.mark.parametrize("ensemble", ["nvt", "nve", "npt"])
def test_split_run_equals_unsplit_run(ensemble):
    settings = _settings(ensemble)
    start = initial_state(cu_cell(), settings, seed=3)
    unsplit = run_segment(start, EMT(), settings)
    assert not unsplit.triggered and unsplit.n_steps_done == N_STEPS

    trigger = every_nth(7)
    final, segments = split_run(start, settings, trigger, labeller=EMT())
    assert len(segments) == 5  # 30 kept steps, 4 triggers on every 7th model structure
    assert sum(s.n_steps_done for s in segments) == N_STEPS
    assert final.state.step == unsplit.state.step == N_STEPS
    # the trigger saw only model predictions: 30 new structures, 4 of them redone by labels
    assert trigger.calls["n"] == N_STEPS
    for seg in segments[:-1]:
        assert seg.triggered and seg.pending is not None

    a, b = final.state, unsplit.state
    np.testing.assert_allclose(a.positions, b.positions, rtol=0, atol=1e-10)
    np.testing.assert_allclose(velocities(a), velocities(b), rtol=0, atol=1e-10)
    np.testing.assert_allclose(a.forces, b.forces, rtol=0, atol=1e-8)
    np.testing.assert_allclose(a.cell, b.cell, rtol=0, atol=1e-8)
    if ensemble == "npt":
        assert not np.allclose(a.cell, start.cell, rtol=0, atol=1e-6)  # the cell moved
        for part, key in (("thermostat", "p_eta"), ("thermostat", "eta"),
                          ("barostat", "p_xi"), ("barostat", "xi")):
            np.testing.assert_allclose(a.integrator[part][key], b.integrator[part][key],
                                       rtol=1e-8, atol=1e-12, err_msg=key)
        np.testing.assert_allclose(a.integrator["cell_momenta"],
                                   b.integrator["cell_momenta"], rtol=1e-8, atol=1e-12)
        np.testing.assert_allclose(a.stress, b.stress, rtol=0, atol=1e-8)
    if ensemble == "nvt":
        assert a.integrator["rng"] == b.integrator["rng"]

    steps = [e["step"] for s in segments for e in s.trajectory]
    assert steps == sorted(set(steps))  # no step reported twice
    assert set(range(0, N_STEPS + 1, 5)) <= set(steps)
    by_step = {e["step"]: e for s in segments for e in s.trajectory}
    for entry in unsplit.trajectory:
        assert by_step[entry["step"]]["energy"] == pytest.approx(entry["energy"], abs=1e-9)


def test_state_through_json_mid_run_continues_identically():
    settings = _settings("nvt")
    start = initial_state(cu_cell(), settings, seed=11)
    unsplit = run_segment(start, EMT(), settings)
    first = run_segment(start, EMT(), settings, max_steps=12)
    assert first.state.step == 12 and not first.triggered
    revived = MDState.from_dict(json.loads(json.dumps(first.state.to_dict())))
    rest = run_segment(revived, EMT(), settings)
    assert rest.n_steps_done == N_STEPS - 12
    np.testing.assert_allclose(rest.state.positions, unsplit.state.positions, rtol=0,
                               atol=1e-10)
    np.testing.assert_allclose(velocities(rest.state), velocities(unsplit.state), rtol=0,
                               atol=1e-10)


def test_json_between_triggered_segments():
    settings = _settings("nvt")
    start = initial_state(cu_cell(), settings, seed=5)
    unsplit = run_segment(start, EMT(), settings)
    final, _ = split_run(start, settings, every_nth(9), labeller=EMT(),
                         roundtrip=lambda s: MDState.from_dict(json.loads(json.dumps(
                             s.to_dict()))))
    np.testing.assert_allclose(final.state.positions, unsplit.state.positions, rtol=0,
                               atol=1e-10)
    np.testing.assert_allclose(velocities(final.state), velocities(unsplit.state), rtol=0,
                               atol=1e-10)


def test_without_labels_the_state_forces_are_replayed_not_recomputed():
    """Resuming a state must not call the model for the state's own positions."""
    settings = _settings("nve")
    state = run_segment(initial_state(cu_cell(), settings, seed=2), EMT(), settings,
                        max_steps=4).state
    calls = {"n": 0}

    class CountingEMT(EMT):
        def calculate(self, *args, **kwargs):
            calls["n"] += 1
            super().calculate(*args, **kwargs)

    result = run_segment(state, CountingEMT(), settings, max_steps=3)
    assert result.n_steps_done == 3 and calls["n"] == 3
