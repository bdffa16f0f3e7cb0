"""The production store on a real MongoDB server (SecantusDB): open_job_store, raw GridFS
checkpoints, the 16 MB document limit, and a run that outlives a kill -9 of the database."""

from __future__ import annotations

import base64
import json
import os
import re
import threading
import time
from pathlib import Path

import bson
import numpy as np
import pytest
from ase.build import bulk

from atomate2_otf.mongo import RetryingStore, StoreUnreachableError, unwrap
from atomate2_otf.store import (
    RUNS_STORE,
    RetentionPolicy,
    list_checkpoints,
    load_checkpoint,
    load_trajectory,
    open_job_store,
    prune_checkpoints,
    save_checkpoint,
    save_trajectory,
    stored_checkpoint_nbytes,
)
from tests.mongo_server import MongoTestServer, free_port

ROOT = Path(__file__).resolve().parents[2]
TOY = "tests.toy_model:ToyModel"


def copper():
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True)
    atoms.rattle(0.02, seed=3)
    return atoms


def toy_flow(n_steps: int = 30, seed: int = 0):
    from atomate2_otf.flows import OTFMDMaker
    from atomate2_otf.reference.makers import get_reference_maker

    return OTFMDMaker(model=TOY, reference_maker=get_reference_maker("emt"), n_steps=n_steps,
                      timestep_fs=1.0, temperature=300.0, n_chains=2, update_steps=3,
                      initial_update_steps=3, n_workers=1, force_trigger_every=7,
                      trajectory_interval=5, threshold=0.05, seed=seed).make(copper())


def run_doc(store, flow):
    from atomate2_otf.results import read_run_doc

    doc = read_run_doc(store, flow.output.uuid)
    assert doc is not None, "the run did not store its OTFRunDoc"
    return doc


def test_uri_store_keeps_raw_checkpoints_in_gridfs(mongo_server, database):
    from maggma.stores import GridFSStore, MongoStore

    store = open_job_store(f"{mongo_server.uri}/{database}")
    assert isinstance(store.docs_store, RetryingStore)
    assert isinstance(unwrap(store.docs_store), MongoStore)
    assert isinstance(unwrap(store.additional_stores["checkpoints"]), GridFSStore)
    assert isinstance(unwrap(store.additional_stores["trajectories"]), GridFSStore)
    assert unwrap(store.additional_stores[RUNS_STORE]).collection_name == "runs"
    blobs = {i: os.urandom(200_000 + i) for i in range(5)}
    for i, blob in blobs.items():
        save_checkpoint(store, "run", i, blob)
    save_checkpoint(store, "run", 4, blobs[4])  # rewriting a checkpoint keeps one file
    # size discipline: the GridFS file is the posterior's bytes, not base64 in JSON
    files = unwrap(store.additional_stores["checkpoints"])._files_collection
    assert files.count_documents({"metadata._key": "run:4"}) == 1
    for i, blob in blobs.items():
        assert stored_checkpoint_nbytes(store, f"run:{i}") <= 1.1 * len(blob)
        assert files.find_one({"metadata._key": f"run:{i}"})["length"] == len(blob)
    assert prune_checkpoints(store, "run", RetentionPolicy(keep_last=2)) == [0, 1, 2]
    reopened = open_job_store(f"{mongo_server.uri}/{database}")
    assert list_checkpoints(reopened, "run") == [3, 4]
    assert load_checkpoint(reopened, "run:4") == blobs[4]
    with pytest.raises(ValueError, match="'run:0' is not in the store"):
        load_checkpoint(reopened, "run:0")
    # trajectories are queryable by run in GridFS; the runs journal is a plain collection
    save_trajectory(reopened, "run", 1, [{"step": 10}])
    save_trajectory(reopened, "run", 0, [{"step": 0}, {"step": 5}])
    assert [f["step"] for f in load_trajectory(reopened, "run")] == [0, 5, 10]
    runs = reopened.additional_stores[RUNS_STORE]
    runs.update({"run_id": "run", "state": "running"}, key="run_id")
    runs.update({"run_id": "run", "state": "done"}, key="run_id")
    assert [d["state"] for d in runs.query({"run_id": "run"})] == ["done"]


