"""Build ASE integrators from an :class:`MDState` and read their variables back, exactly.

ASE keeps thermostat/barostat variables in private attributes and has no API to restore
them, so each integrator gets one pair of helpers here (capture/restore) that touch those
attributes, checked against ASE 3.29. Everything else in the package goes through these.

Temperature schedules: the target is set before every step as a pure function of the step
index. For MTK NPT the thermostat and barostat masses are recomputed at the new target
(as LAMMPS does for a ramp), so a split run rebuilds exactly the same masses.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import numpy as np
from ase import units
from ase.md.langevin import Langevin
from ase.md.md import MolecularDynamics
from ase.md.nose_hoover_chain import MTKNPT, MTKBarostat, NoseHooverChainThermostat
from ase.md.verlet import VelocityVerlet

from atomate2_otf.md.state import rng_from_plain, rng_state_to_plain

if TYPE_CHECKING:
    from ase import Atoms

    from atomate2_otf.md.settings import MDSettings
    from atomate2_otf.md.state import MDState

logger = logging.getLogger(__name__)


def new_rng_state(seed: int) -> dict[str, Any]:
    """Plain state of the integrator's random stream for ``seed``.

    A spawned child of ``SeedSequence(seed)``, so its draws are independent of the
    initial velocities, which come from ``default_rng(seed)`` itself.
    """
    child = np.random.SeedSequence(seed).spawn(1)[0]
    return rng_state_to_plain(np.random.default_rng(child).bit_generator.state)


def build_integrator(atoms: Atoms, settings: MDSettings, state: MDState) -> MolecularDynamics:
    """The ASE integrator of ``settings.ensemble`` on ``atoms`` (already at ``state``), with
    the random stream and thermostat/barostat variables of ``state.integrator`` restored."""
    dt = settings.timestep_fs * units.fs
    temperature = settings.temperature_at(state.step)
    variables = state.integrator
    if "rng" in variables:
        rng = rng_from_plain(variables["rng"])
    else:
        logger.warning("MD state has no random-number state; seeding the integrator with 0")
        rng = rng_from_plain(new_rng_state(0))
    stored = variables.get("ensemble")
    if stored is not None and stored != settings.ensemble:
        logger.info("state comes from a %r run, continuing as %r: integrator variables start "
                    "fresh", stored, settings.ensemble)
        variables = {"rng": variables.get("rng")}
    if settings.ensemble == "nvt":
        dyn = Langevin(atoms, dt, temperature_K=temperature,
                       friction=settings.friction_per_fs / units.fs, fixcm=False, rng=rng)
    elif settings.ensemble == "nve":
        dyn = VelocityVerlet(atoms, dt)
        dyn.rng = rng  # unused by NVE; carried so the state keeps its stream
    elif settings.ensemble == "npt":
        dyn = MTKNPT(atoms, dt, temperature_K=temperature,
                     pressure_au=settings.pressure_bar * units.bar,
                     tdamp=settings.thermostat_damping_fs * units.fs,
                     pdamp=settings.barostat_damping_fs * units.fs)
        dyn.rng = rng
        _mtk_restore(dyn, variables)
    else:  # MDSettings validates the ensemble; this guards new ones
        raise ValueError(f"no integrator for ensemble {settings.ensemble!r}")
    dyn.target_temperature_K = temperature
    return dyn


def set_target_temperature(dyn: MolecularDynamics, temperature: float) -> None:
    """Set the thermostat target (K) before a step; a no-op when it did not change."""
    if getattr(dyn, "target_temperature_K", None) == temperature:
        return
    if isinstance(dyn, Langevin):
        dyn.set_temperature(temperature_K=temperature)
    elif isinstance(dyn, MTKNPT):
        _mtk_set_temperature(dyn, temperature)
    dyn.target_temperature_K = temperature


def capture(dyn: MolecularDynamics, ensemble: str) -> dict[str, Any]:
    """The integrator's variables as plain data (the ``MDState.integrator`` dict)."""
    out: dict[str, Any] = {"ensemble": ensemble,
                           "rng": rng_state_to_plain(dyn.rng.bit_generator.state)}
    if isinstance(dyn, MTKNPT):
        out.update(_mtk_capture(dyn))
    return out


# -- MTKNPT (ase.md.nose_hoover_chain, ASE 3.29): private attributes ---------------------------
# positions _q, momenta _p and cell _h are read from the atoms at construction; the rest is
# thermostat (_eta, _p_eta), barostat (_xi, _p_xi) and cell momenta (_p_g).

def _mtk_capture(dyn: MTKNPT) -> dict[str, Any]:
    return {
        "thermostat": {"eta": dyn._thermostat._eta.tolist(),
                       "p_eta": dyn._thermostat._p_eta.tolist()},
        "barostat": {"xi": dyn._barostat._xi.tolist(), "p_xi": dyn._barostat._p_xi.tolist()},
        "cell_momenta": np.asarray(dyn._p_g).tolist(),
    }


def _mtk_restore(dyn: MTKNPT, variables: dict[str, Any]) -> None:
    if "thermostat" not in variables:
        return  # a fresh NPT run: ASE's zero-initialised variables
    dyn._thermostat._eta = np.array(variables["thermostat"]["eta"], dtype=np.float64)
    dyn._thermostat._p_eta = np.array(variables["thermostat"]["p_eta"], dtype=np.float64)
    dyn._barostat._xi = np.array(variables["barostat"]["xi"], dtype=np.float64)
    dyn._barostat._p_xi = np.array(variables["barostat"]["p_xi"], dtype=np.float64)
    dyn._p_g = np.array(variables["cell_momenta"], dtype=np.float64).reshape(3, 3)


def _mtk_set_temperature(dyn: MTKNPT, temperature: float) -> None:
    """New target and masses from ASE's own constructors; chain variables carried over."""
    old_t, old_b = dyn._thermostat, dyn._barostat
    thermostat = NoseHooverChainThermostat(
        num_atoms_global=old_t._num_atoms_global, masses=old_t._masses,
        temperature_K=temperature, tdamp=old_t._tdamp, tchain=old_t._tchain,
        tloop=old_t._tloop)
    thermostat._eta, thermostat._p_eta = old_t._eta, old_t._p_eta
    barostat = MTKBarostat(
        num_atoms_global=old_b._num_atoms_global, temperature_K=temperature,
        pdamp=old_b._pdamp, pchain=old_b._pchain, ploop=old_b._ploop, mask=dyn.mask)
    barostat._xi, barostat._p_xi = old_b._xi, old_b._p_xi
    dyn._thermostat, dyn._barostat = thermostat, barostat
    dyn._temperature_K = temperature
    dyn._kT = units.kB * temperature
