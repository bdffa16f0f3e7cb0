"""Flow outputs that compose (issue 17.6): a Maker chains after an on-the-fly run or a
production run through ``output.structure``, as after atomate2's own Makers."""

import numpy as np
import pytest
from jobflow import Flow, run_locally

from atomate2_otf.reference.makers import EMTStaticMaker
from atomate2_otf.results import read_run_doc
from atomate2_otf.schemas import OTFRunDoc, ProductionMDDoc
from tests.workflow.helpers import copper, toy_maker


def static_input(store, static):
    """The structure an atomate2 ASE static job was given, from its stored task document
    (a plain dict: emmet's documents are stored without a class to decode them into)."""
    from pymatgen.core import Structure

    task = store.get_output(static.uuid)
    assert task["ase_calculator_name"].lower() == "emt"
    return Structure.from_dict(task["input"]["mol_or_struct"])


def same_sites(one, other, atol=1e-9) -> bool:
    """Same cell and the same sites up to lattice translations (atomate2's task document
    wraps sites into the cell)."""
    shift = one.frac_coords - other.frac_coords
    return (np.allclose(one.lattice.matrix, other.lattice.matrix, atol=atol)
            and np.allclose(shift - np.round(shift), 0.0, atol=atol))


def test_an_atomate2_static_runs_on_the_final_structure_of_an_otf_run(store):
    otf = toy_maker(n_steps=12).make(copper())
    static = EMTStaticMaker().make(otf.output.structure)  # atomate2's EmtRelaxMaker, 1 step
    run_locally(Flow([otf, static]), store=store, log=False, ensure_success=True,
                raise_immediately=True)
    doc = read_run_doc(store, otf.output.uuid)
    assert doc.completed and doc.n_md_steps == 12
    assert doc.structure == doc.final_structure
    received = static_input(store, static)
    assert same_sites(received, doc.final_structure)
    # not the starting cell: the run moved the atoms before the static saw them
    assert not same_sites(received, copper_structure(), atol=1e-3)


def test_the_segment_declares_its_document_so_bad_attributes_fail_when_built():
    otf = toy_maker().make(copper())
    assert otf.output.output_schema is OTFRunDoc
    otf.output.structure  # noqa: B018  (a field: accepted)
    with pytest.raises(AttributeError, match="no_such_field"):
        otf.output.no_such_field  # noqa: B018


def test_old_documents_get_structure_from_final_structure():
    doc = OTFRunDoc(run_id="r", model="toy", reference="EMT static", ensemble="nvt",
                    threshold=0.05, confidence=0.95, final_structure=copper_structure())
    assert doc.structure == doc.final_structure


def copper_structure():
    from atomate2_otf.atoms import to_pymatgen

    return to_pymatgen(copper())


def test_production_md_returns_a_document_a_maker_chains_after(store):
    from atomate2_otf.flows import ProductionMDMaker

    otf = toy_maker(n_steps=8).make(copper())
    run_locally(otf, store=store, log=False, ensure_success=True, raise_immediately=True)
    doc = read_run_doc(store, otf.output.uuid)
    production = ProductionMDMaker(checkpoint=doc.final_checkpoint, n_steps=5,
                                   timestep_fs=1.0, threshold=0.05).make(doc.structure)
    assert production.output.output_schema is ProductionMDDoc
    static = EMTStaticMaker().make(production.output.structure)
    run_locally(Flow([production, static]), store=store, log=False, ensure_success=True,
                raise_immediately=True)
    out = ProductionMDDoc(**store.get_output(production.uuid))  # stored as its fields
    assert out.n_md_steps == 5 and out.structure is not None
    assert out["energy_range"] == out.energy_range  # item access of the former dict kept
    assert same_sites(static_input(store, static), out.structure)
