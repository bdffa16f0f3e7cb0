"""Calibration that follows drift (paper sec. 6): ``OTFMDMaker(calibration_ema=...)``.

A run whose error scale jumps half-way: the reference adds noise of 0.002 eV to its
energies before MD step 60 and 3 eV after (as a phase change or a temperature jump would
make the model's errors jump). The exponentially weighted calibration must follow the new
scale, the exact one (the paper's default) lag behind it; a run without the setting is the
exact one. Measured (toy model, EMT + noise, 40 calls, decay 0.9): errors of 55 sigma
before the jump and 475 sigma after; the calibration's scale factor ends at 334 weighted
and 245 exact.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
from jobflow import Maker, job, run_locally

from atomate2_otf.bnn.posterior import Posterior
from atomate2_otf.results import read_run_doc
from atomate2_otf.store import load_checkpoint
from tests.processes import refused_cli_line
from tests.workflow.helpers import copper, toy_maker

SWITCH_STEP = 60


@dataclass
class JumpingNoiseReferenceMaker(Maker):
    """EMT labels whose energy carries seeded noise of ``before`` eV until MD step
    ``switch`` and ``after`` eV from then on (the step comes from the job's metadata)."""

    name: str = "jumping noise reference"
    before: float = 0.002
    after: float = 3.0
    switch: int = SWITCH_STEP

    @job
    def make(self, structure):
        from ase.calculators.emt import EMT
        from jobflow import CURRENT_JOB
        from pymatgen.io.ase import AseAtomsAdaptor

        step = int((CURRENT_JOB.job.metadata or {}).get("otf_md_step", 0))
        atoms = AseAtomsAdaptor.get_atoms(structure)
        atoms.calc = EMT()
        scale = self.before if step < self.switch else self.after
        noise = scale * np.random.default_rng(step).standard_normal() if step else 0.0
        return {"energy": atoms.get_potential_energy() + noise,
                "forces": atoms.get_forces().tolist(),
                "stress": atoms.get_stress(voigt=False).tolist(), "stress_unit": "eV/A^3"}


def run(store, ema):
    flow = toy_maker(reference_maker=JumpingNoiseReferenceMaker(), n_steps=80,
                     force_trigger_every=2, calibration_ema=ema).make(copper())
    run_locally(flow, store=store, log=False, ensure_success=True, raise_immediately=True)
    doc = read_run_doc(store, flow.output.uuid)
    posterior = Posterior.from_bytes(load_checkpoint(store, doc.final_checkpoint))
    return doc, posterior.calibration


def test_exponentially_weighted_calibration_follows_a_jump_the_exact_one_lags(store):
    doc, exact = run(store, None)
    _, ema = run(store, 0.9)
    assert exact.ema_decay is None and ema.ema_decay == 0.9
    errors, sigmas = np.asarray(doc.call_errors), np.asarray(doc.call_sigmas)
    steps = np.array([c.md_step for c in doc.calls[1:]])
    after = steps >= SWITCH_STEP
    assert after.sum() == 11 and (~after).sum() == 29  # forced at MD steps 2, 4, ..., 80
    # the scale of the errors after the jump, in units of the predicted sigma: the
    # calibration's predictive scale factor sqrt(scale_sq) estimates this
    z_after = float(np.sqrt(np.mean((errors[after] / sigmas[after]) ** 2)))
    z_before = float(np.sqrt(np.mean((errors[~after] / sigmas[~after]) ** 2)))
    follow, lag = np.sqrt(ema.scale_sq), np.sqrt(exact.scale_sq)
    print(f"z before {z_before:.2f}, after {z_after:.2f}; sqrt(scale_sq) "
          f"ema {follow:.2f}, exact {lag:.2f}")
    assert z_after > 5 * z_before  # the jump is there
    # the weighted one is within a factor 2 of the new scale; the exact one, which still
    # averages in the calm first half, stays further below it
    assert z_after / 2 < follow < 2 * z_after
    assert lag < follow and abs(np.log(lag / z_after)) > abs(np.log(follow / z_after))


@pytest.mark.parametrize("bad", ["1.5", "0", "-0.2"])
def test_a_bad_decay_is_refused_before_any_work(bad, tmp_path, cu_cif):
    line = refused_cli_line("run", str(cu_cif), "--reference", "emt", "--calibration-ema",
                            bad, store=tmp_path / "store")
    assert "calibration_ema" in line and bad in line and "(0, 1)" in line
