"""A run's path (labels, updates, prediction, checkpoint, MD) on a given device, shared by
the device tests on the CPU (test_devices.py) and on CUDA (test_gpu.py)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch
from ase.build import bulk

from atomate2_otf.bnn.posterior import Posterior, PosteriorConfig
from atomate2_otf.bnn.sghmc import SGHMCConfig
from atomate2_otf.md.calculator import PosteriorCalculator
from atomate2_otf.md.segment import MDSettings, initial_state, run_segment
from atomate2_otf.md.trigger import CalibratedTrigger
from tests.md.helpers import ScaledEMT, label_with
from tests.toy_model import ToyModel


@contextmanager
def default_device(device: str) -> Iterator[None]:
    torch.set_default_device(device)
    try:
        yield
    finally:
        torch.set_default_device(None)


def copper(seed: int):
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True)
    atoms.rattle(0.05, seed=seed)
    return atoms


def labelled_copper(n: int):
    """Periodic frames with energy, forces and stress: every likelihood term is used."""
    return [label_with(copper(seed), ScaledEMT(scale=1.5, offset=0.5)) for seed in range(n)]


def small_config(**sghmc) -> PosteriorConfig:
    sg = SGHMCConfig(**{"n_steps": 12, "burn_in": 4, "ramp": 2, "batch_size": 3,
                        "step_size": 3e-3, **sghmc})
    return PosteriorConfig(n_chains=3, energy_sigma=0.05, sghmc=sg, seed=7)


def run_path(model: ToyModel, device: str = "cpu") -> dict[str, np.ndarray]:
    """A run's path on ``device``: labels, updates (full batch, then weighted minibatches),
    a scored label, a prediction, a checkpoint round trip and MD steps with the ensemble
    (energy and force criterion, stress)."""
    data = labelled_copper(6)
    posterior = Posterior(model, small_config(), device=device)
    posterior.add_labels(data[:3])
    posterior.update()
    before = posterior.predict([data[3].unlabelled()], compute_stress=True)
    posterior.observe(data[3], float(before.energy[0]), float(before.energy_std[0]),
                      predicted_forces=before.forces, forces_std=np.sqrt(before.forces_var))
    posterior.add_labels(data[4:])
    posterior.update()  # 6 labels, batch 3: priority draws with importance weights
    reloaded = Posterior.from_bytes(posterior.to_bytes(), model=model, device=device)
    calculator = PosteriorCalculator(reloaded, threshold=0.05, force_threshold=0.5)
    settings = MDSettings(ensemble="nvt", timestep_fs=1.0, temperature=300.0, n_steps=4)
    result = run_segment(initial_state(copper(9), settings, seed=3), calculator, settings,
                         trigger=CalibratedTrigger(0.95, every=10))
    return {"theta": reloaded.state.theta.cpu().numpy().copy(), "energy": before.energy,
            "forces_var": before.forces_var, "stress": before.stress,
            "positions": result.state.positions, "energy_md": np.array(result.state.energy)}
