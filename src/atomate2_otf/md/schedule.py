"""Target temperature as a function of MD progress (constant, ramps, heat-cool cycles).

The schedule is written in *fractions of the run* so that one schedule fits any run
length, and it is a pure function of the step index: a run split into segments at any
step sees exactly the same targets as the unsplit run.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from numbers import Real
from typing import Any

import numpy as np


def _check_temperature(value: Any, what: str = "temperature") -> float:
    """A finite temperature >= 0 K as float, or a ValueError naming the value."""
    if isinstance(value, bool) or not isinstance(value, Real):
        raise ValueError(f"{what} must be a number of kelvin >= 0, got {value!r}")
    value = float(value)
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{what} must be a finite number of kelvin >= 0, got {value!r}")
    return value


@dataclass(frozen=True)
class TemperatureSchedule:
    """Piecewise-linear target temperature T(fraction of run) in K.

    knots: ``((fraction, T_K), ...)`` with fractions in [0, 1], strictly increasing.
    Before the first and after the last knot the temperature is held constant.
    """

    knots: tuple[tuple[float, float], ...]

    def __post_init__(self) -> None:
        knots = tuple(self.knots)
        if not knots:
            raise ValueError("a temperature schedule needs at least one (fraction, T) knot, "
                             "got none")
        clean = []
        for knot in knots:
            if isinstance(knot, str | bytes) or not isinstance(knot, Sequence) or len(knot) != 2:
                raise ValueError(f"a schedule knot must be a (fraction, T_K) pair, got {knot!r}")
            fraction, temperature = knot
            if isinstance(fraction, bool) or not isinstance(fraction, Real):
                raise ValueError(f"knot fraction must be a number in [0, 1], got {fraction!r}")
            fraction = float(fraction)
            if not 0.0 <= fraction <= 1.0:
                raise ValueError(f"knot fraction must lie in [0, 1], got {fraction!r}")
            clean.append((fraction, _check_temperature(temperature, "knot temperature")))
        fractions = [f for f, _ in clean]
        if any(b <= a for a, b in zip(fractions, fractions[1:])):
            raise ValueError(f"knot fractions must be strictly increasing, got {fractions}")
        object.__setattr__(self, "knots", tuple(clean))

    # -- constructors -----------------------------------------------------------------------
    @classmethod
    def constant(cls, temperature: float) -> TemperatureSchedule:
        t = _check_temperature(temperature)
        return cls(((0.0, t), (1.0, t)))

    @classmethod
    def ramp(cls, t_start: float, t_end: float) -> TemperatureSchedule:
        """Linear from ``t_start`` at the first step to ``t_end`` at the end of the run."""
        return cls(((0.0, _check_temperature(t_start, "ramp start temperature")),
                    (1.0, _check_temperature(t_end, "ramp end temperature"))))

    @classmethod
    def piecewise(cls, temperatures: Sequence[float]) -> TemperatureSchedule:
        """Evenly spaced knots over the run, e.g. ``[300, 800, 300]`` heats then cools."""
        temps = list(temperatures)
        if not temps:
            raise ValueError("piecewise schedule needs at least one temperature, got []")
        if len(temps) == 1:
            return cls.constant(temps[0])
        fractions = np.linspace(0.0, 1.0, len(temps))
        return cls(tuple((float(f), t) for f, t in zip(fractions, temps, strict=True)))

    @classmethod
    def from_spec(cls, value: Any) -> TemperatureSchedule:
        """Accept a number (constant), a list of numbers (piecewise), a list of
        ``(fraction, T)`` pairs (knots, as :meth:`to_list` writes) or a schedule."""
        if isinstance(value, TemperatureSchedule):
            return value
        if isinstance(value, Real) and not isinstance(value, bool):
            return cls.constant(value)
        if isinstance(value, Sequence | np.ndarray) and not isinstance(value, str | bytes):
            items = list(value)
            if items and all(isinstance(v, Sequence | np.ndarray)
                             and not isinstance(v, str | bytes) for v in items):
                return cls(tuple(tuple(v) for v in items))
            return cls.piecewise(items)
        raise ValueError(
            f"temperature must be a number (K), a list of numbers (evenly spaced knots), a "
            f"list of (fraction, T_K) pairs or a TemperatureSchedule, got {value!r}"
        )

    # -- use --------------------------------------------------------------------------------
    def temperature_at(self, step: int, n_steps: int) -> float:
        """Target temperature (K) at MD step ``step`` of a run of ``n_steps`` steps."""
        if n_steps < 1:
            raise ValueError(f"n_steps must be >= 1, got {n_steps!r}")
        fraction = min(max(step / n_steps, 0.0), 1.0)
        fractions = [f for f, _ in self.knots]
        temps = [t for _, t in self.knots]
        return float(np.interp(fraction, fractions, temps))

    @property
    def min_temperature(self) -> float:
        return min(t for _, t in self.knots)

    def to_list(self) -> list[list[float]]:
        """Plain ``[[fraction, T_K], ...]`` for JSON; :meth:`from_spec` reads it back."""
        return [[f, t] for f, t in self.knots]
