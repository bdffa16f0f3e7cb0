"""MDState survives json and BSON exactly, and converts to and from ase.Atoms."""

import json

import numpy as np
import pytest
from ase.calculators.emt import EMT

from atomate2_otf.md.segment import MDSettings, initial_state, run_segment
from atomate2_otf.md.state import MDState, rng_from_plain, rng_state_to_plain
from tests.md.helpers import cu_cell


def _walk(value):
    if isinstance(value, dict):
        for k, v in value.items():
            assert isinstance(k, str)
            yield from _walk(v)
    elif isinstance(value, list):
        for v in value:
            yield from _walk(v)
    else:
        yield value


@pytest.fixture(scope="module")
def npt_state():
    settings = MDSettings(ensemble="npt", timestep_fs=2.0, temperature=500, n_steps=20)
    return run_segment(initial_state(cu_cell(), settings, seed=4), EMT(), settings,
                       max_steps=3).state


def test_to_dict_has_only_plain_bson_safe_types(npt_state):
    data = npt_state.to_dict()
    for leaf in _walk(data):
        assert leaf is None or type(leaf) in (bool, int, float, str), type(leaf)
        if type(leaf) is int:
            assert -(2**63) <= leaf < 2**63
    assert isinstance(data["integrator"]["rng"]["state"], str)  # a 128-bit int
    assert npt_state.stress is not None and data["integrator"]["thermostat"]["p_eta"]


def _assert_same(a: MDState, b: MDState):
    for name in ("numbers", "positions", "momenta", "cell", "pbc", "masses", "forces",
                 "stress"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
    assert a.step == b.step and a.energy == b.energy
    assert a.integrator == b.integrator


def test_json_and_bson_round_trips_are_exact(npt_state):
    _assert_same(MDState.from_dict(json.loads(json.dumps(npt_state.to_dict()))), npt_state)
    bson = pytest.importorskip("bson")
    _assert_same(MDState.from_dict(bson.decode(bson.encode(npt_state.to_dict()))), npt_state)


def test_rng_state_round_trip_continues_the_stream():
    rng = np.random.default_rng(123)
    rng.standard_normal(7)
    plain = json.loads(json.dumps(rng_state_to_plain(rng.bit_generator.state)))
    np.testing.assert_array_equal(rng_from_plain(plain).standard_normal(5),
                                  rng.standard_normal(5))


def test_atoms_round_trip(npt_state):
    atoms = npt_state.to_atoms()
    np.testing.assert_array_equal(atoms.get_momenta(), npt_state.momenta)
    np.testing.assert_array_equal(atoms.get_masses(), npt_state.masses)
    np.testing.assert_array_equal(np.array(atoms.cell), npt_state.cell)
    back = MDState.from_atoms(atoms, step=7)
    assert back.step == 7 and back.energy is None and back.integrator == {}
    np.testing.assert_array_equal(back.positions, npt_state.positions)


def test_initial_state_velocities():
    settings = MDSettings(temperature=[400, 100], n_steps=10)
    state = initial_state(cu_cell(), settings, seed=0)
    assert state.step == 0 and state.energy is None and state.forces is None
    np.testing.assert_allclose(state.momenta.sum(0), 0.0, atol=1e-12)  # no drift
    assert 150 < state.to_atoms().get_temperature() < 700  # drawn at T(0) = 400 K, 32 atoms
    again = initial_state(cu_cell(), settings, seed=0)
    np.testing.assert_array_equal(again.momenta, state.momenta)
    assert again.integrator == state.integrator
    other = initial_state(cu_cell(), settings, seed=1)
    assert not np.array_equal(other.momenta, state.momenta)


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match=r"momenta must have shape \(2, 3\)"):
        MDState(numbers=[29, 29], positions=np.zeros((2, 3)), momenta=np.zeros((3, 3)),
                cell=np.eye(3), pbc=False, masses=[63.5, 63.5])
    with pytest.raises(ValueError, match="step must be an integer >= 0, got -1"):
        MDState(numbers=[29], positions=np.zeros((1, 3)), momenta=np.zeros((1, 3)),
                cell=np.eye(3), pbc=False, masses=[63.5], step=-1)
