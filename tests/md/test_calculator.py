"""PosteriorCalculator: the ensemble mean drives MD, uncertainty rides along in results."""

import numpy as np
import pytest
from ase import Atoms

from atomate2_otf.atoms import record_from_atoms
from atomate2_otf.bnn.posterior import Posterior, PosteriorConfig
from atomate2_otf.bnn.sghmc import SGHMCConfig
from atomate2_otf.md.calculator import PosteriorCalculator
from atomate2_otf.md.segment import MDSettings, initial_state, run_segment
from atomate2_otf.md.trigger import CalibratedTrigger
from atomate2_otf.records import StructureRecord
from tests.toy_model import ToyModel

BASE = np.array([[0, 0, 0], [1.1, 0, 0], [0, 1.2, 0], [0, 0, 1.3], [1.0, 1.0, 1.0]])


def molecule(seed: int) -> Atoms:
    rng = np.random.default_rng(seed)
    return Atoms("CHHOH", positions=BASE + rng.normal(scale=0.05, size=BASE.shape))


@pytest.fixture(scope="module")
def posterior(one_torch_thread):  # one_torch_thread: tests/conftest.py
    """Two chains that saw three labels (toy model at theta_0 plus noise) and one update."""
    sg = SGHMCConfig(n_steps=20, burn_in=5, ramp=5, batch_size=2, step_size=3e-3)
    post = Posterior(ToyModel(), PosteriorConfig(n_chains=2, energy_sigma=0.05, sghmc=sg,
                                                 seed=1))
    rng = np.random.default_rng(0)
    records = [record_from_atoms(molecule(s)) for s in range(3)]
    pred = post.predict_untuned(records)
    forces = pred.split_atoms(pred.forces)
    post.add_labels([
        StructureRecord(r.numbers, r.positions, energy=float(e) + rng.normal(scale=0.05),
                        forces=f + rng.normal(scale=0.05, size=f.shape))
        for r, e, f in zip(records, pred.energy, forces, strict=True)])
    post.update()
    return post


def test_results_match_the_posterior_prediction(posterior):
    atoms = molecule(7)
    atoms.calc = PosteriorCalculator(posterior, threshold=0.05)
    forces = atoms.get_forces()
    results = atoms.calc.results
    assert {"energy", "free_energy", "forces", "energy_std", "energy_std_epistemic",
            "forces_std", "prob_within", "chain_energies"} <= set(results)
    assert "stress" not in results  # a molecule: no stress
    pred = posterior.predict([record_from_atoms(atoms)])
    assert atoms.get_potential_energy() == pytest.approx(float(pred.energy[0]), abs=1e-10)
    np.testing.assert_allclose(forces, pred.forces, atol=1e-10)
    assert results["energy_std"] == pytest.approx(float(pred.energy_std[0]))
    assert 0 < results["energy_std_epistemic"] < results["energy_std"]
    np.testing.assert_allclose(results["forces_std"], np.sqrt(pred.forces_var))
    assert results["forces_std"].shape == (5, 3)
    assert results["chain_energies"].shape == (2,)
    assert results["energy"] == pytest.approx(results["chain_energies"].mean())
    assert 0 < results["prob_within"] < 1
    assert results["prob_within"] == pytest.approx(
        posterior.calibration.prob_within(results["energy_std"], 0.05))


def test_prob_within_decreases_with_the_threshold(posterior):
    probs = []
    for threshold in (1.0, 0.1, 0.03, 0.01):
        atoms = molecule(7)
        atoms.calc = PosteriorCalculator(posterior, threshold=threshold)
        atoms.get_potential_energy()
        probs.append(atoms.calc.results["prob_within"])
    assert all(0 < p < 1 for p in probs)
    assert all(a > b for a, b in zip(probs, probs[1:])), probs


@pytest.mark.parametrize("threshold", [0, -0.1, float("nan")])
def test_threshold_must_be_positive(posterior, threshold):
    with pytest.raises(ValueError, match="threshold"):
        PosteriorCalculator(posterior, threshold=threshold)


def test_stress_on_request_needs_a_periodic_cell(posterior):
    atoms = molecule(3)
    atoms.calc = PosteriorCalculator(posterior, threshold=0.1, compute_stress=True)
    with pytest.raises(ValueError, match="periodic"):
        atoms.get_forces()


def test_segment_with_the_posterior_triggers_on_low_confidence(posterior):
    settings = MDSettings(ensemble="nvt", timestep_fs=0.5, temperature=300, n_steps=5,
                          trajectory_interval=1)
    calc = PosteriorCalculator(posterior, threshold=0.03)
    state = initial_state(molecule(1), settings, seed=0)
    confident = run_segment(state, calc, settings, trigger=CalibratedTrigger(0.01))
    assert not confident.triggered and confident.n_steps_done == 5
    assert {"energy_std", "prob_within"} <= set(confident.trajectory[-1])
    strict_trigger = CalibratedTrigger(0.999999)
    strict = run_segment(state, calc, settings, trigger=strict_trigger)
    assert strict.triggered and strict.n_steps_done == 0
    assert strict_trigger.last["prob_within"] < 0.999999  # it keeps what it fired on
    one_step = run_segment(state, calc, settings, max_steps=1).state
    np.testing.assert_array_equal(strict.pending.positions, one_step.positions)
