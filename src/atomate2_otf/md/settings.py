"""MD settings in user units (fs, K, bar), validated once so a bad value fails before any
expensive reference calculation runs."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from numbers import Integral, Real
from typing import Any

from atomate2_otf.md.schedule import TemperatureSchedule

#: ensemble name -> ASE integrator it runs
ENSEMBLES = {
    "nvt": "ase.md.langevin.Langevin",
    "nve": "ase.md.verlet.VelocityVerlet",
    "npt": "ase.md.nose_hoover_chain.MTKNPT",
}

MAX_TIMESTEP_FS = 10.0


def _finite(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return float(value)


@dataclass
class MDSettings:
    """How to run the MD (the same for every segment of a run).

    ensemble: "nvt" (Langevin), "nve" (velocity Verlet) or "npt" (MTK Nose-Hoover chains,
        full cell fluctuations; fully periodic cells only).
    timestep_fs: 0 < dt <= 10 fs.
    temperature: anything :meth:`TemperatureSchedule.from_spec` accepts (K).
    n_steps: total MD steps of the whole run (>= 1); the schedule is spread over them.
    friction_per_fs: Langevin friction (1/fs); 0.01 as in the paper.
    pressure_bar: NPT external pressure (bar).
    tdamp_fs, pdamp_fs: NPT thermostat/barostat time scales; None: 100 dt and 1000 dt.
    trajectory_interval: keep one trajectory entry every this many steps.
    """

    ensemble: str = "nvt"
    timestep_fs: float = 1.0
    temperature: Any = 300.0
    n_steps: int = 1000
    friction_per_fs: float = 0.01
    pressure_bar: float = 1.0
    tdamp_fs: float | None = None
    pdamp_fs: float | None = None
    trajectory_interval: int = 10

    def __post_init__(self) -> None:
        ensemble = self.ensemble.lower() if isinstance(self.ensemble, str) else self.ensemble
        if ensemble not in ENSEMBLES:
            raise ValueError(f"unknown ensemble {self.ensemble!r}; accepted: "
                             f"{sorted(ENSEMBLES)}")
        self.ensemble = ensemble
        self.timestep_fs = _finite("timestep_fs", self.timestep_fs)
        if not 0.0 < self.timestep_fs <= MAX_TIMESTEP_FS:
            raise ValueError(f"timestep_fs must satisfy 0 < dt <= {MAX_TIMESTEP_FS} fs, "
                             f"got {self.timestep_fs!r}")
        self.temperature = TemperatureSchedule.from_spec(self.temperature)
        if self.ensemble == "npt" and self.temperature.min_temperature <= 0:
            raise ValueError(
                f"ensemble 'npt' needs a temperature > 0 K throughout (its thermostat and "
                f"barostat masses scale with T), got knots {self.temperature.to_list()}")
        if (isinstance(self.n_steps, bool) or not isinstance(self.n_steps, Integral)
                or self.n_steps < 1):
            raise ValueError(f"n_steps must be an integer >= 1, got {self.n_steps!r}")
        self.n_steps = int(self.n_steps)
        self.friction_per_fs = _finite("friction_per_fs", self.friction_per_fs)
        if self.friction_per_fs < 0:
            raise ValueError(f"friction_per_fs must be >= 0 (1/fs), got {self.friction_per_fs!r}")
        self.pressure_bar = _finite("pressure_bar", self.pressure_bar)
        for name in ("tdamp_fs", "pdamp_fs"):
            value = getattr(self, name)
            if value is not None:
                value = _finite(name, value)
                if value <= 0:
                    raise ValueError(f"{name} must be > 0 fs or None (default), got {value!r}")
                setattr(self, name, value)
        interval = self.trajectory_interval
        if isinstance(interval, bool) or not isinstance(interval, Integral) or interval < 1:
            raise ValueError(f"trajectory_interval must be an integer >= 1, got {interval!r}")
        self.trajectory_interval = int(interval)

    @property
    def thermostat_damping_fs(self) -> float:
        """NPT thermostat time scale: tdamp_fs or 100 dt."""
        return self.tdamp_fs if self.tdamp_fs is not None else 100.0 * self.timestep_fs

    @property
    def barostat_damping_fs(self) -> float:
        """NPT barostat time scale: pdamp_fs or 1000 dt."""
        return self.pdamp_fs if self.pdamp_fs is not None else 1000.0 * self.timestep_fs

    def temperature_at(self, step: int) -> float:
        """Target temperature (K) before MD step ``step`` of the run."""
        return self.temperature.temperature_at(step, self.n_steps)

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["temperature"] = self.temperature.to_list()
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MDSettings:
        return cls(**data)
