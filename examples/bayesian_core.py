"""Fine-tune CHGNet as a Bayesian ensemble on GFN2-xTB ethanol and ask the calibrated trigger.

Run: pip install -e ".[xtb]" && python examples/bayesian_core.py   (~1-2 min on 2 cores)
"""

import numpy as np
from ase.build import molecule
from tblite.ase import TBLite

from atomate2_otf.atoms import labelled_md_frames
from atomate2_otf.bnn.parallel import ChainPool
from atomate2_otf.bnn.posterior import Posterior, PosteriorConfig
from atomate2_otf.bnn.sghmc import SGHMCConfig
from atomate2_otf.models.base import load_model

K = 0.0217  # energy-error threshold: 0.5 kcal/mol in eV, as the paper's ethanol run

if __name__ == "__main__":
    frames = labelled_md_frames(molecule("CH3CH2OH"), TBLite(method="GFN2-xTB", verbosity=0),
                                n_frames=16, every=25, temperature_k=500.0)
    train, test = frames[::2], frames[1::2]
    sghmc = SGHMCConfig(n_steps=200, burn_in=50, ramp=20)
    posterior = Posterior(load_model("chgnet"),
                          PosteriorConfig(n_chains=4, energy_sigma=0.1 * K, sghmc=sghmc))
    posterior.add_labels(train)
    untuned = posterior.predict_untuned([r.unlabelled() for r in test])
    with ChainPool(posterior.model, n_workers=2) as pool:
        posterior.update(pool=pool)
        tuned = posterior.predict([r.unlabelled() for r in test], pool=pool)
    e_ref = np.array([r.energy for r in test])
    f_ref = np.concatenate([r.forces for r in test])
    rmse = lambda x: float(np.sqrt(np.mean(np.square(x))))  # noqa: E731
    print(f"energy RMSE  untuned {rmse(untuned.energy - e_ref):.4f} eV   "
          f"fine-tuned {rmse(tuned.energy - e_ref):.4f} eV")
    print(f"force RMSE   untuned {rmse(untuned.forces - f_ref):.3f} eV/A  "
          f"fine-tuned {rmse(tuned.forces - f_ref):.3f} eV/A  "
          f"(predicted sigma {np.sqrt(np.mean(tuned.forces_var)):.3f})")
    p_ok = posterior.calibration.prob_within(tuned.energy_std, K)
    print("P(|e| < K) per held-out frame:", np.round(p_ok, 3))
    print("frames the trigger would label (P < 0.95):", int(np.sum(p_ok < 0.95)))
