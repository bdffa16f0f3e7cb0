"""The complete MD state that crosses a job boundary, as plain JSON/BSON-safe data.

Splitting a run must not change its trajectory, so the state carries everything the next
step depends on: positions, momenta, cell, the step index, the results (energy, forces,
stress) *at these positions* that the integrator uses for its next half-kick, and the
integrator's own variables including its random-number state.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from ase import Atoms

STATE_FORMAT = 1

# numpy bit generators whose state is {"state": int, "inc": int} (128-bit ints)
_PCG_GENERATORS = ("PCG64", "PCG64DXSM")


def rng_state_to_plain(state: dict[str, Any]) -> dict[str, Any]:
    """A numpy PCG64 ``bit_generator.state`` with its 128-bit ints as decimal strings.

    BSON holds at most signed 64-bit integers, so the two 128-bit words are strings.
    """
    name = state.get("bit_generator")
    if name not in _PCG_GENERATORS:
        raise ValueError(f"unsupported bit generator {name!r}; accepted: {_PCG_GENERATORS}")
    return {
        "bit_generator": name,
        "state": str(int(state["state"]["state"])),
        "inc": str(int(state["state"]["inc"])),
        "has_uint32": int(state["has_uint32"]),
        "uinteger": int(state["uinteger"]),
    }


def rng_state_from_plain(plain: dict[str, Any]) -> dict[str, Any]:
    """Inverse of :func:`rng_state_to_plain`: a state numpy's bit generator accepts."""
    name = plain.get("bit_generator")
    if name not in _PCG_GENERATORS:
        raise ValueError(f"unsupported bit generator {name!r}; accepted: {_PCG_GENERATORS}")
    return {
        "bit_generator": name,
        "state": {"state": int(plain["state"]), "inc": int(plain["inc"])},
        "has_uint32": int(plain["has_uint32"]),
        "uinteger": int(plain["uinteger"]),
    }


def rng_from_plain(plain: dict[str, Any]) -> np.random.Generator:
    """A numpy Generator positioned exactly at the stored state."""
    state = rng_state_from_plain(plain)
    bit_generator = getattr(np.random, state["bit_generator"])()
    bit_generator.state = state
    return np.random.Generator(bit_generator)


def to_plain(value: Any) -> Any:
    """Recursively turn numpy scalars/arrays and tuples into Python floats, ints, lists."""
    if isinstance(value, dict):
        return {str(k): to_plain(v) for k, v in value.items()}
    if isinstance(value, np.ndarray):
        return to_plain(value.tolist())
    if isinstance(value, list | tuple):
        return [to_plain(v) for v in value]
    if isinstance(value, np.bool_ | bool):
        return bool(value)
    if isinstance(value, np.integer | int):
        value = int(value)
        if not -(2**63) <= value < 2**63:
            raise ValueError(f"integer {value} does not fit BSON's int64; store it as a string")
        return value
    if isinstance(value, np.floating | float):
        return float(value)
    return value


def _array(value: Any, shape: tuple[int, ...], name: str) -> np.ndarray:
    out = np.array(value, dtype=np.float64)
    if out.shape != shape:
        raise ValueError(f"{name} must have shape {shape}, got {out.shape}")
    return out


@dataclass
class MDState:
    """Where an MD run stands: atoms, momenta, cell, step, results at these positions and
    integrator variables.

    ``energy``/``forces``/``stress`` (eV, eV/A, 3x3 eV/A^3 ASE sign) are the results at
    ``positions`` that the integrator will use for its next step, or None when they are
    still to be computed. ``integrator`` holds plain data: thermostat/barostat variables
    and the random-number state (see :mod:`atomate2_otf.md.integrators`).
    """

    numbers: np.ndarray
    positions: np.ndarray
    momenta: np.ndarray
    cell: np.ndarray
    pbc: np.ndarray
    masses: np.ndarray
    step: int = 0
    energy: float | None = None
    forces: np.ndarray | None = None
    stress: np.ndarray | None = None
    integrator: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.numbers = np.asarray(self.numbers, dtype=np.int64).reshape(-1)
        n = len(self.numbers)
        if n == 0:
            raise ValueError("an MD state needs at least one atom, got 0")
        self.positions = _array(self.positions, (n, 3), "positions")
        self.momenta = _array(self.momenta, (n, 3), "momenta")
        self.cell = _array(self.cell, (3, 3), "cell")
        self.pbc = np.broadcast_to(np.asarray(self.pbc, dtype=bool), (3,)).copy()
        self.masses = _array(self.masses, (n,), "masses")
        if isinstance(self.step, bool) or int(self.step) != self.step or self.step < 0:
            raise ValueError(f"step must be an integer >= 0, got {self.step!r}")
        self.step = int(self.step)
        if self.energy is not None:
            self.energy = float(self.energy)
            if not math.isfinite(self.energy):
                raise ValueError(f"energy must be finite, got {self.energy!r}")
        if self.forces is not None:
            self.forces = _array(self.forces, (n, 3), "forces")
        if self.stress is not None:
            stress = np.array(self.stress, dtype=np.float64)
            if stress.shape == (6,):
                from ase.stress import voigt_6_to_full_3x3_stress

                stress = voigt_6_to_full_3x3_stress(stress)
            self.stress = _array(stress, (3, 3), "stress")
        self.integrator = dict(self.integrator or {})

    @property
    def n_atoms(self) -> int:
        return len(self.numbers)

    @property
    def has_results(self) -> bool:
        return self.energy is not None and self.forces is not None

    # -- serialisation ----------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Plain lists/floats/ints/bools/strings only: exact through json and BSON."""
        return {
            "format": STATE_FORMAT,
            "numbers": [int(z) for z in self.numbers],
            "positions": self.positions.tolist(),
            "momenta": self.momenta.tolist(),
            "cell": self.cell.tolist(),
            "pbc": [bool(p) for p in self.pbc],
            "masses": self.masses.tolist(),
            "step": int(self.step),
            "energy": self.energy,
            "forces": None if self.forces is None else self.forces.tolist(),
            "stress": None if self.stress is None else self.stress.tolist(),
            "integrator": to_plain(self.integrator),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MDState:
        data = dict(data)
        fmt = data.pop("format", STATE_FORMAT)
        if fmt != STATE_FORMAT:
            raise ValueError(f"unsupported MD state format {fmt!r}; this version reads "
                             f"format {STATE_FORMAT}")
        data["integrator"] = copy.deepcopy(data.get("integrator") or {})
        return cls(**data)

    def copy(self) -> MDState:
        return MDState.from_dict(self.to_dict())

    # -- ASE --------------------------------------------------------------------------------
    def to_atoms(self) -> Atoms:
        """An ``ase.Atoms`` with these positions, momenta, cell, pbc and masses (no calc)."""
        from ase import Atoms

        return Atoms(numbers=self.numbers, positions=self.positions.copy(),
                     cell=self.cell.copy(), pbc=self.pbc.copy(), masses=self.masses.copy(),
                     momenta=self.momenta.copy())

    @classmethod
    def from_atoms(cls, atoms: Atoms, step: int = 0) -> MDState:
        """The atoms' positions, momenta (zero if unset), cell, pbc and masses; no results."""
        return cls(
            numbers=atoms.get_atomic_numbers(),
            positions=atoms.get_positions(),
            momenta=atoms.get_momenta(),
            cell=np.array(atoms.get_cell()),
            pbc=atoms.get_pbc(),
            masses=atoms.get_masses(),
            step=step,
        )
