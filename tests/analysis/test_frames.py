"""Runs read into DataFrames: the rows are the store's records, finished or not."""

from __future__ import annotations

import math

import numpy as np
import pytest

from atomate2_otf.analysis.frames import (
    calls_frame,
    load_run,
    materials_frame,
    trajectory_frame,
)
from atomate2_otf.results import run_calls
from atomate2_otf.schemas import ReferenceCall
from atomate2_otf.store import load_trajectory
from tests.analysis.runs import finished_doc, open_store, stopped_run


def _same(a, b) -> bool:
    missing = (a is None or (isinstance(a, float) and math.isnan(a)))
    return missing == (b is None) and (missing or a == b)


def test_call_rows_are_the_stores_records(finished):
    folder, run_id = finished
    store = open_store(folder)
    run = load_run(store, run_id)
    frame = calls_frame(run)
    records = run_calls(store, run_id)
    assert len(records) == len(frame) == 1 + 30 // 6
    for row, record in zip(frame.to_dict(orient="records"), records, strict=True):
        for name in ReferenceCall.model_fields:
            assert _same(row[name], getattr(record, name)), (name, row[name], record)
        assert row["run_id"] == run_id
    assert list(frame["kind"]) == ["initial"] + ["trigger"] * 5
    # time: step x the run's 1 fs; target: the 300-600-300 K schedule over 30 steps
    steps = frame["md_step"].to_numpy(float)
    assert list(frame["time_fs"]) == list(steps * 1.0)
    assert np.allclose(frame["target_temperature_K"],
                       np.interp(steps / 30, [0, 0.5, 1], [300, 600, 300]), rtol=0, atol=1e-9)
    # temperature: the stored trajectory's, interpolated at the call's step
    frames = load_trajectory(store, run_id)
    assert len(frames) > 5 and set(frame["temperature_source"]) == {"trajectory"}
    by_step = {f["step"]: f["temperature_K"] for f in frames}
    xs = sorted(by_step)
    assert np.allclose(frame["temperature_K"], np.interp(steps, xs, [by_step[s] for s in xs]))
    assert list(trajectory_frame(run)["step"]) == xs


def test_finished_run_is_its_otfrundoc(finished):
    folder, run_id = finished
    store = open_store(folder)
    run = load_run(store, run_id)
    doc = finished_doc(folder, run_id)
    assert run.completed and run.state == "completed" and doc is not None
    assert run.doc.model_dump(exclude={"final_structure"}) == \
        doc.model_dump(exclude={"final_structure"})
    assert run.settings == doc.settings and run.threshold == 0.05 and run.timestep_fs == 1.0


def test_stopped_run_reads_what_is_there(tmp_path):
    folder = tmp_path / "store"
    run_id = stopped_run(folder)
    store = open_store(folder)
    run = load_run(store, run_id)
    assert run.doc is None and not run.completed and run.state == "failed"
    assert [c.index for c in run.calls] == [0, 1, 2]
    # settings from the journal's queued jobs: the frame has times and schedule targets
    assert run.threshold == 0.05 and run.timestep_fs == 1.0
    frame = calls_frame(run)
    assert list(frame["md_step"]) == [0, 6, 12] and list(frame["time_fs"]) == [0.0, 6.0, 12.0]
    errors = [c.error for c in run_calls(store, run_id) if c.error is not None]
    assert len(errors) == 2
    assert run.summary.n_reference_calls == 3 and not run.summary.completed
    assert run.summary.share_above_threshold == np.mean(np.abs(errors) > 0.05)
    assert run.summary.rmse_at_calls == float(np.sqrt(np.mean(np.square(errors))))
    row = materials_frame([run]).iloc[0]
    assert (row["state"], bool(row["completed"]), row["n_reference_calls"]) == ("failed", False, 3)


def test_batch_has_one_row_per_material(batch):
    folder, run_ids = batch
    store = open_store(folder)
    runs = [load_run(store, one) for one in run_ids]
    frame = materials_frame(runs)
    assert list(frame["run_id"]) == run_ids
    assert list(frame["source"]) == ["cu.cif", "cu8.cif", "stopped.cif"]
    assert list(frame["formula"]) == ["Cu4", "Cu8", "Cu4"]
    assert list(frame["state"]) == ["completed", "completed", "failed"]
    for row in frame.iloc[:2].to_dict(orient="records"):
        doc = finished_doc(folder, row["run_id"])
        for name in ("n_md_steps", "n_reference_calls", "n_audit_calls",
                     "share_above_threshold", "rmse_at_calls", "rmse_untuned_at_calls"):
            assert row[name] == getattr(doc, name), name
        assert row["wall_s"] == doc.timings.total and row["audit_miss_rate"] is None


def test_unknown_run_is_named(finished):
    folder, run_id = finished
    with pytest.raises(KeyError, match=f"no run 'nope'.*{run_id}"):
        load_run(open_store(folder), "nope")