def test_old_base64_gridfs_checkpoints_stay_readable(mongo_server, database):
    store = open_job_store(f"{mongo_server.uri}/{database}")
    blob = os.urandom(1000)
    # what save_checkpoint wrote before raw bytes: a base64 JSON document via update
    store.additional_stores["checkpoints"].update([{
        "_key": "old:0", "run_id": "old", "index": 0, "nbytes": len(blob),
        "data": base64.b64encode(blob).decode("ascii")}], key="_key")
    assert load_checkpoint(store, "old:0") == blob


def test_default_database_name(mongo_server):
    store = open_job_store(mongo_server.uri)
    assert unwrap(store.docs_store).database == "atomate2_otf"
    assert unwrap(store.additional_stores["checkpoints"]).database == "atomate2_otf"


def _example_config(tmp_path: Path, host: str, port: int, database: str) -> Path:
    text = (ROOT / "examples" / "jobflow_mongo.yaml").read_text()
    assert text.count("port: 27017") == 4 and text.count("database: atomate2_otf") == 4
    text = (text.replace("host: localhost", f"host: {host}")
            .replace("port: 27017", f"port: {port}")
            .replace("database: atomate2_otf", f"database: {database}"))
    path = tmp_path / "jobflow.yaml"
    path.write_text(text)
    return path


def test_example_config_opens_against_the_server(mongo_server, database, tmp_path):
    from maggma.stores import GridFSStore, MongoStore

    path = _example_config(tmp_path, mongo_server.host, mongo_server.port, database)
    store = open_job_store(path)
    assert isinstance(unwrap(store.docs_store), MongoStore)
    assert unwrap(store.docs_store).port == mongo_server.port
    assert set(store.additional_stores) == {"checkpoints", "trajectories", "runs"}
    for name in ("checkpoints", "trajectories"):
        assert isinstance(store.additional_stores[name], RetryingStore)
        assert isinstance(unwrap(store.additional_stores[name]), GridFSStore)
    blob = os.urandom(50_000)
    save_checkpoint(store, "cfg", 0, blob)
    assert load_checkpoint(open_job_store(path), "cfg:0") == blob
    assert stored_checkpoint_nbytes(store, "cfg:0") == len(blob)
    # serialisable the jobflow/FireWorks way, retries included
    from monty.json import MontyDecoder

    copy = MontyDecoder().process_decoded(json.loads(json.dumps(store.as_dict())))
    assert isinstance(copy.docs_store, RetryingStore)
    copy.connect()
    assert load_checkpoint(copy, "cfg:0") == blob


@pytest.mark.parametrize("how", ["uri", "config"])
def test_unreachable_database_fails_fast_naming_host_and_port(tmp_path, how):
    port = free_port()  # nothing listens there
    spec = (f"mongodb://127.0.0.1:{port}/x" if how == "uri"
            else _example_config(tmp_path, "127.0.0.1", port, "x"))
    with pytest.raises(StoreUnreachableError, match=f"127.0.0.1:{port}") as info:
        open_job_store(spec)
    # fast: pymongo gave up after its server selection timeout of 5 s (its default is 30 s),
    # as its own error says (no wall-clock bound, which a loaded machine would break)
    timeout = re.search(r"Timeout: ([\d.]+)s", str(info.value.__cause__))
    assert timeout is not None and float(timeout.group(1)) <= 5.0, info.value.__cause__
    assert isinstance(info.value, ValueError)
    assert "Check that the server is running" in str(info.value)
    assert "Topology" not in str(info.value)


