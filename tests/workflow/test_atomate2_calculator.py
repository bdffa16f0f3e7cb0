"""The fine-tuned ensemble inside atomate2's own force-field Makers (issue 17.2)."""

import numpy as np
import pytest
from jobflow import run_locally

from atomate2_otf.atomate2_calculator import (
    FORCE_FIELD_NAME,
    PROVENANCE_KEY,
    UNCERTAINTY_KEY,
    fine_tuned_calculator,
    public_store_spec,
)
from atomate2_otf.atoms import to_pymatgen
from atomate2_otf.flows import ensemble_calculator
from atomate2_otf.results import read_run_doc
from tests.workflow.helpers import copper, toy_maker

pytest.importorskip("atomate2.forcefields")


@pytest.fixture
def fine_tuned(store, tmp_path):
    """A finished toy run (EMT labels) in the test's store: (store spec, OTFRunDoc)."""
    flow = toy_maker(n_steps=15).make(copper())
    run_locally(flow, store=store, log=False, ensure_success=True, raise_immediately=True)
    return str(tmp_path / "store"), read_run_doc(store, flow.output.uuid)


@pytest.fixture
def atomate2_store():
    """A JobStore as atomate2's jobs expect: a ``data`` additional store for the large
    objects of their task documents (trajectories, ionic steps), which the embedded OTF
    store lacks; the posterior is read from the OTF store through its spec."""
    from jobflow import JobStore
    from maggma.stores import MemoryStore

    job_store = JobStore(MemoryStore("docs"), additional_stores={"data": MemoryStore("data")})
    job_store.connect()
    return job_store


def task_structure(store, job):
    """The final structure of an atomate2 force-field task document (stored as a dict)."""
    from pymatgen.core import Structure

    return Structure.from_dict(store.get_output(job.uuid)["structure"])


def test_atomate2_md_runs_20_steps_with_the_posterior_and_its_document_carries_the_uncertainty(
        store, fine_tuned, atomate2_store):
    from atomate2.forcefields.md import ForceFieldMDMaker

    spec, doc = fine_tuned
    maker = ForceFieldMDMaker(
        force_field_name=FORCE_FIELD_NAME, n_steps=20, time_step=1.0, temperature=300,
        ensemble="nvt", mb_velocity_seed=1, traj_interval=1,
        calculator_kwargs={"store": spec, "checkpoint": doc.final_checkpoint,
                           "threshold": 0.05})
    md = maker.make(doc.structure)
    run_locally(md, store=atomate2_store, log=False, ensure_success=True,
                raise_immediately=True)
    task = atomate2_store.get_output(md.uuid)
    assert task["forcefield_name"] == "fine_tuned_calculator"
    frames = atomate2_store.get_output(md.uuid, load=True)["objects"]["trajectory"][
        "frame_properties"]
    assert len(frames) == 21  # steps 0..20, standard properties only (atomate2's observer)
    assert "energy_std" not in frames[-1]
    final = task_structure(atomate2_store, md)
    provenance = final.properties[PROVENANCE_KEY]
    assert provenance == {"model": "toy", "run_id": doc.run_id,
                          "checkpoint": doc.final_checkpoint, "store": spec,
                          "threshold": 0.05, "confidence": 0.95}
    uncertainty = final.properties[UNCERTAINTY_KEY]
    # one evaluation per MD step, plus the start
    assert uncertainty["n_evaluations"] == 21
    assert 0 < uncertainty["energy_std"] <= uncertainty["max_energy_std"]
    assert uncertainty["min_prob_within"] <= uncertainty["prob_within"] <= 1
    # the numbers are the fine-tuned ensemble's at the final structure
    atoms = final.to_ase_atoms()
    atoms.calc = ensemble_calculator(store, doc.final_checkpoint, threshold=0.05)
    assert abs(atoms.get_potential_energy() - task["output"]["energy"]) < 1e-6
    assert uncertainty["energy_std"] == pytest.approx(atoms.calc.results["energy_std"],
                                                      rel=1e-9)
    assert uncertainty["prob_within"] == pytest.approx(atoms.calc.results["prob_within"],
                                                       rel=1e-9)
    # the MD moved the atoms: 20 steps, not a static
    assert not np.allclose(final.cart_coords, doc.structure.cart_coords, atol=1e-4)


def test_atomate2_relax_carries_the_uncertainty_and_a_static_runs_without_it(
        store, fine_tuned, atomate2_store):
    from atomate2.forcefields.jobs import ForceFieldRelaxMaker, ForceFieldStaticMaker

    spec, doc = fine_tuned
    kwargs = {"store": spec, "checkpoint": doc.final_checkpoint, "threshold": 0.05}
    static = ForceFieldStaticMaker(force_field_name=FORCE_FIELD_NAME,
                                   calculator_kwargs=kwargs).make(to_pymatgen(copper()))
    relax = ForceFieldRelaxMaker(force_field_name=FORCE_FIELD_NAME, steps=3,
                                 relax_cell=False, calculator_kwargs=kwargs).make(doc.structure)
    for job in (static, relax):
        run_locally(job, store=atomate2_store, log=False, ensure_success=True,
                    raise_immediately=True)
    relax_props = task_structure(atomate2_store, relax).properties
    assert relax_props[PROVENANCE_KEY]["checkpoint"] == doc.final_checkpoint
    assert relax_props[UNCERTAINTY_KEY]["n_evaluations"] >= 2
    # a static (steps <= 1): atomate2 documents the first trajectory frame, not the atoms,
    # so only the energy of the fine-tuned ensemble is there, not its uncertainty
    atoms = copper()
    atoms.calc = ensemble_calculator(store, doc.final_checkpoint, threshold=0.05)
    task = atomate2_store.get_output(static.uuid)
    assert abs(task["output"]["energy"] - atoms.get_potential_energy()) < 1e-6
    assert UNCERTAINTY_KEY not in task_structure(atomate2_store, static).properties


def test_bad_checkpoint_and_store_are_refused_by_name(store, fine_tuned):
    spec, doc = fine_tuned
    with pytest.raises(ValueError, match="run_id:index"):
        fine_tuned_calculator(spec, "no-colon")
    with pytest.raises(ValueError, match="nosuchrun:4"):
        fine_tuned_calculator(spec, "nosuchrun:4")


def test_store_passwords_stay_out_of_the_document():
    assert public_store_spec("mongodb://me:secret@db:27017/otf") == "mongodb://***@db:27017/otf"
    assert public_store_spec("/runs/store") == "/runs/store"
