"""Class-level warm starts in a batch (issue 17.4): a material starts from the final
posterior of an earlier material of its class, chosen by a rule."""

from __future__ import annotations

import pytest
from ase import Atoms
from ase.build import bulk
from jobflow import run_locally

from atomate2_otf.batch import BatchOTFMaker, same_elements
from atomate2_otf.bnn.posterior import Posterior
from atomate2_otf.results import read_run_doc
from atomate2_otf.store import load_checkpoint
from tests.workflow.helpers import toy_maker


def cu(a: float, seed: int) -> Atoms:
    atoms = bulk("Cu", "fcc", a=a, cubic=True)
    atoms.rattle(0.02, seed=seed)
    return atoms


def co() -> Atoms:
    return Atoms("CO", positions=[[0, 0, 0], [0, 0, 1.13]], cell=[8, 8, 8], pbc=False)


def test_same_elements_chains_each_class_through_its_latest_earlier_material():
    sources = {"Cu-a": cu(3.58, 0), "CO-a": co(), "Cu-b": cu(3.61, 1), "Cu-c": cu(3.64, 2),
               "CO-b": co()}
    items = BatchOTFMaker(otf_maker=toy_maker(), warm_start="same_elements").items(sources)
    donors = {i.source_id: i.warm_start_from for i in items}
    assert donors == {"Cu-a": None, "CO-a": None, "Cu-b": "Cu-a", "Cu-c": "Cu-b",
                      "CO-b": "CO-a"}
    by_source = {i.source_id: i for i in items}
    for item in items:
        first = item.flow.jobs[0]
        # a warm start checks the donor's checkpoint first ('otf start'), a cold one does not
        assert (first.name == "otf start") == (item.warm_start_from is not None)
        assert all(job.metadata["otf_warm_start_from"] == item.warm_start_from
                   for job in item.flow.jobs)
    # the warm start waits for its donor: it reads the donor run's final checkpoint
    start = by_source["Cu-c"].flow.jobs[0]
    donor_output = by_source["Cu-b"].flow.output
    assert start.function_args[0].uuid == donor_output.uuid
    assert start.function_args[0].attributes[-1] == ("a", "final_checkpoint")
    # cold starts by default
    assert all(i.warm_start_from is None
               for i in BatchOTFMaker(otf_maker=toy_maker()).items(sources))


def test_same_elements_rule_on_its_own():
    earlier = [("x", cu(3.6, 0)), ("y", co()), ("z", cu(3.7, 1))]
    assert same_elements("new", cu(3.5, 2), earlier) == "z"
    assert same_elements("new", Atoms("CH4"), earlier) is None
    assert same_elements("new", cu(3.5, 2), []) is None


def test_warm_started_run_continues_the_donors_final_posterior(store):
    flow = BatchOTFMaker(otf_maker=toy_maker(n_steps=14), warm_start="same_elements").make(
        {"Cu-a": cu(3.58, 0), "Cu-b": cu(3.64, 1)})
    run_locally(flow, store=store, log=False, ensure_success=True, raise_immediately=True)
    first, second = (read_run_doc(store, f.output.uuid) for f in flow.jobs)
    assert first.start_from is None and second.start_from == first.final_checkpoint
    donor = Posterior.from_bytes(load_checkpoint(store, first.final_checkpoint))
    final = Posterior.from_bytes(load_checkpoint(store, second.final_checkpoint))
    # data and calibration go on from the donor's: its labels, then every call of this run
    assert len(donor.data) == first.n_reference_calls
    assert len(final.data) == first.n_reference_calls + second.n_reference_calls
    assert final.calibration.n == donor.calibration.n + second.n_reference_calls
    # the warm-started run's first prediction is the donor posterior's, scored
    assert second.calls[0].error is not None and first.calls[0].error is None


def test_bad_warm_start_settings_are_refused_before_any_structure_is_read():
    with pytest.raises(ValueError, match=r"warm_start='same_element'.*same_elements"):
        BatchOTFMaker(otf_maker=toy_maker(), warm_start="same_element")
    with pytest.raises(ValueError, match="start_from 'run:3' would be ignored"):
        BatchOTFMaker(otf_maker=toy_maker(start_from="run:3"), warm_start="same_elements")


def test_a_rule_that_names_no_earlier_material_fails_that_material_only():
    def bad_rule(source_id, atoms, earlier):
        return "nosuch" if source_id == "Cu-b" else None

    items = BatchOTFMaker(otf_maker=toy_maker(), warm_start=bad_rule).items(
        {"Cu-a": cu(3.58, 0), "Cu-b": cu(3.61, 1), "Cu-c": cu(3.64, 2)})
    errors = {i.source_id: i.error for i in items}
    assert errors["Cu-a"] is None and errors["Cu-c"] is None
    assert "the rule chose 'nosuch'" in errors["Cu-b"] and "['Cu-a']" in errors["Cu-b"]


