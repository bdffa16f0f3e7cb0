"""Bad input is refused in OTFMDMaker.make, before any model loads; reference failures fail
the flow with the call named, and the checkpoints written so far stay loadable."""

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk, molecule
from jobflow import run_locally

from atomate2_otf.bnn.posterior import Posterior
from atomate2_otf.flows import OTFMDMaker
from atomate2_otf.models import base
from atomate2_otf.store import list_checkpoints, load_checkpoint
from tests.workflow.helpers import BrokenReferenceMaker, broken_reference_calls, run_id_of


@pytest.fixture
def no_model_loads(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the input was checked")

    monkeypatch.setattr(base, "load_model", refuse)


@pytest.mark.parametrize("settings, atoms, message", [
    ({}, Atoms("H2", positions=[[0, 0, 0], [0, 0, 0.3]]), r"closer than 0\.5|0\.3"),
    ({"ensemble": "npt"}, molecule("CH3CH2OH"), "periodic"),
    ({"temperature": -5.0}, molecule("H2O"), "-5"),
    ({"timestep_fs": 0.0}, molecule("H2O"), "timestep"),
    ({"timestep_fs": 12.0}, molecule("H2O"), "timestep"),
    ({"n_steps": 0}, molecule("H2O"), "n_steps"),
    ({"ensemble": "nph"}, molecule("H2O"), "nph"),
    ({"threshold": 0.0}, molecule("H2O"), "threshold"),
    ({"confidence": 1.5}, molecule("H2O"), "confidence"),
    ({"model": "no-such-model"}, molecule("H2O"), "unknown model name 'no-such-model'.*chgnet"),
    ({"n_chains": 0}, molecule("H2O"), "n_chains"),
    ({"sigma_tl": -1.0}, molecule("H2O"), "sigma"),
    ({"force_threshold": -0.1}, molecule("H2O"), r"force_threshold.*-0\.1"),
    ({"audit_fraction": 1.5}, molecule("H2O"), r"audit_fraction.*\[0, 1\).*1\.5"),
])
def test_make_refuses_bad_input_before_any_model_loads(no_model_loads, settings, atoms, message):
    with pytest.raises(ValueError, match=message):
        OTFMDMaker(**settings).make(atoms)


def test_structure_files_missing_or_unreadable(no_model_loads, tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        OTFMDMaker().make(tmp_path / "POSCAR")
    garbage = tmp_path / "broken.xyz"
    garbage.write_text("this is not\na structure file\n")
    with pytest.raises(ValueError, match="could not read structure file.*broken.xyz"):
        OTFMDMaker().make(garbage)
    # ASE's CIF reader fails with an empty AssertionError/StopIteration: the message still
    # says what went wrong and what is accepted
    for i, text in enumerate(["hello\n", "data_broken\n_cell_length_a oops\n"]):
        cif = tmp_path / f"broken{i}.cif"
        cif.write_text(text)
        with pytest.raises(ValueError, match=r"broken\d\.cif': (AssertionError|StopIteration) "
                                             r"in ASE's reader.*POSCAR, CIF"):
            OTFMDMaker().make(cif)


@pytest.mark.parametrize("mode, message", [
    ("nan", r"reference call 1 \(MD step 5\).*non-finite"),
    ("raise", "SCF did not converge"),
])
def test_failing_reference_fails_the_flow_and_keeps_checkpoints(store, mode, message):
    broken_reference_calls.n = 0
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True)
    atoms.rattle(0.02, seed=2)
    maker = OTFMDMaker(model="toy", reference_maker=BrokenReferenceMaker(mode=mode),
                       n_steps=20, timestep_fs=1.0, n_chains=2, update_steps=2,
                       initial_update_steps=2, n_workers=1, force_trigger_every=5,
                       threshold=0.05)
    flow = maker.make(atoms)
    with pytest.raises(Exception, match=message):
        run_locally(flow, store=store, log=False, raise_immediately=True)
    run_id = run_id_of(flow)
    kept = list_checkpoints(store, run_id)
    assert kept == [0]
    posterior = Posterior.from_bytes(load_checkpoint(store, f"{run_id}:0"))
    assert len(posterior.data) == 1 and np.isfinite(posterior.energy_offset)


def test_status_of_a_run_that_stopped_midway(store):
    from atomate2_otf.analysis.status import status_rows

    broken_reference_calls.n = 0
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True)
    atoms.rattle(0.02, seed=2)
    maker = OTFMDMaker(model="toy", reference_maker=BrokenReferenceMaker(calls_before_failure=2),
                       n_steps=30, timestep_fs=1.0, n_chains=2, update_steps=2,
                       initial_update_steps=2, n_workers=1, force_trigger_every=5)
    run_locally(maker.make(atoms), store=store, log=False)
    [row] = status_rows(store)
    assert row["state"] == "running" and row["reference_calls"] == 2
    assert row["md_steps"] == 10  # triggers at step 5 and, five model steps later, at 10
