"""The "outputs" checkpoint transport (issue 17.5): jobs that never read the JobStore.

jobflow-remote runs every job against a file store of its own and copies that store into the
real one afterwards; a job's arguments are resolved by the runner against the real store
before the job is uploaded. :func:`run_isolated` does the same here, with maggma JSONStores
(what jobflow-remote's workers write) and the copy of ``jobflow_remote.remote.data
.update_store``, so the property is tested without jobflow-remote installed; the real
jobflow-remote run is in tests/production/test_jobflow_remote.py.
"""

from __future__ import annotations

import numpy as np
import pytest
from jobflow import Flow, JobStore, run_locally
from jobflow.core.flow import get_flow
from maggma.stores import JSONStore

from atomate2_otf.results import read_run_doc
from atomate2_otf.store import (
    checkpoint_bytes,
    checkpoint_placeholder,
    embedded_job_store,
    load_checkpoint,
    load_trajectory,
)
from tests.workflow.helpers import copper, toy_maker

#: the per-call fields a transport must not change (times are measured, so they differ)
CALL_FIELDS = ("index", "kind", "md_step", "reference_energy", "predicted_energy", "error",
               "sigma", "prob_within", "untuned_error", "predictive_scale", "checkpoint")


def run(flow, store):
    run_locally(flow, store=store, log=False, ensure_success=True, raise_immediately=True)


def worker_store(folder, real: JobStore) -> JobStore:
    """A job's own store, as a jobflow-remote worker makes it: one JSON file per store."""
    folder.mkdir(parents=True)
    return JobStore(JSONStore(str(folder / "remote_job_data.json"), read_only=False),
                    additional_stores={name: JSONStore(str(folder / f"additional_store_{name}"
                                                                   ".json"), read_only=False)
                                       for name in real.additional_stores})


def copy_back(worker: JobStore, real: JobStore) -> None:
    """jobflow-remote's update_store: every document of each store, as it is, keyed by the
    real store's key (jobflow sets blob_uuid on additional stores)."""
    for name, extra in worker.additional_stores.items():
        for doc in extra.query():
            doc.pop("_id", None)
            real.additional_stores[name].update(doc)
    for doc in worker.docs_store.query({}):
        doc.pop("_id", None)
        real.docs_store.update(doc, key=["uuid", "index"])


def run_isolated(flow: Flow, real: JobStore, folder) -> list[str]:
    """Run ``flow`` as jobflow-remote would: each job's references resolved against the
    real store, the job run against its own empty store, the results copied back; the
    jobs a Response creates join the queue, if they reference no job outside their flow. Returns the names of the jobs run."""
    queue = [one for one, _ in flow.iterflow()]
    names = []
    while queue:
        one = queue.pop(0)
        if one.config.resolve_references:  # the runner, before the upload
            one.resolve_args(store=real, inplace=True)
        own = worker_store(folder / f"{len(names)}", real)
        own.connect()
        response = one.run(store=own)
        own.close()
        own.connect()  # the runner reloads the downloaded files
        copy_back(own, real)
        names.append(one.name)
        if response.replace is not None:
            # as jobflow-remote's worker does: a flow that references a job outside it
            # (an earlier cycle's) is refused
            replacement = get_flow(response.replace)
            queue = [new for new, _ in replacement.iterflow()] + queue
    return names


def calls_of(doc):
    return [{name: getattr(call, name) for name in CALL_FIELDS} for call in doc.calls]


@pytest.fixture
def store_run(tmp_path, monkeypatch):
    """The toy run with the default transport, in a store of its own."""
    monkeypatch.chdir(tmp_path)
    store = embedded_job_store(tmp_path / "by_store")
    store.connect()
    flow = toy_maker(seed=4).make(copper())
    run(flow, store)
    return store, read_run_doc(store, flow.output.uuid)


def same_run(first, second, first_store, second_store) -> None:
    assert [c["checkpoint"].split(":")[1] for c in calls_of(first)] == \
        [c["checkpoint"].split(":")[1] for c in calls_of(second)]
    for one, other in zip(calls_of(first), calls_of(second)):
        one.pop("checkpoint"), other.pop("checkpoint")
        assert one == other
    assert first.n_md_steps == second.n_md_steps and \
        first.energy_offset == second.energy_offset
    np.testing.assert_array_equal(first.final_state["positions"], second.final_state["positions"])
    assert load_checkpoint(first_store, first.final_checkpoint) == \
        load_checkpoint(second_store, second.final_checkpoint)


