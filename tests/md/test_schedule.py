"""Temperature schedules: values, spec parsing and errors."""

import json

import pytest

from atomate2_otf.md.schedule import TemperatureSchedule


def test_constant_ramp_piecewise_values():
    assert TemperatureSchedule.constant(300).temperature_at(57, 100) == 300.0
    ramp = TemperatureSchedule.ramp(300, 800)
    assert ramp.temperature_at(0, 100) == 300.0
    assert ramp.temperature_at(50, 100) == pytest.approx(550.0)
    assert ramp.temperature_at(100, 100) == 800.0
    cycle = TemperatureSchedule.piecewise([300, 800, 300])
    assert cycle.knots == ((0.0, 300.0), (0.5, 800.0), (1.0, 300.0))
    assert [cycle.temperature_at(s, 200) for s in (0, 50, 100, 150, 200)] == pytest.approx(
        [300, 550, 800, 550, 300])


def test_held_outside_knots_and_past_the_end():
    schedule = TemperatureSchedule(((0.25, 100.0), (0.75, 500.0)))
    assert schedule.temperature_at(0, 100) == 100.0
    assert schedule.temperature_at(50, 100) == pytest.approx(300.0)
    assert schedule.temperature_at(120, 100) == 500.0


@pytest.mark.parametrize("spec, expected", [
    (450, ((0.0, 450.0), (1.0, 450.0))),
    ([300, 800, 300], ((0.0, 300.0), (0.5, 800.0), (1.0, 300.0))),
    ([[0, 300], [0.2, 900], [1, 900]], ((0.0, 300.0), (0.2, 900.0), (1.0, 900.0))),
    ([500], ((0.0, 500.0), (1.0, 500.0))),
])
def test_from_spec(spec, expected):
    schedule = TemperatureSchedule.from_spec(spec)
    assert schedule.knots == expected
    assert TemperatureSchedule.from_spec(schedule) is schedule
    again = TemperatureSchedule.from_spec(json.loads(json.dumps(schedule.to_list())))
    assert again == schedule


@pytest.mark.parametrize("spec, fragment", [
    (-5, "-5"),
    ([300, -10.5, 300], "-10.5"),
    ([[0, 300], [1, -1]], "-1"),
    ([[0, 300], [1.5, 300]], "1.5"),
    ([[0.5, 300], [0.2, 300]], "strictly increasing"),
    ("hot", "'hot'"),
    ([], "at least one"),
    (float("nan"), "nan"),
])
def test_bad_specs_name_the_value(spec, fragment):
    with pytest.raises(ValueError) as info:
        TemperatureSchedule.from_spec(spec)
    assert fragment in str(info.value)
