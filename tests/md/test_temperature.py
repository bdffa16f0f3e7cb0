"""The thermostat follows the schedule; callbacks and step budgets."""

import numpy as np
from ase.calculators.emt import EMT

from atomate2_otf.md.segment import MDSettings, initial_state, run_segment
from tests.md.helpers import cu_cell


def test_langevin_ramp_heats_the_crystal():
    settings = MDSettings(ensemble="nvt", timestep_fs=4.0, temperature=[100, 700],
                          n_steps=200, friction_per_fs=0.05, trajectory_interval=1)
    result = run_segment(initial_state(cu_cell(), settings, seed=0), EMT(), settings)
    traj = result.trajectory
    assert [e["step"] for e in traj] == list(range(201))
    kinetic = np.array([e["temperature_K"] for e in traj])
    target = np.array([e["target_temperature_K"] for e in traj])
    assert target[0] == 100.0 and target[-1] == settings.temperature_at(199)
    late = slice(150, None)
    assert abs(kinetic[late].mean() - target[late].mean()) < 0.25 * target[late].mean()
    assert kinetic[late].mean() > 2.5 * kinetic[:50].mean()


def test_step_budget_callback_and_trajectory_interval():
    settings = MDSettings(ensemble="nve", timestep_fs=2.0, temperature=300, n_steps=12,
                          trajectory_interval=5)
    calls = []
    state = initial_state(cu_cell(), settings, seed=1)
    first = run_segment(state, EMT(), settings, max_steps=7,
                        callback=lambda step, results: calls.append((step, "forces" in results)))
    assert first.n_steps_done == 7 and first.state.step == 7 and not first.triggered
    assert calls == [(s, True) for s in range(1, 8)]
    assert [e["step"] for e in first.trajectory] == [0, 5, 7]
    rest = run_segment(first.state, EMT(), settings, max_steps=100)
    assert rest.n_steps_done == 5 and rest.state.step == 12
    assert [e["step"] for e in rest.trajectory] == [10, 12]
    done = run_segment(rest.state, EMT(), settings)
    assert done.n_steps_done == 0 and done.trajectory == []
    assert set(first.trajectory[0]) >= {"step", "time_fs", "temperature_K", "energy"}
    assert first.trajectory[-1]["time_fs"] == 14.0
    # each frame carries its structure: positions of that step, and the cell
    np.testing.assert_array_equal(first.trajectory[-1]["positions"], first.state.positions)
    np.testing.assert_allclose(first.trajectory[0]["positions"], state.positions)
    np.testing.assert_array_equal(first.trajectory[0]["cell"], cu_cell().cell.array)