def test_outputs_transport_gives_the_store_transports_run_bit_for_bit(store_run, tmp_path):
    store, by_store = store_run
    other = embedded_job_store(tmp_path / "by_outputs")
    other.connect()
    flow = toy_maker(seed=4, checkpoint_transport="outputs").make(copper())
    run(flow, other)
    by_outputs = read_run_doc(other, flow.output.uuid)
    assert by_outputs.n_reference_calls == by_store.n_reference_calls >= 4
    same_run(by_store, by_outputs, store, other)
    assert by_outputs.settings["checkpoint_transport"] == "outputs"


def test_outputs_transport_runs_with_every_job_cut_off_from_the_store(store_run, tmp_path):
    """No job of an "outputs" run reads the store it runs with: each gets an empty one."""
    store, by_store = store_run
    real = embedded_job_store(tmp_path / "real")
    real.connect()
    flow = toy_maker(seed=4, checkpoint_transport="outputs").make(copper())
    names = run_isolated(flow, real, tmp_path / "workers")
    assert names[:3] == ["otf reference 0", "otf prepare", "otf md segment 0"]
    assert sum(name.startswith("otf update") for name in names) == by_store.n_reference_calls - 1
    doc = read_run_doc(real, flow.output.uuid)
    assert doc is not None and doc.completed
    same_run(by_store, doc, store, real)
    # what the copies brought into the real store: every checkpoint and the trajectory
    assert len(load_trajectory(real, doc.run_id)) == len(load_trajectory(store, by_store.run_id))


def test_the_store_transport_cannot_run_cut_off_from_the_store(tmp_path, monkeypatch):
    """The reason the "outputs" transport exists: a default run fails at its first job
    that reads a checkpoint, naming the missing checkpoint."""
    monkeypatch.chdir(tmp_path)
    real = embedded_job_store(tmp_path / "real")
    real.connect()
    with pytest.raises(ValueError, match="checkpoint .* is not in the store"):
        run_isolated(toy_maker(seed=4).make(copper()), real, tmp_path / "workers")


def test_checkpoint_placeholder_resolves_in_each_kind_of_store(tmp_path):
    """jobflow loads the placeholder from SQLite (raw bytes) and from a JSON store (base64)."""
    from atomate2_otf.store import save_checkpoint

    blob = bytes(range(256)) * 3
    for store in (embedded_job_store(tmp_path / "sqlite"),
                  worker_store(tmp_path / "json", embedded_job_store(tmp_path / "x"))):
        store.connect()
        key = save_checkpoint(store, "run", 2, blob, portable=True)
        store.update({"uuid": "u1", "index": 1, "output": {
            "checkpoint_data": checkpoint_placeholder(key)}})
        data = store.get_output("u1", load=True)["checkpoint_data"]
        assert checkpoint_bytes(data) == blob and load_checkpoint(store, key) == blob


@pytest.mark.parametrize("value", [{"blob_uuid": "x"}, 3, None])
def test_a_checkpoint_reference_that_did_not_load_is_named(value):
    with pytest.raises(ValueError, match="not the checkpoint's bytes"):
        checkpoint_bytes(value)


def test_bad_transport_and_start_from_with_outputs_are_refused_before_any_job():
    with pytest.raises(ValueError, match="checkpoint_transport must be one of 'store', "
                                         "'outputs', got 'gridfs'"):
        toy_maker(checkpoint_transport="gridfs").make(copper())
    with pytest.raises(ValueError, match="start_from='abc:3' needs checkpoint_transport="
                                         "'store'"):
        toy_maker(checkpoint_transport="outputs", start_from="abc:3").make(copper())


def test_warm_start_refuses_the_outputs_transport():
    from atomate2_otf.batch import BatchOTFMaker

    with pytest.raises(ValueError, match="warm_start needs the otf_maker's "
                                         "checkpoint_transport='store'"):
        BatchOTFMaker(otf_maker=toy_maker(checkpoint_transport="outputs"),
                      warm_start="same_elements")
