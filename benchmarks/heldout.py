"""Held-out fine-tuning for the method benchmarks (head_step_size.py, defaults.py).

Systems that no test uses, labelled by cheap real references: 20 frames of reference-driven
Langevin MD each (molecules with GFN2-xTB at 500 K, 8-atom fcc metals with EMT at 800 K);
the even frames train one posterior update, the odd ones are held out.
"""

from __future__ import annotations

import time
from contextlib import nullcontext
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np

#: molecule name -> ASE formula (GFN2-xTB labels)
MOLECULES = {"methanol-xtb": "CH3OH", "acetone-xtb": "CH3COCH3", "methylamine-xtb": "CH3NH2"}
#: solid name -> (element, fcc lattice constant in A) (EMT labels)
SOLIDS = {"al-emt": ("Al", 4.05), "ni-emt": ("Ni", 3.52)}


@lru_cache(maxsize=None)
def frames(system: str, seed: int) -> tuple:
    """The 20 labelled frames of ``system`` (a key of MOLECULES or SOLIDS)."""
    from ase.build import bulk, molecule

    from atomate2_otf.atoms import labelled_md_frames

    if system in MOLECULES:
        from tblite.ase import TBLite

        return tuple(labelled_md_frames(molecule(MOLECULES[system]),
                                        TBLite(method="GFN2-xTB", verbosity=0), 20, 25, 500.0,
                                        seed=seed))
    if system in SOLIDS:
        from ase.calculators.emt import EMT

        symbol, a = SOLIDS[system]
        atoms = bulk(symbol, "fcc", a=a, cubic=True) * (2, 1, 1)
        return tuple(labelled_md_frames(atoms, EMT(), 20, 20, 800.0, seed=seed))
    raise ValueError(f"unknown system {system!r}; use one of "
                     f"{', '.join([*MOLECULES, *SOLIDS])}")


def rmse(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x))))


@dataclass
class HeldOut:
    """Held-out errors of the untuned model and of the fine-tuned ensemble."""

    energy_rmse_untuned: float
    energy_rmse: float
    force_rmse_untuned: float
    force_rmse: float
    force_sigma: float  # sqrt of the mean predicted force variance
    energy_sigma: float  # sqrt of the mean predicted energy variance
    energy_errors: np.ndarray
    energy_stds: np.ndarray
    finite: bool
    update_s: float

    @property
    def energy_ratio(self) -> float:
        """Tuned over untuned held-out energy RMSE (lower is better)."""
        return self.energy_rmse / self.energy_rmse_untuned

    @property
    def force_ratio(self) -> float:
        """Tuned over untuned held-out force RMSE (lower is better)."""
        return self.force_rmse / self.force_rmse_untuned


def finetune_heldout(model, system: str, *, frames_seed: int, n_steps: int, n_chains: int,
                     workers: int, burn_in_frac: float, ramp_frac: float,
                     **posterior_kwargs: Any) -> HeldOut:
    """One update of ``n_chains`` x ``n_steps`` on the training frames of ``system``,
    scored on its held-out frames. ``posterior_kwargs`` go to PosteriorConfig
    (``sigma_tl``, ``head_step_size``, ...), except ``step_size``, which is gamma_0.
    The chains run where ``model`` lives: ``workers`` ChainPool processes on its device,
    or, with ``workers=0``, one after another in this process (on a GPU, several such
    processes share the device better than a pool's workers inside one)."""
    from atomate2_otf.bnn.parallel import ChainPool
    from atomate2_otf.bnn.posterior import Posterior, PosteriorConfig
    from atomate2_otf.bnn.sghmc import SGHMCConfig

    data = frames(system, frames_seed)
    train, test = list(data[0::2]), list(data[1::2])
    periodic = test[0].periodic
    sg = SGHMCConfig(n_steps=n_steps, burn_in=int(n_steps * burn_in_frac),
                     ramp=max(int(n_steps * ramp_frac), 1), batch_size=2 if periodic else 5,
                     step_size=posterior_kwargs.pop("step_size", None))
    # the paper's energy std: 0.1 K with K = 0.5 kcal/mol per 9 atoms (ethanol)
    energy_sigma = 0.1 * 0.0217 * train[0].n_atoms / 9
    posterior = Posterior(model, PosteriorConfig(n_chains=n_chains, sghmc=sg, seed=0,
                                                 energy_sigma=energy_sigma, **posterior_kwargs))
    posterior.add_labels(train)
    inputs = [r.unlabelled() for r in test]
    untuned = posterior.predict_untuned(inputs, compute_stress=periodic)
    start = time.perf_counter()
    devices = None if model.device.type == "cpu" else [str(model.device)]
    with (nullcontext() if workers == 0
          else ChainPool(model, n_workers=workers, devices=devices)) as pool:
        posterior.update(pool=pool)
        update_s = time.perf_counter() - start
        tuned = posterior.predict(inputs, compute_stress=periodic, pool=pool)
    e_ref = np.array([r.energy for r in test])
    f_ref = np.concatenate([r.forces for r in test])
    finite = bool(np.all(np.isfinite(tuned.energy)) and np.all(np.isfinite(tuned.forces)))
    return HeldOut(
        energy_rmse_untuned=rmse(untuned.energy - e_ref),
        energy_rmse=rmse(tuned.energy - e_ref) if finite else float("inf"),
        force_rmse_untuned=rmse(untuned.forces - f_ref),
        force_rmse=rmse(tuned.forces - f_ref) if finite else float("inf"),
        force_sigma=float(np.sqrt(np.mean(tuned.forces_var))),
        energy_sigma=float(np.sqrt(np.mean(tuned.energy_var))),
        energy_errors=tuned.energy - e_ref, energy_stds=tuned.energy_std, finite=finite,
        update_s=update_s)
