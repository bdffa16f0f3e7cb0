"""The on-the-fly flow under run_locally: completion, records, checkpoints, failures."""

import numpy as np
import pytest
from ase import Atoms
from ase.calculators.emt import EMT
from jobflow import run_locally

from atomate2_otf.bnn.posterior import Posterior
from atomate2_otf.flows import ensemble_calculator
from atomate2_otf.md.state import MDState
from atomate2_otf.results import read_run_doc
from atomate2_otf.schemas import OTFRunDoc
from atomate2_otf.store import list_checkpoints, load_checkpoint
from tests.workflow.helpers import (
    BrokenReferenceMaker,
    broken_reference_calls,
    copper,
    forced_reference_calls,
    toy_maker,
)


def final_doc(store, flow) -> OTFRunDoc:
    doc = read_run_doc(store, flow.output.uuid)
    assert isinstance(doc, OTFRunDoc), "the run did not store its OTFRunDoc"
    return doc


def test_toy_run_completes_with_records_and_reloadable_checkpoint(store):
    flow = toy_maker().make(copper())
    run_locally(flow, store=store, log=False, ensure_success=True, raise_immediately=True)
    doc = final_doc(store, flow)
    assert doc.completed and doc.n_md_steps == 30
    # call 0 at the start, then triggers at MD steps 7, 14, 21 and 28: 1 + 4 calls
    assert doc.n_reference_calls == forced_reference_calls(30, 7) == 5
    assert [c.md_step for c in doc.calls] == [0, 7, 14, 21, 28]
    assert len(doc.call_errors) == len(doc.call_sigmas) == doc.n_reference_calls - 1
    assert [c.index for c in doc.calls] == list(range(doc.n_reference_calls))
    assert all(c.reference_s is not None and c.update_s > 0 for c in doc.calls)
    assert doc.timings.total >= doc.timings.md > 0
    names = {d["name"] for d in store.query({}, properties=["name"])}
    assert {"otf reference 1", "otf update 1", "otf md segment 1"} <= names
    # retention: the newest 3 checkpoints stay, the final one among them
    kept = list_checkpoints(store, doc.run_id)
    assert kept == list(range(doc.n_reference_calls - 3, doc.n_reference_calls))
    assert doc.final_checkpoint == f"{doc.run_id}:{kept[-1]}"
    # periodic Cu: EMT's stress labels reach the posterior's data, one per call...
    labels = Posterior.from_bytes(load_checkpoint(store, doc.final_checkpoint)).data
    assert len(labels) == doc.n_reference_calls
    for record in labels:
        assert record.periodic and record.stress is not None and record.has_stress
        assert record.stress.shape == (3, 3) and np.isfinite(record.stress).all()
        atoms = Atoms(record.numbers, record.positions, cell=record.cell, pbc=record.pbc)
        atoms.calc = EMT()
        np.testing.assert_allclose(record.stress, atoms.get_stress(voigt=False), atol=1e-9)
    # ...and the model's own stress (the toy's cell term) reaches the MD state
    final = MDState.from_dict(doc.final_state)
    assert final.stress is not None and np.isfinite(final.stress).all()


def test_final_checkpoint_predicts_as_the_in_memory_posterior(store):
    flow = toy_maker(n_steps=20).make(copper())
    run_locally(flow, store=store, log=False, ensure_success=True, raise_immediately=True)
    doc = final_doc(store, flow)
    # the final MD state's energy and forces were computed in memory by the posterior of
    # the final checkpoint: the reloaded ensemble must predict them again
    last_state = MDState.from_dict(doc.final_state)
    assert last_state.step == 20
    atoms = last_state.to_atoms()
    atoms.calc = ensemble_calculator(store, doc.final_checkpoint, threshold=0.05)
    assert abs(atoms.get_potential_energy() - last_state.energy) < 1e-6
    np.testing.assert_allclose(atoms.get_forces(), last_state.forces, atol=1e-6)


def test_production_md_uses_the_final_ensemble_without_updates(store):
    from atomate2_otf.flows import ProductionMDMaker
    from atomate2_otf.store import list_checkpoints

    flow = toy_maker(n_steps=15).make(copper())
    run_locally(flow, store=store, log=False, ensure_success=True, raise_immediately=True)
    doc = final_doc(store, flow)
    kept = list_checkpoints(store, doc.run_id)
    # no model=: the checkpoint names the model it was made with
    production = ProductionMDMaker(checkpoint=doc.final_checkpoint, ensemble="nve",
                                   n_steps=40, timestep_fs=1.0, trajectory_interval=1,
                                   threshold=0.05).make(doc.final_structure)
    responses = run_locally(production, store=store, log=False, ensure_success=True,
                            raise_immediately=True)
    out = responses[production.uuid][1].output
    assert out["n_md_steps"] == 40 and len(out["trajectory"]) == 41
    assert list_checkpoints(store, doc.run_id) == kept  # no update, no new checkpoint
    # NVE with a fixed ensemble conserves the total energy
    from ase.units import kB

    n = len(doc.final_structure)
    totals = [f["energy"] + 1.5 * n * kB * f["temperature_K"] for f in out["trajectory"]]
    assert np.ptp(totals) < 0.05 * np.ptp([f["energy"] for f in out["trajectory"]]) + 1e-4


def test_production_md_needs_a_checkpoint():
    from atomate2_otf.flows import ProductionMDMaker

    with pytest.raises(ValueError, match="checkpoint"):
        ProductionMDMaker().make(copper())


def test_production_md_refuses_an_unknown_model_before_running():
    from atomate2_otf.flows import ProductionMDMaker

    with pytest.raises(ValueError, match="no-such-model"):
        ProductionMDMaker(checkpoint="run:0", model="no-such-model").make(copper())


def test_flat_local_runner_gives_the_run_that_run_locally_gives(store, tmp_path):
    from atomate2_otf.local import run_flow_locally
    from atomate2_otf.store import embedded_job_store

    flow = toy_maker(n_steps=25, seed=5).make(copper())
    run_locally(flow, store=store, log=False, ensure_success=True, raise_immediately=True)
    expected = final_doc(store, flow)
    other = embedded_job_store(tmp_path / "flat")
    flat = toy_maker(n_steps=25, seed=5).make(copper())
    n_jobs = run_flow_locally(flat, other, root_dir=tmp_path / "jobs")
    doc = final_doc(other, flat)
    assert n_jobs == 3 + 4 * (doc.n_reference_calls - 1)  # 3 to start, 4 per cycle
    assert doc.n_reference_calls == expected.n_reference_calls == forced_reference_calls(25, 7)
    np.testing.assert_allclose(doc.call_errors, expected.call_errors, rtol=0, atol=1e-12)
    a, b = MDState.from_dict(doc.final_state), MDState.from_dict(expected.final_state)
    np.testing.assert_allclose(a.positions, b.positions, rtol=0, atol=1e-12)
    np.testing.assert_allclose(a.momenta, b.momenta, rtol=0, atol=1e-12)


def test_flat_local_runner_stops_at_a_failing_job(store, tmp_path):
    from atomate2_otf.local import run_flow_locally

    broken_reference_calls.n = 0
    flow = toy_maker(reference_maker=BrokenReferenceMaker(mode="raise")).make(copper())
    with pytest.raises(RuntimeError, match="SCF did not converge"):
        run_flow_locally(flow, store, root_dir=tmp_path / "jobs")
