"""The embedded store: checkpoints round trip, survive reopening, and are pruned."""

import os

import pytest

from atomate2_otf.store import (
    RetentionPolicy,
    embedded_job_store,
    list_checkpoints,
    load_checkpoint,
    load_trajectory,
    prune_checkpoints,
    save_checkpoint,
    save_trajectory,
)


def test_checkpoints_round_trip_reopen_and_prune(tmp_path):
    store = embedded_job_store(tmp_path / "s")
    store.connect()
    blobs = {i: os.urandom(5000 + i) for i in range(6)}
    for i, blob in blobs.items():
        save_checkpoint(store, "run", i, blob)
    save_checkpoint(store, "other", 0, b"x")
    assert prune_checkpoints(store, "run", RetentionPolicy(keep_last=2, keep_every=3)) == [1, 2]
    reopened = embedded_job_store(tmp_path / "s")
    reopened.connect()
    assert list_checkpoints(reopened, "run") == [0, 3, 4, 5]
    assert load_checkpoint(reopened, "run:5") == blobs[5]
    assert load_checkpoint(reopened, "other:0") == b"x"
    with pytest.raises(ValueError, match="'run:1' is not in the store"):
        load_checkpoint(reopened, "run:1")


def test_trajectory_frames_in_step_order(tmp_path):
    store = embedded_job_store(tmp_path)
    store.connect()
    save_trajectory(store, "r", 1, [{"step": 10}])
    save_trajectory(store, "r", 0, [{"step": 0}, {"step": 5}])
    assert [f["step"] for f in load_trajectory(store, "r")] == [0, 5, 10]


def test_retention_policy_validation():
    with pytest.raises(ValueError, match="keep_last must be >= 1.*got 0"):
        RetentionPolicy(keep_last=0)
    assert RetentionPolicy(keep_last=1).to_prune([0, 1, 2]) == [0, 1]


def test_missing_checkpoint_store_is_named(tmp_path):
    from jobflow import JobStore
    from maggma.stores import MemoryStore

    store = JobStore(MemoryStore())
    store.connect()
    with pytest.raises(ValueError, match="no additional store named 'checkpoints'"):
        save_checkpoint(store, "r", 0, b"x")


def test_sqlite_checkpoints_are_raw_blobs_and_old_base64_documents_load(tmp_path):
    import base64
    import sqlite3

    from atomate2_otf.store import stored_checkpoint_nbytes

    store = embedded_job_store(tmp_path)
    store.connect()
    blob = os.urandom(100_000)
    save_checkpoint(store, "r", 0, blob)
    assert stored_checkpoint_nbytes(store, "r:0") <= 1.1 * len(blob)
    # measured at rest, in the file: one BLOB of the posterior's length, no JSON copy
    conn = sqlite3.connect(str(tmp_path / "otf.sqlite"))
    lengths = conn.execute("SELECT length(data) FROM checkpoints__blobs").fetchall()
    body = conn.execute("SELECT max(length(body)) FROM checkpoints").fetchone()[0]
    conn.close()
    assert lengths == [(len(blob),)] and body < 1000
    # checkpoints written base64 before raw bytes stay readable
    store.additional_stores["checkpoints"].update([{
        "_key": "old:3", "run_id": "old", "index": 3,
        "data": base64.b64encode(blob).decode("ascii")}], key="_key")
    assert load_checkpoint(store, "old:3") == blob
    assert list_checkpoints(store, "old") == [3]


def test_other_stores_keep_base64_checkpoints():
    from jobflow import JobStore
    from maggma.stores import MemoryStore

    store = JobStore(MemoryStore("docs"), additional_stores={"checkpoints": MemoryStore("c")})
    store.connect()
    blob = os.urandom(3000)
    save_checkpoint(store, "r", 0, blob)
    doc = store.additional_stores["checkpoints"].query_one({"_key": "r:0"})
    assert doc["encoding"] == "base64" and isinstance(doc["data"], str)
    assert load_checkpoint(store, "r:0") == blob
    assert list_checkpoints(store, "r") == [0]


def test_embedded_store_has_a_runs_journal(tmp_path):
    from atomate2_otf.sqlite_store import SQLiteStore
    from atomate2_otf.store import RUNS_STORE

    store = embedded_job_store(tmp_path)
    store.connect()
    runs = store.additional_stores[RUNS_STORE]
    assert isinstance(runs, SQLiteStore) and runs.collection_name == "runs"
    runs.update({"run_id": "a", "state": "running"}, key="run_id")
    runs.update({"run_id": "a", "state": "done"}, key="run_id")
    assert [d["state"] for d in runs.query({"run_id": "a"})] == ["done"]


