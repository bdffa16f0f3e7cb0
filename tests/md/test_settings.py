"""MDSettings and check_structure_for_md refuse bad input with messages naming the value."""

import json

import pytest
from ase import Atoms

from atomate2_otf.md.schedule import TemperatureSchedule
from atomate2_otf.md.segment import MDSettings, check_structure_for_md, initial_state
from tests.md.helpers import cu_cell, cu_cluster


def test_defaults_and_round_trip():
    settings = MDSettings(ensemble="NPT", timestep_fs=2, temperature=[300, 800, 300],
                          n_steps=100)
    assert settings.ensemble == "npt"
    assert isinstance(settings.temperature, TemperatureSchedule)
    assert settings.thermostat_damping_fs == 200.0
    assert settings.barostat_damping_fs == 2000.0
    assert settings.temperature_at(50) == pytest.approx(800.0)
    data = json.loads(json.dumps(settings.to_dict()))
    assert MDSettings.from_dict(data) == settings


@pytest.mark.parametrize("kwargs, fragments", [
    ({"ensemble": "nph"}, ["'nph'", "nve", "npt", "nvt"]),
    ({"timestep_fs": 0}, ["timestep_fs", "0"]),
    ({"timestep_fs": -1.0}, ["timestep_fs", "-1.0"]),
    ({"timestep_fs": 12.5}, ["timestep_fs", "12.5"]),
    ({"n_steps": 0}, ["n_steps", "0"]),
    ({"n_steps": 2.5}, ["n_steps", "2.5"]),
    ({"temperature": -20}, ["-20"]),
    ({"temperature": [300, -1]}, ["-1"]),
    ({"friction_per_fs": -0.1}, ["friction_per_fs", "-0.1"]),
    ({"tdamp_fs": 0.0}, ["tdamp_fs", "0.0"]),
    ({"trajectory_interval": 0}, ["trajectory_interval", "0"]),
    ({"ensemble": "npt", "temperature": [0, 300]}, ["npt", "0.0"]),
])
def test_settings_errors_name_the_value(kwargs, fragments):
    with pytest.raises(ValueError) as info:
        MDSettings(**{"n_steps": 10, **kwargs})
    for fragment in fragments:
        assert fragment in str(info.value)


def test_close_atoms_are_refused_with_pair_and_distance():
    atoms = Atoms("Cu3", positions=[[0, 0, 0], [3, 0, 0], [3.3, 0.1, 0]])
    with pytest.raises(ValueError, match=r"atoms 1 \(Cu\) and 2 \(Cu\) are 0\.316"):
        check_structure_for_md(atoms, MDSettings(n_steps=10))


def test_close_periodic_images_are_refused():
    atoms = cu_cell(rattle=0.0)
    atoms.positions[0] = [0.1, 0.0, 0.0]
    atoms.positions[5] = [atoms.cell[0, 0] - 0.2, 0.0, 0.0]  # 0.3 A from atom 0's image
    with pytest.raises(ValueError, match=r"atoms 0 \(Cu\) and 5 \(Cu\) are 0\.3000 A"):
        check_structure_for_md(atoms, MDSettings(n_steps=10))
    tiny = Atoms("Cu", cell=[0.4, 3, 3], pbc=True)
    with pytest.raises(ValueError, match=r"atom 0 \(Cu\) and its periodic image are 0\.4"):
        check_structure_for_md(tiny, MDSettings(n_steps=10))


def test_npt_needs_a_periodic_cell():
    with pytest.raises(ValueError, match=r"'npt'.*pbc=\[False, False, False\]"):
        check_structure_for_md(cu_cluster(), MDSettings(ensemble="npt", n_steps=10))
    with pytest.raises(ValueError, match="npt"):
        initial_state(cu_cluster(), MDSettings(ensemble="npt", n_steps=10), seed=0)
    check_structure_for_md(cu_cell(), MDSettings(ensemble="npt", n_steps=10))
    check_structure_for_md(cu_cluster(), MDSettings(ensemble="nvt", n_steps=10))


def test_bad_seed():
    with pytest.raises(ValueError, match="-3"):
        initial_state(cu_cell(), MDSettings(n_steps=10), seed=-3)