def test_a_warm_start_to_another_composition_gets_its_own_energy_offset(store):
    """A vacancy changes the composition: the donor's offset (its zero) would be wrong by
    about one atom's energy difference between model and reference, so the new composition
    sets its own from its first label, unscored, as a fresh run does."""
    vacancy = cu(3.61, 1).repeat((2, 1, 1))
    del vacancy[3]
    flow = BatchOTFMaker(otf_maker=toy_maker(n_steps=14), warm_start="same_elements").make(
        {"Cu8": cu(3.61, 0).repeat((2, 1, 1)), "Cu7": vacancy})
    run_locally(flow, store=store, log=False, ensure_success=True, raise_immediately=True)
    first, second = (read_run_doc(store, f.output.uuid) for f in flow.jobs)
    assert second.start_from == first.final_checkpoint
    final = Posterior.from_bytes(load_checkpoint(store, second.final_checkpoint))
    assert sorted(final.energy_offsets) == ["29:7", "29:8"]
    assert final.energy_offsets["29:8"] == pytest.approx(first.energy_offset, abs=1e-12)
    assert second.energy_offset == pytest.approx(final.energy_offsets["29:7"], abs=1e-12)
    # the untuned model anchors each composition: its error at the first label is zero
    assert second.calls[0].error is None
    assert len(final.data) == first.n_reference_calls + second.n_reference_calls
    # every label of the second run is in its own composition's zero: the untuned model's
    # error at call 0 of each composition is zero by construction
    cu7 = [r for r in final.data if r.n_atoms == 7]
    assert float(final.predict_untuned(cu7[:1]).energy[0]) == pytest.approx(cu7[0].energy,
                                                                            abs=1e-9)


def test_checkpoints_before_per_composition_offsets_load_with_their_one_offset():
    import io

    import torch

    from atomate2_otf.atoms import record_from_atoms
    from atomate2_otf.bnn.posterior import PosteriorConfig
    from tests.toy_model import ToyModel

    posterior = Posterior(ToyModel(), PosteriorConfig(n_chains=2))
    atoms = cu(3.61, 0)
    from ase.calculators.emt import EMT
    atoms.calc = EMT()
    record = record_from_atoms(atoms)
    record.energy, record.forces = atoms.get_potential_energy(), atoms.get_forces()
    posterior.add_labels([record])
    payload = torch.load(io.BytesIO(posterior.to_bytes()), weights_only=True)
    assert payload["energy_offsets"] == {"29:4": posterior.energy_offset}
    del payload["energy_offsets"]  # as written before per-composition offsets
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    old = Posterior.from_bytes(buffer.getvalue(), model=ToyModel())
    assert old.energy_offsets == {"29:4": posterior.energy_offset}
    np_pred = old.predict([record.unlabelled()]).energy[0]
    assert np_pred == posterior.predict([record.unlabelled()]).energy[0]


def test_cli_batch_warm_start(tmp_path, monkeypatch, capsys):
    import json

    from ase.io import write

    from atomate2_otf.cli import main
    from atomate2_otf.store import open_job_store

    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "in"
    folder.mkdir()
    for i, a in enumerate((3.58, 3.64)):
        write(folder / f"Cu-{i}.cif", cu(a, i))
    common = ["batch", str(folder), "--model", "toy", "--reference", "emt", "--steps", "8",
              "--timestep", "1", "--chains", "2", "--update-steps", "3", "--threshold",
              "0.05", "--store", str(tmp_path / "store"), "--warm-start", "same_elements"]
    # with a launchpad each material would be its own workflow: refused before any work
    assert main([*common, "--launchpad", str(tmp_path / "lp.yaml")]) == 2
    assert "--warm-start same_elements" in capsys.readouterr().err
    assert main([*common, "--json"]) == 0
    rows = {r["source"]: r for r in json.loads(capsys.readouterr().out)}
    store = open_job_store(str(tmp_path / "store"))
    store.connect()
    start = store.query_one({"metadata.otf_run_id": rows["Cu-1.cif"]["run_id"],
                             "metadata.otf_kind": "prepare"}, properties=["output"])
    assert start["output"]["start_from"] is not None
    assert start["output"]["start_from"].startswith(rows["Cu-0.cif"]["run_id"])
