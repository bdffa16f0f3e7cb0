"""Batch screening: one run per material, bad inputs reported, failures isolated."""

from __future__ import annotations

import json

import pytest
from ase.build import bulk
from ase.io import write

from atomate2_otf.batch import BatchOTFMaker, structure_sources
from atomate2_otf.cli import main
from atomate2_otf.store import open_job_store
from tests.workflow.helpers import toy_maker


def _candidates(folder, corrupt: bool = True, uncovered: bool = False):
    folder.mkdir()
    for i, a in enumerate((3.55, 3.61, 3.67)):
        atoms = bulk("Cu", "fcc", a=a, cubic=True)
        atoms.rattle(0.02, seed=i)
        write(folder / f"Cu-{i}.cif", atoms)
    if corrupt:
        (folder / "broken.cif").write_text("data_broken\n_cell_length_a oops\n")
    if uncovered:  # the toy model has no gold: fails when its run loads the model
        write(folder / "Au.cif", bulk("Au", "fcc", a=4.08, cubic=True))
    return folder


def test_items_tag_every_material_and_report_the_corrupt_file(tmp_path):
    items = BatchOTFMaker(otf_maker=toy_maker()).items(_candidates(tmp_path / "in"))
    by_source = {i.source_id: i for i in items}
    assert sorted(by_source) == ["Cu-0.cif", "Cu-1.cif", "Cu-2.cif", "broken.cif"]
    assert by_source["broken.cif"].flow is None
    assert "broken.cif" in by_source["broken.cif"].error
    for source in ("Cu-0.cif", "Cu-1.cif", "Cu-2.cif"):
        item = by_source[source]
        assert item.error is None and item.formula == "Cu4"
        assert all(job.metadata["otf_source"] == source and job.metadata["otf_formula"] == "Cu4"
                   for job in item.flow.jobs)
    run_ids = {job.metadata["otf_run_id"] for i in items if i.flow for job in i.flow.jobs}
    assert len(run_ids) == 3
    flow = BatchOTFMaker(otf_maker=toy_maker()).make(tmp_path / "in")
    assert len(flow.jobs) == 3 and list(flow.metadata["otf_rejected"]) == ["broken.cif"]


def test_sources_bad_input():
    with pytest.raises(ValueError, match="is not a folder"):
        structure_sources("/no/such/folder")
    with pytest.raises(ValueError, match="repeated"):
        structure_sources(["a/x.cif", "b/x.cif"])


def test_cli_batch_runs_the_rest_when_one_file_is_corrupt_and_one_run_fails(tmp_path, capsys,
                                                                           monkeypatch):
    monkeypatch.chdir(tmp_path)
    folder = _candidates(tmp_path / "in", corrupt=True, uncovered=True)
    store = tmp_path / "store"
    code = main(["batch", str(folder), "--model", "toy", "--reference", "emt", "--steps", "10",
                 "--timestep", "1", "--chains", "2", "--update-steps", "3", "--threshold",
                 "0.05", "--store", str(store), "--json"])
    captured = capsys.readouterr()
    assert code == 1  # something failed, and the rest still ran
    assert "error: broken.cif:" in captured.err
    assert "error: Au.cif:" in captured.err and "does not cover" in captured.err
    rows = {r["source"]: r for r in json.loads(captured.out)}
    assert sorted(rows) == ["Au.cif", "Cu-0.cif", "Cu-1.cif", "Cu-2.cif"]
    assert rows["Au.cif"]["state"] == "failed" and "does not cover" in rows["Au.cif"]["error"]
    job_store = open_job_store(str(store))
    for source in ("Cu-0.cif", "Cu-1.cif", "Cu-2.cif"):
        row = rows[source]
        assert row["state"] == "completed" and row["formula"] == "Cu4"
        # the trigger is the calibrated one here, so no setting fixes the number of calls:
        # the row counts the reference jobs the run actually ran
        references = job_store.count({"metadata.otf_run_id": row["run_id"],
                                      "metadata.otf_kind": "reference"})
        assert row["md_steps"] == 10 and row["reference_calls"] == references >= 1
        assert row["wall_s"] > 0
        # the share of calls above K exists once the model made a prediction at a call
        assert (row["share_above_k"] is None) == (row["reference_calls"] == 1)
    # the status command shows the same rows
    assert main(["status", "--store", str(store), "--json"]) == 0
    again = {r["source"]: r["state"] for r in json.loads(capsys.readouterr().out)}
    assert again == {s: r["state"] for s, r in rows.items()}