def test_run_documents_stay_under_16_mb(mongo_server, database, tmp_path, monkeypatch):
    from atomate2_otf.local import run_flow_locally

    monkeypatch.chdir(tmp_path)
    store = open_job_store(f"{mongo_server.uri}/{database}")
    flow = toy_flow(n_steps=20)
    run_flow_locally(flow, store, root_dir=tmp_path / "jobs")
    doc = run_doc(store, flow)
    assert doc.n_reference_calls == 1 + 20 // 7
    client = mongo_server.client()
    try:
        db = client[database]
        sizes = {}
        for name in ("outputs", RUNS_STORE):
            sizes[name] = [len(bson.encode(d)) for d in db[name].find()]
        # one output document per job: 3 to start, 4 per cycle (reference, update, segment
        # and the store_inputs job jobflow appends to a replacement)
        assert len(sizes["outputs"]) == 3 + 4 * (doc.n_reference_calls - 1)
        assert max(sizes["outputs"]) < 16 * 1024 * 1024
        assert all(s < 16 * 1024 * 1024 for s in sizes[RUNS_STORE])
        # the checkpoints went to GridFS, raw
        files = list(db["checkpoints.files"].find())
        assert files and all(f["metadata"]["encoding"] == "raw" for f in files)
        assert all(f["length"] == f["metadata"]["nbytes"] for f in files)
    finally:
        client.close()


@pytest.fixture
def own_server(tmp_path):
    """A server of this test's own: killing it does not disturb the session's server."""
    server = MongoTestServer(tmp_path / "own" / "data").start()
    yield server
    server.stop()


def test_run_survives_kill_9_and_restart_of_the_database(own_server, tmp_path, monkeypatch):
    from atomate2_otf.local import run_flow_locally

    monkeypatch.chdir(tmp_path)
    n_steps, seed = 40, 7
    quiet = open_job_store(f"{own_server.uri}/quiet")
    quiet_flow = toy_flow(n_steps, seed)
    run_flow_locally(quiet_flow, quiet, root_dir=tmp_path / "quiet")
    expected = run_doc(quiet, quiet_flow)

    # operations during the outage fail after 1 s of server selection (not pymongo's
    # 30 s): the outage is longer, so the run must go through RetryingStore's retries
    store = open_job_store(f"{own_server.uri}/disturbed?serverSelectionTimeoutMS=1000")
    for extra in (store.docs_store, *store.additional_stores.values()):
        extra.n_retries = 0
    events: dict[str, float] = {}
    running = threading.Event()

    def outage() -> None:  # kill -9 once the run has written its second checkpoint
        running.wait(30)
        client = own_server.client()
        deadline = time.monotonic() + 60
        while (client["disturbed"]["checkpoints.files"].count_documents({}) < 2
               and time.monotonic() < deadline):
            time.sleep(0.05)
        client.close()
        events["killed"] = time.monotonic()
        own_server.kill()
        time.sleep(3.0)
        own_server.start()
        events["restarted"] = time.monotonic()

    killer = threading.Thread(target=outage, daemon=True)
    killer.start()
    flow = toy_flow(n_steps, seed)
    running.set()
    started = time.monotonic()
    run_flow_locally(flow, store, root_dir=tmp_path / "disturbed")
    finished = time.monotonic()
    killer.join(60)
    assert "restarted" in events, "the server was not restarted"
    assert events["killed"] < finished, "the run ended before the outage: test proves nothing"
    retries = sum(s.n_retries for s in (store.docs_store, *store.additional_stores.values()))
    assert retries >= 1, "no store operation met the outage"
    assert finished > events["restarted"] > started

    doc = run_doc(store, flow)
    assert doc.n_reference_calls == expected.n_reference_calls
    np.testing.assert_allclose(doc.call_errors, expected.call_errors, rtol=0, atol=1e-12)
    kept = list_checkpoints(store, doc.run_id)
    assert kept and doc.final_checkpoint == f"{doc.run_id}:{kept[-1]}"
    from atomate2_otf.bnn.posterior import Posterior

    for index in kept:
        blob = load_checkpoint(store, f"{doc.run_id}:{index}")
        assert Posterior.from_bytes(blob).n_chains == 2