def test_open_job_store_folder_and_bad_specs(tmp_path):
    from atomate2_otf.sqlite_store import SQLiteStore
    from atomate2_otf.store import open_job_store

    store = open_job_store(tmp_path / "new" / "folder")  # created
    assert isinstance(store.docs_store, SQLiteStore)
    save_checkpoint(store, "r", 0, b"abc")
    assert load_checkpoint(open_job_store(tmp_path / "new" / "folder"), "r:0") == b"abc"
    a_file = tmp_path / "notes.txt"
    a_file.write_text("x")
    with pytest.raises(ValueError, match="is a file, not a store folder"):
        open_job_store(a_file)
    broken = tmp_path / "broken.yaml"
    broken.write_text("docs_store: {type: MongoStore\n  database: [x\n")
    with pytest.raises(ValueError, match=r"cannot parse JobStore config file .*broken\.yaml"):
        open_job_store(broken)
    no_docs = tmp_path / "nodocs.json"
    no_docs.write_text('{"additional_stores": {}}')
    with pytest.raises(ValueError, match=r"nodocs\.json has no 'docs_store'"):
        open_job_store(no_docs)
    with pytest.raises(ValueError, match=r"missing\.yml does not exist"):
        open_job_store(tmp_path / "missing.yml")
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("docs_store: {type: NoSuchStore}\n")
    with pytest.raises(ValueError, match=r"unknown\.yaml does not describe a JobStore.*NoSuch"):
        open_job_store(unknown)
    with pytest.raises(ValueError, match="invalid MongoDB URI"):
        open_job_store("mongodb://")


def test_open_job_store_reads_jobflow_config_of_memory_stores(tmp_path):
    from maggma.stores import MemoryStore

    from atomate2_otf.store import open_job_store

    path = tmp_path / "jobflow.yaml"
    path.write_text("JOB_STORE:\n  docs_store: {type: MemoryStore}\n"
                    "  additional_stores:\n    checkpoints: {type: MemoryStore}\n")
    store = open_job_store(path)
    assert isinstance(store.docs_store, MemoryStore)  # no Mongo: not wrapped
    save_checkpoint(store, "r", 1, b"xyz")
    assert load_checkpoint(store, "r:1") == b"xyz"


class _Flaky:
    """Raises a connection error ``n`` times, then answers."""

    def __init__(self, n, error):
        self.n, self.error, self.calls = n, error, 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        if self.calls <= self.n:
            raise self.error
        return "ok"


def test_retrying_store_retries_connection_errors_with_backoff(caplog, monkeypatch):
    import logging

    from maggma.stores import MemoryStore
    from pymongo.errors import AutoReconnect, OperationFailure, ServerSelectionTimeoutError

    from atomate2_otf import mongo
    from atomate2_otf.mongo import RetryingStore

    sleeps = []
    monkeypatch.setattr(mongo.time, "sleep", sleeps.append)
    inner = MemoryStore("m", key="k")
    store = RetryingStore(inner, budget_s=60, initial_delay_s=0.5, max_delay_s=2)
    store.connect()
    flaky = _Flaky(5, AutoReconnect("connection closed"))
    monkeypatch.setattr(inner, "update", flaky)
    with caplog.at_level(logging.WARNING, logger="atomate2_otf.mongo"):
        store.update([{"k": 1}])
    assert flaky.calls == 6 and store.n_retries == 5
    assert sleeps == [0.5, 1.0, 2.0, 2.0, 2.0]
    assert sum("retry" in r.getMessage() for r in caplog.records) == 5
    # other errors are not retried; the budget ends the retries with the last error
    monkeypatch.setattr(inner, "count", _Flaky(1, OperationFailure("bad query")))
    with pytest.raises(OperationFailure):
        store.count({})
    monkeypatch.setattr(mongo.time, "monotonic", iter(range(0, 1000, 10)).__next__)
    monkeypatch.setattr(inner, "remove_docs", _Flaky(99, ServerSelectionTimeoutError("down")))
    with pytest.raises(ServerSelectionTimeoutError):
        store.remove_docs({})


def test_retrying_store_retries_every_operation_and_is_a_store(monkeypatch):
    import pickle

    from maggma.stores import MemoryStore
    from monty.json import MontyDecoder
    from pymongo.errors import ConnectionFailure

    from atomate2_otf import mongo
    from atomate2_otf.mongo import RetryingStore

    monkeypatch.setattr(mongo.time, "sleep", lambda s: None)
    store = RetryingStore(MemoryStore("m", key="k"))
    store.connect()
    store.update([{"k": i, "g": i % 2} for i in range(4)])
    inner = store.store
    for name, call, expected in [
            ("query", lambda: list(store.query({"g": 1}, properties=["k"])), 2),
            ("query_one", lambda: store.query_one({"k": 2})["k"], 2),
            ("count", lambda: store.count({"g": 0}), 2),
            ("distinct", lambda: sorted(store.distinct("g")), [0, 1]),
            ("ensure_index", lambda: store.ensure_index("g"), True)]:
        original = getattr(inner, name)
        errors = iter([ConnectionFailure("down")])

        def failing_once(*args, _original=original, _errors=errors, **kwargs):
            for error in _errors:
                raise error
            return _original(*args, **kwargs)

        monkeypatch.setattr(inner, name, failing_once)
        before = store.n_retries
        result = call()
        assert (len(result) if name == "query" else result) == expected, name
        assert store.n_retries == before + 1, name
    # jobflow sets the key of its stores through the wrapper
    store.key = "uuid"
    assert inner.key == "uuid" and store.key == "uuid"
    copy = MontyDecoder().process_decoded(store.as_dict())
    assert isinstance(copy, RetryingStore) and isinstance(copy.store, MemoryStore)
    assert copy.budget_s == store.budget_s
    assert isinstance(pickle.loads(pickle.dumps(RetryingStore(MemoryStore("p")))),
                      RetryingStore)
