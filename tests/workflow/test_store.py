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
